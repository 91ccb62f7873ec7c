"""Avatar owners in the renderer: the principal the gateway names in metadata (talkmesh.common.principal)."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest

from services.renderer.avatars import default_avatar_bytes
from services.renderer.main import create_service, load_config
from talkmesh.common.channel import create_channel
from talkmesh.common.principal import Principal
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc

PORTRAIT = default_avatar_bytes()


def _mirrored() -> bytes:
    img = cv2.imdecode(np.frombuffer(PORTRAIT, np.uint8), cv2.IMREAD_COLOR)
    return bytes(cv2.imencode(".png", cv2.flip(img, 1))[1])


async def _upload(data: bytes):
    yield rpb.AvatarUpload(meta=rpb.AvatarMeta(name="m", filename="m.png"))
    yield rpb.AvatarUpload(data=data)


async def test_quota_checked_after_preparation_undoes_the_registration(tmp_path):
    """The upload fits the quota but its decoded frames do not: nothing of it stays on disk."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    data = _mirrored()
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        small = Principal("small", avatar_disk_bytes=len(data) + 1000).metadata()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(_upload(data), metadata=small)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "avatar_disk_bytes" not in err.value.details() and "delete avatars first" in err.value.details()
        store = service.store
        assert [a.name for a in store.list()] == ["default"], "the prepared entry was removed"

        big = Principal("big", avatar_disk_bytes=10**9).metadata()
        info = await stub.RegisterAvatar(_upload(data), metadata=big)
        assert store.owners(info.id) == {"big"} and store.disk_bytes(info.id) > len(data)
        # Someone else registering the same file while over quota does not take it from its owner.
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.RegisterAvatar(_upload(data), metadata=small)
        assert store.owners(info.id) == {"big"} and store.exists(info.id)
        # Without metadata (no API keys): every avatar is listed, no owner is needed to delete.
        assert len((await stub.ListAvatars(rpb.ListAvatarsRequest())).avatars) == 2
        other = Principal("other").metadata()
        assert len((await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=other)).avatars) == 1
        admin = Principal("ops", role="admin").metadata()
        assert len((await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=admin)).avatars) == 2
        assert (await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id="nope"), metadata=other)).deleted is False
        assert (await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=info.id))).deleted


async def _named(data: bytes, name: str):
    yield rpb.AvatarUpload(meta=rpb.AvatarMeta(name=name, filename="crop.png"))
    yield rpb.AvatarUpload(data=data)


async def test_registering_a_file_again_with_a_name_renames_it_only_for_its_owner(tmp_path):
    """`avatar add crop.png --name other` after `--name crop` renames the key's own avatar (for
    every replica: meta.json), an upload without a name keeps it; another key uploading the same
    bytes, or anyone uploading the default portrait, renames nothing."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    data = _mirrored()
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        alice, mallory = Principal("alice").metadata(), Principal("mallory").metadata()
        first = await stub.RegisterAvatar(_named(data, "crop"), metadata=alice)
        assert first.name == "crop" and not first.cached
        again = await stub.RegisterAvatar(_named(data, "other"), metadata=alice)
        assert again.cached and again.id == first.id and again.name == "other"
        unnamed = await stub.RegisterAvatar(_named(data, ""), metadata=alice)
        assert unnamed.name == "other"
        taken = await stub.RegisterAvatar(_named(data, "renamed-by-mallory"), metadata=mallory)
        assert taken.name == "other"
        await stub.RegisterAvatar(_named(PORTRAIT, "pwned"), metadata=mallory)
        names = {a.name for a in service.store.list()}  # type: ignore[attr-defined]
        assert names == {"default", "other"}
        listed = await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=alice)
        assert {a.name for a in listed.avatars} == {"default", "other"}
