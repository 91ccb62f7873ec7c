"""Statuses for external clients carry no internal addresses, file paths or exception text; logs do."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from talkmesh.common.channel import create_channel
from talkmesh.common.errors import ErrorDetails, NotFound, StageError, scrub, scrub_text
from talkmesh.common.server import Service
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve

SECRET_PATH = "/var/lib/talkmesh/avatars/3f2a9c/frames.npy"
LEAKS = ("10.2.3.4", "50054", "/var/lib", "frames.npy", "ZeroDivisionError", "renderer-7d9f:50054")


def test_scrub_text_removes_addresses_and_paths():
    text = (
        "connections to all backends failing; last error: UNKNOWN: ipv4:10.2.3.4:50054: Failed to connect; "
        f"dns:///renderer-7d9f:50054 and [fd00::1]:50053 and unix:///run/talkmesh/renderer.sock; file {SECRET_PATH}"
    )
    out = scrub_text(text)
    assert "connections to all backends failing" in out and "Failed to connect" in out
    for leak in (*LEAKS, "fd00::1", "renderer.sock", "/run/"):
        assert leak not in out, (leak, out)
    # What clients need stays: fields, numbers, MIME types, the stage's name.
    kept = "renderer: output.size: 'huge' is not one of 256p, 512p; limit 5000 chars; image/png"
    assert scrub_text(kept) == kept


def test_internal_errors_become_opaque():
    msg, details = scrub(grpc.StatusCode.INTERNAL, "renderer: internal error: ZeroDivisionError: float division", [])
    assert msg == "renderer: internal error (see the server's logs)" and details == []
    msg, _ = scrub(grpc.StatusCode.UNKNOWN, f"Exception iterating responses: {SECRET_PATH}", [])
    assert msg == "internal error (see the server's logs)"


def test_detail_messages_are_scrubbed_too():
    info = error_details_pb2.ResourceInfo(resource_type="avatar", resource_name="a1", description=SECRET_PATH)
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="avatar_id", description="at 10.2.3.4:1")]
    )
    msg, (res, req) = scrub(grpc.StatusCode.NOT_FOUND, f"avatar_id: not in {SECRET_PATH}", [info, bad])
    assert SECRET_PATH not in msg and "avatar_id" in msg
    assert res.resource_name == "a1" and SECRET_PATH not in res.description
    assert req.field_violations[0].field == "avatar_id" and "10.2.3.4" not in req.field_violations[0].description
    assert info.description == SECRET_PATH  # the original is untouched (logs, spans)


class Leaky(Service):
    """Handlers that fail the ways a stage does: an exception, a downstream status, a NotFound."""

    name = "gateway"

    def __init__(self, external: bool) -> None:
        super().__init__(Telemetry("gateway"))
        self.external = external

    def register(self, server: grpc.aio.Server) -> list[str]:
        async def crash(request: bytes, context: Any) -> bytes:
            raise ZeroDivisionError(f"float division by zero reading {SECRET_PATH}")

        async def downstream(request: bytes, context: Any) -> bytes:
            raise StageError("renderer", FakeRpcError())

        async def missing(request: bytes, context: Any) -> bytes:
            raise NotFound("avatar_id", SECRET_PATH, "avatar")

        handlers = {
            name: grpc.unary_unary_rpc_method_handler(fn)
            for name, fn in (("Crash", crash), ("Downstream", downstream), ("Missing", missing))
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Leaky", handlers)])
        return ["test.Leaky"]


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="failed to connect to all addresses; last error: UNKNOWN: ipv4:10.2.3.4:50054: Connection refused",
        )


async def _statuses(external: bool) -> dict[str, grpc.aio.AioRpcError]:
    out = {}
    async with serve(Leaky(external)) as host, create_channel(host.address) as ch:
        for method in ("Crash", "Downstream", "Missing"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(f"/test.Leaky/{method}")(b"", timeout=5)
            out[method] = err.value
    return out


async def test_the_gateway_scrubs_statuses_and_logs_keep_them(caplog):
    caplog.set_level(logging.INFO)
    statuses = await _statuses(external=True)
    crash = statuses["Crash"]
    assert crash.code() == grpc.StatusCode.INTERNAL
    assert crash.details() == "internal error (see the server's logs)"
    down = statuses["Downstream"]
    assert down.code() == grpc.StatusCode.UNAVAILABLE
    assert down.details().startswith("renderer: failed to connect to all addresses")
    missing = statuses["Missing"]
    assert missing.code() == grpc.StatusCode.NOT_FOUND and ErrorDetails.of(missing).field == "avatar_id"
    for err in statuses.values():
        seen = (err.details() or "") + repr(ErrorDetails.of(err).messages)
        for leak in LEAKS:
            assert leak not in seen, (leak, seen)
    logged = caplog.text
    assert "ZeroDivisionError" in logged and SECRET_PATH in logged and "10.2.3.4:50054" in logged


async def test_internal_services_keep_the_full_text():
    statuses = await _statuses(external=False)
    assert "ZeroDivisionError" in (statuses["Crash"].details() or "")
    assert "10.2.3.4:50054" in (statuses["Downstream"].details() or "")
