"""One request to the InfluxDB v2 write API, and what its answer means.

The write API is ``POST {url}/api/v2/write?org=&bucket=&precision=s`` with a
body of line protocol, gzip-compressed (``Content-Encoding: gzip``) unless the
target says otherwise, and ``Authorization: Token ...``. httpx (already the
server's HTTP client) sends it asynchronously; influxdb-client's own write API
is synchronous or needs aiohttp, and its retry strategy would hide the
answers the store-and-forward rules below depend on.

Answers, and what the exporter does with them:

- 2xx: accepted, the entries leave the queue;
- 413: too large, the batch is split in half and each half is sent;
- 429 and 5xx, connection errors and timeouts: transient, the same request
  is repeated after an exponential back-off with jitter, or after
  ``Retry-After`` when the target sends one;
- 401, 403 and 404: the target is misconfigured (token, org, bucket, URL);
  that is not the points' fault, so they are kept and retried like a
  transient failure (with ``last_error`` saying why) instead of being
  dead-lettered by the hundred thousand until someone fixes the token;
- any other 4xx (400 bad line, 422 unprocessable): the target refuses these
  points for good; the exporter isolates them and moves them to the dead
  letters with the target's message, and later points keep flowing.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import random
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from balans_edge.core.redact import redact_text
from balans_edge.plugins.export.config import TargetConfig

MISCONFIGURED = frozenset({401, 403, 404})
GZIP_IN_THREAD = 256 * 1024
"""Bodies larger than this are compressed off the event loop (zlib releases the GIL)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    """HTTP status, or 0 when no answer came (connection refused, timeout)."""
    message: str = ""
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def transient(self) -> bool:
        """Worth repeating as it is: the target may accept it later."""
        return self.status == 0 or self.status in (408, 429) or self.status >= 500 or self.status in MISCONFIGURED

    @property
    def too_large(self) -> bool:
        return self.status == 413

    def describe(self) -> str:
        if self.status == 0:
            return self.message
        return f"HTTP {self.status}: {self.message}" if self.message else f"HTTP {self.status}"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(attempt: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before repeat number ``attempt`` (1, 2, ...): doubling from ``initial`` up
    to ``maximum``, then a random point in its upper half, so that many edge boxes
    that lost the same database do not all come back in the same second."""
    ceiling = min(maximum, initial * 2 ** min(attempt - 1, 62))
    return (rng or random).uniform(ceiling / 2, ceiling)


def _message(response: httpx.Response) -> str:
    """The target's explanation: InfluxDB's JSON ``message``, or the body's start."""
    text = response.text[:2000]
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return text.strip()


class WriteClient:
    """Sends line protocol to one target."""

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        # A user and password in the URL go as Basic auth, not in the URL: httpx
        # logs every request's URL, and connection errors may repeat it.
        parts = urlsplit(config.url)
        auth = None
        password = unquote(parts.password or "")
        if parts.username is not None:
            auth = httpx.BasicAuth(unquote(parts.username), password)
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.secrets = tuple(s for s in (config.token, password) if s)
        """Masked wherever the target's answer or an error could repeat them."""
        self.url = urlunsplit(parts).rstrip("/") + "/api/v2/write"
        self.params = {"org": config.org, "bucket": config.bucket, "precision": "s"}
        self.headers = {"Content-Type": "text/plain; charset=utf-8", "Accept": "application/json"}
        if config.token:
            self.headers["Authorization"] = f"Token {config.token}"
        if config.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self._client = httpx.AsyncClient(timeout=config.timeout_s, auth=auth)

    async def body(self, lines: list[str]) -> bytes:
        raw = "\n".join(lines).encode("utf-8")
        if not self.config.gzip:
            return raw
        if len(raw) > GZIP_IN_THREAD:
            return await asyncio.to_thread(gzip.compress, raw, 1)
        return gzip.compress(raw, 1)

    async def post(self, body: bytes) -> Answer:
        try:
            response = await self._client.post(self.url, params=self.params, headers=self.headers, content=body)
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Answer(0, redact_text(text, self.secrets))
        message = "" if response.is_success else redact_text(_message(response), self.secrets)
        return Answer(response.status_code, message, retry_after(response.headers.get("Retry-After")))

    async def close(self) -> None:
        await self._client.aclose()
