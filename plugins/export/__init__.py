"""The export plugin: InfluxDB v2 write API with store-and-forward (see README.md)."""
