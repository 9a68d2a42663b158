"""Who may connect and what they may do.

- **Users.** A session is opened with a user name and password
  (``[[plugins.opcua.server.users]]``, and with ``api_users`` the HTTP
  API's users with their token as password), or anonymously only when
  ``anonymous_role = "viewer"``. Roles are the API's: viewer reads, browses
  and subscribes; operator also calls the valve and relay methods; admin is
  an operator here (nothing in the address space is writable or
  administrable over OPC UA). Passwords are compared in constant time and
  never logged.
- **Services.** ``RoleRules`` is asked by asyncua before every request of a
  session: a viewer's Write is refused with Bad_UserAccessDenied, and
  nobody may add or delete nodes. It also records the session's user for
  the request being served (``current_login``), because asyncua calls a
  method with the object and the arguments only, and the audit of a
  command must name the OPC UA user.
- **Channels.** Without the None policy, a client may still open an
  unsecured channel to ask for the endpoints (OPC UA requires it), but a
  session on it can do nothing (``DiscoveryOnly``).
- **Certificates.** A client's application instance certificate must be in
  ``trusted/`` (or the client is refused with Bad_CertificateUntrusted and
  its certificate is kept in ``rejected/``), be within its validity, and
  name the client's application URI.
- **Logging.** Every refusal is logged once at WARNING with the peer's
  address and the reason; asyncua's own ERROR line for the service fault it
  answers (``RefusalLog``) becomes an INFO line, so log monitoring does not
  page on a wrong password or a stranger's certificate.
"""

from __future__ import annotations

import contextvars
import datetime
import hmac
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.server.uaprocessor import UaProcessor
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from balans_edge.core.roles import allows
from balans_edge.core.tokens import token_digest
from balans_edge.plugins.opcua import pki

log = logging.getLogger(__name__)


@dataclass
class Login(User):
    """An asyncua user with our role. asyncua's own role stays ``User`` for
    everyone: its ``Admin`` would bypass access levels and may add nodes."""

    access: str = "viewer"

    def may(self, role: str) -> bool:
        return allows(self.access, role)


_login: contextvars.ContextVar[Login | None] = contextvars.ContextVar("opcua_login", default=None)


def request_peer() -> str:
    """The address of the client whose request is being served ("?" outside one).

    asyncua hands neither the user manager, nor the certificate validator, nor
    the permission rules (nor its own log line) the connection they serve; the
    connection's ``UaProcessor``, which knows the peer, is the caller up the
    stack while a request is processed (one at a time per connection). So the
    stack is searched for it, on the refusal path only."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, UaProcessor):
            peer = owner.name
            return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        frame = frame.f_back
    return "?"


REFUSALS = frozenset(ua.StatusCodes.__dict__[name] for name in (
    "BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected", "BadCertificateUntrusted",
    "BadCertificateTimeInvalid", "BadCertificateUriInvalid", "BadCertificateInvalid", "BadCertificateRevoked",
    "BadCertificateUseNotAllowed", "BadSecurityChecksFailed", "BadSecurityPolicyRejected"))
"""Service faults that answer a client refused on purpose, not a failure of the server."""
FAULT_LINE = "sending service fault response: %s (%s)"
"""asyncua's log line (uaprocessor) for every service fault, at ERROR."""


class RefusalLog(logging.Filter):
    """On asyncua's request processor logger: its ERROR line for a service
    fault that refuses a client on purpose (``REFUSALS``) becomes an INFO line
    naming the peer. The refusal itself is logged at WARNING with its reason
    where it is decided (``Users``, ``RoleRules``, ``TrustList``). Other faults
    stay errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == FAULT_LINE and record.levelno >= logging.ERROR and isinstance(record.args, tuple) \
                and len(record.args) == 2 and getattr(ua.StatusCodes, str(record.args[1]), None) in REFUSALS:
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg, record.args = "opcua: answered %s to %s", (record.args[1], request_peer())
        return True


def install_refusal_log() -> None:
    """Put ``RefusalLog`` on asyncua's request processor logger (once per process)."""
    logger = logging.getLogger("asyncua.server.uaprocessor")
    if not any(isinstance(f, RefusalLog) for f in logger.filters):
        logger.addFilter(RefusalLog())


def current_login() -> Login | None:
    """The user of the request being served (set by ``RoleRules`` in the
    connection's own task, which serves its requests one at a time)."""
    return _login.get()


@dataclass(frozen=True)
class Credential:
    name: str
    role: str
    digest: bytes
    """SHA-256 of the password: an HTTP API user given as ``token_sha256`` has no other form."""


class Users:
    """asyncua's user manager: user name and password -> Login, or None (Bad_UserAccessDenied)."""

    def __init__(self, credentials: Iterable[Credential], anonymous_role: str = "none") -> None:
        self.credentials = list(credentials)
        self.anonymous_role = anonymous_role

    def get_user(self, iserver: object, username: str | None = None, password: str | None = None,
                 certificate: object = None) -> Login | None:
        if username is None and password is None:
            if self.anonymous_role == "viewer":
                return Login(role=UserRole.User, name="anonymous", access="viewer")
            return None
        given = token_digest(password or "")
        found = None
        for c in self.credentials:
            # Every credential is compared, so timing does not tell which name exists.
            match = hmac.compare_digest(c.digest, given)
            if match and c.name == username and found is None:
                found = c
        if found is None:
            log.warning("opcua: refused a session for user %r from %s (unknown user or wrong password)", username,
                        request_peer())
            return None
        return Login(role=UserRole.User, name=found.name, access=found.role)


WRITES = {ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary),
          ua.NodeId(ua.ObjectIds.HistoryUpdateRequest_Encoding_DefaultBinary)}
ALLOWED = {ua.NodeId(t) for t in USER_TYPES}


class RoleRules(PermissionRuleset):
    """Which service a session's user may call (asked before every request)."""

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: object) -> bool:
        login = user if isinstance(user, Login) else None
        _login.set(login)
        if login is None or action_type_id not in ALLOWED:
            log.warning("opcua: refused request %s of %s from %s", action_type_id.to_string(),
                        f"user {login.name!r}" if login else "a session without a user", request_peer())
            return False
        if action_type_id in WRITES and not login.may("operator"):
            log.warning("opcua: refused a write of user %r (%s) from %s: nothing is writable for a viewer",
                        login.name, login.access, request_peer())
            return False
        return True


class DiscoveryOnly(PermissionRuleset):
    """For a channel without security when the None policy is not offered.

    OPC UA lets any client open such a channel to ask for the endpoints, and
    asyncua then also lets it create and activate a session on it; a client
    that ignores the endpoint list would have an unsigned, unencrypted
    session. Every request of such a session is refused."""

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: object) -> bool:
        _login.set(None)
        log.warning("opcua: refused request %s from %s: a channel without security serves discovery only",
                    action_type_id.to_string(), request_peer())
        return False


class TrustList:
    """asyncua's certificate validator: trusted/ holds the client certificates
    allowed to open a session; anything else is refused and kept in rejected/."""

    def __init__(self, folder: pki.Pki) -> None:
        self.pki = folder

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        now = datetime.datetime.now(datetime.UTC)
        name = cert.subject.rfc4514_string()
        peer = request_peer()
        if cert.public_bytes(serialization.Encoding.DER) not in pki.trusted_certificates(self.pki):
            kept = pki.keep_rejected(self.pki, cert)
            log.warning("opcua: refused client %s (%s) from %s: certificate not trusted; kept as %s (move it to %s "
                        "to trust it)", app.ApplicationUri, name, peer, kept, self.pki.trusted)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            log.warning("opcua: refused client %s (%s) from %s: certificate outside its validity",
                        app.ApplicationUri, name, peer)
            raise ServiceError(ua.StatusCodes.BadCertificateTimeInvalid)
        if app.ApplicationUri not in pki.application_uris(cert):
            log.warning("opcua: refused client %s (%s) from %s: its certificate names %s", app.ApplicationUri,
                        name, peer, ", ".join(pki.application_uris(cert)) or "no application URI")
            raise ServiceError(ua.StatusCodes.BadCertificateUriInvalid)
