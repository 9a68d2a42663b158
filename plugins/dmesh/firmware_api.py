"""Firmware pushes over HTTP (role admin) and ``balans-edge dmesh firmware push``.

The route verifies the image against the vendor key before anything is sent
(422 with the reason when it is refused), pushes it on the concentrator's link
and answers the audited outcome. The command line verifies the image locally
too (with the key of ``-c FILE``) and calls that route of the running server.
"""

from __future__ import annotations

import base64
import binascii
import json as _json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core.times import iso
from balans_edge.http_schema import CommandRecord, Reason, expected, free_form
from balans_edge.plugins.dmesh.firmware import (
    MAX_IMAGE_ID,
    TARGETS,
    FirmwareBusy,
    FirmwareError,
    FirmwareRefused,
    load_image,
    parse_sidecar,
    sidecar_path,
    verify_image,
)
from balans_edge.routes import ApiError, Param, Route, json

if TYPE_CHECKING:
    import click

    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.dmesh.driver import DmeshDriver

PATH = "/api/v1/dmesh/concentrators/{id}/firmware"

Sidecar = free_form(
    "FirmwareSignature",
    "The vendor's signature file (IMAGE.sig.json) as it came: checked against the image and the vendor key "
    "(422 refused, with the reason); vendors may add fields such as size and sha256",
    {"properties": {"image_id": {"type": "integer", "minimum": 0, "maximum": MAX_IMAGE_ID},
                    "target": {"enum": sorted(TARGETS)},
                    "version": {"type": "string", "description": "MAJOR.MINOR.PATCH, each 0..255"},
                    "signature": {"type": "string", "description": "Ed25519 signature: 128 hex characters"},
                    "size": {"type": "integer"}, "sha256": {"type": "string"}},
     "required": ["image_id", "target", "signature"]})


class FirmwarePush(Struct):
    """A vendor-signed firmware image for a concentrator (or its radio modules), and why."""

    image: Annotated[str, Meta(min_length=1, description="the image in base64"), expected("the image in base64")]
    reason: Reason
    signature: Sidecar | None = None  # type: ignore[valid-type]
    force: Annotated[bool, Meta(description="send it even if older than the installed version or stating no "
                                            "version (audited)")] = False


def firmware_routes(context: PluginContext, driver: Callable[[], DmeshDriver | None]) -> list[Route]:
    async def push(request: Request, concentrator_id: int, body: FirmwarePush) -> Any:
        cid, reason, force = concentrator_id, body.reason, body.force
        try:
            data = base64.b64decode(body.image, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_body", "image: not valid base64") from None
        running = driver()
        if running is None:
            raise ApiError(503, "unavailable", "the DMesh driver is not running")
        if running.key_of(cid) is None:
            raise ApiError(404, "not_found", f"concentrator {cid} is not configured")
        if not running.config.firmware_public_key:
            raise ApiError(503, "unavailable", "no vendor public key configured ([plugins.dmesh] firmware_public_key)")
        try:
            image = verify_image(data, body.signature, running.config.firmware_public_key)
        except FirmwareError as exc:
            raise ApiError(422, "refused", f"image refused: {exc}") from None
        try:
            record = await running.firmware.push(cid, image, requested_by=f"api:{request.ctx.user}",
                                                 reason=reason, force=force)
        except FirmwareRefused as exc:
            raise ApiError(422, "refused", f"image refused: {exc}") from None
        except FirmwareBusy as exc:
            raise ApiError(409, "busy", str(exc)) from None
        return json({**record, "t": iso(record["t"])})

    return [
        Route("POST", "/api/v1/dmesh/concentrators/<concentrator_id>/firmware", push,
              "Send a vendor-signed firmware image to a concentrator (or its radio modules), "
              "verified before anything is sent; answered with the audited outcome",
              role="admin", params=(Param("concentrator_id", type="integer", minimum=1, maximum=2**32 - 1),),
              tags=("dmesh",), body=FirmwarePush, response=CommandRecord,
              responses={200: "the audited push: id, outcome (accepted, bad_signature, bad_hash, bad_layout, "
                              "timeout or failed), detail",
                         400: "bad body or no reason", 404: "concentrator not configured",
                         409: "the same image is already being sent to it",
                         422: "error code refused: image unsigned, badly signed, size or hash mismatch; or, "
                              "unless force is true, older than the installed version or stating no version",
                         503: "driver not running or no vendor key configured"}),
    ]


# command line ---------------------------------------------------------------------------


def add_commands(group: click.Group) -> None:
    import click

    from balans_edge import cli as _cli

    firmware = group.commands.get("firmware")
    if not isinstance(firmware, click.Group):
        firmware = click.Group("firmware", help="Firmware updates of concentrators and radio modules.")
        group.add_command(firmware)

    @firmware.command("push")
    @_cli.CONFIG_OPTION
    @click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--concentrator", "concentrator_id", required=True, type=click.IntRange(1, 2**32 - 1),
                  help="Concentrator id.")
    @click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="The running server.")
    @click.option("--token", default=None, help=f"Bearer token of an admin (default: ${_cli.BEARER_ENV}).")
    @click.option("--reason", default=None, help="Why, for the audit (default: names the image file).")
    @click.option("--force", is_flag=True,
                  help="Send it even if it is older than the installed version or states no version (audited).")
    def push_command(config_path: Path | None, image: Path, concentrator_id: int, url: str, token: str | None,
                     reason: str | None, force: bool) -> None:
        """Verify IMAGE and its IMAGE.sig.json and send it to a concentrator
        through the running server (exit 0 when the concentrator accepted it).
        The server refuses an image older than the installed version unless
        --force is given; give --reason to say why for the audit."""
        import httpx

        def fail(message: str) -> None:
            click.echo(f"error: {message}", err=True)
            raise SystemExit(1)

        token = token or os.environ.get(_cli.BEARER_ENV)
        if not token:
            fail(f"no token: give --token or set {_cli.BEARER_ENV}")
        side = sidecar_path(image)
        try:
            if config_path is not None:
                _, config = _cli.prepare(config_path)
                verified = load_image(image, config.plugins["dmesh"].firmware_public_key)
                click.echo(f"verified: {verified.describe()}")
            else:
                if not side.is_file():
                    raise FirmwareError(f"unsigned image: {side.name} not found next to {image.name}")
                try:
                    parse_sidecar(_json.loads(side.read_text("utf-8")))
                except ValueError as exc:
                    raise FirmwareError(f"{side.name}: {exc}") from None
                click.echo("not verified locally (no -c FILE): the server verifies the signature", err=True)
        except FirmwareError as exc:
            fail(f"image refused: {exc}")
        body = {
            "image": base64.b64encode(image.read_bytes()).decode("ascii"),
            "signature": _json.loads(side.read_text("utf-8")),
            "reason": reason or f"firmware update from {image.name}",
            "force": force,
        }
        endpoint = url.rstrip("/") + PATH.format(id=concentrator_id)
        try:
            r = httpx.post(endpoint, json=body, headers={"Authorization": f"Bearer {token}"},
                           timeout=httpx.Timeout(30.0, read=None))
        except httpx.HTTPError as exc:
            fail(f"{endpoint}: {exc}")
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        if r.status_code != 200:
            message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
            fail(f"HTTP {r.status_code}: {message or r.text.strip()}")
        click.echo(f"{answer.get('outcome')}: {answer.get('detail')} (journal id {answer.get('id')})")
        if answer.get("outcome") != "accepted":
            raise SystemExit(1)
