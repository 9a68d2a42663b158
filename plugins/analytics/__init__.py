"""Loss analytics: the built-in group detectors, their schedule and the run API."""
