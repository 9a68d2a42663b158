"""Whether and where a SCADA bridge's server (Modbus TCP, OPC UA) listens: the
settings both server sections start with. Off unless asked for, on loopback
unless configured otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from balans_edge.settings import setting


@dataclass(frozen=True)
class ListenConfig:
    """The start of ``[plugins.<bridge>.server]``; each bridge goes on with its port."""

    enabled: Annotated[bool, setting(doc="serve SCADA clients (off unless asked for)")] = False
    host: Annotated[str, setting(doc="address to listen on; loopback unless you mean otherwise")] = "127.0.0.1"
