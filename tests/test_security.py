"""Risky configuration is caught before the server listens: weak and placeholder
tokens, anonymous access off loopback (refused there unless allow_insecure),
duplicate tokens (always an error); tokens in hashed form; every 401 and 403
logged with peer and route, rate-limited; the database file private to its
owner. Real servers, real files, the real command line."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from balans_edge.config import parse_config
from balans_edge.core.log_limit import LimitedLog
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.core.tokens import estimated_bits, new_token, weakness
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.settings import ConfigError

from conftest import TOKENS, auth, base_config, small_site

BIN = Path(sys.executable).parent
STRONG = "Jq4vN8s0-Rk2xW7mZ_bT5yH1cL9pE3aU6dG0fQ"


@pytest.fixture(scope="module")
def schemas() -> dict[str, type]:
    return config_schemas(load_plugins())


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "balans-edge", *args], capture_output=True, text=True, timeout=60, input=stdin)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "db.sqlite"}"\n' + text, encoding="utf-8")
    return str(path)


# tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "why"), [
    ("a" * 16, "16 characters"),
    ("a" * 40, "entropy"),
    ("ab" * 20, "entropy"),
    ("demo-admin-token-change-me", "placeholder"),
    ("ChangeMe-ChangeMe-0123456789", "placeholder"),
    ("Q7pLx2Vn9cRb4Tz1", "16 characters"),  # random, but short
])
def test_weak_tokens_are_named_with_the_reason(token, why):
    assert why in (weakness(token) or "")


def test_random_tokens_are_never_weak():
    tokens = [new_token() for _ in range(500)]
    assert len(set(tokens)) == 500
    assert [t for t in tokens if weakness(t)] == []
    assert min(estimated_bits(t) for t in tokens) > 150


def test_duplicate_tokens_are_always_an_error(schemas):
    users = [{"name": "boss", "role": "admin", "token": STRONG}, {"name": "screen", "role": "viewer", "token": STRONG}]
    with pytest.raises(ConfigError) as info:
        parse_config({"api": {"users": users}}, schemas)
    assert info.value.problems == ['[api]: users[0] "boss" and users[1] "screen" have the same token: each user '
                                   "needs its own"]
    # The same token once plain and once hashed is the same token.
    users[1] = {"name": "screen", "role": "viewer", "token_sha256": hashlib.sha256(STRONG.encode()).hexdigest()}
    with pytest.raises(ConfigError):
        parse_config({"api": {"users": users}}, schemas)


def test_a_user_gives_exactly_one_form_of_token(schemas):
    digest = hashlib.sha256(STRONG.encode()).hexdigest()
    for user, message in [
        ({"token": STRONG, "token_sha256": digest}, "give one of token, token_env or token_sha256"),
        ({}, "give one of token, token_env or token_sha256"),
        ({"token_sha256": "abc"}, "token_sha256: expected 64 hexadecimal digits"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"api": {"users": [{"name": "u", "role": "viewer", **user}]}}, schemas)
        assert any(message in p for p in info.value.problems), info.value.problems


async def test_a_hashed_token_made_by_the_cli_authenticates(make_server, client_for, tmp_path):
    made = cli("token", "new", "--name", "scada", "--role", "operator")
    assert made.returncode == 0, made.stderr
    token = made.stdout.split("token: ")[1].split()[0]
    config_line = made.stdout.split("config: ")[1].strip()
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert config_line == f'{{ name = "scada", role = "operator", token_sha256 = "{digest}" }}'
    hashed = cli("token", "hash", stdin=token + "\n")
    assert hashed.returncode == 0 and hashed.stdout.strip() == digest and hashed.stderr == ""
    assert "weak" in cli("token", "hash", stdin="a" * 20 + "\n").stderr

    data = base_config(tmp_path)
    data["api"]["users"].append({"name": "scada", "role": "operator", "token_sha256": digest.upper()})
    server = await make_server(data)
    c = client_for(server)
    ok = await c.post("/api/v1/readings", json={"readings": []}, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    wrong = await c.get("/api/v1/meters", headers={"Authorization": f"Bearer {digest}"})  # the hash is no token
    assert wrong.status_code == 401
    assert (await c.get("/api/v1/meters", headers=auth("viewer"))).status_code == 200


# check-config and run ---------------------------------------------------------------------


DEMO_USERS = '[api]\nusers = [{ name = "demo-admin", role = "admin", token = "demo-admin-token-change-me" }]\n'


def test_loopback_with_demo_tokens_is_a_warning(tmp_path):
    out = cli("check-config", write(tmp_path, DEMO_USERS))
    assert out.returncode == 0, out.stderr
    assert 'warning: [api.users[0]] token of "demo-admin" (admin) is weak' in out.stderr
    assert "OK" in out.stdout


@pytest.mark.parametrize("risk", [
    DEMO_USERS,
    f'[api]\nanonymous_role = "viewer"\nusers = [{{ name = "a", role = "admin", token = "{STRONG}" }}]\n',
    '[api]\nusers = [{ name = "a", role = "admin", token = "aaaaaaaaaaaaaaaa" }]\n',
])
def test_a_risk_on_a_reachable_address_is_refused_unless_allowed(tmp_path, risk):
    refused = cli("check-config", write(tmp_path, '[server]\nhost = "0.0.0.0"\n' + risk))
    assert refused.returncode == 2
    assert "error: refusing to listen on 0.0.0.0" in refused.stderr and "allow_insecure" in refused.stderr
    allowed = cli("check-config", write(tmp_path, '[server]\nhost = "0.0.0.0"\nallow_insecure = true\n' + risk))
    assert allowed.returncode == 0 and "warning:" in allowed.stderr


def test_a_reachable_address_with_strong_tokens_is_fine(tmp_path):
    out = cli("check-config", write(tmp_path, f'[server]\nhost = "0.0.0.0"\n[api]\nusers = [{{ name = "a", '
                                              f'role = "admin", token = "{STRONG}" }}]\n'))
    assert out.returncode == 0 and out.stderr == ""


def test_run_refuses_to_listen_on_every_interface_with_the_demo_tokens(tmp_path):
    config = write(tmp_path, DEMO_USERS)
    out = subprocess.run([BIN / "balans-edge", "run", "-c", config, "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "listening on" not in out.stdout
    assert "start-up refused: refusing to listen on 0.0.0.0" in out.stderr


def test_the_demo_configuration_stays_on_loopback_and_passes():
    out = cli("check-config", "config/demo.toml")
    assert out.returncode == 0, out.stderr
    assert parse_config({}, {}).server.host == "127.0.0.1"
    assert 'host = "127.0.0.1"' in Path("config/demo.toml").read_text()


# refusals in the log --------------------------------------------------------------------


async def test_every_401_and_403_is_logged_with_peer_and_route_at_a_bounded_rate(make_server, client_for, tmp_path,
                                                                                caplog):
    caplog.set_level(logging.WARNING, logger="balans_edge.http")
    server = await make_server(base_config(tmp_path))
    c = client_for(server)
    denied = await c.put("/api/v1/accounts/A-9", json={"consumer": "x"}, headers=auth("viewer"))
    assert denied.status_code == 403
    wrong = {"Authorization": "Bearer wrong-token-0123456789"}
    assert (await c.get("/api/v1/meters", headers=wrong)).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "balans_edge.http"]
    assert lines == ['HTTP 403 PUT /api/v1/accounts/{ident} from 127.0.0.1: user "test-viewer" (viewer) needs '
                     "role admin",
                     "HTTP 401 GET /api/v1/meters from 127.0.0.1: invalid bearer token"]
    assert TOKENS["viewer"] not in caplog.text and "wrong-token" not in caplog.text

    for _ in range(100):  # a scanner
        assert (await c.get("/api/v1/meters")).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "balans_edge.http"]
    assert len(lines) == 20  # the bucket: 20 lines a minute
    assert lines[-1] == "HTTP 401 GET /api/v1/meters from 127.0.0.1: no bearer token"


def test_the_log_limit_refills_and_says_what_it_left_out(caplog):
    caplog.set_level(logging.INFO)
    now = [0.0]
    limited = LimitedLog(logging.getLogger("limit-test"), burst=3, window_s=60.0, clock=lambda: now[0])
    written = [limited.log(logging.INFO, "refused %d", i) for i in range(10)]
    assert written == [True] * 3 + [False] * 7
    now[0] += 20.0  # one line's worth of refill
    assert limited.log(logging.INFO, "refused %d", 10)
    assert not limited.log(logging.INFO, "refused %d", 11)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1", "refused 2", "refused 10 (7 similar lines left out before this one)"]


# the database file --------------------------------------------------------------------------


async def test_the_database_and_its_wal_are_private_to_the_owner(tmp_path):
    path = tmp_path / "var" / "balans.db"
    old = os.umask(0)  # even with a permissive umask
    try:
        storage = SqliteStorage(path)
        await storage.open()
    finally:
        os.umask(old)
    try:
        await storage.registry_apply(small_site())  # a write: the -wal and -shm exist now
        files = [path, path.with_name("balans.db-wal"), path.with_name("balans.db-shm")]
        assert [(f.name, oct(stat.S_IMODE(f.stat().st_mode))) for f in files] == [(f.name, "0o600") for f in files]
    finally:
        await storage.close()


async def test_an_existing_database_open_to_others_is_reported(tmp_path, caplog):
    path = tmp_path / "shared.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    storage = SqliteStorage(path)
    await storage.open()
    await storage.close()
    assert "readable by others (mode 0644)" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # reported, not changed behind the owner's back


def test_an_api_user_with_a_hashed_token_logs_in_to_opc_ua_with_the_token_only(schemas):
    """api_users = true lets HTTP API users open OPC UA sessions with their token as
    password; a user given as token_sha256 has no token in the config, and must not
    get an empty password instead."""
    from balans_edge.plugins.opcua.security import Users
    from balans_edge.plugins.opcua.server import credentials

    digest = hashlib.sha256(STRONG.encode()).hexdigest()
    config = parse_config({"api": {"users": [{"name": "scada", "role": "operator", "token_sha256": digest}]},
                           "plugins": {"opcua": {"server": {"api_users": True, "users": [
                               {"name": "op", "role": "viewer", "password": "operator-password-1"}]}}}}, schemas)
    users = Users(credentials(config.plugins["opcua"].server, config.api.users))
    assert users.get_user(None, "scada", "") is None
    assert users.get_user(None, "scada", digest) is None
    assert users.get_user(None, "scada", STRONG).name == "scada"
    assert users.get_user(None, "op", "operator-password-1").access == "viewer"
    assert users.get_user(None, "op", "wrong-password-11") is None
