"""The sender against a scripted write API on 127.0.0.1: a refused point goes to
the dead letters without holding up the rest, 413 splits, 429 waits for
Retry-After, 5xx, 401 and refused connections are retried with back-off, a
full blocking queue stops acknowledging devices; and the state in health, over
HTTP and as Prometheus metrics. The servers are real (balans-edge in this
process, the write API in a thread); nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from export_support import ScriptedWriteApi, export_state, free_port, influx_error

from balans_edge.core.model import RawReading
from balans_edge.core.storage import StorageError
from balans_edge.plugin_manager import Plugins, load_plugins
from balans_edge.plugins.export.status import STATES

from conftest import T0, auth, base_config, eventually, small_site

MakeServer = Callable[..., Awaitable[Any]]
BIN = Path(sys.executable).parent


@pytest.fixture
def write_api() -> Iterator[Callable[..., ScriptedWriteApi]]:
    started: list[ScriptedWriteApi] = []

    def make(policy: Any = None, port: int = 0) -> ScriptedWriteApi:
        api = ScriptedWriteApi(policy, port) if policy else ScriptedWriteApi(port=port)
        started.append(api)
        return api

    yield make
    for api in started:
        api.close()


def target(url: str, **overrides: Any) -> dict[str, Any]:
    return {"targets": [{"name": "t", "url": url, "bucket": "meters", "org": "utility", "token": "secret-token",
                         "kinds": ["readings"], "batch_size": 100, "flush_interval_s": 0.05,
                         "backoff_initial_s": 0.1, "backoff_max_s": 0.4, "timeout_s": 2.0, **overrides}]}


async def started(make_server: MakeServer, tmp_path: Path, url: str, **overrides: Any) -> Any:
    server = await make_server(base_config(tmp_path, plugins={"export": target(url, **overrides)}))
    await server.storage.registry_apply(small_site())
    return server


def readings(channel: int, n: int, start: int = 0, module: int = 1001) -> list[RawReading]:
    return [RawReading(module, channel, T0 + i * 600, i * 7) for i in range(start, start + n)]


async def drained(server: Any) -> bool:
    return (await export_state(server, "t"))[0]["depth"] == 0


async def _settled(health: Callable[[], Awaitable[dict[str, Any]]], sent: int) -> dict[str, Any] | None:
    status = await health()
    return status if status["points_sent"] == sent and status["queue_depth"] == 0 else None


def meters_of(lines: list[str]) -> list[str]:
    return [re.search(r"meter=([^, ]+)", ln).group(1) for ln in lines]


async def test_a_refused_point_is_dead_lettered_and_the_rest_flows(
    tmp_path: Path, make_server: MakeServer, client_for: Any, write_api: Any
) -> None:
    def refuse_w3(lines: list[str], n: int) -> tuple[int, dict[str, str], str]:
        if any("meter=W-3" in ln for ln in lines):
            return 400, {"Content-Type": "application/json"}, influx_error("field type conflict: value is float")
        return 204, {}, ""

    api = write_api(refuse_w3)
    server = await started(make_server, tmp_path, api.url)
    await server.ingest.ingest(readings(1, 5) + readings(3, 2, module=1002) + readings(2, 5))
    assert await eventually(lambda: drained(server), timeout=10)

    # Every good point arrived once; the two refused ones are in the dead letters with the target's message.
    assert sorted(meters_of(api.accepted_lines())) == ["W-1"] * 5 + ["W-2"] * 5
    assert len(set(api.accepted_lines())) == 10
    client = client_for(server)
    dead = (await client.get("/api/v1/export/dead-letters", headers=auth("viewer"))).json()["dead_letters"]
    assert sum(d["points"] for d in dead) == 2
    assert all(d["status"] == 400 and d["message"] == "field type conflict: value is float" for d in dead)
    assert sorted(meters_of([d["lines"] for d in dead])) == ["W-3", "W-3"]

    # Later points are not held up by the refused ones.
    await server.ingest.ingest(readings(1, 3, start=5))
    assert await eventually(lambda: len(api.accepted_lines()) == 13, timeout=10)

    async def health() -> dict[str, Any]:  # refreshed by the exporter about once a second
        return (await client.get("/api/v1/health", headers=auth("viewer"))).json()["exporters"]["export:t"]

    status = await eventually(lambda: _settled(health, 13), timeout=10)
    assert (status["dead_letters"], status["points_sent"], status["queue_depth"]) == (2, 13, 0)
    assert "field type conflict" in status["last_error"]
    assert status["since_start"]["dead_letters"] == 2 and status["since_start"]["splits"] >= 3


async def test_dead_letters_are_sent_again_on_request_once_the_target_takes_them(
    tmp_path: Path, make_server: MakeServer, client_for: Any, write_api: Any
) -> None:
    fixed = False

    def refuse_w3_until_fixed(lines: list[str], n: int) -> tuple[int, dict[str, str], str]:
        if not fixed and any("meter=W-3" in ln for ln in lines):
            return 400, {"Content-Type": "application/json"}, influx_error("field type conflict: value is float")
        return 204, {}, ""

    api = write_api(refuse_w3_until_fixed)
    server = await started(make_server, tmp_path, api.url)
    client = client_for(server)
    await server.ingest.ingest(readings(1, 3) + readings(3, 2, module=1002))
    assert await eventually(lambda: drained(server), timeout=10)
    assert len(api.accepted_lines()) == 3

    async def dead_letters() -> list[dict[str, Any]]:
        r = await client.get("/api/v1/export/dead-letters", headers=auth("viewer"))
        return r.json()["dead_letters"]

    async def resend(body: Any, role: str = "admin") -> Any:
        return await client.post("/api/v1/export/dead-letters/resend", json=body, headers=auth(role))

    refused = await dead_letters()
    assert sum(d["points"] for d in refused) == 2 and not any(d["resend"] for d in refused)
    assert (await resend({}, role="operator")).status_code == 403
    assert (await resend({"target": "nope"})).status_code == 404
    assert (await resend({"ids": "all"})).status_code == 400

    # Still refused: each stays, with the new answer, and is no longer marked.
    first, asked = refused[-1]["id"], len(api.requests)
    assert (await resend({"ids": [first]})).json() == {"marked": 1}
    assert await eventually(lambda: _unmarked(dead_letters), timeout=10)
    assert len(api.requests) == asked + 1  # sent once, whole, and refused
    assert len(await dead_letters()) == len(refused) and len(api.accepted_lines()) == 3

    # The database is fixed; the command line marks them: sent again, accepted, gone from
    # the dead letters, counted as sent.
    fixed = True
    cfg = tmp_path / "export.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n'
                   f'[[plugins.export.targets]]\nname = "t"\nurl = "{api.url}"\nbucket = "meters"\n',
                   encoding="utf-8")
    listed = await asyncio.to_thread(export_cli, cfg, "dead-letters")
    assert listed.returncode == 0 and listed.stdout.count("field type conflict") == len(refused), listed.stdout
    unknown = await asyncio.to_thread(export_cli, cfg, "resend", "--target", "nope")
    assert unknown.returncode == 2 and "no export target 'nope'" in unknown.stderr
    marked = await asyncio.to_thread(export_cli, cfg, "resend", "--target", "t")
    assert marked.returncode == 0 and f"{len(refused)} dead letter(s) marked" in marked.stdout, marked.stderr
    assert await eventually(lambda: _none_left(dead_letters), timeout=10)
    assert sorted(meters_of(api.accepted_lines())) == ["W-1"] * 3 + ["W-3"] * 2
    assert len(set(api.accepted_lines())) == 5  # the refused lines, as they were, once each
    (state,) = await export_state(server, "t")
    assert state["sent"] == 5 and state["dead"] == 2  # dead counts every point ever refused


def export_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN / "balans-edge", "export", *args, "-c", str(cfg)], capture_output=True, text=True,
                          timeout=60)


async def _unmarked(dead_letters: Callable[[], Awaitable[list[dict[str, Any]]]]) -> bool:
    return not any(d["resend"] for d in await dead_letters())


async def _none_left(dead_letters: Callable[[], Awaitable[list[dict[str, Any]]]]) -> bool:
    return not await dead_letters()


async def test_413_splits_a_batch_until_the_target_takes_it(
    tmp_path: Path, make_server: MakeServer, write_api: Any
) -> None:
    api = write_api(lambda lines, n: (413, {}, "request too large") if len(lines) > 4 else (204, {}, ""))
    server = await started(make_server, tmp_path, api.url)
    await server.ingest.ingest(readings(1, 10))
    assert await eventually(lambda: drained(server), timeout=10)
    accepted = [r for r in api.requests if r.status == 204]
    assert all(len(r.lines) <= 4 for r in accepted)
    assert sorted(api.accepted_lines()) == sorted(set(api.accepted_lines())) and len(api.accepted_lines()) == 10
    assert (await export_state(server, "t"))[0]["dead"] == 0
    assert api.requests[0].status == 413 and len(api.requests[0].lines) == 10


async def test_429_waits_for_retry_after_and_5xx_backs_off(
    tmp_path: Path, make_server: MakeServer, write_api: Any
) -> None:
    script = {0: (429, {"Retry-After": "1"}, influx_error("rate limited")), 1: (503, {}, "unavailable"),
              2: (503, {}, "unavailable")}
    api = write_api(lambda lines, n: script.get(n, (204, {}, "")))
    server = await started(make_server, tmp_path, api.url)
    await server.ingest.ingest(readings(1, 5))
    assert await eventually(lambda: drained(server), timeout=10)

    t = [r.t for r in api.requests]
    assert len(t) == 4 and [r.status for r in api.requests] == [429, 503, 503, 204]
    assert t[1] - t[0] >= 0.95  # Retry-After: 1
    assert 0.1 - 0.01 <= t[2] - t[1] <= 0.2 + 0.5  # back-off 2: 0.1..0.2 s (+ slack for a busy machine)
    assert 0.2 - 0.01 <= t[3] - t[2] <= 0.4 + 0.5  # back-off 3: 0.2..0.4 s (doubling, capped at 0.4)
    assert all(r.lines == api.requests[0].lines for r in api.requests)  # the same batch each time
    state = (await export_state(server, "t"))[0]
    assert (state["retries"], state["sent"], state["dead"]) == (3, 5, 0)
    assert state["last_error"] == "HTTP 503: unavailable"

    first = api.requests[0]
    assert first.path.startswith("/api/v2/write?") and "bucket=meters" in first.path and "precision=s" in first.path
    assert first.headers["Authorization"] == "Token secret-token"
    assert first.headers["Content-Encoding"] == "gzip"


async def test_misconfigured_target_keeps_points_instead_of_dead_lettering(
    tmp_path: Path, make_server: MakeServer, write_api: Any
) -> None:
    api = write_api(lambda lines, n: (401, {}, influx_error("unauthorized access")) if n < 3 else (204, {}, ""))
    server = await started(make_server, tmp_path, api.url)
    await server.ingest.ingest(readings(1, 4))
    assert await eventually(lambda: drained(server), timeout=10)
    state = (await export_state(server, "t"))[0]
    assert (state["dead"], state["sent"], state["retries"]) == (0, 4, 3)
    assert state["last_error"] == "HTTP 401: unauthorized access"


async def test_points_wait_while_the_target_is_unreachable(
    tmp_path: Path, make_server: MakeServer, client_for: Any, write_api: Any
) -> None:
    port = free_port()
    server = await started(make_server, tmp_path, f"http://127.0.0.1:{port}")
    await server.ingest.ingest(readings(1, 6))
    client = client_for(server)

    async def retrying() -> bool:
        s = (await client.get("/api/v1/health", headers=auth("viewer"))).json()["exporters"]["export:t"]
        return s["state"] == "retrying" and s["retries"] >= 2

    assert await eventually(retrying, timeout=10)
    metrics = (await client.get("/api/v1/export/metrics", headers=auth("viewer"))).text
    assert 'balans_export_queue_depth{target="t"} 6' in metrics
    assert 'balans_export_up{target="t"} 0' in metrics
    assert "# TYPE balans_export_points_sent_total counter" in metrics

    api = write_api(port=port)
    assert await eventually(lambda: drained(server), timeout=10)
    assert len(api.accepted_lines()) == 6
    targets = (await client.get("/api/v1/export/targets", headers=auth("viewer"))).json()["targets"]
    assert (targets[0]["target"], targets[0]["points_sent"], targets[0]["queue_depth"]) == ("t", 6, 0)
    assert "ConnectError" in targets[0]["last_error"]
    metrics = (await client.get("/api/v1/export/metrics", headers=auth("viewer"))).text
    assert 'balans_export_points_sent_total{target="t"} 6' in metrics


async def test_a_full_blocking_queue_stops_acknowledging_devices(
    tmp_path: Path, make_server: MakeServer, client_for: Any, write_api: Any
) -> None:
    port = free_port()
    server = await started(make_server, tmp_path, f"http://127.0.0.1:{port}", max_queue=3, when_full="block")
    client = client_for(server)

    def push(start: int, n: int) -> Any:
        rows = [{"module_id": 1001, "channel": 1, "ts": T0 + i * 600, "counter": i * 7}
                for i in range(start, start + n)]
        return client.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator"))

    assert (await push(0, 2)).status_code == 200
    refused = await push(2, 2)
    assert refused.status_code == 503  # not stored: the device must send it again
    assert "export queue full: t" in refused.json()["error"]["message"]
    assert len(await server.storage.readings(1, 0, 2**40)) == 2

    api = write_api(port=port)
    assert await eventually(lambda: drained(server), timeout=10)
    assert (await push(2, 2)).status_code == 200
    assert await eventually(lambda: len(api.accepted_lines()) == 4, timeout=10)
    started_at = time.monotonic()
    assert await eventually(lambda: drained(server), timeout=10)
    assert time.monotonic() - started_at < 5


async def test_without_an_exporter_nothing_is_queued_and_a_full_queue_no_longer_blocks_devices(
    tmp_path: Path, make_server: MakeServer, client_for: Any
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody answers: the queue fills
    server = await started(make_server, tmp_path, url, max_queue=3, when_full="block")
    client = client_for(server)

    def push(start: int, n: int) -> Any:
        rows = [{"module_id": 1001, "channel": 1, "ts": T0 + i * 600, "counter": i * 7}
                for i in range(start, start + n)]
        return client.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator"))

    assert (await push(0, 3)).status_code == 200
    assert (await push(3, 1)).status_code == 503
    await server.stop()

    # The export plugin is switched off: its queue is kept, but nothing fills it
    # and the devices' readings are stored again.
    config = base_config(tmp_path, plugins={"export": {"enabled": False, **target(url, max_queue=3,
                                                                                  when_full="block")}})
    server = await make_server(config, plugins_=load_plugins())  # its own: they keep the plugins' states
    assert not any(name == "export" for name, _ in server.exporters)
    client = client_for(server)
    assert (await push(3, 5)).status_code == 200
    assert len(await server.storage.readings(1, 0, 2**40)) == 8
    (state,) = await export_state(server, "t")
    assert (state["depth"], state["kinds"]) == (3, [])
    await server.stop()

    # Switched on again, with no target answering: it queues (and blocks) as configured.
    server = await started(make_server, tmp_path, url, max_queue=4, when_full="block")
    client = client_for(server)
    (state,) = await export_state(server, "t")
    assert state["kinds"] == ["readings"]
    assert (await push(8, 1)).status_code == 200
    assert (await push(9, 1)).status_code == 503


def export_triggers(server: Any) -> list[str]:
    path = server.config.storage.url.removeprefix("sqlite:")
    with sqlite3.connect(path) as db:
        return sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                               "AND name LIKE 'export%'"))


async def test_without_targets_or_without_the_plugin_nothing_is_queued_and_the_queue_is_kept(
    tmp_path: Path, make_server: MakeServer, client_for: Any
) -> None:
    """The plugin running with no target stops queueing itself; a server without the
    plugin at all (not installed) drops its triggers through core's rule for owners
    that do not run. Either way a full blocking queue no longer refuses readings."""
    url = f"http://127.0.0.1:{free_port()}"  # nobody answers: the queue fills
    server = await started(make_server, tmp_path, url, max_queue=3, when_full="block")
    assert "export__readings_inserted" in export_triggers(server)
    await server.ingest.ingest(readings(1, 3))
    with pytest.raises(StorageError, match="export queue full: t"):
        await server.ingest.ingest(readings(1, 1, start=3))
    await server.stop()

    server = await make_server(base_config(tmp_path), plugins_=load_plugins())  # the plugin runs, no target
    assert [n for n, _ in server.components if n == "export"] == ["export"]
    assert not [n for n, _ in server.exporters if n == "export"]
    assert export_triggers(server) == []
    assert (await server.ingest.ingest(readings(1, 2, start=3))).accepted == 2
    (state,) = await export_state(server, "t")
    assert (state["depth"], state["kinds"]) == (3, [])
    await server.stop()

    server = await started(make_server, tmp_path, url, max_queue=3, when_full="block")
    assert "export__readings_inserted" in export_triggers(server)
    await server.stop()
    bare = Plugins()  # no plugin installed at all
    server = await make_server(base_config(tmp_path), plugins_=bare)
    assert server.plugins is bare and not server.plugins.info
    assert export_triggers(server) == []
    assert (await server.ingest.ingest(readings(1, 2, start=5))).accepted == 2
    (state,) = await export_state(server, "t")
    assert (state["depth"], state["kinds"], state["when_full"]) == (3, [], "block")


async def test_the_command_line_and_the_api_name_a_targets_figures_alike(
    tmp_path: Path, make_server: MakeServer, client_for: Any, write_api: Any
) -> None:
    api = write_api()
    url = api.url.replace("http://", "http://writer:pw-Q7x-secret@")
    server = await started(make_server, tmp_path, url)
    await server.ingest.ingest(readings(1, 5))
    assert await eventually(lambda: drained(server), timeout=10)
    fields = "\n".join(f"{k} = {json.dumps(v)}" for k, v in target(url)["targets"][0].items())
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n[[plugins.export.targets]]\n{fields}\n',
                      encoding="utf-8")

    def status(path: Path) -> dict[str, Any]:
        out = subprocess.run([BIN / "balans-edge", "export", "status", "--json", "-c", str(path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (only,) = json.loads(out.stdout)["targets"]
        return only

    client = client_for(server)
    (over_http,) = (await client.get("/api/v1/export/targets", headers=auth("viewer"))).json()["targets"]
    assert over_http.pop("since_start")["points_sent"] == 5  # what only the running server knows
    from_cli = status(config)
    assert set(from_cli) == set(over_http)
    assert {k: v for k, v in from_cli.items() if k != "oldest_age_s"} == \
        {k: v for k, v in over_http.items() if k != "oldest_age_s"}
    assert (from_cli["state"], from_cli["queue_depth"], from_cli["points_sent"], from_cli["dead_letters"]) == \
        ("idle", 0, 5, 0)
    assert from_cli["url"] == api.url.replace("http://", "http://writer:***@")

    config.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n', encoding="utf-8")
    assert status(config)["state"] == "unconfigured"


def test_every_state_word_is_documented() -> None:
    states = Path("docs/export.md").read_text(encoding="utf-8").split("`state`:")[1].split("##")[0]
    assert [s for s in STATES if f"| `{s}`" not in states and f", `{s}`" not in states] == []
