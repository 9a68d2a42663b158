"""No non-finite number leaves the exporter: a meter whose register values overflow
(a pulse weight stored before the registry had bounds) still exports its counter
and pulses, its value field is left out, counted and logged once, and the batch
around it is accepted.

The write API is the scripted one of export_support, told to refuse a batch with
``inf`` or ``nan`` in it as InfluxDB 2 does ("invalid number"): the InfluxDB on
these machines (1.6) has no v2 write API, and VictoriaMetrics takes ``inf``."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator

import pytest
from export_support import ScriptedWriteApi, influx_error

from balans_edge.core.model import RawReading

from conftest import T0, auth, base_config, eventually, small_site

NON_FINITE = re.compile(r"=[+-]?(inf|nan)(?=[, ]|$)", re.IGNORECASE)


def like_influxdb(lines: list[str], n: int) -> tuple[int, dict[str, str], str]:
    bad = next((ln for ln in lines if NON_FINITE.search(ln.rsplit(" ", 1)[0])), None)
    if bad is not None:
        return 400, {"Content-Type": "application/json"}, influx_error(f"unable to parse '{bad}': invalid number")
    return 204, {}, ""


@pytest.fixture
def write_api() -> Iterator[ScriptedWriteApi]:
    api = ScriptedWriteApi(like_influxdb)
    yield api
    api.close()


async def test_an_overflowing_value_is_left_out_counted_and_logged_once(make_server, client_for, tmp_path, write_api,
                                                                        caplog):
    caplog.set_level(logging.WARNING, logger="balans_edge.plugins.export")
    target = {"name": "t", "url": write_api.url, "bucket": "b", "kinds": ["readings"], "batch_size": 100,
              "flush_interval_s": 0.05, "backoff_initial_s": 0.05, "backoff_max_s": 0.1}
    server = await make_server(base_config(tmp_path, plugins={"export": {"targets": [target]}}))
    site = small_site()
    # W-3 as a registry from before the bounds could hold it: 1e308 m3 per pulse.
    site["meters"] = [dataclasses.replace(m, pulse_weight=1e308) if m.meter_id == "W-3" else m
                      for m in site["meters"]]
    await server.storage.registry_apply(site)
    rows = [RawReading(1001, 1, T0 + i * 600, i * 7) for i in range(6)]
    rows += [RawReading(1002, 3, T0 + i * 600, i * 7) for i in range(6)]
    await server.ingest.ingest(rows)

    assert await eventually(lambda: len(write_api.accepted_lines()) == 12, timeout=10)
    sent = write_api.accepted_lines()
    assert all(r.status == 204 for r in write_api.requests)  # nothing refused, no dead letters
    w3 = sorted((ln for ln in sent if "meter=W-3" in ln), key=lambda ln: int(ln.rsplit(" ", 1)[1]))
    assert "value=0 " in w3[0]  # pulses 0: the value is finite and sent
    assert all("value=" not in ln and f"pulses={7 * i}i" in ln and f"counter={7 * i}i" in ln
               for i, ln in enumerate(w3) if i)
    assert all("value=" in ln for ln in sent if "meter=W-1" in ln)

    client = client_for(server)

    async def counted() -> dict | None:
        s = (await client.get("/api/v1/export/targets", headers=auth("viewer"))).json()["targets"][0]
        return s if s["dead_letters"] == 0 and s["queue_depth"] == 0 else None

    status = await eventually(counted, timeout=10)
    assert status["since_start"]["non_finite_fields"] == 5
    metrics = (await client.get("/api/v1/export/metrics", headers=auth("viewer"))).text
    assert 'balans_export_non_finite_fields_total{target="t"} 5' in metrics
    warnings = [r.getMessage() for r in caplog.records if "not a finite number" in r.getMessage()]
    assert len(warnings) == 1 and "meter=W-3" in warnings[0] and "'value'" in warnings[0]
