"""opcua plugin (placeholder; see README.md)."""
