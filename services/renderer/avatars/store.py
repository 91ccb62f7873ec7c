"""Avatar registry: decode a photo or a short video once, find the face and its landmarks,
precompute what each backend needs, and keep the result content-addressed on disk and hot in a
bounded LRU.

Layout on disk: ``<cache_dir>/<id>/`` with ``frames.pngs`` (the N frames, each a lossless PNG,
concatenated) and ``frames.index.npy`` (where each frame's PNG ends), ``boxes.npz`` (face and mouth
boxes, landmarks, per-frame confidence and model crops), one ``<backend>.npz`` per prepared backend,
and ``meta.json`` (with the face report), written last. Frames are stored compressed (about a third
of the raw size for a video, half for a photo: BENCHMARKS.md, "Avatar store") and decoded one at a
time into one array when the avatar is loaded; entries written by older versions, with raw
``frames.npy``, still load as they are (and count their raw size in the disk quota).

An entry is built in a temporary directory and renamed into place, so a precompute that is killed
half way leaves nothing that later loads (stale temporaries are removed at start).

Locking: a store-wide lock guards only the in-memory tables (LRU, aliases, per-entry locks) and is
never held while decoding, analysing, loading from disk or running a backend's precompute; those
hold the lock of their own entry, so renders of ready avatars never wait for another avatar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
import zipfile
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.renderer.avatars.analysis import FaceAnalyzer, FaceChoice, FaceTrack
from services.renderer.avatars.decode import decode
from services.renderer.avatars.face_models import load_face_models
from services.renderer.avatars.scaled import needs_scaling, scaled
from services.renderer.backends.base import Avatar, RenderBackend
from services.renderer.config import DEFAULT_ALIAS, AvatarConfig
from talkmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from talkmesh.common.lru import Lru
from talkmesh.common.paths import cache_dir

log = logging.getLogger(__name__)

#: The bundled portrait registered as the default avatar (in ``services/renderer/assets``)
DEFAULT_AVATAR_FILE = "default_avatar.png"
PRECOMPUTE_VERSION = "3"  # the content ids depend on it: changing it orphans every cached avatar
FRAMES_FILE = "frames.pngs"
FRAMES_INDEX = "frames.index.npy"
DAMAGED_DIR = ".damaged"  # entries found damaged on load are moved here (not listed, not served)
LEGACY_FRAMES = "frames.npy"  # raw N x H x W x 3 (before frames were stored compressed)
#: zlib level of the stored PNGs: 3 is smaller *and* faster to write than 1 on avatar frames, and
#: levels above trade a lot of time for a few percent (measured; BENCHMARKS.md, "Avatar store").
PNG_LEVEL = 3
# Entry of a backend's cached ``<backend>.npz`` holding the backend's precompute_key() it was made under.
_PRECOMPUTE_KEY = "__precompute_key__"


def default_avatar_bytes() -> bytes:
    """The bundled default avatar's image (``DEFAULT_AVATAR_FILE``)."""
    return resources.files("services.renderer").joinpath(f"assets/{DEFAULT_AVATAR_FILE}").read_bytes()


@dataclass(frozen=True)
class AvatarSummary:
    id: str
    name: str
    width: int
    height: int
    frame_count: int
    backends: tuple[str, ...]
    report: dict[str, Any]


# -- the store ----------------------------------------------------------------------------------
#: ``progress(stage, done, total)`` of a registration (see ``talkmesh.v1.AvatarProgress``).
Progress = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


class AvatarStore:
    def __init__(
        self,
        cfg: AvatarConfig,
        backends: Mapping[str, RenderBackend],
        on_cache: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.backends = backends
        self.root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_dir("avatars")
        self.root.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[str, Avatar] = OrderedDict()
        #: avatars scaled down to the output sizes streams asked for, by (id, size)
        self._scaled: Lru[tuple[str, tuple[int, int]], Avatar] = Lru(max(1, cfg.memory_entries))
        self._aliases: dict[str, str] = {}
        self._protected: set[str] = set()
        self._lock = threading.Lock()  # the tables above and _entries; never held for slow work
        self._entries: dict[str, threading.RLock] = {}
        models = (
            None
            if cfg.face_models == "haar"
            else load_face_models("" if cfg.face_models == "auto" else cfg.face_models)
        )
        self.faces = FaceAnalyzer(models)
        self._on_cache = on_cache or (lambda cache, hit: None)
        self.precomputes = 0
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def _entry(self, avatar_id: str) -> threading.RLock:
        """The lock of one avatar's entry (its precompute, disk load and backend preparation)."""
        with self._lock:
            return self._entries.setdefault(avatar_id, threading.RLock())

    def settings_key(self, choice: FaceChoice = FaceChoice()) -> str:
        settings: dict[str, Any] = {"v": PRECOMPUTE_VERSION, "faces": self.faces.detector}
        if choice != FaceChoice():
            settings["face"] = [choice.index, list(choice.point) if choice.point else None]
        return json.dumps(settings, sort_keys=True)

    def content_id(self, data: bytes, choice: FaceChoice = FaceChoice()) -> str:
        h = hashlib.sha256()
        h.update(data)
        h.update(self.settings_key(choice).encode())
        return h.hexdigest()[:20]

    def register(
        self,
        data: bytes,
        filename: str,
        name: str = "",
        backends: tuple[str, ...] = (),
        alias: str = "",
        choice: FaceChoice = FaceChoice(),
        progress: Progress | None = None,
    ) -> tuple[Avatar, bool]:
        """Blocking. Returns (avatar, cached): a second registration of the same file is instant.

        ``progress(stage, done, total)`` is called from this thread as the preparation advances
        (stages as in ``talkmesh.v1.AvatarProgress``: decoding, faces, saving, backend:<name>).
        """
        report = progress or _no_progress
        if len(data) > self.cfg.max_upload_bytes:
            raise InvalidArgument("data", f"upload of {len(data)} bytes exceeds {self.cfg.max_upload_bytes}")
        for b in backends:
            if b not in self.backends:
                raise InvalidArgument(
                    "meta.backends", f"backend {b!r} is not loaded (loaded: {', '.join(self.backends)})"
                )
        avatar_id = self.content_id(data, choice)
        # Only registrations of the same file wait for each other: a long video precompute must
        # not hold up renders of the avatars that are ready.
        with self._entry(avatar_id):
            cached = (self.root / avatar_id / "meta.json").is_file()
            if cached:
                try:
                    self.get(avatar_id)
                except FailedPrecondition:  # damaged on disk and removed: made again from this upload
                    cached = False
            self._on_cache("avatar_precompute", cached)
            if not cached:
                fresh = self._precompute(
                    avatar_id, data, filename, name or Path(filename).stem or avatar_id, choice, report
                )
                if fresh.frames.flags.c_contiguous and (
                    fresh.frames.base is None or fresh.frames.base.nbytes == fresh.frames.nbytes
                ):
                    self._remember(avatar_id, fresh)
                # else the decoded frames are a view of a larger buffer (a video that declared more
                # frames than it had, an odd-sized photo): loaded from disk below, compact
            avatar = self.get(avatar_id)
            for b in ("viseme", *backends):
                if b in self.backends:
                    report(f"backend:{b}", 0, 1)
                    self._ensure_backend(avatar, b)
                    report(f"backend:{b}", 1, 1)
        if alias:
            with self._lock:
                self._aliases[alias] = avatar_id
                self._protected.add(avatar_id)
        return avatar, cached

    def _precompute(
        self, avatar_id: str, data: bytes, filename: str, name: str, choice: FaceChoice, progress: Progress
    ) -> Avatar:
        """Decodes, analyses and stores one upload; returns the avatar (its frames are the decoded
        ones, so a new registration does not decode its stored frames again)."""
        tmp = self.root / f".tmp-{avatar_id}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            progress("decoding", 0, 0)
            frames = decode(data, filename, self.cfg)
            tracked = 0

            def one_frame(index: int, total: int) -> None:  # called once per tracked frame, in any order
                nonlocal tracked
                tracked += 1
                progress("faces", tracked, total)

            progress("faces", 0, len(frames))
            track = self.faces.analyse(frames, choice, progress=one_frame)
            progress("faces", len(frames), len(frames))
            report = face_report(track)
            progress("saving", 0, len(frames))
            save_frames(tmp, frames, lambda done: progress("saving", done, len(frames)))
            arrays = {
                "face": np.round(track.boxes).astype(np.int32),
                "mouth": np.round(track.mouth_boxes).astype(np.int32),
                "scores": track.scores,
                "kept": track.kept,
                **{f"crop_{k}": v for k, v in track.crop_boxes.items()},
            }
            if track.landmarks is not None:
                arrays["landmarks"] = track.landmarks
            np.savez(tmp / "boxes.npz", **arrays)  # type: ignore[arg-type]
            meta = {
                "id": avatar_id,
                "name": name,
                "filename": filename,
                "version": PRECOMPUTE_VERSION,
                "width": int(frames.shape[2]),
                "height": int(frames.shape[1]),
                "frames": int(frames.shape[0]),
                "face": report,
            }
            _write_atomic(tmp / "meta.json", json.dumps(meta).encode())
            avatar = _avatar(avatar_id, meta, frames, arrays)
            final = self.root / avatar_id
            if final.exists():  # a half-written entry from an older layout
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._lock:
            self.precomputes += 1
        log.info(
            "prepared avatar %s (%s): %d frame(s), face found on %d (%s, confidence %.2f)",
            avatar_id, name, len(frames), report["frames_kept"], report["detector"], report["confidence"],
        )  # fmt: skip
        return avatar

    def _ensure_backend(self, avatar: Avatar, backend: str) -> None:
        if backend in avatar.extras:
            return
        with self._entry(avatar.id):
            if backend in avatar.extras:  # prepared by another thread while we waited
                return
            path = self.root / avatar.id / (f"{backend}@{avatar.variant}.npz" if avatar.variant else f"{backend}.npz")
            key = self.backends[backend].precompute_key()
            if path.is_file():
                try:
                    with np.load(path) as z:
                        made_with = str(z[_PRECOMPUTE_KEY]) if _PRECOMPUTE_KEY in z.files else ""
                        if made_with == key:
                            avatar.extras[backend] = {k: z[k] for k in z.files if k != _PRECOMPUTE_KEY}
                            return
                    log.info("avatar %s: the cached %s precompute was made with other model files or settings; "
                             "redoing it", avatar.id, backend)  # fmt: skip
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # unreadable: redone
                    log.warning("avatar %s: the cached %s precompute is unreadable (%s); redoing it",
                                avatar.id, backend, exc)  # fmt: skip
            self.backends[backend].prepare(avatar)
            extras = avatar.extras.get(backend)
            if isinstance(extras, dict) and all(isinstance(v, np.ndarray) for v in extras.values()):
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.npz")
                with contextlib.suppress(OSError):  # the entry may have been deleted meanwhile
                    np.savez(tmp, **{**extras, _PRECOMPUTE_KEY: np.array(key)})  # type: ignore[arg-type]
                    os.replace(tmp, path)

    def resolve(self, avatar_id: str) -> str:
        with self._lock:
            return self._aliases.get(avatar_id or DEFAULT_ALIAS, avatar_id or DEFAULT_ALIAS)

    def get(self, avatar_id: str, backend: str = "") -> Avatar:
        """Blocking. The prepared avatar (memory, then disk), with ``backend``'s precompute."""
        key = self.resolve(avatar_id)
        with self._lock:
            avatar = self._memory.get(key)
            if avatar is not None:
                self._memory.move_to_end(key)
        self._on_cache("avatar_memory", avatar is not None)
        if avatar is None:
            with self._entry(key):
                with self._lock:
                    avatar = self._memory.get(key)
                if avatar is None:
                    avatar = self._load(key)
                    self._remember(key, avatar)
        if backend:
            self._ensure_backend(avatar, backend)
        return avatar

    def at_size(self, avatar: Avatar, size: tuple[int, int], backend: str = "") -> Avatar:
        """Blocking. ``avatar`` as a stream of output ``size`` renders it, with ``backend``'s
        precompute: itself when its frames are not larger, else a copy scaled down once (kept in
        memory; its precompute made for that size and stored next to the avatar's own)."""
        key = (avatar.id, size)
        variant: Avatar | None = avatar
        if needs_scaling(avatar, size):
            with self._lock:
                variant = self._scaled.get(key)
        if variant is None:
            with self._entry(avatar.id):
                with self._lock:
                    variant = self._scaled.get(key)
                if variant is None:
                    variant = scaled(avatar, size)
                    with self._lock:
                        self._scaled.put(key, variant)
        if backend:
            self._ensure_backend(variant, backend)
        return variant

    def _remember(self, key: str, avatar: Avatar) -> None:
        with self._lock:
            self._memory[key] = avatar
            self._memory.move_to_end(key)
            while len(self._memory) > self.cfg.memory_entries:
                self._memory.popitem(last=False)

    def _load(self, avatar_id: str) -> Avatar:
        d = self.root / avatar_id
        if not avatar_id or "/" in avatar_id or avatar_id.startswith(".") or not (d / "meta.json").is_file():
            raise NotFound("config.avatar_id", avatar_id, "avatar")
        try:
            meta = json.loads((d / "meta.json").read_text())
            if (d / FRAMES_INDEX).is_file():
                frames = load_frames(d, (int(meta["frames"]), int(meta["height"]), int(meta["width"]), 3))
            else:  # an entry written before frames were stored compressed
                frames = np.ascontiguousarray(np.load(d / LEGACY_FRAMES, mmap_mode="r"))
            with np.load(d / "boxes.npz") as z:
                arrays = {k: z[k] for k in z.files}
            return _avatar(avatar_id, meta, frames, arrays)
        except FileNotFoundError as exc:  # a file of the entry is missing: damaged
            damage: Exception = exc
        except OSError as exc:  # out of file descriptors, memory, a passing I/O error: the entry may be fine
            raise Unavailable(f"avatar {avatar_id}: its stored entry could not be read now; try again",
                              retry_after=1.0) from exc  # fmt: skip
        except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated or corrupt content
            damage = exc
        # Set aside (not deleted: kept for inspection, out of the listing) so that the next
        # registration of the file rebuilds it; its owners register it again to own it again.
        aside = self.root / DAMAGED_DIR / f"{avatar_id}.{uuid.uuid4().hex[:8]}"
        log.warning("avatar %s: stored entry is damaged (%s); moved to %s, it must be registered again",
                    avatar_id, damage, aside)  # fmt: skip
        with contextlib.suppress(OSError):
            aside.parent.mkdir(exist_ok=True)
            os.replace(d, aside)
        raise FailedPrecondition(f"avatar {avatar_id}: its stored frames were damaged; register it again") from damage

    def list(self) -> list[AvatarSummary]:
        out = []
        for meta_path in sorted(self.root.glob("*/meta.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                meta = json.loads(meta_path.read_text())
                backends = tuple(sorted(p.stem for p in meta_path.parent.glob("*.npz") if p.stem != "boxes"))
                out.append(
                    AvatarSummary(
                        meta["id"],
                        meta["name"],
                        meta["width"],
                        meta["height"],
                        meta["frames"],
                        backends,
                        meta.get("face", {}),
                    )
                )
        return out

    # -- owners (API keys; see talkmesh/common/principal.py) ---------------------------------------
    # ``owners.json`` next to ``meta.json`` lists the names of the API keys that registered the
    # avatar (an avatar is content-addressed: two keys uploading the same file share one entry).
    # No file: registered without API keys, owned by nobody (only admins may delete it).
    def is_protected(self, avatar_id: str) -> bool:
        """The default avatar (and any alias the service registered): read-only for everyone."""
        key = self.resolve(avatar_id)
        with self._lock:
            return key in self._protected

    def owners(self, avatar_id: str) -> set[str]:
        d = self._dir(avatar_id)
        try:
            return set(json.loads((d / "owners.json").read_text())) if d is not None else set()
        except (OSError, ValueError):
            return set()

    def set_owners(self, avatar_id: str, owners: set[str]) -> None:
        d = self._dir(avatar_id)
        if d is not None and d.is_dir():
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                _write_atomic(d / "owners.json", json.dumps(sorted(owners)).encode())

    def disk_bytes(self, avatar_id: str) -> int:
        """Bytes the avatar takes on disk (its frames, boxes and backends' precomputes)."""
        d = self._dir(avatar_id)
        if d is None:
            return 0
        total = 0
        for p in d.iterdir() if d.is_dir() else ():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def exists(self, avatar_id: str) -> bool:
        """True when the avatar exists (is registered and complete)."""
        d = self._dir(avatar_id)
        return d is not None and (d / "meta.json").is_file()

    def _dir(self, avatar_id: str) -> Path | None:
        key = self.resolve(avatar_id)
        if not key or "/" in key or key.startswith("."):
            return None
        return self.root / key

    def delete(self, avatar_id: str) -> bool:
        """Removes an avatar from disk and memory. Streams that already hold it finish with it.

        The default avatar (and any alias the service registered) is refused by alias and by id.
        """
        key = self.resolve(avatar_id)
        with self._lock:
            if key in self._protected:
                raise FailedPrecondition(
                    f"avatar_id: {avatar_id!r} is the {DEFAULT_ALIAS} avatar, which cannot be deleted"
                )
        if not key or "/" in key or key.startswith("."):
            return False
        with self._entry(key):
            with self._lock:
                self._memory.pop(key, None)
            d = self.root / key
            if not d.is_dir():
                return False
            tmp = self.root / f".tmp-del-{key}-{uuid.uuid4().hex[:6]}"
            os.replace(d, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            return True


def face_report(track: FaceTrack) -> dict[str, Any]:
    """What registration found, as reported to the client (and kept in meta.json)."""
    first = int(np.argmax(track.kept)) if track.kept.any() else 0
    return {
        "box": [round(float(v), 1) for v in track.boxes[first]],
        "confidence": round(track.mean_confidence, 4),
        "frames_kept": int(track.kept.sum()),
        "frames_rejected": int((~track.kept).sum()),
        "faces_found": track.faces_found,
        "face_index": track.face_index,
        "detector": track.detector,
    }


def _avatar(avatar_id: str, meta: Mapping[str, Any], frames: np.ndarray, arrays: Mapping[str, np.ndarray]) -> Avatar:
    # Shared by every session and every thread rendering this avatar: an in-place write would change
    # it for all of them, so the frames are read-only (as the memory-mapped raw frames used to be).
    frames.flags.writeable = False
    return Avatar(
        id=avatar_id,
        name=meta["name"],
        frames=frames,
        face_boxes=arrays["face"],
        mouth_boxes=arrays["mouth"],
        landmarks=arrays.get("landmarks"),
        kept=arrays.get("kept"),
        crop_boxes={k[5:]: v for k, v in arrays.items() if k.startswith("crop_")},
        report=meta.get("face", {}),
    )


def _codec_threads() -> int:
    """Threads that encode or decode frames (OpenCV's PNG codec releases the GIL)."""
    return max(1, min(4, os.cpu_count() or 1))


def save_frames(d: Path, frames: np.ndarray, progress: Callable[[int], None] = lambda done: None) -> None:
    """Writes ``frames`` ([N, H, W, 3] uint8) to ``d`` as lossless PNGs, in order, encoded by a few
    threads (the memory it adds is the compressed frames not yet written: a few MiB)."""

    def encode(i: int) -> bytes:
        ok, png = cv2.imencode(".png", frames[i], [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
        if not ok:
            raise RuntimeError(f"could not encode frame {i} as PNG")
        return png.tobytes()

    ends = np.empty(len(frames), np.int64)
    window = 4 * _codec_threads()  # frames submitted ahead of the writer
    with open(d / FRAMES_FILE, "wb") as fh, ThreadPoolExecutor(_codec_threads(), "avatar-png") as pool:
        pending: deque[Future[bytes]] = deque()
        submitted = 0
        for i in range(len(frames)):
            while submitted < len(frames) and len(pending) < window:
                pending.append(pool.submit(encode, submitted))
                submitted += 1
            fh.write(pending.popleft().result())
            ends[i] = fh.tell()
            if i % 25 == 24:
                progress(i + 1)
        fh.flush()
        os.fsync(fh.fileno())
    np.save(d / FRAMES_INDEX, ends)


def load_frames(d: Path, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The frames ``save_frames`` wrote, decoded by a few threads into one [N, H, W, 3] array."""
    ends = np.load(d / FRAMES_INDEX)
    if len(ends) != shape[0]:
        raise ValueError(f"{d.name}: {len(ends)} stored frames, meta.json says {shape[0]}")
    starts = np.concatenate([[0], ends[:-1]]).tolist()
    out = np.empty(shape, np.uint8)
    fd = os.open(d / FRAMES_FILE, os.O_RDONLY)
    try:

        def decode_one(i: int) -> None:
            size = int(ends[i]) - starts[i]
            png = np.frombuffer(os.pread(fd, size, starts[i]), np.uint8)
            img = cv2.imdecode(png, cv2.IMREAD_COLOR) if len(png) == size else None
            if img is None or img.shape != shape[1:]:
                raise ValueError(f"{d.name}: stored frame {i} is damaged")
            out[i] = img

        with ThreadPoolExecutor(_codec_threads(), "avatar-png") as pool:
            list(pool.map(decode_one, range(shape[0])))  # raises the first failure
    finally:
        os.close(fd)
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
