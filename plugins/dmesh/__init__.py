"""DMesh concentrators: link protocol, driver (TCP and serial) and site simulator."""
