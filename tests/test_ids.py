"""What an id may hold (core.registry_io.identifier) and how ids travel: percent-
decoded path parameters over real HTTP, files, the configuration, and one
Cyrillic meter through create, read, consumption, a valve command and delete."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from urllib.parse import quote

import pytest

from balans_edge.config import parse_config
from balans_edge.core.registry import RegistryError, import_registry, parse_object
from balans_edge.core.registry_io import MAX_ID_LENGTH, BadValue, identifier
from balans_edge.plugins.dmesh.codec import Command, CommandCode
from balans_edge.plugins.dmesh.concentrator import ConcentratorSettings, SimulatedConcentrator
from balans_edge.settings import ConfigError

from conftest import T0, auth, base_config

NFC = unicodedata.normalize("NFC", "Кв-й")
NFD = unicodedata.normalize("NFD", "Кв-й")
METER = {"resource": "water", "unit": "m3", "pulse_weight": 0.001, "install_time": "2014-01-01T00:00:00Z"}


@pytest.mark.parametrize("good", ["Кв-1", "Кв 1", "W-1", "Ωμέγα 12", "a.b", "...", "x" * MAX_ID_LENGTH, "7-", "Кв-+",
                                  42])
def test_ids_that_are_normal(good):
    assert identifier(good) == str(good)


def test_ids_are_nfc_normalised():
    assert NFC != NFD
    assert identifier(NFD) == NFC


@pytest.mark.parametrize(("bad", "words"), [
    ("a/b", '"/"'), ("../../etc/passwd", '"/"'), (".", '"."'), ("..", '"."'),
    ("Кв\u200b1", "U+200B"), ("\u202eКв-1", "U+202E"), ("Кв\u00a01", "U+00A0"), ("Кв\x001", "U+0000"),  # noqa: RUF001
    ("Кв\n1", "U+000A"), ("Кв\t1", "U+0009"), ("Кв\u20281", "U+2028"), ("\ue000", "U+E000"),
    (" Кв-1", "white space"), ("Кв-1 ", "white space"), ("x" * (MAX_ID_LENGTH + 1), "at most 128"),
    ("-IN", 'start with "-"'), ("+7", 'start with "-" or "+"'),
    (True, "expected an id"), (1.5, "expected an id"), (["a"], "expected an id"),
])
def test_ids_that_are_refused(bad, words):
    with pytest.raises(BadValue) as info:
        identifier(bad)
    assert words in str(info.value)


def test_every_id_column_follows_the_rule():
    """Meters, accounts and groups, and the meters a group's inputs name."""
    for kind, key in (("meters", "meter_id"), ("accounts", "account_id")):
        with pytest.raises(RegistryError, match=f'column "{key}": an id may not contain "/"'):
            parse_object(kind, {**METER, key: "a/b"})
    group = {"group_id": "G", "resource": "water", "unit": "m3", "inputs": ["IN-1"]}
    with pytest.raises(RegistryError, match='column "group_id": an id may not'):
        parse_object("groups", {**group, "group_id": "G\u200b"})
    with pytest.raises(RegistryError, match='column "inputs": an id may not'):
        parse_object("groups", {**group, "inputs": ["IN/1"]})
    assert parse_object("groups", {**group, "inputs": [NFD]}).inputs[0].meter_id == NFC


def test_configured_groups_follow_the_rule(tmp_path):
    data = base_config(tmp_path, groups=[])
    data["groups"] = [{"group_id": "../x", "resource": "water", "unit": "m3", "inputs": ["IN-1"]}]
    with pytest.raises(ConfigError) as info:
        parse_config(data, {})
    assert '[[groups]] #1: column "group_id": an id may not contain "/"' in str(info.value.problems)


async def test_csv_cells_lose_their_blanks_json_ids_are_refused_with_them(storage, tmp_path):
    """CSV: a spreadsheet pads cells, and no id has surrounding blanks, so they are
    dropped; JSON says exactly what it means, so a blank around an id is refused."""
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "accounts.csv").write_text("account_id,consumer\n  Кв-1 , Иванов \n", encoding="utf-8")
    await import_registry(storage, [folder / "accounts.csv"])
    (account,) = await storage.registry_list("accounts")
    assert (account.account_id, account.consumer) == ("Кв-1", "Иванов")

    (folder / "accounts.csv").write_text("account_id,consumer\nКв\u200b2,x\n", encoding="utf-8")  # noqa: RUF001
    with pytest.raises(RegistryError) as info:
        await import_registry(storage, [folder / "accounts.csv"])
    assert str(info.value).startswith('accounts.csv:2: column "account_id": an id may not contain U+200B')

    doc = tmp_path / "registry.json"
    doc.write_text(json.dumps({"accounts": [{"account_id": " Кв-3"}]}), encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        await import_registry(storage, [doc])
    assert str(info.value).startswith('registry.json:accounts#1: column "account_id": an id may not start or end')
    assert [a.account_id for a in await storage.registry_list("accounts")] == ["Кв-1"]


async def test_path_parameters_are_decoded(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path))
    http = client_for(server)
    admin, viewer = auth("admin"), auth("viewer")

    created = await http.post("/api/v1/meters", json={**METER, "meter_id": "Кв-1"}, headers=admin)
    assert created.status_code == 201, created.text
    got = await http.get("/api/v1/meters/%D0%9A%D0%B2-1", headers=viewer)
    assert got.status_code == 200, got.text
    assert got.json()["meter_id"] == "Кв-1"

    put = await http.put("/api/v1/meters/%D0%9A%D0%B2-2", json=METER, headers=admin)
    assert put.status_code == 201 and put.json()["meter_id"] == "Кв-2"
    spaced = await http.put("/api/v1/meters/%D0%9A%D0%B2%203", json=METER, headers=admin)
    assert spaced.status_code == 201 and spaced.json()["meter_id"] == "Кв 3"
    assert (await http.get("/api/v1/meters/%D0%9A%D0%B2%203", headers=viewer)).json()["meter_id"] == "Кв 3"
    ids = [m["meter_id"] for m in (await http.get("/api/v1/meters", headers=viewer)).json()["meters"]]
    assert sorted(ids) == ["Кв 3", "Кв-1", "Кв-2"]

    # Either Unicode form in the URL or the body names the one NFC id.
    assert (await http.put(f"/api/v1/meters/{quote(NFD)}", json=METER, headers=admin)).json()["meter_id"] == NFC
    assert (await http.get(f"/api/v1/meters/{quote(NFC)}", headers=viewer)).status_code == 200
    assert (await http.get(f"/api/v1/meters/{quote(NFD)}", headers=viewer)).status_code == 200
    twin = await http.post("/api/v1/meters", json={**METER, "meter_id": NFD}, headers=admin)
    assert twin.status_code == 409, twin.text
    same = await http.put(f"/api/v1/meters/{quote(NFC)}", json={**METER, "meter_id": NFD}, headers=admin)
    assert same.status_code == 200, same.text

    refused = {
        "a%2Fb": '"/"', "..%2F..%2Fetc%2Fpasswd": '"/"', "%2E%2E": '"."', "%D0%9A%D0%B2%E2%80%8B1": "U+200B",
        "%20%D0%9A%D0%B2": "white space", "x" * (MAX_ID_LENGTH + 1): "at most 128",
    }
    for raw, words in refused.items():
        r = await http.put(f"/api/v1/meters/{raw}", json=METER, headers=admin)
        assert r.status_code == 422, (raw, r.text)
        assert words in r.json()["error"]["message"], (raw, r.text)
    assert (await http.get("/api/v1/meters/a%2Fb", headers=viewer)).status_code == 404
    for raw in ("%ZZ", "%C0%AF"):
        r = await http.get(f"/api/v1/meters/{raw}", headers=viewer)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_parameter", r.text
    ids = {m["meter_id"] for m in (await http.get("/api/v1/meters", headers=viewer)).json()["meters"]}
    assert ids == {"Кв 3", "Кв-1", "Кв-2", NFC}


async def test_cyrillic_meter_from_create_to_delete(make_server, client_for, tmp_path):
    """Create, read, readings and consumption, a valve command through the DMesh
    driver to a simulated concentrator, and delete, all with a Cyrillic id in the URL."""
    key = "key-of-concentrator-7"
    server = await make_server(base_config(tmp_path, plugins={"dmesh": {
        "port": 0, "concentrators": [{"id": 7, "key": key}], "backfill": False}}))
    driver = next(c for _, c in server.components if c.name == "dmesh-driver")
    http = client_for(server)
    admin, viewer, operator = auth("admin"), auth("viewer"), auth("operator")
    for path, body in (("/api/v1/concentrators", {"concentrator_id": 7}),
                       ("/api/v1/modules", {"module_id": 1001, "concentrator_id": 7, "channels": 3}),
                       ("/api/v1/meters", {**METER, "meter_id": "Кв-1", "module_id": 1001, "channel": 1,
                                           "flags": ["valve"]}),
                       ("/api/v1/meters", {**METER, "meter_id": "Кв-2", "module_id": 1001, "channel": 2})):
        assert (await http.post(path, json=body, headers=admin)).status_code == 201
    url = "/api/v1/meters/" + quote("Кв-1")
    assert url == "/api/v1/meters/%D0%9A%D0%B2-1"

    assert (await http.get(url, headers=viewer)).json()["flags"] == ["valve"]
    readings = [{"module_id": 1001, "channel": 1, "ts": T0 + i * 1800, "counter": 1000 + i * 250} for i in range(5)]
    pushed = await http.post("/api/v1/readings", json={"readings": readings}, headers=operator)
    assert pushed.json()["accepted"] == 5, pushed.text
    stored = await http.get(f"{url}/readings?from={T0}&to={T0 + 7200}", headers=viewer)
    assert [p["counter"] for p in stored.json()["readings"]] == [1000, 1250, 1500, 1750]
    consumption = (await http.get(f"{url}/consumption?from={T0}&to={T0 + 7200}", headers=viewer)).json()
    assert consumption["meter_id"] == "Кв-1"
    assert [(p["value"], p["quality"]) for p in consumption["points"]] == [(0.5, "measured"), (0.5, "measured")]

    concentrator = SimulatedConcentrator(ConcentratorSettings(7, key.encode(), port=driver.port, reconnect_s=0.1))
    concentrator.start()
    try:
        async with asyncio.timeout(5):
            await concentrator.connected.wait()
        r = await http.post(f"{url}/commands", json={"command": "valve_close", "reason": "утечка в квартире"},
                            headers=operator)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert (answer["target"], answer["outcome"]) == ("Кв-1", "done"), answer
        (sent,) = [p for p in concentrator.received if isinstance(p, Command)]
        assert (sent.module_id, sent.code) == (1001, CommandCode.VALVE_CLOSE)
    finally:
        await concentrator.stop()
    (audit,) = (await http.get("/api/v1/commands", params={"target": "Кв-1"}, headers=viewer)).json()["commands"]
    assert (audit["target"], audit["reason"], audit["outcome"]) == ("Кв-1", "утечка в квартире", "done")

    # A meter with readings is kept (history); one without is deleted, by its Cyrillic id.
    kept = await http.delete(url, headers=admin)
    assert kept.status_code == 409 and "'Кв-1' has readings" in kept.json()["error"]["message"]
    other = "/api/v1/meters/" + quote("Кв-2")
    assert (await http.delete(other, headers=admin)).json() == {"deleted": "Кв-2"}
    assert (await http.get(other, headers=viewer)).status_code == 404
    assert (await http.get(url, headers=viewer)).status_code == 200

