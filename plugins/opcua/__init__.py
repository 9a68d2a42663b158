"""opcua plugin: the OPC UA server for SCADA and MES (see README.md)."""
