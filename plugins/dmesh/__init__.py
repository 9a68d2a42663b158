"""DMesh concentrators: site simulator (driver to follow)."""
