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
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc
from tests.media import portrait

PORTRAIT = default_avatar_bytes()


def _mirrored() -> bytes:
    img = portrait()
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


def _names(listed: rpb.ListAvatarsResponse) -> dict[str, list[str]]:
    return {a.id: list(a.names) for a in listed.avatars}


async def test_registering_a_stored_file_under_another_name_adds_the_name(tmp_path):
    """Without API keys every caller is one principal: two users uploading the same photo as "a"
    and "b" get one avatar with both names, and neither name stops working (it used to be renamed,
    and `say --avatar a` was NOT_FOUND). Deleting by one name leaves the other; the last one deletes."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    data = _mirrored()
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        first = await stub.RegisterAvatar(_named(data, "a"))
        assert first.name == "a" and list(first.names) == ["a"] and not first.cached
        again = await stub.RegisterAvatar(_named(data, "b"))
        assert again.cached and again.id == first.id
        assert again.name == "b" and list(again.names) == ["b", "a"]
        unnamed = await stub.RegisterAvatar(_named(data, ""))
        assert unnamed.name == "a" and list(unnamed.names) == ["a", "b"]
        listed = await stub.ListAvatars(rpb.ListAvatarsRequest())
        assert _names(listed)[first.id] == ["a", "b"]
        assert next(a for a in listed.avatars if a.id == first.id).name == "a", "the first name stays first"

        gone = await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=first.id, name="a"))
        assert gone.deleted and service.store.exists(first.id)  # type: ignore[attr-defined]
        assert _names(await stub.ListAvatars(rpb.ListAvatarsRequest()))[first.id] == ["b"]
        missing = await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=first.id, name="a"))
        assert not missing.deleted and service.store.exists(first.id)  # type: ignore[attr-defined]
        last = await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=first.id, name="b"))
        assert last.deleted and not service.store.exists(first.id)  # type: ignore[attr-defined]


async def test_an_entry_stored_before_names_keeps_its_name(tmp_path):
    """An entry written before names.json (meta.json's name only) registered again with a new
    name keeps its first name too."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    data = _mirrored()
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        first = await stub.RegisterAvatar(_named(data, "old"))
        (tmp_path / "cache" / first.id / "names.json").unlink()
        assert _names(await stub.ListAvatars(rpb.ListAvatarsRequest()))[first.id] == ["old"]
        await stub.RegisterAvatar(_named(data, "new"))
        assert _names(await stub.ListAvatars(rpb.ListAvatarsRequest()))[first.id] == ["old", "new"]


async def test_each_api_key_names_its_avatars_for_itself(tmp_path):
    """`avatar add crop.png --name other` after `--name crop` adds a name to the key's own avatar
    (for every replica: names.json), an upload without a name adds none; another key uploading the
    same bytes names it for itself only (it neither sees nor changes the first key's names, nor can
    delete them), and anyone uploading the default portrait names nothing."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    data = _mirrored()
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        alice, mallory = Principal("alice").metadata(), Principal("mallory").metadata()
        admin = Principal("ops", role="admin").metadata()
        first = await stub.RegisterAvatar(_named(data, "crop"), metadata=alice)
        assert first.name == "crop" and not first.cached
        again = await stub.RegisterAvatar(_named(data, "other"), metadata=alice)
        assert again.cached and again.id == first.id and again.name == "other"
        unnamed = await stub.RegisterAvatar(_named(data, ""), metadata=alice)
        assert list(unnamed.names) == ["crop", "other"]
        taken = await stub.RegisterAvatar(_named(data, "mine"), metadata=mallory)
        assert taken.id == first.id and list(taken.names) == ["mine"]
        pwned = await stub.RegisterAvatar(_named(PORTRAIT, "pwned"), metadata=mallory)
        assert list(pwned.names) == ["default"]

        listed = await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=alice)
        assert {a.name for a in listed.avatars} == {"default", "crop"}
        assert _names(listed)[first.id] == ["crop", "other"]
        assert _names(await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=mallory))[first.id] == ["mine"]
        everyone = _names(await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=admin))
        assert everyone[first.id] == ["crop", "other", "mine"] and everyone[pwned.id] == ["default"]

        # mallory cannot remove alice's names; removing her own last one gives up her share only
        crop = rpb.DeleteAvatarRequest(avatar_id=first.id, name="crop")
        assert not (await stub.DeleteAvatar(crop, metadata=mallory)).deleted
        mine = rpb.DeleteAvatarRequest(avatar_id=first.id, name="mine")
        assert (await stub.DeleteAvatar(mine, metadata=mallory)).deleted
        store = service.store  # type: ignore[attr-defined]
        assert store.owners(first.id) == {"alice"} and store.exists(first.id)
        assert _names(await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=alice))[first.id] == ["crop", "other"]
        assert first.id not in _names(await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=mallory))
        default_name = rpb.DeleteAvatarRequest(avatar_id=pwned.id, name="default")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeleteAvatar(default_name, metadata=mallory)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # a key uploading the same bytes without a name sees none of alice's names, nor can use
        # them: its upload is named as a fresh one would be, after its file
        bob = Principal("bob").metadata()
        quiet = await stub.RegisterAvatar(_named(data, ""), metadata=bob)
        assert quiet.id == first.id and quiet.name == "crop" and list(quiet.names) == ["crop"]
        assert _names(await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=bob))[first.id] == ["crop"]
        assert (await stub.DeleteAvatar(crop, metadata=bob)).deleted  # his own "crop": his share goes
        assert store.owners(first.id) == {"alice"}
        assert _names(await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=alice))[first.id] == ["crop", "other"]
        for blank in ("   ", "\u200b"):  # a name of nothing is refused, not taken for "the whole avatar"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=first.id, name=blank), metadata=alice)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("name: ")
        assert store.exists(first.id)


async def test_cached_is_reported_for_the_callers_own_avatars_only(tmp_path):
    """Bob uploading the file alice registered gets the answer of a fresh upload (not cached, his
    own name, the backends he asked for), not a sign that another key holds it; the prepared entry
    is still shared. His second upload, and alice's, are cached; without keys, every caller is one."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    data = _mirrored()
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        alice, bob = Principal("alice").metadata(), Principal("bob").metadata()
        secret = await stub.RegisterAvatar(_named(data, "alice-secret"), metadata=alice)
        assert not secret.cached
        fresh = await stub.RegisterAvatar(_named(_shifted(), ""), metadata=Principal("carol").metadata())
        bobs = await stub.RegisterAvatar(_named(data, ""), metadata=bob)
        assert bobs.id == secret.id, "the entry is shared"
        assert not bobs.cached
        assert (bobs.name, list(bobs.names), list(bobs.backends)) == (
            fresh.name, list(fresh.names), list(fresh.backends)
        ), "the answer a fresh upload gets"
        assert "alice-secret" not in str(bobs)
        assert service.store.owners(secret.id) == {"alice", "bob"}  # type: ignore[attr-defined]
        # Only the registration's answer is the caller's view: GetAvatar shows the shared entry
        # (cached: on disk; every backend prepared for it), never alice's names (docs/SECURITY.md).
        got = await stub.GetAvatar(rpb.GetAvatarRequest(avatar_id=bobs.id), metadata=bob)
        assert got.cached and list(got.names) == list(bobs.names) and "alice-secret" not in str(got)
        assert set(got.backends) >= set(bobs.backends)
        assert (await stub.RegisterAvatar(_named(data, ""), metadata=bob)).cached
        assert (await stub.RegisterAvatar(_named(data, ""), metadata=alice)).cached
        assert (await stub.RegisterAvatar(_named(data, ""))).cached  # (no API keys: one caller)
        # the default avatar is everyone's: no secret to keep
        assert (await stub.RegisterAvatar(_named(PORTRAIT, ""), metadata=bob)).cached


def _shifted() -> bytes:
    """A third picture of a face (the portrait moved a little): another avatar."""
    img = portrait()
    moved = cv2.warpAffine(img, np.float32([[1, 0, 6], [0, 1, 4]]), (img.shape[1], img.shape[0]))
    return bytes(cv2.imencode(".png", moved)[1])


async def test_a_name_names_one_avatar(tmp_path):
    """Without API keys: another photo under a taken name is ALREADY_EXISTS (and not kept); a
    photo named after its file, whose name is taken, gets the first free variant."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        first = await stub.RegisterAvatar(_named(_mirrored(), "dup"))
        before = {a.id for a in (await stub.ListAvatars(rpb.ListAvatarsRequest())).avatars}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(_named(_shifted(), "dup"))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert err.value.details().startswith(f"name: 'dup' is already the name of avatar {first.id}")
        assert {a.id for a in (await stub.ListAvatars(rpb.ListAvatarsRequest())).avatars} == before
        same = await stub.RegisterAvatar(_named(_mirrored(), "dup"))  # the same photo again: fine
        assert same.id == first.id and list(same.names) == ["dup"]
        # named after its file ("crop.png"), when "crop" is taken: "crop-2"
        await stub.RegisterAvatar(_named(_mirrored(), "crop"))
        unnamed = await stub.RegisterAvatar(_named(_shifted(), ""))
        assert unnamed.id != first.id and list(unnamed.names) == ["crop-2"]


async def test_with_api_keys_a_name_names_one_avatar_of_each_key(tmp_path):
    """Names are per key: bob may call another photo what alice calls hers; alice may not give
    her name to a second photo, and that refusal does not make her an owner of it."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        alice, bob = Principal("alice").metadata(), Principal("bob").metadata()
        mine = await stub.RegisterAvatar(_named(_mirrored(), "dup"), metadata=alice)
        his = await stub.RegisterAvatar(_named(_shifted(), "dup"), metadata=bob)
        assert his.id != mine.id and list(his.names) == ["dup"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(_named(_shifted(), "dup"), metadata=alice)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        store = service.store  # type: ignore[attr-defined]
        assert store.owners(his.id) == {"bob"} and store.exists(his.id)


def _wide(band: int = 128) -> bytes:
    """The portrait with a band on its right: an avatar of its own size (its frames tell it apart)."""
    img = portrait()
    wide = cv2.copyMakeBorder(img, 0, 0, 0, band, cv2.BORDER_CONSTANT, value=(90, 90, 90))
    return bytes(cv2.imencode(".png", wide)[1])


async def _render(config: rpb.RenderConfig):
    yield rpb.RenderRequest(request_id="r", config=config)
    for i in range(2):  # two silent frames
        activity = cpb.FrameActivity(rms_dbfs=-90.0)
        feature = fpb.FeatureChunk(request_id="r", frame_index=i, activity=activity)
        yield rpb.RenderRequest(request_id="r", seq=1 + i, features=feature)
    yield rpb.RenderRequest(request_id="r", seq=3, end_of_stream=True)


async def _frame_sizes(stub: renderer_pb2_grpc.RendererStub, avatar: str, metadata) -> set[tuple[int, int]]:
    config = rpb.RenderConfig(request_id="r", avatar_id=avatar, size="native", fps=25, sample_rate=16000)
    messages = [m async for m in stub.Render(_render(config), metadata=metadata)]
    return {(m.width, m.height) for m in messages if m.width}


async def test_the_renderer_resolves_avatar_names_for_each_api_key(tmp_path):
    """GetAvatar and Render take a name as they take an id (the one place names are resolved): an
    id wins, else the name exactly, else in any case, of one avatar the key may use. A name of two
    avatars (in any case) is FAILED_PRECONDITION naming avatar_id and both ids; another key's name,
    and another key's avatar even by id, answer as an unknown one (NOT_FOUND, nothing revealed)."""
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        alice, bob = Principal("alice").metadata(), Principal("bob").metadata()
        admin = Principal("ops", role="admin").metadata()
        wide = await stub.RegisterAvatar(_named(_wide(), "Alice"), metadata=alice)
        other = await stub.RegisterAvatar(_named(_shifted(), "alice"), metadata=alice)  # another case: allowed
        theirs = await stub.RegisterAvatar(_named(_mirrored(), "bobby"), metadata=bob)

        async def get(value: str, md) -> rpb.AvatarInfo:
            return await stub.GetAvatar(rpb.GetAvatarRequest(avatar_id=value), metadata=md)

        async def status(value: str, md) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await get(value, md)
            return err.value

        found = await get("Alice", alice)  # exact
        assert (found.id, found.name, found.width) == (wide.id, "Alice", wide.width)
        assert (await get("alice", alice)).id == other.id  # exact beats another case
        assert (await get(wide.id, alice)).id == wide.id and (await get(wide.id, alice)).name == "Alice"
        assert (await get("", alice)).name == "default" and (await get("default", bob)).name == "default"
        assert (await get("BOBBY", bob)).id == theirs.id  # in any case
        ambiguous = await status("ALICE", alice)  # in any case, two of alice's avatars
        assert ambiguous.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert ambiguous.details().startswith("avatar_id: 2 avatars are named 'ALICE'")
        assert wide.id in ambiguous.details() and other.id in ambiguous.details()
        # the admin sees every key's names: "bobby" is one avatar, "alice" exactly one too
        assert (await get("bobby", admin)).id == theirs.id
        for unknown in ("nobody", theirs.id, "bobby", "BOBBY"):  # bob's avatar and names, for alice
            err = await status(unknown, alice)
            assert err.code() == grpc.StatusCode.NOT_FOUND, unknown
            assert err.details() == f"avatar_id: avatar {unknown!r} not found"

        # Render: frames of the avatar the name names (its own size), for its key only
        size = (wide.width, wide.height)
        assert size != (theirs.width, theirs.height)
        assert await _frame_sizes(stub, "Alice", alice) == {size}
        assert await _frame_sizes(stub, wide.id, alice) == {size}
        assert await _frame_sizes(stub, "bobby", bob) == {(theirs.width, theirs.height)}
        for value in (wide.id, "Alice"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _frame_sizes(stub, value, bob)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == f"config.avatar_id: avatar {value!r} not found"

        # Delete: another key's avatar is an unknown one (False; PERMISSION_DENIED told it existed);
        # by a name, only that name goes
        for value in (wide.id, "Alice"):
            assert not (await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=value), metadata=bob)).deleted
        assert service.store.exists(wide.id)  # type: ignore[attr-defined]
        # an avatar registered before API keys (no owner): for a user key, an unknown one too
        keyless = await stub.RegisterAvatar(_named(_wide(64), "old"))
        assert (await get("old", admin)).id == keyless.id
        for value in (keyless.id, "old"):
            err = await status(value, bob)
            assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, f"avatar_id: avatar {value!r} not found")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _frame_sizes(stub, keyless.id, bob)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=keyless.id), metadata=bob)).deleted
        again = await stub.RegisterAvatar(_named(_wide(), "second"), metadata=alice)
        assert list(again.names) == ["second", "Alice"]
        assert (await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id="SECOND"), metadata=alice)).deleted
        assert _names(await stub.ListAvatars(rpb.ListAvatarsRequest(), metadata=alice))[wide.id] == ["Alice"]
