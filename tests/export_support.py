"""Peers for the export tests: a real VictoriaMetrics (it speaks the InfluxDB v2
write API) started on a free port of 127.0.0.1 with a temporary data path and
stopped by PID, and a small scripted write-API server that answers what a test
tells it to (400, 413, 429, 503...) and records what it received."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from balans_edge.plugins.export.repository import ExportRepository


async def export_state(server: Any, target: str | None = None) -> list[dict[str, Any]]:
    """The targets' stored state, read as the export plugin reads it: its repository
    on the server's storage (the SQL gateway)."""
    return await ExportRepository(server.storage).state(target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class VictoriaMetrics:
    """One VictoriaMetrics process; ``start`` again after ``stop`` keeps port and data."""

    binary: str
    data: Path
    port: int = field(default_factory=free_port)
    flags: tuple[str, ...] = ()
    """More command-line flags (``-dedup.minScrapeInterval=1ms``)."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VictoriaMetrics:
        # A stale instance on the port would answer the health check and take our points.
        assert not port_answers(self.port), f"port {self.port} is already in use"
        log = (self.data.parent / f"vm-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, f"-storageDataPath={self.data}", f"-httpListenAddr=127.0.0.1:{self.port}",
             "-retentionPeriod=100y", "-search.latencyOffset=0s", "-loggerLevel=ERROR", *self.flags],
            stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "victoria-metrics exited at start"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("victoria-metrics did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def series(self, match: str) -> list[dict[str, Any]]:
        """Every raw sample of the series ``match`` selects (duplicates included)."""
        httpx.get(f"{self.url}/internal/force_flush", timeout=10)
        r = httpx.post(f"{self.url}/api/v1/export", data={"match[]": match}, timeout=30)
        r.raise_for_status()
        return [json.loads(line) for line in r.text.splitlines() if line.strip()]

    def samples(self, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
        """(ts seconds, value) of each series of metric ``name``, keyed by its labels."""
        selector = ",".join([f'__name__="{name}"', *(f'{k}="{v}"' for k, v in labels.items())])
        out = {}
        for s in self.series("{" + selector + "}"):
            labels_ = tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__"))
            out[labels_] = [(t // 1000, v) for t, v in zip(s["timestamps"], s["values"], strict=True)]
        return out


@dataclass
class Received:
    t: float
    path: str
    lines: list[str]
    headers: dict[str, str]
    status: int


Policy = Callable[[list[str], int], tuple[int, dict[str, str], str]]
"""(lines, request number from 0) -> (status, headers, body) of the answer."""


def accept_all(lines: list[str], n: int) -> tuple[int, dict[str, str], str]:
    return 204, {}, ""


class ScriptedWriteApi:
    """An InfluxDB v2 write endpoint that answers as ``policy`` says."""

    def __init__(self, policy: Policy = accept_all, port: int = 0) -> None:
        self.policy = policy
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = [ln for ln in body.decode("utf-8").split("\n") if ln]
                with outer._lock:
                    n = len(outer.requests)
                    status, headers, text = outer.policy(lines, n)
                    outer.requests.append(Received(time.monotonic(), self.path, lines, dict(self.headers), status))
                payload = text.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted_lines(self) -> list[str]:
        with self._lock:
            return [ln for r in self.requests if 200 <= r.status < 300 for ln in r.lines]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def influx_error(message: str) -> str:
    """An error body as InfluxDB 2 writes it."""
    return json.dumps({"code": "invalid", "message": message})


class HoldingProxy:
    """Passes write requests on to ``upstream`` (a real VictoriaMetrics); while
    ``hold`` is set it passes them on but answers nothing until ``release``, then
    drops the connection: the points are stored and the sender never hears so,
    as when the sender is killed between the target's answer and its
    acknowledgement."""

    def __init__(self, upstream: str, hold: bool = False) -> None:
        self.upstream = upstream
        self.hold = hold
        self.passed = 0
        self._released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "content-encoding")}
                answer = httpx.post(outer.upstream + self.path, content=body, headers=headers, timeout=30)
                outer.passed += 1
                if outer.hold:
                    outer._released.wait(60)
                    self.close_connection = True
                    return
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        """Answer from now on; requests held so far are dropped without an answer."""
        self.hold = False
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
