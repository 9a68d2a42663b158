"""Configuration: typed sections, errors that name the key path, secrets from the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balans_edge.config import load_config, parse_config
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.settings import ConfigError

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def schemas() -> dict[str, type]:
    return config_schemas(load_plugins())


def problems(data: dict, schemas: dict[str, type]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, schemas)
    return info.value.problems


def test_empty_config_is_the_demo_defaults(schemas):
    config = parse_config({}, schemas)
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.storage.url.startswith("sqlite:")
    assert config.plugins["dmesh"].simulator.enabled is False
    assert config.intervals.max_gap_s == 6 * 3600


def test_errors_name_the_key_path_and_what_was_expected(schemas):
    found = problems(
        {
            "server": {"port": "abc", "hots": "0.0.0.0"},
            "site": {"timezone": "Mars/Olympus"},
            "plugins": {"dmesh": {"simulator": {"concentrators": 0, "enabled": "yes"}}},
            "api": {"users": [{"name": "ops", "role": "root", "token": "short"}]},
            "ingest": {"clock_tolerance_s": 1.5},
            "bogus": {},
        },
        schemas,
    )
    assert '[server] port: expected an integer 0..65535, got "abc"' in found
    assert '[server] hots: unknown key (did you mean "host"?)' in found
    assert any(p.startswith('[site] timezone: expected an IANA timezone') for p in found)
    assert "[plugins.dmesh.simulator] concentrators: expected an integer 1..50, got 0" in found
    assert '[plugins.dmesh.simulator] enabled: expected true or false, got "yes"' in found
    assert '[api.users[0]] role: expected one of viewer, operator, admin, got "root"' in found
    assert "[api.users[0]] token: expected at least 16 characters" in found
    assert "[ingest] clock_tolerance_s: expected an integer 0..86400, got 1.5" in found
    assert any(p.startswith("[bogus]: unknown section") for p in found)
    assert len(found) == 9


def test_required_key_and_wrong_shapes(schemas):
    found = problems({"api": {"users": [{"role": "viewer", "token": "x" * 16}]}, "server": []}, schemas)
    assert "[api.users[0]] name: required key is missing" in found
    assert "[server]: expected a table, got a list" in found


def test_secret_from_environment(schemas, monkeypatch):
    monkeypatch.setenv("BALANS_TEST_TOKEN", "t" * 20)
    config = parse_config({"api": {"users": [{"name": "a", "role": "admin", "token_env": "BALANS_TEST_TOKEN"}]}},
                          schemas)
    assert config.api.users[0].token == "t" * 20
    monkeypatch.delenv("BALANS_TEST_TOKEN")
    found = problems({"api": {"users": [{"name": "a", "role": "admin", "token_env": "BALANS_TEST_TOKEN"}]}}, schemas)
    assert found == ["[api.users[0]] token_env: environment variable BALANS_TEST_TOKEN is not set"]
    both = problems({"api": {"users": [{"name": "a", "role": "admin", "token": "t" * 20, "token_env": "X"}]}},
                    schemas)
    assert both == ['[api.users[0]] token: give either "token" or "token_env", not both']


def test_file_errors_name_the_file(tmp_path, schemas):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML"):
        load_config(bad, schemas)
    with pytest.raises(ConfigError, match=r"missing.toml: cannot read"):
        load_config(tmp_path / "missing.toml", schemas)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[site]\nname = "Caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.toml: not UTF-8"):
        load_config(latin, schemas)


def test_check_config_command(tmp_path):
    good = subprocess.run([BIN / "balans-edge", "check-config", "config/demo.toml"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[plugins.dmesh.simulator]\nconcentrators = "abc"\n[server]\nport = 70000\n')
    run = subprocess.run([BIN / "balans-edge", "check-config", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2
    assert '[plugins.dmesh.simulator] concentrators: expected an integer 1..50, got "abc"' in run.stderr
    assert "[server] port: expected an integer 0..65535, got 70000" in run.stderr


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["host", "port", "users", "name", "role", "token", "simulator", "enabled", "x"]), inner,
    max_size=4), max_leaves=12)
sections = st.sampled_from(["server", "site", "storage", "ingest", "intervals", "api", "plugins", "other"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(sections, values, max_size=5))
def test_fuzzed_documents_give_config_errors_only(schemas, data):
    """Whatever a TOML file holds, validation either succeeds or raises ConfigError with key paths."""
    try:
        parse_config(data, schemas)
    except ConfigError as exc:
        assert exc.problems
        assert all(p.startswith("[") for p in exc.problems)


def test_port_zero_in_the_file_takes_a_free_port(tmp_path):
    """`[server] port = 0` is what `run --port 0` does: the server starts on a free port and says which."""
    import httpx

    config = tmp_path / "site.toml"
    config.write_text(f'[server]\nport = 0\nlog_level = "warning"\n[storage]\nurl = "sqlite:{tmp_path / "b.db"}"\n')
    proc = subprocess.Popen([BIN / "balans-edge", "run", "-c", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        assert port > 0
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=10).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
