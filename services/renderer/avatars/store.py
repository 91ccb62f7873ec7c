"""Avatar registry: decode a photo or a short video once, find the face and its landmarks,
precompute what each backend needs, and keep the result content-addressed on disk and hot in a
bounded LRU.

Layout on disk: ``<cache_dir>/<id>/`` with ``frames.pngs`` (the N frames, each a lossless PNG,
concatenated) and ``frames.index.npy`` (where each frame's PNG ends), ``boxes.npz`` (face and mouth
boxes, landmarks, per-frame confidence and model crops), one ``<backend>.npz`` per prepared backend,
and ``meta.json`` (with the face report), written last (a whole picture that a framing tried to
crop but kept whole notes it there afterwards, ``KEPT_WHOLE``: the file registered again is not
decoded again). Frames are stored compressed (about a third of the raw size for a video, half for a
photo: BENCHMARKS.md, "Avatar store") and decoded one at a time into one array when the avatar is
loaded; entries written by older versions, with raw ``frames.npy``, still load as they are (and
count their raw size in the disk quota).

An entry is built in a temporary directory (``.tmp-*``) and renamed into place, so a precompute that
is killed half way leaves nothing that later loads (temporaries untouched for ``STALE_TMP_SECONDS``
are removed at start and by later registrations: one just made may be another replica's build).

Shared between replicas: several renderer processes (pods on one ReadWriteMany volume) may use one
root. Everything another replica needs is on disk: the entries, their owners (``owners.json``) and
names (``names.json``: one file, several names, by API key), the backends' precomputes
(``<backend>.npz``, when the backend's extras are arrays; otherwise each replica prepares them again
in memory) and the aliases (``.aliases/<hash>.json``, whose targets are protected from deletion).
Changes that must not be lost or undone by another replica (installing an entry, deleting it,
setting a damaged one aside, changing its owners or names) hold the entry's file lock
(``.locks/<id>``, ``flock``), so a complete entry is never removed by a concurrent registration: the
second writer discards its build and uses the entry in place. A replica trusts its memory for at
most ``RECHECK_SECONDS`` (plus the file system's own attribute cache, e.g. NFS ``actimeo``) before
it looks again: an alias set or changed elsewhere resolves, and an avatar deleted elsewhere stops
being served, within that bound.

Locking: a store-wide lock guards only the in-memory tables (LRU, aliases, per-entry locks) and is
never held while decoding, analysing, loading from disk or running a backend's precompute; those
hold the lock of their own entry, so renders of ready avatars never wait for another avatar.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.renderer.avatars.analysis import FaceAnalyzer, FaceChoice, FaceTrack
from services.renderer.avatars.decode import Crop, Data, Decoded, decode, exif_orientation, has_alpha
from services.renderer.avatars.face_models import load_face_models
from services.renderer.avatars.scaled import needs_scaling, scaled
from services.renderer.backends import not_loaded
from services.renderer.backends.base import Avatar, RenderBackend
from services.renderer.config import DEFAULT_ALIAS, AvatarConfig
from talkmesh.common.enums import choices
from talkmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from talkmesh.common.faces import (
    CROP_ASPECT,
    CROP_FACE_CENTRE,
    CROP_FACE_WIDTHS,
    CROP_RULE_VERSION,
    face_is_small,
    head_and_shoulders,
)
from talkmesh.common.lru import Lru
from talkmesh.common.paths import cache_dir
from talkmesh.v1 import types_pb2

log = logging.getLogger(__name__)

#: The bundled portrait registered as the default avatar (in ``services/renderer/assets``)
DEFAULT_AVATAR_FILE = "default_avatar.png"
PRECOMPUTE_VERSION = "3"  # the content ids depend on it: changing it orphans every cached avatar
FRAMES_FILE = "frames.pngs"
FRAMES_INDEX = "frames.index.npy"
DAMAGED_DIR = ".damaged"  # entries found damaged on load are moved here (not listed, not served)
ALIASES_DIR = ".aliases"  # one <sha256 of the alias>.json per alias: {"alias": ..., "id": ...}
LOCKS_DIR = ".locks"  # one empty lock file per entry (flock), shared by every process on the root
TMP_PREFIX = ".tmp-"  # entries being built or deleted: never loaded or listed
#: A temporary entry nothing has touched for this long is a crashed build (or delete) and is removed.
#: Builds write their frames as they go; analysing a 750-frame video takes minutes, not an hour.
STALE_TMP_SECONDS = 3600.0
#: How long a replica trusts what it remembers about an alias or an entry before it looks on disk
#: again (an alias set, or an avatar deleted, by another replica is seen within this bound).
RECHECK_SECONDS = 2.0
#: Marks a backend's precompute made at an output size ("viseme@384x512.npz", see ``at_size``): not
#: a backend of its own in listings, not the owner's disk use.
SIZED_MARK = "@"
ALIAS_CACHE_ENTRIES = 4096  # names resolved (aliases or not) remembered for RECHECK_SECONDS
LEGACY_FRAMES = "frames.npy"  # raw N x H x W x 3 (before frames were stored compressed)
#: zlib level of the stored PNGs: 3 is smaller *and* faster to write than 1 on avatar frames, and
#: levels above trade a lot of time for a few percent (measured; BENCHMARKS.md, "Avatar store").
PNG_LEVEL = 3
# Entry of a backend's cached ``<backend>.npz`` holding the backend's precompute_key() it was made under.
_PRECOMPUTE_KEY = "__precompute_key__"


#: An avatar's names by API key name ("" without keys), oldest first (``AvatarStore.names``)
Names = dict[str, list[str]]

#: How a registration frames the picture (talkmesh.v1.Framing's short names): "auto" crops to the
#: head and shoulders when the face is small (talkmesh.common.faces.face_is_small), "as_is" never,
#: "head_and_shoulders" always (unless the crop is the whole picture).
FRAMINGS = tuple(choices(types_pb2.Framing))
#: A crop this close to the whole picture (a fraction of each side) is the whole picture.
WHOLE_PICTURE = 0.01
#: The whole picture's meta.json key noting that framing kept it whole although it tried to crop:
#: {"framed_id": the framed id it would have had (it hashes the crop rule), "why": ...}.
KEPT_WHOLE = "kept_whole"


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
    #: the names callers gave it, by API key name ("" without keys): see ``AvatarStore.names``
    names: Names = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class NamedAvatar:
    """What resolving a name needs of one avatar (``AvatarStore.name_table``)."""

    id: str
    #: the name meta.json records (the name of an entry without names.json)
    first: str
    names: Names
    owners: frozenset[str]


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
        # an avatar forgotten for room is no longer checked against the disk either
        self._memory: Lru[str, Avatar] = Lru(
            cfg.memory_entries, on_drop=lambda key, _avatar: self._verified.pop(key, None)
        )
        #: avatars scaled down to the output sizes streams asked for, by (id, size): at most
        #: 2 x max_video_bytes of frames (a copy is never larger than the avatar's stored frames)
        self._scaled: Lru[tuple[str, tuple[int, int]], Avatar] = Lru(
            cfg.memory_entries, max_weight=2 * cfg.max_video_bytes, weigh=lambda a: int(a.frames.nbytes)
        )
        self._verified: dict[str, float] = {}  # id in _memory -> when its entry was last seen on disk
        # name -> (the id it is an alias of, or "", when that was read from disk)
        self._aliases: Lru[str, tuple[str, float]] = Lru(ALIAS_CACHE_ENTRIES)
        self._protected: tuple[frozenset[str], float] = (frozenset(), -RECHECK_SECONDS)
        # every entry's names and owners, and when they were read (name_table)
        self._name_table: tuple[tuple[NamedAvatar, ...], float] = ((), -RECHECK_SECONDS)
        self._name_changes = 0  # changes made here (a table read across one is not kept)
        self._name_table_reading = threading.Lock()  # one reader of the disk at a time (name_table)
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
        self._swept = 0.0
        self.sweep_stale()

    def _entry(self, avatar_id: str) -> threading.RLock:
        """The lock of one avatar's entry (its precompute, disk load and backend preparation)."""
        with self._lock:
            return self._entries.setdefault(avatar_id, threading.RLock())

    @contextlib.contextmanager
    def _disk_lock(self, avatar_id: str) -> Iterator[None]:
        """The entry's lock across processes (an flock on ``.locks/<id>``; NFSv4, CephFS and local
        file systems honour it). Taken with the entry's thread lock held and never nested: on NFS
        flock is a POSIX lock, which a process holds once whatever its threads do."""
        locks = self.root / LOCKS_DIR
        locks.mkdir(exist_ok=True)
        fd = os.open(locks / avatar_id, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def sweep_stale(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Removes temporary entries (``.tmp-*``) nothing has written for ``older_than`` seconds: the
        leftovers of a build or a delete whose process died. Returns how many it removed."""
        self._swept = time.monotonic()
        removed = 0
        now = time.time()
        for tmp in self.root.glob(f"{TMP_PREFIX}*"):
            try:
                newest = max(max(st.st_mtime, st.st_ctime) for st in (tmp.stat(), *(p.stat() for p in tmp.iterdir())))
            except OSError:  # removed or renamed meanwhile
                continue
            if now - newest > older_than:
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        return removed

    def settings_key(self, choice: FaceChoice = FaceChoice(), framed: bool = False) -> str:
        settings: dict[str, Any] = {"v": PRECOMPUTE_VERSION, "faces": self.faces.detector}
        if choice != FaceChoice():
            settings["face"] = [choice.index, list(choice.point) if choice.point else None]
            if choice.point:  # (earlier it was read on the stored frames: those avatars are made again)
                settings["point_in"] = "upload"
        if framed:  # (the whole picture keeps the id it had before framing existed; a new crop rule, new ids)
            settings["framing"] = ["head", CROP_FACE_WIDTHS, CROP_ASPECT, CROP_FACE_CENTRE, CROP_RULE_VERSION]
        return json.dumps(settings, sort_keys=True)

    def content_id(self, data: Data, choice: FaceChoice = FaceChoice(), framed: bool = False) -> str:
        """The id of ``data`` registered with ``choice``: of the whole picture, or ``framed`` to the
        head and shoulders (both framings that crop, "auto" and "head_and_shoulders", make the same crop)."""
        return self._content_ids(data, choice)[1 if framed else 0]

    def _content_ids(self, data: Data, choice: FaceChoice) -> tuple[str, str]:
        """The ids of the whole picture and of its head-and-shoulders framing (the file hashed once)."""
        h = hashlib.sha256()
        h.update(data)
        ids = []
        alpha = f"alpha:{self.cfg.background.lower()}" if has_alpha(data) else ""
        if alpha and exif_orientation(data) != 1:  # (entries made before it was turned were sideways: redone)
            alpha += ":turned"
        for framed in (False, True):
            one = h.copy()
            one.update(self.settings_key(choice, framed).encode())
            if alpha:
                # its frames depend on the background it is put on (and entries made before alpha was
                # honoured showed the hidden colour: they are not found again, the image is redone)
                one.update(alpha.encode())
            ids.append(one.hexdigest()[:20])
        return ids[0], ids[1]

    def register(
        self,
        data: Data,
        filename: str,
        name: str = "",
        backends: tuple[str, ...] = (),
        alias: str = "",
        choice: FaceChoice = FaceChoice(),
        progress: Progress | None = None,
        framing: str = "auto",
    ) -> tuple[Avatar, bool]:
        """Blocking. Returns (avatar, cached): a second registration of the same file is instant.

        ``progress(stage, done, total)`` is called from this thread as the preparation advances
        (stages as in ``talkmesh.v1.AvatarProgress``: decoding, faces, framing, saving,
        backend:<name>). ``framing``: one of FRAMINGS. A picture the framing crops is stored as
        another avatar than the whole picture (``content_id(framed=True)``), its meta.json noting
        the crop; "auto" on a picture whose face is large enough is the whole picture's avatar.
        """
        if framing not in FRAMINGS:
            raise InvalidArgument("meta.framing", f"{framing!r} is not one of {', '.join(FRAMINGS)}")
        report = progress or _no_progress
        if len(data) > self.cfg.max_upload_bytes:
            raise InvalidArgument(
                "data", f"upload of {len(data)} bytes exceeds {self.cfg.max_upload_bytes} (avatars.max_upload_bytes)"
            )
        for b in backends:
            if b not in self.backends:
                raise InvalidArgument("meta.backends", not_loaded(b, self.backends))
        whole_id, framed_id = self._content_ids(data, choice)
        if time.monotonic() - self._swept > STALE_TMP_SECONDS / 4:
            self.sweep_stale()
        # Only registrations of the same file wait for each other: a long video precompute must
        # not hold up renders of the avatars that are ready. (The whole picture's lock is taken
        # first, its framing's inside it: one order, whatever the framing asked for.)
        with self._entry(whole_id):
            avatar_id = self._stored(whole_id, framed_id, framing)
            cached = bool(avatar_id)
            self._on_cache("avatar_precompute", cached)
            if not cached:
                avatar_id, fresh = self._precompute(whole_id, framed_id, framing, data, filename, name, choice, report)
                cached = fresh is None  # (found stored after all: a crop that is the whole picture, or made meanwhile)
                if fresh is not None and fresh.frames.flags.c_contiguous and (
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
            self._set_alias(alias, avatar_id)
        return avatar, cached

    def _alias_path(self, name: str) -> Path:
        return self.root / ALIASES_DIR / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.json"

    def _set_alias(self, name: str, avatar_id: str) -> None:
        """``name`` resolves to ``avatar_id`` on every replica, which is protected from deletion."""
        path = self._alias_path(name)
        path.parent.mkdir(exist_ok=True)
        _write_atomic(path, json.dumps({"alias": name, "id": avatar_id}).encode())
        with self._lock:
            self._aliases.put(name, (avatar_id, time.monotonic()))
            self._protected = (self._protected[0] | {avatar_id}, self._protected[1])

    def _read_alias(self, name: str) -> str:
        try:
            doc = json.loads(self._alias_path(name).read_text())
            return str(doc["id"]) if doc.get("alias") == name else ""
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def _usable(self, avatar_id: str) -> bool:
        """Blocking. Whether ``avatar_id``'s entry is complete and loads (a damaged one is set aside)."""
        if not (self.root / avatar_id / "meta.json").is_file():
            return False
        try:
            self.get(avatar_id)
        except (FailedPrecondition, NotFound):  # damaged and set aside, or deleted meanwhile: made again
            return False
        return True

    def _meta(self, avatar_id: str) -> dict[str, Any]:
        try:
            meta = json.loads((self.root / avatar_id / "meta.json").read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _stored(self, whole_id: str, framed_id: str, framing: str) -> str:
        """Blocking. The id of the stored entry a registration with ``framing`` is (loaded), or ""
        when it must be made: the whole picture's for "as_is", the framed one's for "head_and_shoulders", and
        for "auto" whichever the stored entries say it crops to (the whole picture's face report,
        or the framed one's note of the whole picture's face). A framing that tried to crop and kept
        the whole picture (``KEPT_WHOLE``) is the whole picture's for both, under the same crop rule."""
        if framing == "as_is":
            return whole_id if self._usable(whole_id) else ""
        whole = self._meta(whole_id)
        kept = whole.get(KEPT_WHOLE)
        kept_whole = isinstance(kept, dict) and kept.get("framed_id") == framed_id
        if framing == "head_and_shoulders":
            if self._usable(framed_id):
                return framed_id
            return whole_id if kept_whole and self._usable(whole_id) else ""
        box, w, h = whole.get("face", {}).get("box", []), whole.get("width", 0), whole.get("height", 0)
        small = len(box) != 4 or face_is_small(box[2] - box[0], w, h)
        if (kept_whole or not small) and self._usable(whole_id):
            return whole_id
        if self._meta(framed_id).get("framing", {}).get("face_small") and self._usable(framed_id):
            return framed_id
        return ""

    def _analysed(
        self, data: Data, filename: str, choice: FaceChoice, progress: Progress, crop: Crop | None = None,
        stage: str = "faces",
    ) -> tuple[Decoded, FaceTrack]:  # fmt: skip
        """The upload decoded (``crop``: that part of it) and its face tracked; ``choice.point`` is
        in the upload's pixels. ``stage``: the progress stage that counts the tracked frames."""
        progress("decoding" if crop is None else stage, 0, 0)
        decoded = decode(data, filename, self.cfg, crop)
        frames = decoded.frames
        tracked = 0

        def one_frame(index: int, total: int) -> None:  # called once per tracked frame, in any order
            nonlocal tracked
            tracked += 1
            progress(stage, tracked, total)

        progress(stage, 0, len(frames))
        point = choice.point
        if point is not None:  # (in the frames' pixels: (point - origin) * scale)
            point = (point[0] - decoded.origin[0], point[1] - decoded.origin[1])
        chosen = dataclasses.replace(choice, point=point, scale=decoded.scale)
        track = self.faces.analyse(frames, chosen, progress=one_frame)
        progress(stage, len(frames), len(frames))
        return decoded, track

    def _precompute(
        self, whole_id: str, framed_id: str, framing: str, data: Data, filename: str, name: str,
        choice: FaceChoice, progress: Progress,
    ) -> tuple[str, Avatar | None]:  # fmt: skip
        """Decodes, analyses and stores one upload, framed as ``framing`` says (held: the whole
        picture's entry lock); returns the avatar's id and the avatar (its frames are the decoded
        ones, so a new registration does not decode its stored frames again; None when it was
        stored already: a framing that kept the whole picture, or made meanwhile)."""
        decoded, track = self._analysed(data, filename, choice, progress)

        def keep_whole() -> tuple[str, Avatar]:
            return whole_id, self._save(whole_id, decoded, track, filename, name, progress=progress)

        def kept_whole(why: str = "") -> tuple[str, Avatar | None]:
            """Framing keeps the whole picture: the same avatar as registered "as_is" (stored now
            unless it is already). ``why`` it did, having tried to crop: noted, so that the next
            registration of the file is the whole picture at once (``_stored``)."""
            kept = (whole_id, None) if self._usable(whole_id) else keep_whole()
            if why:
                self._note_kept_whole(whole_id, framed_id, why)
            return kept

        if framing == "as_is":
            return keep_whole()
        report = face_report(track, decoded.scale)
        box = report["box"]
        small = face_is_small(box[2] - box[0], int(decoded.frames.shape[2]), int(decoded.frames.shape[1]))
        if framing == "auto" and not small:  # (its face report says so: no note needed)
            return kept_whole()
        crop = framed_crop(decoded, track)
        if crop is None:
            return kept_whole("the head-and-shoulders crop is the whole picture")
        with self._entry(framed_id):
            if self._usable(framed_id):  # (made meanwhile by one that asked for "head_and_shoulders")
                return framed_id, None
            # The same face again, in the crop: the centre of its box on the first frame with it
            x1, y1, x2, y2 = (float(v) for v in report["upload_box"])
            again = FaceChoice(point=((x1 + x2) / 2, (y1 + y2) / 2))
            progress("framing", 0, 0)
            try:
                framed, framed_track = self._analysed(data, filename, again, progress, crop, stage="framing")
            except InvalidArgument as exc:  # (the face not found again in the crop: never seen, but kept whole)
                log.warning("avatar %s: the face was not found again in its head-and-shoulders crop %s (%s); "
                            "keeping the whole picture", framed_id, [round(v) for v in crop], exc)  # fmt: skip
                return kept_whole("the face was not found again in its head-and-shoulders crop")
            region = [round(v, 1) for v in framed.region]
            note = {"box": region, "face_small": small, "asked": framing}
            return framed_id, self._save(framed_id, framed, framed_track, filename, name, note, progress)

    def _note_kept_whole(self, whole_id: str, framed_id: str, why: str) -> None:
        """Notes in the whole picture's meta.json (``KEPT_WHOLE``) that framing kept it whole, and
        why, under the crop rule ``framed_id`` hashes (held: the entry's lock). Nothing when the
        entry is gone or unreadable, or the note cannot be written (a full disk: only logged, the
        registration stands): the next registration decides again."""
        note = {"framed_id": framed_id, "why": why}
        with self._disk_lock(whole_id):
            meta = self._meta(whole_id)
            if not meta or meta.get(KEPT_WHOLE) == note:  # (deleted, unreadable, or noted already)
                return
            try:
                _write_atomic(self.root / whole_id / "meta.json", json.dumps({**meta, KEPT_WHOLE: note}).encode())
            except FileNotFoundError:  # (deleted meanwhile by another process)
                pass
            except OSError as exc:
                log.warning("avatar %s: could not note that framing kept it whole (%s)", whole_id, exc)

    def _save(
        self, avatar_id: str, decoded: Decoded, track: FaceTrack, filename: str, name: str,
        framing: dict[str, Any] | None = None, progress: Progress = _no_progress,
    ) -> Avatar:  # fmt: skip
        """Stores one analysed upload as ``avatar_id`` (named ``name``, else after its file, else its
        id; ``framing``: the crop's note, for meta.json and the face report) and returns the avatar."""
        name = name or Path(filename).stem or avatar_id
        tmp = self.root / f".tmp-{avatar_id}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        frames = decoded.frames
        try:
            report = face_report(track, decoded.scale, decoded.origin)
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
            if framing is not None:
                report["framed_box"] = framing["box"]
                meta["framing"] = framing
            _write_atomic(tmp / "meta.json", json.dumps(meta).encode())
            avatar = _avatar(avatar_id, meta, frames, arrays)
            self._install(tmp, avatar_id)
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

    def _install(self, tmp: Path, avatar_id: str) -> None:
        """Renames the built entry ``tmp`` into place, unless a complete entry is there already (made
        by another replica or process meanwhile: it is kept, and ``tmp`` removed). The content id
        names the content, so either is the same avatar."""
        final = self.root / avatar_id
        with self._disk_lock(avatar_id):
            if (final / "meta.json").is_file():
                log.info("avatar %s: prepared meanwhile by another process; using that entry", avatar_id)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            if final.exists():  # a half-written entry from an older layout (never a complete one)
                aside = self.root / f"{TMP_PREFIX}old-{avatar_id}-{uuid.uuid4().hex[:6]}"
                os.replace(final, aside)
                shutil.rmtree(aside, ignore_errors=True)
            try:
                os.replace(tmp, final)
                self._names_changed()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # installed by another replica after our check (a network file system's cached
                # "not there"): the same content; that entry is kept
                log.info("avatar %s: installed meanwhile by another process; using that entry", avatar_id)
                shutil.rmtree(tmp, ignore_errors=True)

    def _ensure_backend(self, avatar: Avatar, backend: str) -> None:
        if backend in avatar.extras:
            return
        with self._entry(avatar.id):
            if backend in avatar.extras:  # prepared by another thread while we waited
                return
            sized = f"{SIZED_MARK}{avatar.variant}" if avatar.variant else ""
            path = self.root / avatar.id / f"{backend}{sized}.npz"
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
        """The id an alias names (read from disk at most every ``RECHECK_SECONDS``), else the id."""
        name = avatar_id or DEFAULT_ALIAS
        now = time.monotonic()
        with self._lock:
            known = self._aliases.get(name)
        if known is not None and now - known[1] < RECHECK_SECONDS:
            return known[0] or name
        target = self._read_alias(name)
        with self._lock:
            self._aliases.put(name, (target, now))
        return target or name

    def get(self, avatar_id: str, backend: str = "") -> Avatar:
        """Blocking. The prepared avatar (memory, then disk), with ``backend``'s precompute."""
        key = self.resolve(avatar_id)
        now = time.monotonic()
        with self._lock:
            avatar = self._memory.get(key)
            recheck = avatar is not None and now - self._verified.get(key, now) >= RECHECK_SECONDS
        if recheck:  # deleted by another replica? (one stat, at most every RECHECK_SECONDS)
            if (self.root / key / "meta.json").is_file():
                with self._lock:
                    if key in self._memory:  # (not forgotten meanwhile: no stale check time left)
                        self._verified[key] = now
            else:
                self._forget(key)
                avatar = None
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

    def _forget(self, key: str) -> None:
        """Drops the avatar ``key`` from memory, its copies at output sizes included."""
        with self._lock:
            self._memory.pop(key)
            self._verified.pop(key, None)
            for scaled_key in [k for k in self._scaled.keys() if k[0] == key]:
                self._scaled.pop(scaled_key)

    def _remember(self, key: str, avatar: Avatar) -> None:
        with self._lock:
            self._memory.put(key, avatar)
            self._verified[key] = time.monotonic()

    def _load(self, avatar_id: str) -> Avatar:
        d = self.root / avatar_id
        if not avatar_id or "/" in avatar_id or avatar_id.startswith(".") or not (d / "meta.json").is_file():
            raise NotFound("config.avatar_id", avatar_id, "avatar")
        try:
            inode = d.stat().st_ino
        except FileNotFoundError as exc:  # deleted meanwhile
            raise NotFound("config.avatar_id", avatar_id, "avatar") from exc
        try:
            meta = json.loads((d / "meta.json").read_text())
            if (d / FRAMES_INDEX).is_file():
                frames = load_frames(d, (int(meta["frames"]), int(meta["height"]), int(meta["width"]), 3))
            else:  # an entry written before frames were stored compressed
                frames = np.ascontiguousarray(np.load(d / LEGACY_FRAMES, mmap_mode="r"))
            with np.load(d / "boxes.npz") as z:
                arrays = {k: z[k] for k in z.files}
            return _avatar(avatar_id, meta, frames, arrays)
        except FileNotFoundError as exc:  # a file of the entry is missing: damaged, or deleted meanwhile
            if not (d / "meta.json").is_file():
                raise NotFound("config.avatar_id", avatar_id, "avatar") from exc
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
        with self._disk_lock(avatar_id), contextlib.suppress(OSError):
            # Only the entry found damaged: not one another replica has installed since.
            if d.stat().st_ino == inode:
                aside.parent.mkdir(exist_ok=True)
                os.replace(d, aside)
        raise FailedPrecondition(f"avatar {avatar_id}: its stored frames were damaged; register it again") from damage

    def list(self) -> list[AvatarSummary]:
        out = []
        for meta_path in sorted(self.root.glob("*/meta.json")):
            if meta_path.parent.name.startswith("."):  # being built or deleted, set aside
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                out.append(self._summary(meta_path))
        return out

    def summary(self, avatar_id: str) -> AvatarSummary | None:
        """One avatar as ``list`` shows it (by id or alias); None when it does not exist."""
        d = self._dir(avatar_id)
        if d is None:
            return None
        try:
            return self._summary(d / "meta.json")
        except (OSError, ValueError, KeyError):
            return None

    def _summary(self, meta_path: Path) -> AvatarSummary:
        meta = json.loads(meta_path.read_text())
        backends = tuple(sorted(p.stem for p in meta_path.parent.glob("*.npz") if p.stem != "boxes" and _own_file(p)))
        return AvatarSummary(
            meta["id"],
            meta["name"],
            meta["width"],
            meta["height"],
            meta["frames"],
            backends,
            meta.get("face", {}),
            self.names(meta["id"]),
        )

    # -- owners (API keys; see talkmesh/common/principal.py) ---------------------------------------
    # ``owners.json`` next to ``meta.json`` lists the names of the API keys that registered the
    # avatar (an avatar is content-addressed: two keys uploading the same file share one entry).
    # No file: registered without API keys, owned by nobody (only admins may delete it).
    def is_protected(self, avatar_id: str) -> bool:
        """The default avatar (and any alias the service registered): read-only for everyone."""
        return self.resolve(avatar_id) in self._protected_ids()

    def _protected_ids(self) -> frozenset[str]:
        """The ids any alias names, on any replica (read from disk at most every RECHECK_SECONDS)."""
        now = time.monotonic()
        with self._lock:
            ids, read_at = self._protected
        if now - read_at < RECHECK_SECONDS:
            return ids
        found = set(ids)  # an alias is never removed: what was protected stays protected
        for path in (self.root / ALIASES_DIR).glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                found.add(str(json.loads(path.read_text())["id"]))
        with self._lock:
            self._protected = (self._protected[0] | found, now)
            return self._protected[0]

    def owners(self, avatar_id: str) -> set[str]:
        d = self._dir(avatar_id)
        try:
            return set(json.loads((d / "owners.json").read_text())) if d is not None else set()
        except (OSError, ValueError):
            return set()

    def update_owners(self, avatar_id: str, change: Callable[[set[str]], set[str]]) -> set[str]:
        """Replaces the owners by ``change(owners)`` under the entry's lock, so that owners added or
        removed at the same time by other threads or replicas are not lost. Returns the new owners
        (an empty set, and no change, when the avatar does not exist)."""
        return self._update_file(avatar_id, "owners.json", self.owners, change, sorted, set())  # type: ignore[no-any-return]

    # -- names -------------------------------------------------------------------------------------
    # ``names.json`` next to ``meta.json``: the names callers gave the avatar, by API key name (""
    # without keys), oldest first: {"": ["a", "b"], "alice": ["crop"]}. Registering a stored file
    # again with another name adds it (the avatar is content-addressed: one entry, several names);
    # nothing is ever renamed. No file (older entries, the default avatar): meta.json's ``name``.
    def names(self, avatar_id: str) -> Names:
        d = self._dir(avatar_id)
        try:
            doc = json.loads((d / "names.json").read_text()) if d is not None else {}
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict):
            return {}
        return {str(k): [str(n) for n in v] for k, v in doc.items() if isinstance(v, list)}

    def update_names(self, avatar_id: str, change: Callable[[Names], Names]) -> Names:
        """Replaces the names by ``change(names)`` under the entry's lock (as ``update_owners``).
        Returns the new names ({} and no change when the avatar does not exist)."""
        return self._update_file(  # type: ignore[no-any-return]
            avatar_id, "names.json", self.names, lambda n: {k: v for k, v in change(n).items() if v}, dict, {}
        )

    def first_name(self, avatar_id: str) -> str:
        """The name the avatar was first registered under (meta.json; "" when it does not exist)."""
        d = self._dir(avatar_id)
        try:
            return str(json.loads((d / "meta.json").read_text())["name"]) if d is not None else ""
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def _update_file(
        self, avatar_id: str, file: str, read: Callable[[str], Any], change: Callable[[Any], Any],
        dump: Callable[[Any], Any], missing: Any,
    ) -> Any:  # fmt: skip
        d = self._dir(avatar_id)
        if d is None or not (d / "meta.json").is_file():  # (no lock file for ids that never existed)
            return missing
        with self._entry(d.name), self._disk_lock(d.name):
            if not (d / "meta.json").is_file():  # deleted meanwhile
                return missing
            before = read(d.name)
            after = change(copy.deepcopy(before))
            if after != before:
                with contextlib.suppress(FileNotFoundError):
                    _write_atomic(d / file, json.dumps(dump(after)).encode())
                self._names_changed()
            return after

    def name_table(self) -> tuple[NamedAvatar, ...]:
        """Every entry's id, first name, names and owners: what resolving a name reads (the
        renderer's ``find_avatar``), on every Speak, Live session and Render given a name. Read
        from disk at most every ``RECHECK_SECONDS`` (names and owners changed on another replica
        resolve within that bound, as aliases do), and again at once after this process changed
        an entry, its names or its owners."""
        with self._lock:
            table, read_at = self._name_table
        if time.monotonic() - read_at < RECHECK_SECONDS:
            return table
        with self._name_table_reading:  # one caller reads the disk; the others wait for its table
            now = time.monotonic()
            with self._lock:
                table, read_at = self._name_table
                changes = self._name_changes
            if now - read_at < RECHECK_SECONDS:
                return table
            return self._read_name_table(now, changes)

    def _read_name_table(self, now: float, changes: int) -> tuple[NamedAvatar, ...]:
        rows = []
        for meta_path in sorted(self.root.glob("*/meta.json")):
            d = meta_path.parent
            if d.name.startswith("."):  # being built or deleted, set aside
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                first = str(json.loads(meta_path.read_text())["name"])
                rows.append(NamedAvatar(d.name, first, self.names(d.name), frozenset(self.owners(d.name))))
        with self._lock:
            if self._name_changes == changes:  # (else a change made meanwhile may be missing)
                self._name_table = (tuple(rows), now)
        return tuple(rows)

    def _names_changed(self) -> None:
        """An entry, its names or its owners changed here: ``name_table`` reads the disk again."""
        with self._lock:
            self._name_table = ((), -RECHECK_SECONDS)
            self._name_changes += 1

    def disk_bytes(self, avatar_id: str) -> int:
        """Bytes the avatar takes on disk (its frames, boxes and backends' precomputes; not the
        precomputes the service made at output sizes, "<backend>@WxH.npz", nor temporary files:
        rendering does not use up an owner's quota)."""
        d = self._dir(avatar_id)
        if d is None:
            return 0
        total = 0
        for p in d.iterdir() if d.is_dir() else ():
            if not _own_file(p):
                continue
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
        if key in self._protected_ids():
            raise FailedPrecondition(f"avatar_id: {avatar_id!r} is the {DEFAULT_ALIAS} avatar, which cannot be deleted")
        if not key or "/" in key or key.startswith("."):
            return False
        with self._entry(key):
            self._forget(key)
            d = self.root / key
            if not d.is_dir():  # (no lock file for ids that never existed)
                return False
            tmp = self.root / f"{TMP_PREFIX}del-{key}-{uuid.uuid4().hex[:6]}"
            with self._disk_lock(key):
                try:
                    os.replace(d, tmp)
                except FileNotFoundError:  # not there (or deleted by another replica meanwhile)
                    return False
            shutil.rmtree(tmp, ignore_errors=True)
            self._names_changed()
            return True


def framed_crop(decoded: Decoded, track: FaceTrack) -> Crop | None:
    """The head-and-shoulders crop of a whole picture (``decoded``, its face ``track``) in the
    upload's pixels: one box for every frame, covering the face wherever it is on the frames where
    it was found; None when that is the whole picture."""
    kept = track.boxes[track.kept] if track.kept.any() else track.boxes[:1]
    boxes = kept / decoded.scale  # (the whole picture: origin 0)
    first = tuple(float(v) for v in boxes[0])
    cover = (*(float(v) for v in boxes[:, :2].min(0)), *(float(v) for v in boxes[:, 2:].max(0)))
    height, width = decoded.frames.shape[1] / decoded.scale, decoded.frames.shape[2] / decoded.scale
    crop = head_and_shoulders(first, round(width), round(height), cover)  # type: ignore[arg-type]
    if crop[2] - crop[0] >= (1 - WHOLE_PICTURE) * width and crop[3] - crop[1] >= (1 - WHOLE_PICTURE) * height:
        return None
    return crop


def face_report(track: FaceTrack, scale: float = 1.0, origin: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """What registration found, as reported to the client (and kept in meta.json); ``scale``: stored
    pixels per pixel of the upload (decode.Decoded.scale), ``origin``: the upload's pixel at the
    frames' corner (a framed avatar's crop, decode.Decoded.origin)."""
    first = int(np.argmax(track.kept)) if track.kept.any() else 0
    return {
        "box": [round(float(v), 1) for v in track.boxes[first]],
        "upload_box": [round(float(v) / scale + origin[i % 2], 1) for i, v in enumerate(track.boxes[first])],
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


def _own_file(path: Path) -> bool:
    """A file of the entry as registered: not a temporary one (``.*``) nor a precompute at an
    output size."""
    return not path.name.startswith(".") and SIZED_MARK not in path.name


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
