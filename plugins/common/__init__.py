"""Code the protocol plugins share (Modbus, OPC UA), as Telegraf's
``plugins/common``: not a plugin itself (no hooks, nothing registered), the one
place besides core that a built-in plugin may import. Domain rules stay in core;
what is here is how protocol bridges and clients use them alike."""
