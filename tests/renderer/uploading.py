"""What the renderer's upload tests share: a renderer service with ``avatars.*`` settings, the
first bytes of an MP4, and an upload that trickles a few bytes and then waits to be cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from services.renderer.main import create_service, load_config
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import renderer_pb2 as rpb

#: passes the format check (an MP4 ``ftyp`` box), decodes as nothing
MP4_HEAD = b"\0\0\0\x18ftypisom" + bytes(20)


def upload_service(tmp_path: Path, **avatars: str) -> Any:
    """A renderer service (not started) with these ``avatars.*`` settings."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    env.update({f"TALKMESH_RENDERER__AVATARS__{k.upper()}": v for k, v in avatars.items()})
    return create_service(load_config(None, env=env), Telemetry("renderer"))


async def trickled_upload(stub: Any) -> grpc.aio.AioRpcError:
    """Registers an upload that sends an MP4's head and a byte every 0.2 s three times, then waits;
    returns the error the renderer cut it with, once grpc's task that reads its requests has
    ended. It is cut while it waits, not while it writes: a write racing the status makes grpc's
    client answer INTERNAL (grpc/grpc#36066)."""
    cut = asyncio.Event()

    async def trickle() -> AsyncIterator[rpb.AvatarUpload]:
        yield rpb.AvatarUpload(meta=rpb.AvatarMeta(filename="v.mp4"))
        yield rpb.AvatarUpload(data=MP4_HEAD)
        for _ in range(3):
            await asyncio.sleep(0.2)
            yield rpb.AvatarUpload(data=b"\0")
        await cut.wait()  # (until the status is in: then the request stream ends)

    try:
        await stub.RegisterAvatar(trickle())
    except grpc.aio.AioRpcError as exc:
        return exc
    finally:
        cut.set()
        await asyncio.sleep(0.05)  # grpc's task that reads the requests ends
    raise AssertionError("the trickling upload was not cut")
