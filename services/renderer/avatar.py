"""Avatar registry: decode a photo or a short video once, find the face and mouth, precompute what
each backend needs, and keep the result content-addressed on disk and hot in a bounded LRU.

Layout on disk: ``<cache_dir>/<id>/`` with ``frames.npy`` (N x H x W x 3, BGR), ``boxes.npz``
(face and mouth boxes per frame), one ``<backend>.npz`` per prepared backend, and ``meta.json``,
written last. An entry is built in a temporary directory and renamed into place, so a precompute
that is killed half way leaves nothing that later loads (stale temporaries are removed at start).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.renderer.backends.base import Avatar, RenderBackend
from services.renderer.config import AvatarConfig
from talkmesh.common.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

PRECOMPUTE_VERSION = "1"
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_EXTS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
DEFAULT_ALIAS = "default"


@dataclass(frozen=True)
class AvatarSummary:
    id: str
    name: str
    width: int
    height: int
    frame_count: int
    backends: tuple[str, ...]


# -- decoding and analysis ----------------------------------------------------------------------
def decode(data: bytes, filename: str, cfg: AvatarConfig) -> np.ndarray:
    """[N, H, W, 3] uint8 BGR frames, or InvalidArgument with the reason."""
    ext = Path(filename).suffix.lower()
    if not data:
        raise InvalidArgument("data", "the upload is empty")
    if ext in IMAGE_EXTS or (not ext and data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1")):
        arr = np.frombuffer(data, np.uint8)
        dims = image_dimensions(data)
        if dims is None:  # a format whose header we do not parse: measure a 1/8 scale decode
            header = cv2.imdecode(arr, cv2.IMREAD_REDUCED_COLOR_8)
            if header is None:
                raise InvalidArgument("data", f"{filename or 'upload'} is not a decodable image (corrupt or truncated)")
            dims = (header.shape[1] * 8, header.shape[0] * 8)
        if dims[0] * dims[1] > cfg.max_pixels:
            # checked on the header, before decoding: a small file can declare a huge image
            raise InvalidArgument(
                "data", f"image is {dims[0]}x{dims[1]}: larger than the limit of {cfg.max_pixels} pixels"
            )
        if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-4096:]:
            # some libjpeg builds decode a truncated file with a grey bottom and only a warning
            raise InvalidArgument("data", f"{filename or 'upload'} is not a decodable image (truncated JPEG)")
        img = cv2.imdecode(arr, cv2.IMREAD_COLOR)
        if img is None:
            raise InvalidArgument("data", f"{filename or 'upload'} is not a decodable image (corrupt or truncated)")
        if img.shape[0] * img.shape[1] > cfg.max_pixels:
            raise InvalidArgument("data", f"image has {img.shape[1]}x{img.shape[0]} pixels, over {cfg.max_pixels}")
        return _even(img)[None]
    if ext in VIDEO_EXTS:
        return _decode_video(data, ext, cfg)
    raise InvalidArgument(
        "meta.filename",
        f"unsupported file type {ext or '(none)'}; images: "
        f"{', '.join(sorted(IMAGE_EXTS))}; videos: {', '.join(sorted(VIDEO_EXTS))}",
    )


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, WebP or BMP header without decoding; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in _JPEG_SOF:
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if chunk == b"VP8 ":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
        return None
    if data[:2] == b"BM" and len(data) >= 26:
        return int.from_bytes(data[18:22], "little", signed=True), abs(
            int.from_bytes(data[22:26], "little", signed=True)
        )
    return None


def _even(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % 2, : w - w % 2]


def _decode_video(data: bytes, ext: str, cfg: AvatarConfig) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=ext) as tmp:
        tmp.write(data)
        tmp.flush()
        cap = cv2.VideoCapture(tmp.name)
        try:
            if not cap.isOpened():
                raise InvalidArgument("data", "not a decodable video (corrupt, truncated or unknown codec)")
            w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if w * h > cfg.max_pixels:
                raise InvalidArgument("data", f"video frames have {w}x{h} pixels, over {cfg.max_pixels}")
            frames = []
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(_even(frame))
                if len(frames) > cfg.max_frames:
                    raise InvalidArgument("data", f"video has more than {cfg.max_frames} frames")
        finally:
            cap.release()
    if not frames:
        raise InvalidArgument("data", "not a decodable video (no frames could be read)")
    return np.stack(frames)


class FaceFinder:
    """OpenCV's frontal-face Haar cascade (shipped with opencv-python < 5; no downloads)."""

    def __init__(self) -> None:
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"could not load the face cascade from {path}")
        self._lock = threading.Lock()

    def find(self, frame: np.ndarray, max_side: int = 640) -> tuple[int, int, int, int] | None:
        """The largest face, detected on a copy scaled to at most ``max_side`` pixels."""
        scale = min(1.0, max_side / max(frame.shape[:2]))
        small = frame if scale == 1.0 else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
        min_side = max(30, min(gray.shape[:2]) // 12)
        with self._lock:
            faces = self.cascade.detectMultiScale(gray, 1.1, 5, minSize=(min_side, min_side))
        if len(faces) == 0:
            return None
        x, y, w, h = (v / scale for v in max(faces, key=lambda f: f[2] * f[3]))
        return round(x), round(y), round(x + w), round(y + h)


def mouth_box(frame: np.ndarray, face: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A geometric estimate from the face box, refined with lip colour (Lab a*, redness)."""
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    gx1, gx2 = x1 + int(0.27 * w), x1 + int(0.73 * w)
    gy1, gy2 = y1 + int(0.66 * h), y1 + int(0.90 * h)
    sx1, sx2 = max(0, gx1 - w // 10), min(frame.shape[1], gx2 + w // 10)
    sy1, sy2 = max(0, gy1 - h // 12), min(frame.shape[0], gy2 + h // 12)
    region = frame[sy1:sy2, sx1:sx2]
    if region.size == 0:
        return gx1, gy1, gx2, gy2
    a = cv2.cvtColor(region, cv2.COLOR_BGR2LAB)[..., 1].astype(np.float32)
    mask = (a > a.mean() + 1.0 * a.std()).astype(np.uint8)
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n > 1:
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        bx, by, bw, bh, area = stats[best]
        if area > 0.01 * region.shape[0] * region.shape[1] and bw > 0.25 * w and bh < 0.3 * h:
            cx1, cy1 = sx1 + bx, sy1 + by
            return (
                int(min(gx1, cx1)),
                int(max(gy1, cy1 - bh // 2) if cy1 - bh // 2 > y1 + 0.55 * h else gy1),
                int(max(gx2, cx1 + bw)),
                int(max(gy2, cy1 + bh)),
            )
    return gx1, gy1, gx2, gy2


def smooth_boxes(boxes: list[tuple[int, int, int, int] | None], window: int = 5) -> np.ndarray:
    """Fills missing detections from neighbours, then a moving average over ``window`` frames."""
    idx = [i for i, b in enumerate(boxes) if b is not None]
    arr = np.zeros((len(boxes), 4), np.float32)
    known = np.array([boxes[i] for i in idx], np.float32)
    for k in range(4):
        arr[:, k] = np.interp(np.arange(len(boxes)), idx, known[:, k])
    if len(boxes) > 2 and window > 1:
        pad = window // 2
        padded = np.pad(arr, ((pad, pad), (0, 0)), mode="edge")
        kernel = np.ones(window, np.float32) / window
        arr = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(4)], axis=1)
    return np.round(arr).astype(np.int32)


# -- the store ----------------------------------------------------------------------------------
class AvatarStore:
    def __init__(
        self,
        cfg: AvatarConfig,
        backends: Mapping[str, RenderBackend],
        on_cache: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.backends = backends
        self.root = Path(cfg.cache_dir or Path.home() / ".cache" / "talkmesh" / "avatars").expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[str, Avatar] = OrderedDict()
        self._aliases: dict[str, str] = {}
        self._lock = threading.RLock()
        self._building: dict[str, threading.Lock] = {}
        self._faces = FaceFinder()
        self._on_cache = on_cache or (lambda cache, hit: None)
        self.precomputes = 0
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def settings_key(self) -> str:
        return json.dumps({"v": PRECOMPUTE_VERSION}, sort_keys=True)

    def content_id(self, data: bytes) -> str:
        h = hashlib.sha256()
        h.update(data)
        h.update(self.settings_key().encode())
        return h.hexdigest()[:20]

    def register(
        self, data: bytes, filename: str, name: str = "", backends: tuple[str, ...] = (), alias: str = ""
    ) -> tuple[Avatar, bool]:
        """Blocking. Returns (avatar, cached): a second registration of the same file is instant."""
        if len(data) > self.cfg.max_upload_bytes:
            raise InvalidArgument("data", f"upload of {len(data)} bytes exceeds {self.cfg.max_upload_bytes}")
        for b in backends:
            if b not in self.backends:
                raise InvalidArgument(
                    "meta.backends", f"backend {b!r} is not loaded (loaded: {', '.join(self.backends)})"
                )
        avatar_id = self.content_id(data)
        with self._lock:
            building = self._building.setdefault(avatar_id, threading.Lock())
        # Only registrations of the same file wait for each other: a long video precompute must
        # not hold up renders of the avatars that are ready.
        with building:
            cached = (self.root / avatar_id / "meta.json").is_file()
            self._on_cache("avatar_precompute", cached)
            if not cached:
                self._precompute(avatar_id, data, filename, name or Path(filename).stem or avatar_id)
        with self._lock:
            avatar = self.get(avatar_id)
            for b in ("viseme", *backends):
                if b in self.backends:
                    self._ensure_backend(avatar, b)
            if alias:
                self._aliases[alias] = avatar_id
        return avatar, cached

    def _precompute(self, avatar_id: str, data: bytes, filename: str, name: str) -> None:
        tmp = self.root / f".tmp-{avatar_id}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            frames = decode(data, filename, self.cfg)
            faces = [self._faces.find(f) for f in frames]
            found = sum(f is not None for f in faces)
            if found == 0 or found < 0.5 * len(faces):
                raise InvalidArgument(
                    "data", f"no face found ({found} of {len(faces)} frame(s) have a detectable face)"
                )
            face_boxes = smooth_boxes(faces)
            mouths: list[tuple[int, int, int, int] | None] = [
                mouth_box(f, (int(b[0]), int(b[1]), int(b[2]), int(b[3])))
                for f, b in zip(frames, face_boxes, strict=True)
            ]
            mouth_boxes = smooth_boxes(mouths)
            np.save(tmp / "frames.npy", frames)
            np.savez(tmp / "boxes.npz", face=face_boxes, mouth=mouth_boxes)
            meta = {
                "id": avatar_id,
                "name": name,
                "filename": filename,
                "version": PRECOMPUTE_VERSION,
                "width": int(frames.shape[2]),
                "height": int(frames.shape[1]),
                "frames": int(frames.shape[0]),
            }
            _write_atomic(tmp / "meta.json", json.dumps(meta).encode())
            final = self.root / avatar_id
            if final.exists():  # a half-written entry from an older layout
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._lock:
            self.precomputes += 1
        log.info("prepared avatar %s (%s): %d frame(s), %d face(s) found", avatar_id, name, len(frames), found)

    def _ensure_backend(self, avatar: Avatar, backend: str) -> None:
        if backend in avatar.extras:
            return
        path = self.root / avatar.id / f"{backend}.npz"
        if path.is_file():
            with np.load(path) as z:
                avatar.extras[backend] = {k: z[k] for k in z.files}
            return
        self.backends[backend].prepare(avatar)
        extras = avatar.extras.get(backend)
        if isinstance(extras, dict) and all(isinstance(v, np.ndarray) for v in extras.values()):
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.npz")
            np.savez(tmp, **extras)
            os.replace(tmp, path)

    def resolve(self, avatar_id: str) -> str:
        return self._aliases.get(avatar_id or DEFAULT_ALIAS, avatar_id or DEFAULT_ALIAS)

    def get(self, avatar_id: str, backend: str = "") -> Avatar:
        """Blocking. The prepared avatar (memory, then disk), with ``backend``'s precompute."""
        key = self.resolve(avatar_id)
        with self._lock:
            avatar = self._memory.get(key)
            if avatar is not None:
                self._memory.move_to_end(key)
                self._on_cache("avatar_memory", True)
            else:
                self._on_cache("avatar_memory", False)
                avatar = self._load(key)
                self._memory[key] = avatar
                while len(self._memory) > self.cfg.memory_entries:
                    self._memory.popitem(last=False)
            if backend:
                self._ensure_backend(avatar, backend)
        return avatar

    def _load(self, avatar_id: str) -> Avatar:
        d = self.root / avatar_id
        if not avatar_id or "/" in avatar_id or avatar_id.startswith(".") or not (d / "meta.json").is_file():
            raise NotFound("config.avatar_id", avatar_id, "avatar")
        meta = json.loads((d / "meta.json").read_text())
        frames = np.load(d / "frames.npy", mmap_mode="r")
        with np.load(d / "boxes.npz") as z:
            face, mouth = z["face"], z["mouth"]
        return Avatar(
            id=avatar_id, name=meta["name"], frames=np.ascontiguousarray(frames), face_boxes=face, mouth_boxes=mouth
        )

    def list(self) -> list[AvatarSummary]:
        out = []
        for meta_path in sorted(self.root.glob("*/meta.json")):
            with contextlib.suppress(OSError, ValueError):
                meta = json.loads(meta_path.read_text())
                backends = tuple(sorted(p.stem for p in meta_path.parent.glob("*.npz") if p.stem != "boxes"))
                out.append(
                    AvatarSummary(meta["id"], meta["name"], meta["width"], meta["height"], meta["frames"], backends)
                )
        return out

    def delete(self, avatar_id: str) -> bool:
        key = self.resolve(avatar_id)
        if key in self._aliases.values() and avatar_id in ("", DEFAULT_ALIAS):
            raise InvalidArgument("avatar_id", "the default avatar cannot be deleted")
        with self._lock:
            self._memory.pop(key, None)
            d = self.root / key
            if not key or "/" in key or key.startswith(".") or not d.is_dir():
                return False
            tmp = self.root / f".tmp-del-{key}-{uuid.uuid4().hex[:6]}"
            os.replace(d, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            return True


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def summary_of(avatar: Avatar, backends: tuple[str, ...]) -> dict[str, Any]:
    return {
        "id": avatar.id,
        "name": avatar.name,
        "width": avatar.size[0],
        "height": avatar.size[1],
        "frame_count": int(avatar.frames.shape[0]),
        "backends": backends,
    }
