"""Avatar names straight to the gRPC API: Speak, SpeakStream and a live session take an avatar's
name as ``talkmesh say --avatar NAME`` does (the renderer resolves it: services/renderer/server.py
``find_avatar``), through the five real services in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from talkmesh.client import AvatarNameError, LiveSession, TalkmeshClient
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import live_pb2_grpc
from talkmesh.v1 import types_pb2 as api
from tests.media import portrait, probe
from tests.mesh import inprocess_mesh


def _picture(path: Path, band: int, shift: int = 0) -> Path:
    """The default portrait (moved by ``shift`` px) with a grey band ``band`` px wide on its right:
    an avatar whose size tells its frames from the default avatar's (and from each other's)."""
    img = portrait()
    if shift:
        img = cv2.warpAffine(img, np.float32([[1, 0, shift], [0, 1, shift]]), (img.shape[1], img.shape[0]))
    cv2.imwrite(str(path), cv2.copyMakeBorder(img, 0, 0, 0, band, cv2.BORDER_CONSTANT, value=(90, 90, 90)))
    return path


async def _media(chunks: AsyncIterator[gpb.SpeakChunk]) -> bytes:
    return b"".join([c.media.data async for c in chunks if c.WhichOneof("kind") == "media"])


async def _error(chunks: AsyncIterator[gpb.SpeakChunk]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _media(chunks)
    return err.value


async def test_speak_speak_stream_and_live_take_an_avatar_name(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        wide = await client.register_avatar(_picture(tmp_path / "w.png", 128), name="Alice")
        size = (wide.width, wide.height)
        assert size == (640, 512)  # the default avatar is 512 x 512

        # Speak: the raw gRPC request with a name (no client-side lookup), decoded: the named
        # avatar's frames, at its native size
        request = gpb.SpeakRequest(
            text="Hello there.", avatar_id="Alice", output=gpb.OutputOptions(size="native", container=api.CONTAINER_MP4)
        )
        info = probe(await _media(client.stub.Speak(request, metadata=client.metadata())))
        assert (info.width, info.height) == size and info.frames > 5
        # in any case
        request.avatar_id = "aLiCe"
        assert probe(await _media(client.stub.Speak(request, metadata=client.metadata()))).width == wide.width

        # SpeakStream (text as an LLM writes it)
        async def pieces() -> AsyncIterator[str]:
            for piece in ("Hello ", "again."):
                yield piece

        streamed = client.speak_stream(pieces(), avatar="alice", size="native", container=api.CONTAINER_MP4)
        info = probe(await _media(streamed))
        assert (info.width, info.height) == size and info.frames > 5

        # a live session started with a name: SessionStarted names the avatar's id, at its size
        async with client.live(avatar="ALICE", size="native") as live:
            assert live.started is not None
            assert live.started.avatar_id == wide.id
            assert (live.started.width, live.started.height) == size

        # GetAvatar: what the clients show (the CLI's `avatar rm NAME`)
        found = await client.get_avatar("alice")
        assert (found.id, found.name) == (wide.id, "Alice")
        assert await client.find_avatar("alice") == (wide.id, "Alice")
        assert await client.find_avatar(wide.id) == (wide.id, "")

        # unknown: NOT_FOUND naming avatar_id (config.avatar_id for a live session), before any media
        err = await _error(client.speak("Hi.", avatar="nobody"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == "avatar_id: avatar 'nobody' not found"
        with pytest.raises(grpc.aio.AioRpcError) as live_err:
            async with client.live(avatar="nobody"):
                pass
        assert live_err.value.code() == grpc.StatusCode.NOT_FOUND
        assert live_err.value.details() == "config.avatar_id: avatar 'nobody' not found"

        # a name two avatars carry in another case: the exact one wins; in a third case it is
        # ambiguous (FAILED_PRECONDITION naming avatar_id and both ids)
        other = await client.register_avatar(_picture(tmp_path / "o.png", 64, shift=6), name="alice")
        assert other.id != wide.id and (await client.get_avatar("alice")).id == other.id
        err = await _error(client.speak("Hi.", avatar="ALICE"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("avatar_id: 2 avatars are named 'ALICE'")
        assert wide.id in err.details() and other.id in err.details()
        with pytest.raises(grpc.aio.AioRpcError) as live_err:
            async with client.live(avatar="ALICE"):
                pass
        assert live_err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert live_err.value.details().startswith("config.avatar_id: 2 avatars are named 'ALICE'")
        # the id always works
        info = probe(await _media(client.speak("Hi.", avatar=wide.id, size="native", container=api.CONTAINER_MP4)))
        assert (info.width, info.height) == size


async def test_a_renderer_without_get_avatar_still_takes_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rolling upgrade: the gateway asks the renderer's GetAvatar, which a renderer older than
    this gateway does not have (UNIMPLEMENTED). An id then goes on as it is, as before; it is not
    an INTERNAL error."""
    from services.renderer.server import RendererServicer

    async def unknown_method(self: object, request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")  # as grpc answers one

    monkeypatch.setattr(RendererServicer, "GetAvatar", unknown_method)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        wide = await client.register_avatar(_picture(tmp_path / "w.png", 128))
        request = gpb.SpeakRequest(
            text="Hello there.", avatar_id=wide.id, output=gpb.OutputOptions(size="native", container=api.CONTAINER_MP4)
        )
        info = probe(await _media(client.stub.Speak(request, metadata=client.metadata())))
        assert (info.width, info.height) == (wide.width, wide.height) and info.frames > 5


async def test_the_deprecated_client_name_lookup_still_works_and_warns(tmp_path: Path) -> None:
    """Call sites written before the server resolved names: ``resolve_avatar``, ``except
    AvatarNameError`` and ``LiveSession(resolve_avatar=...)`` keep working, with a DeprecationWarning."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        bob = await client.register_avatar(_picture(tmp_path / "b.png", 128), name="Bob")
        with pytest.warns(DeprecationWarning, match="resolve_avatar is deprecated"):
            assert await client.resolve_avatar("bob") == bob.id
        with pytest.warns(DeprecationWarning):
            assert await client.resolve_avatar(bob.id) == bob.id
        with pytest.warns(DeprecationWarning):
            assert await client.resolve_avatar("nobody") == "nobody"  # unknown: as given

        with pytest.warns(DeprecationWarning, match=r"LiveSession\(resolve_avatar=...\) is deprecated"):
            session = LiveSession(
                live_pb2_grpc.LiveStub(client.channel),
                lpb.LiveConfig(avatar_id="BOB", size="native"),
                60.0,
                client.metadata,
                client.resolve_avatar,
            )
        with pytest.warns(DeprecationWarning):
            async with session as live:
                assert live.started is not None and live.started.avatar_id == bob.id

        other = await client.register_avatar(_picture(tmp_path / "o.png", 64, shift=6), name="BOB")
        for catch in (AvatarNameError, ValueError, grpc.aio.AioRpcError):
            with pytest.warns(DeprecationWarning), pytest.raises(catch) as exc:
                await client.resolve_avatar("bOb")  # two avatars in another case: ambiguous
            assert isinstance(exc.value, AvatarNameError)
            assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "2 avatars are named 'bOb'" in str(exc.value)
            assert bob.id in str(exc.value) and other.id in str(exc.value)
        with pytest.raises(AvatarNameError):
            await client.find_avatar("bOb")
