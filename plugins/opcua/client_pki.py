"""The OPC UA client's own certificate and its trust in the server's.

The client needs an application instance certificate for the Sign and
SignAndEncrypt modes: it is made on first use next to the configuration
(``cryptography``, through the server's ``pki`` helpers) unless one is
configured. The server's certificate is trusted when it is the configured
``server_certificate`` or, with ``trust_on_first_use``, the one kept the first
time the device was reached.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from balans_edge.plugins.opcua import pki
from balans_edge.plugins.opcua.client_config import DeviceConfig

log = logging.getLogger(__name__)


class ServerNotTrusted(Exception):
    """The server showed a certificate other than the trusted one."""


class ClientCertificateError(Exception):
    """The client's own certificate or key cannot be used."""


def default_application_uri() -> str:
    return f"urn:{socket.gethostname()}:balans-edge:client"


def ensure_client_certificate(config: DeviceConfig) -> tuple[Path, Path, str]:
    """The client's certificate and key (created with ``cryptography`` when both are
    missing) and the application URI the certificate names, which the client
    must announce: servers refuse a session whose URI the certificate lacks."""
    cert_path, key_path = config.certificate_path, config.private_key_path
    if cert_path.exists() != key_path.exists():
        missing = key_path if cert_path.exists() else cert_path
        raise ClientCertificateError(f"{missing} is missing while its pair exists; restore it, or delete both "
                                     "to make new ones")
    if not cert_path.exists():
        uri = config.application_uri or default_application_uri()
        key = pki.new_key()
        cert = pki.make_certificate(key, f"balans-edge client {socket.gethostname()}", uri,
                                    [socket.gethostname(), "localhost"], client=True, server=False)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        key_path.parent.mkdir(parents=True, exist_ok=True)
        pki.write_key(key_path, key)
        encoding = serialization.Encoding.PEM if cert_path.suffix.lower() == ".pem" else serialization.Encoding.DER
        cert_path.write_bytes(cert.public_bytes(encoding))
        log.info("opcua: created the client certificate %s (%s, thumbprint %s); servers must trust it",
                 cert_path, uri, pki.thumbprint(cert))
        return cert_path, key_path, uri
    try:
        cert = pki.load_certificate(cert_path)
    except (OSError, ValueError) as exc:
        raise ClientCertificateError(f"{cert_path}: not a certificate ({exc})") from None
    uris = pki.application_uris(cert)
    if not uris:
        raise ClientCertificateError(f"{cert_path} names no application URI (a subject alternative name URI)")
    if config.application_uri and config.application_uri not in uris:
        raise ClientCertificateError(f"{cert_path} was made for {', '.join(uris)}, not {config.application_uri}")
    return cert_path, key_path, config.application_uri or uris[0]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def first_certificate(der: bytes) -> bytes:
    """The server's own certificate from what an endpoint lists (it may append its chain)."""
    return _der(x509.load_der_x509_certificate(der[: _der_length(der)]))


def _der_length(der: bytes) -> int:
    """Length of the first DER element (a certificate is a SEQUENCE with a long-form length)."""
    first = der[1]
    if first < 0x80:
        return first + 2
    n = first & 0x7F
    return int.from_bytes(der[2 : 2 + n], "big") + 2 + n


def trusted_server_certificate(config: DeviceConfig, presented: bytes) -> bytes:
    """The certificate the server showed, if it is the trusted one: the configured
    ``server_certificate``, or (``trust_on_first_use``) the one kept the first time."""
    shown = x509.load_der_x509_certificate(presented)
    if config.server_certificate:
        try:
            want = pki.load_certificate(Path(config.server_certificate))
        except (OSError, ValueError) as exc:
            raise ServerNotTrusted(f"server_certificate {config.server_certificate}: cannot read it ({exc})") from None
        if _der(want) != presented:
            raise ServerNotTrusted(f"the server shows certificate {pki.thumbprint(shown)}, not the trusted "
                                   f"{config.server_certificate} ({pki.thumbprint(want)})")
        return presented
    path = config.first_use_path
    if path.exists():
        kept = pki.load_certificate(path)
        if _der(kept) != presented:
            raise ServerNotTrusted(f"the server shows certificate {pki.thumbprint(shown)}, not the one trusted on "
                                   f"first use ({path}, {pki.thumbprint(kept)}); delete that file to trust the new one")
        return presented
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(presented)
    log.warning("opcua: device %s: trusting the server certificate %s on first use (kept as %s)", config.name,
                pki.thumbprint(shown), path)
    return presented
