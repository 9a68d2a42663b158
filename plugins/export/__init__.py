"""export plugin (placeholder; see README.md)."""
