"""Loss analytics: detectors of slowed, stuck and reversed meters, leaks, theft and
unmetered connections, run per balance group over windows of hourly data."""
