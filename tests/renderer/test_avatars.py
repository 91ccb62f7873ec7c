"""Avatar registry and precompute cache, seams, bad uploads, through the gRPC renderer service."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from services.renderer.avatars import AvatarStore, default_avatar_bytes
from services.renderer.backends import mesh_warp
from services.renderer.backends.base import FrameJob, MouthShape
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from services.renderer.main import create_service, load_config
from services.renderer.session import ping_pong
from talkmesh.common.channel import create_channel
from talkmesh.common.errors import FailedPrecondition
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc
from tests.media import drifting_clip, portrait

PORTRAIT = default_avatar_bytes()


def _store(tmp_path: Path, **avatar_cfg) -> tuple[AvatarStore, VisemeBackend]:
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path / "cache"), **avatar_cfg))
    backend = VisemeBackend(cfg, Telemetry("renderer"))
    return AvatarStore(cfg.avatars, {"viseme": backend}), backend


def _video(path: Path, frames: int, size: tuple[int, int] = (512, 512)) -> bytes:
    return drifting_clip(path, frames, size).read_bytes()


def test_second_registration_is_instant_and_precomputes_once(tmp_path):
    store, backend = _store(tmp_path)
    calls = {"faces": 0, "prepare": 0}
    find, prepare = store.faces.analyse, backend.prepare

    def counting_find(frames, *args, **kwargs):
        calls["faces"] += 1
        return find(frames, *args, **kwargs)

    def counting_prepare(avatar):
        calls["prepare"] += 1
        prepare(avatar)

    store.faces.analyse = counting_find  # type: ignore[method-assign,assignment]
    backend.prepare = counting_prepare  # type: ignore[method-assign]
    a1, cached1 = store.register(PORTRAIT, "me.png", "me")
    assert calls == {"faces": 1, "prepare": 1}
    a2, cached2 = store.register(PORTRAIT, "me.png", "me")
    assert (cached1, cached2) == (False, True)
    assert a1.id == a2.id
    # the second registration is a look-up: no decoding, face detection or backend precompute
    # (its time is in the renderer benchmark: talkmesh/bench/stages/renderer.py, second_registration_ms)
    assert calls == {"faces": 1, "prepare": 1}
    assert store.precomputes == 1
    # a fresh store (another process) finds it on disk
    store2, _ = _store(tmp_path)
    _, cached3 = store2.register(PORTRAIT, "me.png", "me")
    assert cached3 and store2.precomputes == 0
    assert [s.id for s in store2.list()] == [a1.id]


def test_a_precompute_in_progress_does_not_block_ready_avatars(tmp_path):
    store, _ = _store(tmp_path)
    ready, _ = store.register(PORTRAIT, "me.png")
    entered, release = threading.Event(), threading.Event()
    find = store.faces.analyse

    def slow_find(frames, *args, **kwargs):
        entered.set()
        release.wait(30)
        return find(frames, *args, **kwargs)

    store.faces.analyse = slow_find  # type: ignore[method-assign,assignment]
    other = cv2.imencode(".png", cv2.flip(portrait(), 1))[1].tobytes()
    worker = threading.Thread(target=store.register, args=(other, "mirror.png"))
    worker.start()
    try:
        assert entered.wait(30)
        store._forget(ready.id)  # force a disk load while the other precompute holds its lock
        assert store.get(ready.id, "viseme").id == ready.id
        assert store.precomputes == 1  # the mirrored portrait is still being prepared
    finally:
        release.set()
        worker.join(30)
    assert store.precomputes == 2 and len(store.list()) == 2


def test_face_and_mouth_are_found_on_the_default_portrait(tmp_path):
    store, _ = _store(tmp_path)
    avatar, _ = store.register(PORTRAIT, "me.png")
    fx1, fy1, fx2, fy2 = avatar.face_boxes[0]
    mx1, my1, mx2, my2 = avatar.mouth_boxes[0]
    assert fx1 < mx1 < mx2 < fx2 and fy1 + (fy2 - fy1) // 2 < my1 < my2 <= fy2
    # the mouth box holds the reddest pixels of the lower face (lips)
    lab = cv2.cvtColor(avatar.frames[0], cv2.COLOR_BGR2LAB)[..., 1].astype(float)
    assert lab[my1:my2, mx1:mx2].mean() > lab[fy1:fy2, fx1:fx2].mean()


def _border_gradient(frame: np.ndarray, box: tuple[int, int, int, int], band: int = 3) -> float:
    """Mean gradient magnitude over the pixels within ``band`` of the box's border, inside it."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)
    mag = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))
    x1, y1, x2, y2 = box
    ring = np.zeros(gray.shape, bool)
    ring[y1:y2, x1:x2] = True
    ring[y1 + band : y2 - band, x1 + band : x2 - band] = False
    return float(mag[ring].mean())


def test_warp_leaves_no_seam_and_touches_nothing_outside_its_region(tmp_path):
    store, backend = _store(tmp_path)
    avatar, _ = store.register(PORTRAIT, "me.png")
    rig = backend.rig(avatar)
    box = mesh_warp.region(rig, 0, avatar.size)
    assert box is not None
    original = np.array(avatar.frames[0])
    reference = _border_gradient(original, box)
    for shape in (MouthShape(open=1.0), MouthShape(open=0.5, width=0.2, round=1.0), MouthShape(0.4, 0.9, 0.0)):
        rendered = backend.render(avatar, [FrameJob("s", 0, 0, True, -20.0, mouth=shape)])[0]
        assert not np.array_equal(rendered, original)
        seam = _border_gradient(rendered, box)
        assert abs(seam - reference) <= 0.2 * reference, (shape, seam, reference)
        # outside the warped region nothing changed
        outside = np.ones(original.shape[:2], bool)
        outside[box[1] : box[3], box[0] : box[2]] = False
        assert np.array_equal(rendered[outside], original[outside])
    # the rest pose is the photo itself
    rest = backend.render(avatar, [FrameJob("s", 0, 0, True, -20.0, mouth=MouthShape())])[0]
    assert np.array_equal(rest, original)


def test_video_avatar_loops_forward_then_backward(tmp_path):
    store, _ = _store(tmp_path)
    avatar, _ = store.register(_video(tmp_path / "loop.mp4", 12), "loop.mp4", "loop")
    assert avatar.frames.shape[0] == 12
    assert avatar.face_boxes.shape == (12, 4)
    ticks = [ping_pong(t, 12) for t in range(30)]
    assert ticks[:12] == list(range(12))
    assert ticks[11:23] == list(range(11, -1, -1))
    assert all(abs(a - b) == 1 for a, b in itertools.pairwise(ticks))  # never a jump


def test_killed_precompute_leaves_the_cache_loadable(tmp_path):
    video = _video(tmp_path / "long.mp4", 120)
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import sys
        from services.renderer.avatars import AvatarStore
        from services.renderer.backends.viseme import VisemeBackend
        from services.renderer.config import AvatarConfig, RendererConfig
        from talkmesh.common.telemetry import Telemetry
        cfg = RendererConfig(avatars=AvatarConfig(cache_dir={str(cache)!r}))
        store = AvatarStore(cfg.avatars, {{"viseme": VisemeBackend(cfg, Telemetry("r"))}})
        store.register(open({str(tmp_path / "long.mp4")!r}, "rb").read(), "long.mp4")
        print("finished", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(cache.glob(".tmp-*")):  # precompute under way
        time.sleep(0.01)
    assert any(cache.glob(".tmp-*")), "the precompute never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store, _ = _store(tmp_path)
    assert store.list() == []  # nothing half-written is listed ...
    # ... and the leftovers are swept once stale (not at once: on a shared volume a fresh one may be
    # another replica's build in progress; tests/renderer/test_store_shared.py)
    assert any(cache.glob(".tmp-*"))
    assert store.sweep_stale(older_than=-1.0) >= 1
    assert not any(cache.glob(".tmp-*"))
    avatar, cached = store.register(video, "long.mp4")
    assert not cached and avatar.frames.shape[0] == 120
    assert [s.id for s in store.list()] == [avatar.id]


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("corrupt.png", b"definitely not a png", "not a decodable image"),
        ("truncated.png", PORTRAIT[: len(PORTRAIT) // 3], "not a decodable image"),
        ("truncated.jpg", "truncated-jpeg", "truncated JPEG"),
        ("huge.png", "huge", "larger than the limit of 360000 pixels"),
        ("bomb.png", "bomb", "20000x20000: larger than the limit"),
        ("nobody.png", "faceless", "no face found"),
        ("notes.txt", b"hello", "meta.filename: unsupported file type .txt"),
        ("IMG_0042.HEIC", b"....ftypheic", "unsupported file type .heic; images: .bmp"),
        ("IMG_0043.heic", b"....ftypheic", "(convert it to JPEG or PNG first; an iPhone takes JPEGs"),
        ("broken.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100, "not a decodable video"),
        ("nobody.mp4", "faceless-video", "no face found (0 of 6 frame(s)"),
        ("cut.mp4", "truncated-video", "not a decodable video"),
    ],
)
async def test_bad_uploads_get_invalid_argument_and_the_service_stays_up(tmp_path, name, payload, reason):
    if payload == "huge":
        payload = _png(np.zeros((700, 700, 3), np.uint8))
    elif payload == "bomb":  # a few bytes that declare 400 megapixels: refused before decoding
        png = bytearray(_png(np.zeros((8, 8, 3), np.uint8)))
        png[16:24] = (20000).to_bytes(4, "big") * 2
        payload = bytes(png)
    elif payload == "truncated-jpeg":
        jpeg = cv2.imencode(".jpg", portrait())[1].tobytes()
        payload = jpeg[: len(jpeg) * 2 // 3]
    elif payload == "faceless-video":
        writer = cv2.VideoWriter(str(tmp_path / "n.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 25, (128, 96))
        for i in range(6):
            writer.write(np.full((96, 128, 3), 40 * i, np.uint8))
        writer.release()
        payload = (tmp_path / "n.mp4").read_bytes()
    elif payload == "truncated-video":
        video = _video(tmp_path / "v.mp4", 6, (128, 128))
        payload = video[: len(video) // 2]
    elif payload == "faceless":
        ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
        payload = _png(cv2.merge([ramp, ramp.T, ramp]))
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__AVATARS__MAX_PIXELS": str(600 * 600),
    }
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)

        async def upload(data: bytes, filename: str):
            yield rpb.AvatarUpload(meta=rpb.AvatarMeta(name="x", filename=filename))
            for i in range(0, len(data), 65536):
                yield rpb.AvatarUpload(data=data[i : i + 65536])

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(upload(payload, name))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in err.value.details()
        info = await stub.RegisterAvatar(upload(PORTRAIT, "me.png"))
        assert info.width == 512 and info.cached  # the default avatar is the same file
        listed = await stub.ListAvatars(rpb.ListAvatarsRequest())
        assert [a.id for a in listed.avatars] == [info.id]


# -- frames stored compressed (issue 19) ------------------------------------------------------------


def test_frames_are_stored_compressed_lossless_and_counted_in_disk_bytes(tmp_path):
    """A video avatar's frames are on disk as PNGs (no raw frames.npy), smaller than the raw frames,
    decoded bit for bit on load; the disk quota counts the compressed files."""
    store, _ = _store(tmp_path)
    video, _ = store.register(_video(tmp_path / "v.mp4", 40, (320, 240)), "v.mp4")
    d = tmp_path / "cache" / video.id
    assert (d / "frames.pngs").is_file() and not (d / "frames.npy").exists()
    raw = video.frames.nbytes
    stored = (d / "frames.pngs").stat().st_size + (d / "frames.index.npy").stat().st_size
    assert stored < raw * 0.75, f"{stored} bytes stored for {raw} raw"
    assert store.disk_bytes(video.id) < raw  # what the per-key quota sees
    fresh, _ = _store(tmp_path)  # another process: decoded from disk
    loaded = fresh.get(video.id)
    assert loaded.frames.shape == video.frames.shape and loaded.frames.flags.c_contiguous
    assert np.array_equal(loaded.frames, video.frames)
    assert np.array_equal(loaded.face_boxes, video.face_boxes)


def test_an_entry_with_raw_frames_from_an_older_version_still_loads(tmp_path):
    """Caches written before frames were compressed (frames.npy) load as they are, and a new
    registration of the same file finds them (same content id: no second precompute)."""
    store, _ = _store(tmp_path)
    avatar, _ = store.register(PORTRAIT, "me.png", "me")
    d = tmp_path / "cache" / avatar.id
    # turn the entry into the old layout
    np.save(d / "frames.npy", avatar.frames)
    (d / "frames.pngs").unlink()
    (d / "frames.index.npy").unlink()
    old, _ = _store(tmp_path)
    loaded, cached = old.register(PORTRAIT, "me.png", "me")
    assert cached and old.precomputes == 0
    assert np.array_equal(loaded.frames, avatar.frames)
    assert old.disk_bytes(avatar.id) >= avatar.frames.nbytes  # the raw file counts as it is


def test_a_damaged_frame_file_is_not_a_silent_grey_avatar(tmp_path):
    store, _ = _store(tmp_path)
    avatar, _ = store.register(PORTRAIT, "me.png", "me")
    path = tmp_path / "cache" / avatar.id / "frames.pngs"
    path.write_bytes(path.read_bytes()[:1000])
    store2 = _store(tmp_path)[0]
    with pytest.raises(FailedPrecondition, match=r"damaged.*register it again"):
        store2.get(avatar.id)
    # the damaged entry is gone (not a grey avatar, not an error forever): registering the file again
    # rebuilds it, and a registration that finds a damaged entry rebuilds it at once
    assert not (tmp_path / "cache" / avatar.id).exists()
    assert [p.name.split(".")[0] for p in (tmp_path / "cache" / ".damaged").iterdir()] == [avatar.id]
    assert [a.id for a in store2.list()] == []
    again, cached = store2.register(PORTRAIT, "me.png", "me")
    assert (again.id, cached) == (avatar.id, False)
    np.testing.assert_array_equal(_store(tmp_path)[0].get(avatar.id).frames, avatar.frames)
    path.write_bytes(path.read_bytes()[:1000])
    third, cached = _store(tmp_path)[0].register(PORTRAIT, "me.png", "me")
    assert (third.id, cached) == (avatar.id, False)


class _KeyedBackend(VisemeBackend):
    """A backend whose precompute depends on a model version (as a neural backend's on its files)."""

    name = "keyed"

    def __init__(self, cfg: RendererConfig, version: int) -> None:
        super().__init__(cfg, Telemetry("renderer"))
        self.version = version
        self.prepared = 0

    def precompute_key(self) -> str:
        return f"model-v{self.version}"

    def prepare(self, avatar) -> None:
        self.prepared += 1
        avatar.extras[self.name] = {"latents": np.full(3, self.version, np.float32)}


def test_a_cached_backend_precompute_is_redone_when_its_model_or_settings_change(tmp_path):
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path / "cache")))

    def store_with(version: int) -> tuple[AvatarStore, _KeyedBackend]:
        keyed = _KeyedBackend(cfg, version)
        return AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("r")), "keyed": keyed}), keyed

    store, keyed = store_with(1)
    avatar, _ = store.register(PORTRAIT, "me.png", "me")
    assert store.get(avatar.id, "keyed").extras["keyed"]["latents"].tolist() == [1, 1, 1]
    assert keyed.prepared == 1
    # another process with the same model: the precompute comes from disk
    store, keyed = store_with(1)
    assert store.get(avatar.id, "keyed").extras["keyed"]["latents"].tolist() == [1, 1, 1]
    assert keyed.prepared == 0
    # new model files or settings: the cached latents are not served, they are made again and saved
    store, keyed = store_with(2)
    assert store.get(avatar.id, "keyed").extras["keyed"]["latents"].tolist() == [2, 2, 2]
    assert keyed.prepared == 1
    store, keyed = store_with(2)
    assert store.get(avatar.id, "keyed").extras["keyed"]["latents"].tolist() == [2, 2, 2]
    assert keyed.prepared == 0


def test_a_passing_read_error_is_unavailable_and_keeps_the_entry(tmp_path, monkeypatch):
    from services.renderer.avatars import store as store_module
    from talkmesh.common.errors import Unavailable

    store, _ = _store(tmp_path)
    avatar, _ = store.register(PORTRAIT, "me.png", "me")

    def no_descriptors(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(store_module, "load_frames", no_descriptors)
    with pytest.raises(Unavailable, match="try again"):
        _store(tmp_path)[0].get(avatar.id)
    monkeypatch.undo()
    assert (tmp_path / "cache" / avatar.id / "meta.json").is_file()  # nothing was moved or deleted
    np.testing.assert_array_equal(_store(tmp_path)[0].get(avatar.id).frames, avatar.frames)


def test_an_unreadable_backend_precompute_is_redone(tmp_path):
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path / "cache")))
    keyed = _KeyedBackend(cfg, 1)
    store = AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("r")), "keyed": keyed})
    avatar, _ = store.register(PORTRAIT, "me.png", "me")
    store.get(avatar.id, "keyed")
    (tmp_path / "cache" / avatar.id / "keyed.npz").write_bytes(b"PK\x03\x04 truncated")
    keyed = _KeyedBackend(cfg, 1)
    store = AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("r")), "keyed": keyed})
    assert store.get(avatar.id, "keyed").extras["keyed"]["latents"].tolist() == [1, 1, 1]
    assert keyed.prepared == 1

