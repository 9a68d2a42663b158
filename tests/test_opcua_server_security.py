"""The OPC UA server for SCADA, end to end, its methods and security: node-opcua
(an OPC UA stack independent of the server's asyncua) calls methods as
operator and viewer over Basic256Sha256 and Aes128_Sha256_RsaOaep, with
trusted and untrusted certificates and wrong passwords; refusals are logged
without paging; unsecured channels, the None policy, the server's own
certificate and the configuration's checks. The address space and its values:
``test_opcua_server.py``."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from opcua_server_site import NS, OPERATOR, VIEWER, MakeSite, make_client_cert, node_id, site_factory, ua_client

from balans_edge.plugins.opcua import pki
from balans_edge.plugins.opcua.server import OpcuaServer

from conftest import base_config


@pytest.fixture
def make_site(tmp_path: Path, make_server: Any, client_for: Any) -> MakeSite:
    return site_factory(tmp_path, make_server, client_for)


# methods ---------------------------------------------------------------------------------------------


async def test_close_valve_as_operator_is_audited_and_a_viewer_is_denied(make_site: MakeSite) -> None:
    site = await make_site()
    w_v = node_id("Meters/W-V")
    steps = [
        {"op": "connect", "session": "op", "id": "op"},
        {"op": "connect", "session": "view", "id": "view"},
        {"op": "namespace", "session": "op", "uri": NS},
        {"op": "call", "session": "view", "object": w_v, "method": node_id("Meters/W-V/CloseValve"),
         "args": ["viewer tries"], "id": "viewer-call"},
        {"op": "write", "session": "view", "node": node_id("Meters/W-V/Value"), "dataType": "Double", "value": 1.5,
         "id": "viewer-write"},
        {"op": "write", "session": "op", "node": node_id("Meters/W-V/Value"), "dataType": "Double", "value": 1.5,
         "id": "operator-write"},
        {"op": "call", "session": "op", "object": w_v, "method": node_id("Meters/W-V/OpenValve"), "args": ["  "],
         "id": "no-reason"},
        {"op": "call", "session": "op", "object": node_id("Meters/W-R"), "method": node_id("Meters/W-V/CloseValve"),
         "args": ["wrong object"], "id": "wrong-object"},
        {"op": "call", "session": "op", "object": w_v, "method": node_id("Meters/W-V/CloseValve"),
         "args": ["leak in flat 3"], "id": "close"},
        {"op": "read", "session": "op", "nodes": [{"node": node_id("Meters/W-V/Valve")}], "id": "valve"},
        {"op": "call", "session": "op", "object": node_id("Meters/W-R"), "method": node_id("Meters/W-R/ShedLoad"),
         "args": ["peak tariff"], "id": "shed"},
        {"op": "read", "session": "op", "nodes": [{"node": node_id("Meters/W-R/Relay")}], "id": "relay"},
        {"op": "wait", "label": "jam the valve"},
        {"op": "call", "session": "aes", "object": w_v, "method": node_id("Meters/W-V/OpenValve"),
         "args": ["after the repair"], "id": "jammed"},
        {"op": "read", "session": "op", "nodes": [{"node": node_id("Meters/W-V/Valve")}], "id": "still-closed"},
    ]

    async def jam(label: str) -> None:
        site.valves.ok = False

    sessions = {"op": site.session(), "view": site.session(VIEWER),
                "aes": site.session(policy="Aes128_Sha256_RsaOaep", mode="Sign")}
    steps.insert(2, {"op": "connect", "session": "aes", "id": "aes"})
    r = await site.run(sessions, steps, on_wait=jam)
    assert r["op"]["ok"] and r["view"]["ok"] and r["aes"]["ok"]
    assert r["viewer-call"]["status"] == "BadUserAccessDenied"
    # A viewer's Write service is refused as a whole; an operator's reaches the nodes, which are read-only.
    assert (r["viewer-write"]["ok"], r["viewer-write"]["error"]) == (False, "BadUserAccessDenied")
    assert r["operator-write"]["status"] == "BadUserAccessDenied"  # nothing is writable over OPC UA
    assert r["no-reason"]["status"] == "BadInvalidArgument"
    assert r["wrong-object"]["status"] == "BadMethodInvalid"
    assert r["close"]["status"] == "Good", r["close"]
    command_id, outcome, detail = r["close"]["outputs"]
    assert (outcome, detail) == ("done", "test-valves: moved")
    assert r["valve"]["values"][0]["value"] is False
    assert r["shed"]["status"] == "Good" and r["relay"]["values"][0]["value"] is False

    # A command the actuator fails: a Bad status, no state change.
    assert r["jammed"]["status"] == "BadDeviceFailure" and r["jammed"]["outputs"] == []
    assert r["still-closed"]["values"][0]["value"] is False

    # Audited with the OPC UA user; the viewer's attempt never reached the actuators.
    assert [(c.target, str(c.code)) for c in site.valves.commands] == [("W-V", "valve_close"), ("W-R", "relay_off"),
                                                                      ("W-V", "valve_open")]
    jammed, shed, close = await site.server.storage.journal_list("commands")
    assert close["id"] == command_id
    assert (close["requested_by"], close["reason"], close["outcome"]) == ("opcua:scada-op", "leak in flat 3", "done")
    assert (shed["requested_by"], shed["code"]) == ("opcua:scada-op", "relay_off")
    assert (jammed["requested_by"], jammed["outcome"], jammed["detail"]) == ("opcua:scada-op", "failed",
                                                                           "test-valves: jammed")


# security --------------------------------------------------------------------------------------------


async def test_trusted_certificate_is_accepted_and_untrusted_refused(make_site: MakeSite,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    site = await make_site(ingest=False)
    stranger = make_client_cert(site.tmp / "clients", "stranger")
    steps = [
        {"op": "connect", "session": "trusted", "id": "trusted"},
        {"op": "namespace", "session": "trusted", "uri": NS},
        {"op": "read", "session": "trusted", "nodes": [{"node": node_id("Meters/W-V/PulseWeight")}], "id": "read"},
        {"op": "connect", "session": "aes", "id": "aes"},
        {"op": "write", "session": "aes", "node": node_id("Meters/W-V/Value"), "dataType": "Double", "value": 1.5,
         "id": "viewer-write"},
        {"op": "connect", "session": "untrusted", "id": "untrusted"},
        {"op": "connect", "session": "wrong-password", "id": "wrong-password"},
        {"op": "connect", "session": "anonymous", "id": "anonymous"},
    ]
    sessions = {
        "trusted": site.session(),
        "aes": site.session(VIEWER, policy="Aes128_Sha256_RsaOaep"),
        "untrusted": site.session(cert=stranger),
        "wrong-password": site.session((OPERATOR[0], "not-the-password")),
        "anonymous": site.session(None),
    }
    r = await site.run(sessions, steps)
    assert r["trusted"]["ok"] and r["read"]["values"][0]["value"] == 0.001
    assert r["aes"]["ok"], r["aes"]
    assert not r["untrusted"]["ok"] and r["untrusted"]["error"] == "BadCertificateUntrusted", r["untrusted"]
    assert not r["wrong-password"]["ok"] and r["wrong-password"]["error"] == "BadUserAccessDenied"
    assert not r["anonymous"]["ok"]
    # The refused certificate is kept for review; moving it to trusted/ would admit the client.
    stranger_der = x509.load_pem_x509_certificate(stranger.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert [p.read_bytes() for p in site.opcua.pki.rejected.iterdir()] == [stranger_der]
    assert (r["viewer-write"]["ok"], r["viewer-write"]["error"]) == (False, "BadUserAccessDenied")
    # Refusals are logged, passwords never.
    assert "refused a session for user 'scada-op'" in caplog.text and "certificate not trusted" in caplog.text
    assert OPERATOR[1] not in caplog.text and "not-the-password" not in caplog.text and VIEWER[1] not in caplog.text
    # Each refusal once at WARNING with the client's address and the reason; asyncua's fault line at INFO,
    # so nothing a log monitor pages on (ERROR) for a refusal that is the server doing its job.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    peer_of = r"from 127\.0\.0\.1:\d+"
    for reason in (r"refused a session for user 'scada-op' " + peer_of + r" \(unknown user or wrong password\)",
                   r"refused client urn:balans-edge-tests:node-opcua \(.*CN=stranger\) " + peer_of
                   + ": certificate not trusted",
                   r"refused a write of user 'test-viewer' \(viewer\) " + peer_of):
        assert len([w for w in warnings if re.search(reason, w)]) == 1, (reason, warnings)
    answered = [r.getMessage() for r in caplog.records if r.name == "asyncua.server.uaprocessor"]
    assert sorted(re.sub(r":\d+$", "", a) for a in answered) == [
        "opcua: answered BadCertificateUntrusted to 127.0.0.1", "opcua: answered BadUserAccessDenied to 127.0.0.1",
        "opcua: answered BadUserAccessDenied to 127.0.0.1"]


def test_only_refusals_are_taken_off_the_error_level() -> None:
    from balans_edge.plugins.opcua.security import FAULT_LINE, RefusalLog

    def record(status: str) -> logging.LogRecord:
        out = logging.LogRecord("asyncua.server.uaprocessor", logging.ERROR, "uaprocessor.py", 181, FAULT_LINE,
                                ("some text", status), None)
        assert RefusalLog().filter(out)
        return out

    refused = record("BadCertificateUntrusted")
    assert (refused.levelno, refused.levelname, refused.getMessage()) == (
        logging.INFO, "INFO", "opcua: answered BadCertificateUntrusted to ?")  # no request served here
    for status in ("BadInternalError", "BadTooManySessions", "NotAStatus"):
        kept = record(status)
        assert (kept.levelno, kept.getMessage()) == (logging.ERROR, f"sending service fault response: some text "
                                                                     f"({status})")


# sessions on unsecured channels and the None policy ----------------------------------------------


async def test_a_session_on_an_unsecured_channel_can_do_nothing(make_site: MakeSite,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the None policy, a client that opens an unsecured channel (allowed,
    to ask for the endpoints) and ignores the endpoint list gets a session that
    can do nothing."""
    from asyncua import Client, ua

    site = await make_site(ingest=False, anonymous_role="viewer")
    secure = await ua_client(site, user=None)
    async with secure:  # anonymous viewers may read on a secure channel
        assert await secure.get_node(ua.NodeId("Meters/W-V/PulseWeight", 2)).read_value() == 0.001
    monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda endpoints, mode, uri: endpoints[0]))
    plain = Client(site.endpoint)
    async with plain:
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await plain.get_node(ua.NodeId("Meters/W-V/PulseWeight", 2)).read_value()


async def test_none_policy_only_when_listed(make_site: MakeSite) -> None:
    from asyncua import Client

    site = await make_site(ingest=False, security_policies=["None", "Basic256Sha256"], security_modes=["Sign"])
    endpoints = await Client(site.endpoint).connect_and_get_server_endpoints()
    offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode.name) for e in endpoints}
    assert offered == {("None", "None_"), ("Basic256Sha256", "Sign")}


# the server's certificate ------------------------------------------------------------------------------


async def test_certificate_is_made_once_and_must_name_the_application_uri(tmp_path: Path, make_site: MakeSite,
                                                                         make_server: Any) -> None:
    first = await make_site(ingest=False)
    folder = first.opcua.pki
    assert first.opcua.certificate_created
    der = folder.cert_der.read_bytes()
    assert folder.key_pem.stat().st_mode & 0o777 == 0o600
    cert = x509.load_der_x509_certificate(der)
    assert pki.application_uris(cert) == ["urn:balans-edge-tests:server"]
    usages = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usages.digital_signature and usages.key_encipherment and usages.data_encipherment
    await first.server.stop()

    again = await make_site(seed=False, ingest=False)
    assert not again.opcua.certificate_created and folder.cert_der.read_bytes() == der
    await again.server.stop()

    # Another application URI: the certificate must be replaced deliberately, so the plugin fails to start.
    config = base_config(tmp_path, plugins={"opcua": {"server": {
        "enabled": True, "port": 0, "pki_dir": str(folder.root), "application_uri": "urn:another:server"}}})
    server = await make_server(config)
    info = server.plugins.info["opcua"]
    assert info.state == "failed" and "was made for urn:balans-edge-tests:server" in info.error
    assert not [c for _, c in server.components if isinstance(c, OpcuaServer)]
    assert folder.cert_der.read_bytes() == der


def test_configuration_is_checked() -> None:
    from balans_edge.config import parse_config
    from balans_edge.plugin_manager import config_schemas, load_plugins
    from balans_edge.settings import ConfigError

    schemas = config_schemas(load_plugins())
    config = parse_config({"plugins": {"opcua": {"server": {"enabled": True}}}}, schemas)
    server = config.plugins["opcua"].server
    assert server.security_policies == ["Basic256Sha256", "Aes128_Sha256_RsaOaep"]
    assert (server.host, server.port, server.path, server.anonymous_role) == ("127.0.0.1", 4840, "/balans-edge/",
                                                                              "none")
    bad = {"security_policies": ["Basic128Rsa15"],
           "users": [{"name": "a", "role": "operator", "password": "short"}]}
    with pytest.raises(ConfigError) as err:
        parse_config({"plugins": {"opcua": {"server": bad}}}, schemas)
    text = str(err.value)
    assert "expected at least 8 characters" in text and "short" not in text.replace("expected", "")
    with pytest.raises(ConfigError, match="unknown 'Basic128Rsa15'"):
        parse_config({"plugins": {"opcua": {"server": {"security_policies": ["Basic128Rsa15"]}}}}, schemas)
