"""Whether and where a SCADA bridge's server (Modbus TCP, OPC UA) listens: the
settings both server sections start with. Off unless asked for, on loopback
unless configured otherwise."""

from __future__ import annotations

from dataclasses import dataclass

from balans_edge.settings import setting


@dataclass(frozen=True)
class ListenConfig:
    """The start of ``[plugins.<bridge>.server]``; each bridge goes on with its port."""

    enabled: bool = setting(False, doc="serve SCADA clients (off unless asked for)")
    host: str = setting("127.0.0.1", doc="address to listen on; loopback unless you mean otherwise")
