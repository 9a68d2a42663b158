"""Firmware updates of concentrators and radio modules.

The vendor ships ``IMAGE.bin`` with a sidecar ``IMAGE.bin.sig.json``::

    {"image_id": 7, "target": "concentrator", "signature": "<128 hex chars>"}

The signature is Ed25519 over the 45-byte manifest
``b"DMFW" ‖ image_id u32 ‖ target u8 ‖ size u32 ‖ sha256`` of the image. The
host verifies it with the vendor's public key (``firmware_public_key``) before
anything is sent and refuses unsigned or badly signed images.

The sidecar also states the image's ``version`` ("MAJOR.MINOR.PATCH"). The
vendor's manifest carries no version, so this is the only place the host
learns it; the host refuses an image older than the version installed (what
the concentrator reported in HELLO, what its modules reported in TOPOLOGY, or
an image it accepted since, whichever is newest) or without a version, unless
the operator forces it, which the audit records.

``FirmwarePusher`` (one per driver) sends FIRMWARE_BEGIN, the image in blocks
of 1024 bytes (a few in flight at once, each acknowledged on receipt) and
FIRMWARE_END, then waits for the concentrator's FIRMWARE_RESULT. It remembers
per (concentrator, image) the highest contiguous offset the concentrator
acknowledged: when the link drops, the transfer continues after the
concentrator logs in again with FIRMWARE_BEGIN (same fields) and the blocks
from that offset on. Every push goes through the actuation service (code
``firmware_push``, target ``concentrator:<id>``, executed by
``DmeshActuator``), which audits it in the ``commands`` journal and tells the
``observe_commands`` observers; ``push`` checks the version and that the same
image is not already on its way before it asks the service.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import struct
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from balans_edge.core.components import Command, CommandCode, CommandOutcome
from balans_edge.core.tasks import cancel
from balans_edge.plugins.dmesh.codec import (
    FirmwareBegin,
    FirmwareBlock,
    FirmwareEnd,
    FirmwareResult,
    FirmwareResultCode,
)
from balans_edge.plugins.dmesh.commands import device_id
from balans_edge.plugins.dmesh.session import CommandRefused

if TYPE_CHECKING:
    from balans_edge.plugins.dmesh.driver import DmeshDriver
    from balans_edge.plugins.dmesh.session import Session

log = logging.getLogger(__name__)

MAGIC = b"DMFW"
_MANIFEST = struct.Struct(">4sIBI32s")
BLOCK_SIZE = 1024
WINDOW = 4
"""FIRMWARE_BLOCK frames in flight at once (each acknowledged on receipt)."""
MAX_IMAGE_ID = 2**32 - 1
MAX_SIZE = 2**32 - 1
TARGETS = {"concentrator": 1, "module": 2}
TARGET_NAMES = {v: k for k, v in TARGETS.items()}
SIDECAR_SUFFIX = ".sig.json"
MAX_RESULTS = 100_000
"""Firmware results of one concentrator read to find the newest accepted version."""
OUTCOMES = {code: code.name.lower() for code in FirmwareResultCode}
"""FIRMWARE_RESULT code -> journal outcome (accepted, bad_signature, bad_hash, bad_layout)."""


class FirmwareError(ValueError):
    """An image the host refuses to send (unsigned, badly signed, not matching its sidecar)."""


class FirmwareRefused(FirmwareError):
    """A verified image the host will not send without ``force``: older than
    the installed version, or of unknown version."""


class FirmwareBusy(RuntimeError):
    """The same image is already being pushed to that concentrator."""


Version = tuple[int, int, int]
"""(major, minor, patch): HELLO carries all three, TOPOLOGY major and minor (patch 0)."""
_VERSION = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})(?:\.([0-9]{1,3}))?")


def version_of(text: object) -> Version | None:
    """A version from "MAJOR.MINOR" or "MAJOR.MINOR.PATCH" (each 0..255, as the
    protocol carries them); None when ``text`` is not one."""
    match = _VERSION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    parts = tuple(int(p or 0) for p in match.groups())
    return parts if max(parts) <= 255 else None  # type: ignore[return-value]


def show_version(version: Version) -> str:
    return ".".join(map(str, version))


def manifest(image_id: int, target: int, size: int, sha256: bytes) -> bytes:
    """The 45 bytes the vendor signs."""
    return _MANIFEST.pack(MAGIC, image_id, target, size, sha256)


@dataclass(frozen=True)
class FirmwareImage:
    """A verified image, ready to send."""

    image_id: int
    target: int
    data: bytes
    signature: bytes
    version: Version | None = None
    """As the sidecar states it (not covered by the signature: the manifest has no version)."""

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @property
    def target_name(self) -> str:
        return TARGET_NAMES[self.target]

    def begin(self) -> FirmwareBegin:
        return FirmwareBegin(self.image_id, self.target, self.size, self.sha256, self.signature)

    @property
    def version_text(self) -> str | None:
        return show_version(self.version) if self.version is not None else None

    def describe(self) -> str:
        return (f"image {self.image_id} for the {self.target_name}, version {self.version_text or 'unknown'}, "
                f"{self.size} bytes, "
                f"sha256 {self.sha256.hex()[:16]}…")


def public_key(raw: str | bytes | None) -> Ed25519PublicKey:
    """The vendor key from 64 hex characters (or 32 raw bytes); FirmwareError if absent or malformed."""
    if raw is None or raw == "" or raw == b"":
        raise FirmwareError("no vendor public key configured ([plugins.dmesh] firmware_public_key)")
    if isinstance(raw, str):
        try:
            raw = bytes.fromhex(raw.strip())
        except ValueError:
            raise FirmwareError("firmware_public_key: expected 64 hex characters") from None
    if len(raw) != 32:
        raise FirmwareError(f"firmware_public_key: expected a 32-byte Ed25519 key, got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def check_public_key(value: str) -> str | None:
    """Configuration check: empty (no firmware updates) or 64 hex characters."""
    if value == "":
        return None
    try:
        public_key(value)
    except FirmwareError as exc:
        return str(exc).removeprefix("firmware_public_key: ")
    return None


def parse_sidecar(sidecar: Any) -> tuple[int, int, bytes, Version | None]:
    """(image_id, target code, signature, version or None) of a sidecar document; FirmwareError if malformed."""
    if not isinstance(sidecar, dict):
        raise FirmwareError('signature: expected {"image_id": ..., "target": ..., "version": ..., "signature": ...}')
    image_id = sidecar.get("image_id")
    if isinstance(image_id, bool) or not isinstance(image_id, int) or not 0 <= image_id <= MAX_IMAGE_ID:
        raise FirmwareError(f"signature: image_id must be an integer 0..{MAX_IMAGE_ID}, got {image_id!r}")
    target = sidecar.get("target")
    if target not in TARGETS:
        raise FirmwareError(f"signature: target must be one of {', '.join(TARGETS)}, got {target!r}")
    sig = sidecar.get("signature")
    try:
        signature = bytes.fromhex(sig) if isinstance(sig, str) else b""
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise FirmwareError("signature: expected 128 hex characters (an Ed25519 signature)")
    version = None
    if "version" in sidecar:
        version = version_of(sidecar["version"])
        if version is None:
            raise FirmwareError(f'signature: version must be "MAJOR.MINOR.PATCH" (each 0..255), '
                                f'got {sidecar["version"]!r}')
    return image_id, TARGETS[target], signature, version


def verify_image(data: bytes, sidecar: Any, key: str | bytes | Ed25519PublicKey | None) -> FirmwareImage:
    """Check an image against its sidecar and the vendor key; FirmwareError says why it is refused."""
    if sidecar is None:
        raise FirmwareError("unsigned image: no signature")
    image_id, target, signature, version = parse_sidecar(sidecar)
    if not data:
        raise FirmwareError("empty image")
    if len(data) > MAX_SIZE:
        raise FirmwareError(f"image too large: {len(data)} bytes")
    digest = hashlib.sha256(data).digest()
    # Optional fields some vendors add: a clearer message than "bad signature".
    if "size" in sidecar and sidecar["size"] != len(data):
        raise FirmwareError(f"size mismatch: the signature is for {sidecar['size']} bytes, the image has {len(data)}")
    if "sha256" in sidecar and str(sidecar["sha256"]).lower() != digest.hex():
        raise FirmwareError("hash mismatch: the image's sha256 is not the one in its signature file")
    vendor = key if isinstance(key, Ed25519PublicKey) else public_key(key)
    try:
        vendor.verify(signature, manifest(image_id, target, len(data), digest))
    except InvalidSignature:
        raise FirmwareError(
            "bad signature: not signed by the vendor key for this image (image modified, or signed by another key)"
        ) from None
    return FirmwareImage(image_id, target, bytes(data), signature, version)


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def load_image(path: str | Path, key: str | bytes | Ed25519PublicKey | None) -> FirmwareImage:
    """Read IMAGE.bin and IMAGE.bin.sig.json and verify them (FirmwareError otherwise)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FirmwareError(f"{path}: cannot read the image: {exc.strerror or exc}") from None
    side = sidecar_path(path)
    try:
        text = side.read_text("utf-8")
    except FileNotFoundError:
        raise FirmwareError(f"unsigned image: {side.name} not found next to {path.name}") from None
    except OSError as exc:
        raise FirmwareError(f"{side}: cannot read the signature: {exc.strerror or exc}") from None
    try:
        sidecar = json.loads(text)
    except ValueError as exc:
        raise FirmwareError(f"{side.name}: not valid JSON: {exc}") from None
    return verify_image(data, sidecar, key)


def sign_image(private_key: Ed25519PrivateKey, image_id: int, target: str, data: bytes,
               version: str | None = None) -> dict[str, Any]:
    """The sidecar document of an image (what the vendor's signing tool writes)."""
    digest = hashlib.sha256(data).digest()
    signature = private_key.sign(manifest(image_id, TARGETS[target], len(data), digest))
    sidecar = {"image_id": image_id, "target": target, "signature": signature.hex()}
    return sidecar if version is None else {**sidecar, "version": version}


# pushing ------------------------------------------------------------------------------


@dataclass
class _Progress:
    image: FirmwareImage
    acked: int = 0
    """Highest offset up to which every block was acknowledged."""


class FirmwarePusher:
    """Send verified images to concentrators; resume after a dropped link."""

    def __init__(self, driver: DmeshDriver) -> None:
        self.driver = driver
        self.context = driver.context
        self.config = driver.config
        self._progress: dict[tuple[int, int], _Progress] = {}
        self._results: dict[tuple[int, int], asyncio.Future[FirmwareResult]] = {}
        self._tasks: dict[tuple[int, int], asyncio.Task[dict[str, Any]]] = {}
        self._login = asyncio.Event()

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            await cancel(task)
        self._tasks.clear()

    def progress(self, concentrator_id: int, image_id: int) -> int:
        """Bytes acknowledged so far of a transfer in progress (0 if none)."""
        p = self._progress.get((concentrator_id, image_id))
        return p.acked if p is not None else 0

    # session callbacks --------------------------------------------------------

    def logged_in(self, concentrator_id: int) -> None:
        """Wake transfers waiting for a concentrator to come back."""
        self._login.set()
        self._login = asyncio.Event()

    def image(self, concentrator_id: int, image_id: int) -> FirmwareImage | None:
        """The image being pushed (or whose result is still awaited) under that id."""
        progress = self._progress.get((concentrator_id, image_id))
        return progress.image if progress is not None else None

    async def installed(self, concentrator_id: int, target: int) -> tuple[Version, str] | None:
        """The newest version known to run on the target (the concentrator, or
        any of its radio modules) with where it was learnt, or None."""
        known: list[tuple[Version | None, str]] = []
        if target == TARGETS["concentrator"]:
            session = self.driver.sessions().get(concentrator_id)
            if session is not None and session.hello is not None:
                hello = session.hello
                known.append(((hello.fw_major, hello.fw_minor, hello.fw_patch), "reported by the concentrator"))
        else:
            known += [(version_of(m.firmware), f"reported by module {m.module_id}")
                      for m in await self.context.registry.registry_list("modules")
                      if m.concentrator_id == concentrator_id]
        known += [(version_of(r["version"]), f"image {r['image_id']} accepted")
                  for r in await self.driver.repository.firmware_results(MAX_RESULTS, concentrator_id)
                  if r["result"] == FirmwareResultCode.ACCEPTED and r["target"] == target]
        return max(((v, where) for v, where in known if v is not None), default=None)

    async def check_version(self, concentrator_id: int, image: FirmwareImage, force: bool) -> str:
        """Raise FirmwareRefused for an older image or one of unknown version
        unless ``force``; return what a forced push is to record ('' if nothing)."""
        installed = await self.installed(concentrator_id, image.target)
        if image.version is None:
            problem = 'its signature file states no version ("version": "MAJOR.MINOR.PATCH")'
        elif installed is not None and image.version < installed[0]:
            problem = (f"version {show_version(image.version)} is older than the installed "
                       f"{show_version(installed[0])} ({installed[1]})")
        else:
            return ""
        if not force:
            raise FirmwareRefused(f"{problem}; force the push to send it anyway")
        return f"forced: {problem}"

    def result_arrived(self, concentrator_id: int, result: FirmwareResult) -> None:
        """Called by a session once a FIRMWARE_RESULT is stored."""
        key = (concentrator_id, result.image_id)
        progress = self._progress.pop(key, None)
        fut = self._results.get(key)
        if fut is not None and not fut.done():
            fut.set_result(result)
        elif progress is not None:
            log.info("dmesh: concentrator %d: firmware image %d result %d with no push waiting",
                     concentrator_id, result.image_id, result.result)

    # pushing ------------------------------------------------------------------

    async def push(self, concentrator_id: int, image: FirmwareImage, *, requested_by: str, reason: str,
                   force: bool = False) -> dict[str, Any]:
        """Send and track one verified image through the actuation service; return its audit record.

        An image older than the installed version, or of unknown version, is
        refused (FirmwareRefused) unless ``force``; a forced one says so in the
        journal. The transfer runs in its own task: a caller that stops waiting
        (an HTTP response timeout) does not abort it, and the journal gets its
        outcome."""
        if not requested_by or not reason:
            raise ValueError("a firmware push needs requested_by and reason for the audit")
        forced = await self.check_version(concentrator_id, image, force)
        key = (concentrator_id, image.image_id)
        if key in self._tasks:
            raise FirmwareBusy(f"image {image.image_id} is already being sent to concentrator {concentrator_id}")
        task = asyncio.create_task(self._push(concentrator_id, image, requested_by, reason, forced),
                                   name=f"dmesh-firmware-{concentrator_id}-{image.image_id}")
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None) if self._tasks.get(key) is t else None)
        return await asyncio.shield(task)

    async def _push(self, concentrator_id: int, image: FirmwareImage, requested_by: str, reason: str, forced: str
                    ) -> dict[str, Any]:
        command = await self.context.commands.execute(Command(
            f"concentrator:{concentrator_id}", CommandCode.FIRMWARE_PUSH, requested_by, reason,
            detail=f"{image.describe()} ({forced})" if forced else image.describe(), args={"image": image}))
        log.info("dmesh: concentrator %d: firmware %s: %s", concentrator_id, command.outcome, command.detail)
        return command.record()

    @staticmethod
    def can_push(command: Command) -> bool:
        """A firmware push this pusher executes: a verified image for ``concentrator:<id>``."""
        return device_id(command.target, "concentrator") is not None and isinstance(command.args.get("image"),
                                                                                    FirmwareImage)

    async def transfer(self, command: Command) -> CommandOutcome:
        """Execute a firmware push the actuation service routed here (see ``push``)."""
        outcome, detail = await self._transfer(device_id(command.target, "concentrator") or 0, command.args["image"])
        return CommandOutcome(outcome == OUTCOMES[FirmwareResultCode.ACCEPTED], detail, outcome)

    async def _transfer(self, concentrator_id: int, image: FirmwareImage) -> tuple[str, str]:
        """(outcome, detail) of one transfer."""
        key = (concentrator_id, image.image_id)
        if key in self._results:  # a push that did not come through ``push``, which refuses it (FirmwareBusy)
            return "failed", f"image {image.image_id} is already being sent to concentrator {concentrator_id}"
        session = self.driver.sessions().get(concentrator_id)
        if session is None or session.closing:
            return "failed", f"concentrator {concentrator_id} is not connected"
        progress = self._progress.get(key)
        if progress is None or progress.image.sha256 != image.sha256:
            progress = self._progress[key] = _Progress(image)
        progress.image = image
        timeout = self.config.firmware_timeout_s
        fut: asyncio.Future[FirmwareResult] = asyncio.get_running_loop().create_future()
        self._results[key] = fut
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await self._send(session, image, progress)
                        break
                    except ConnectionError:
                        log.info("dmesh: concentrator %d: link lost during firmware image %d at offset %d, "
                                 "resuming after it logs in again", concentrator_id, image.image_id, progress.acked)
                        session = await self._next_session(concentrator_id, session)
                result = await fut
        except TimeoutError:
            return "timeout", f"no result after {timeout:g} s ({progress.acked} of {image.size} bytes acknowledged)"
        except CommandRefused as exc:
            self._progress.pop(key, None)
            return "failed", str(exc)
        finally:
            if self._results.get(key) is fut:
                del self._results[key]
        try:
            name = FirmwareResultCode(result.result)
        except ValueError:
            return "failed", f"FIRMWARE_RESULT {result.result}"
        return OUTCOMES[name], name.name

    async def _next_session(self, concentrator_id: int, old: Session) -> Session:
        while True:
            session = self.driver.sessions().get(concentrator_id)
            if session is not None and session is not old and not session.closing:
                return session
            await self._login.wait()

    async def _send(self, session: Session, image: FirmwareImage, progress: _Progress) -> None:
        """BEGIN, the blocks from the acknowledged offset on, END; ConnectionError when the link drops."""
        await session.request(image.begin())
        in_flight: deque[tuple[int, asyncio.Task[None]]] = deque()
        try:
            for offset in range(progress.acked, image.size, BLOCK_SIZE):
                end = min(offset + BLOCK_SIZE, image.size)
                block = FirmwareBlock(image.image_id, offset, image.data[offset:end])
                in_flight.append((end, asyncio.create_task(session.request(block))))
                if len(in_flight) >= WINDOW:
                    await self._settle(in_flight, progress)
            while in_flight:
                await self._settle(in_flight, progress)
        finally:
            for _, task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*(task for _, task in in_flight), return_exceptions=True)
        await session.request(FirmwareEnd(image.image_id))

    @staticmethod
    async def _settle(in_flight: deque[tuple[int, asyncio.Task[None]]], progress: _Progress) -> None:
        # Blocks are acknowledged in order: the oldest one settles first.
        end, task = in_flight[0]
        await task
        in_flight.popleft()
        progress.acked = end
