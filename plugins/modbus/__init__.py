"""modbus plugin (placeholder; see README.md)."""
