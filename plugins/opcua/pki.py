"""The server's certificate and the trusted client certificates, on disk.

Layout of ``pki_dir`` (the usual one of OPC UA applications, so an
administrator who knows another server finds their way)::

    own/cert.der      the server's application instance certificate (DER)
    own/cert.pem      the same in PEM, to hand to clients
    own/key.pem       its private key (PKCS#8, mode 0600)
    trusted/          client certificates allowed to connect (.der, .pem, .crt)
    rejected/         certificates of clients that were refused, to move to
                      trusted/ once checked

The server creates its certificate and key on first start with
``cryptography``: RSA 2048, SHA-256, self-signed, the application URI in the
subject alternative name (clients and servers compare it with the
application description, and neither side of a connection fails when they
differ, so a mismatch is refused here at start instead).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650
REJECTED_LIMIT = 100
"""Refused certificates kept in rejected/ (the oldest go first), so a client
retrying with ever new certificates cannot fill the disk."""
CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


class PkiError(Exception):
    """The certificate on disk cannot be used (unreadable, or made for another application URI)."""


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def cert_der(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def cert_pem(self) -> Path:
        return self.root / "own" / "cert.pem"

    @property
    def key_pem(self) -> Path:
        return self.root / "own" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    def make_folders(self) -> None:
        for folder in (self.root / "own", self.trusted, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)


def application_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER encoding, as OPC UA tools show it."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER), usedforsecurity=False).hexdigest()


def make_certificate(key: rsa.RSAPrivateKey, name: str, application_uri: str, hosts: list[str], *,
                     client: bool = False, server: bool = True, days: int = VALID_DAYS,
                     now: datetime.datetime | None = None) -> x509.Certificate:
    """A self-signed application instance certificate (OPC 10000-6 6.2.2):
    the URI and host names in the subject alternative name, key usages for
    signing and encryption, and the extended key usages of its role."""
    now = now or datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "balans-edge")])
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in dict.fromkeys(hosts):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client
                                                                       else [])
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(key, hashes.SHA256())
    )


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """The key file is created readable by its owner only, before a byte is written."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_certificate(pki: Pki, cert: x509.Certificate) -> None:
    pki.cert_der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    pki.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def default_hosts(host: str) -> list[str]:
    """Names the certificate vouches for: the address listened on, this
    machine's name and the loopback names (clients on the box itself)."""
    names = [host, socket.gethostname(), "localhost", "127.0.0.1"]
    return [n for n in names if n and n not in ("0.0.0.0", "::")]  # noqa: S104 (wildcards are not names)


def ensure_own(pki: Pki, application_uri: str, name: str, hosts: list[str]) -> tuple[x509.Certificate, bool]:
    """The server's certificate (created with its key on first start), and
    whether it was created now. A certificate made for another application
    URI is refused: clients pin the URI, so it must be replaced deliberately."""
    pki.make_folders()
    if pki.cert_der.exists() != pki.key_pem.exists():
        missing = pki.key_pem if pki.cert_der.exists() else pki.cert_der
        raise PkiError(f"{missing} is missing while its pair exists; restore it, or delete both to make new ones")
    if not pki.cert_der.exists():
        key = new_key()
        cert = make_certificate(key, name, application_uri, hosts, server=True, client=True)
        write_key(pki.key_pem, key)
        write_certificate(pki, cert)
        return cert, True
    try:
        cert = x509.load_der_x509_certificate(pki.cert_der.read_bytes())
    except ValueError as exc:
        raise PkiError(f"{pki.cert_der}: not a DER certificate ({exc})") from None
    uris = application_uris(cert)
    if application_uri not in uris:
        raise PkiError(f"{pki.cert_der} was made for {', '.join(uris) or 'no application URI'}, not "
                       f"{application_uri}; set application_uri to match, or delete own/cert.der and own/key.pem "
                       "to make a new certificate (clients must then trust the new one)")
    return cert, False


def load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def trusted_certificates(pki: Pki) -> dict[bytes, Path]:
    """DER bytes of every readable certificate in trusted/ (read at every
    session, so a certificate moved there takes effect without a restart)."""
    out: dict[bytes, Path] = {}
    if not pki.trusted.is_dir():
        return out
    for path in sorted(pki.trusted.iterdir()):
        if path.suffix.lower() not in CERT_SUFFIXES or not path.is_file():
            continue
        try:
            cert = load_certificate(path)
        except (OSError, ValueError):
            continue
        out[cert.public_bytes(serialization.Encoding.DER)] = path
    return out


def keep_rejected(pki: Pki, cert: x509.Certificate) -> Path:
    """Save a refused certificate to rejected/ (named by thumbprint) for review."""
    pki.rejected.mkdir(parents=True, exist_ok=True)
    path = pki.rejected / f"{thumbprint(cert)}.der"
    if not path.exists():
        old = sorted(pki.rejected.glob("*.der"), key=lambda p: p.stat().st_mtime)
        for stale in old[: max(0, len(old) - REJECTED_LIMIT + 1)]:
            stale.unlink(missing_ok=True)
        path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return path
