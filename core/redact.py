"""Credentials out of everything shown or logged: one rule for URLs and free text.

A target URL may carry a password (``http://writer:pw@influx:8086``), a query
token (``?token=...``), and an error message or a third-party log line may
repeat either, or an ``Authorization`` header. Health, status commands, the
plugin listing, check-config output and log lines all go through the functions
here, so a credential is masked the same way wherever it would appear.

What is kept: scheme, host, port, path, the user name when a password follows
it (it tells an operator which account is configured, and is not a secret on
its own). What is masked: the password; a user part *without* a password (some
services take a token as the user name, ``https://TOKEN@host``); the values of
query parameters whose names say they hold a secret; the credential after
``Bearer``/``Token``/``Basic``; and any value the caller names as secret.

Hand-written with ``re`` and ``urllib.parse``: the rules are a few lines, and no
maintained library masks credentials inside free text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

SECRET_PARAMS = frozenset({
    "access_token", "api_key", "apikey", "auth", "authorization", "key", "p", "pass", "passwd", "password",
    "pwd", "secret", "sig", "signature", "token",
})
"""Query parameter names (lower case) whose values are masked (``p`` is InfluxDB 1's password)."""

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@]+)@")
_PARAM = re.compile(r"(?P<lead>[?&;](?P<name>[A-Za-z_][A-Za-z0-9_.-]*)=)(?P<value>[^&;#\s\"'<>]*)")
_SCHEME_AUTH = re.compile(
    # After an Authorization label any credential; after a bare scheme word only a long one
    # (a real token), so that "Token expired" stays readable.
    r"(?P<lead>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:Bearer|Token|Basic)\s+)?)(?P<cred>[A-Za-z0-9._~+/=-]+)"
    r"|(?P<lead2>\b(?:Bearer|Token|Basic)\s+)(?P<cred2>[A-Za-z0-9._~+/=-]{16,})", re.IGNORECASE)


def _userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{MASK}" if colon and user else MASK


def redact_url(url: str) -> str:
    """``url`` with its password, a bare user part and secret query values masked.
    Anything that does not parse as a URL goes through ``redact_text``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{_userinfo(userinfo)}@{host}"
    query = _PARAM.sub(_param, "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _param(m: re.Match[str]) -> str:
    if m["name"].lower() in SECRET_PARAMS and m["value"]:
        return m["lead"] + MASK
    return m[0]


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text (an error message, a log line) with every credential it holds masked:
    URL userinfo, secret query parameters, authorization schemes, and ``secrets``."""
    for secret in secrets:
        if secret and len(secret) >= 4:  # masking "a" everywhere would mangle the text, not protect it
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: m["scheme"] + _userinfo(m["userinfo"]) + "@", text)
    text = _PARAM.sub(_param, text)
    return _SCHEME_AUTH.sub(lambda m: (m["lead"] or m["lead2"]) + MASK, text)


class RedactingFilter(logging.Filter):
    """A handler filter that masks credentials in every record it passes, from our
    loggers and third-party ones alike (httpx logs each request's full URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
