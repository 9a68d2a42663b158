"""Probes a running server from a process of its own, as SCADA and a monitor would:
a Modbus TCP read (pymodbus's client) and ``GET /api/v1/health``, one after the
other, until stdin closes. Prints ``ready`` once connected, then one JSON line
per probe: {"kind", "t" (unix start), "s" (seconds taken), "ok"}.

    python tests/loop_probe.py HTTP_PORT MODBUS_PORT
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx
from pymodbus.client import ModbusTcpClient

PAUSE_S = 0.01


def main(http_port: int, modbus_port: int) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    modbus = ModbusTcpClient("127.0.0.1", port=modbus_port, timeout=30, retries=0)
    if not modbus.connect():
        raise SystemExit(f"no Modbus server on port {modbus_port}")
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as http:
        probes = {
            "modbus": lambda: not modbus.read_holding_registers(0, count=16, device_id=1).isError(),
            "health": lambda: http.get("/api/v1/health").status_code == 200,
        }
        for probe in probes.values():
            probe()  # connections up before anyone measures
        print("ready", flush=True)
        while not stop.is_set():
            for kind, probe in probes.items():
                t, start = time.time(), time.perf_counter()
                ok = probe()
                print(json.dumps({"kind": kind, "t": t, "s": time.perf_counter() - start, "ok": ok}), flush=True)
            time.sleep(PAUSE_S)
    modbus.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
