"""modbus plugin: the Modbus TCP server for SCADA (see README.md)."""
