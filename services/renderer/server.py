"""The renderer service: avatar registry and lip-synced frame rendering."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from services.renderer.avatars import (
    DEFAULT_ALIAS,
    DEFAULT_AVATAR_FILE,
    AvatarStore,
    AvatarSummary,
    FaceChoice,
    default_avatar_bytes,
)
from services.renderer.avatars.decode import Data
from services.renderer.backends import create_backend, not_loaded
from services.renderer.backends.base import RenderBackend
from services.renderer.config import RendererConfig
from services.renderer.frames import output_size
from services.renderer.metrics import Queue, SkipReason, Stage
from services.renderer.progress import LatestProgress
from services.renderer.runner import FrameRunner, make_runner
from services.renderer.session import RenderSession, SessionOptions
from services.renderer.uploads import (
    HeldUpload,
    Preparations,
    UploadBudget,
    UploadLimits,
    framing_of,
    receive_upload,
)
from talkmesh.common.aio import cancel_and_wait
from talkmesh.common.clock import MAX_STAGE_RATE, MIN_STAGE_RATE, request_fps
from talkmesh.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from talkmesh.common.lru import Lru
from talkmesh.common.names import check_id, clean_name
from talkmesh.common.principal import Principal, principal_of, restricted
from talkmesh.common.registry import spec
from talkmesh.common.server import Service
from talkmesh.common.streams import RequestStream
from talkmesh.common.telemetry import Series, Telemetry
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc

log = logging.getLogger(__name__)

MAX_SESSIONS_REMEMBERED = 1024


class RendererServicer(renderer_pb2_grpc.RendererServicer):
    def __init__(self, service: RendererService) -> None:
        self.s = service

    async def Render(
        self, request_iterator: AsyncIterator[rpb.RenderRequest], context: Any
    ) -> AsyncIterator[cpb.VideoFrame]:
        s = self.s
        # The encoder drives Render streams (a live turn may wait long for its text): no idle limit.
        stream: RequestStream[rpb.RenderRequest] = await RequestStream.open(
            request_iterator, "config", first_timeout=s.config.server.idle_timeout, what="render stream"
        )
        first = stream.head
        cfg = stream.config
        for name in ("request_id", "avatar_id", "backend", "size", "session_id"):
            check_id(f"config.{name}", getattr(cfg, name))  # (avatar_id: an id or a name; the store checks paths)
        backend_name = cfg.backend or s.config.default_backend
        backend = s.backends.get(backend_name)
        if backend is None:
            raise InvalidArgument("config.backend", not_loaded(backend_name, s.backends))
        fps = float(request_fps(cfg.fps))
        pixel_format = cfg.pixel_format or cpb.PIXEL_FORMAT_I420
        if pixel_format not in (cpb.PIXEL_FORMAT_I420, cpb.PIXEL_FORMAT_RGB24):
            raise InvalidArgument("config.pixel_format", f"unsupported pixel format {pixel_format}")
        if cfg.sample_rate and not MIN_STAGE_RATE <= cfg.sample_rate <= MAX_STAGE_RATE:
            raise InvalidArgument(
                "config.sample_rate", f"{cfg.sample_rate} Hz is outside {MIN_STAGE_RATE}..{MAX_STAGE_RATE}"
            )
        if cfg.idle_motion not in rpb.IdleMotion.values():
            raise InvalidArgument("config.idle_motion", f"unknown idle motion {cfg.idle_motion}")
        avatar_id = cfg.avatar_id or s.config.default_avatar
        who = principal_of(context.invocation_metadata())
        session_key = cfg.session_id
        start_tick = (s.session_ticks.get(session_key) or 0) if session_key else 0

        def open_session() -> RenderSession:
            # One worker-thread hop (each costs frame 0 a wake-up): the owner check and the avatar
            # may read the disk, and a still photo's first session prepares its idle life (the body
            # mask and motion grid, ~15 ms); none of it may stall the other streams' frames.
            # (The gateway sends ids; an id costs one stat here, a name a look at the name table.)
            found, _ = self.find_avatar(who, avatar_id, "config.avatar_id")
            stored = s.store.get(found)
            size = output_size(cfg.size or s.config.default_size, stored.size)
            # rendered at the output size: a phone photo's 12 Mpx are scaled down once, not per frame
            avatar = s.store.at_size(stored, size, backend_name)
            return RenderSession(
                SessionOptions(
                    request_id=cfg.request_id or first.request_id,
                    size=size,
                    fps=fps,
                    pixel_format=pixel_format,
                    sample_rate=cfg.sample_rate,
                    part_bytes=s.config.part_bytes,
                    idle_life=s.config.viseme.idle_motion,  # the operator's switch wins over a request's ON
                    still=cfg.idle_motion == rpb.IDLE_MOTION_OFF,
                    idle_cache_bytes=s.config.viseme.idle_cache_mb * 2**20,
                    start_tick=start_tick,
                    attack_ms=s.config.viseme.attack_ms,
                    release_ms=s.config.viseme.release_ms,
                    batch_frames=cfg.batch_frames,
                    ring_directory=s.config.frame_ring.directory if s.config.frame_ring.enabled else "",
                ),
                avatar,
                backend,
                s.runners[backend_name],
                s.telemetry,
                s.config.session_queue,
                s.ring_opened,
            )

        session = await asyncio.to_thread(open_session)
        try:
            async for frame in session.run(stream):
                yield frame
        finally:
            if session_key:
                s.session_ticks.put(session_key, session.tick)

    async def _read_upload(
        self, request_iterator: AsyncIterator[rpb.AvatarUpload]
    ) -> tuple[rpb.AvatarMeta, HeldUpload]:
        """The upload's meta and bytes (services/renderer/uploads.py: checked as they arrive, within
        the renderer's upload budget and deadline); the caller releases them (``Preparations.run`` does)."""
        cfg = self.s.config
        return await receive_upload(
            request_iterator, self.s.uploads, UploadLimits.of(cfg.avatars), cfg.server.idle_timeout
        )

    @staticmethod
    def _choice(meta: rpb.AvatarMeta) -> FaceChoice:
        return FaceChoice(
            index=meta.face_index,
            point=(meta.face_point.x, meta.face_point.y) if meta.HasField("face_point") else None,
        )

    def _info(self, avatar: Any, cached: bool, names: list[str], meta: rpb.AvatarMeta) -> rpb.AvatarInfo:
        """A registration's answer. ``cached``: as the caller may know it (``_register``); an upload
        that is new to the caller shows the backends it asked for only, as a fresh one would. (Only
        this answer hides them: GetAvatar and ListAvatars show the shared entry, ``_summary_info``.)"""
        shown = set(avatar.extras) if cached else {"viseme", *meta.backends}
        return rpb.AvatarInfo(
            id=avatar.id,
            name=names[0] if names else "",
            names=names,
            width=avatar.size[0],
            height=avatar.size[1],
            frame_count=int(avatar.frames.shape[0]),
            cached=cached,
            backends=sorted(k for k in avatar.extras if k in self.s.backends and k in shown),
            face=face_report(avatar.report),
        )

    # -- owners: the API key the gateway names (talkmesh/common/principal.py); none without keys --
    def _usage(self, who: Principal) -> int:
        store = self.s.store
        return sum(store.disk_bytes(a.id) for a in store.list() if who.name in store.owners(a.id))

    def _check_quota(self, who: Principal | None, adding: int) -> None:
        """Blocking. RESOURCE_EXHAUSTED when the key's avatars (plus ``adding`` bytes) exceed its quota."""
        if who is None or not who.avatar_disk_bytes:
            return
        used = self._usage(who)
        if used + adding > who.avatar_disk_bytes:
            raise ResourceExhausted(
                f"API key {who.name!r}: avatars take {used} bytes on disk, {adding} more would exceed "
                f"the limit of {who.avatar_disk_bytes}; delete avatars first",
                retry_after=None,
                quota="avatar_disk_bytes",
                subject=f"api_key:{who.name}",
            )

    def _register(
        self, who: Principal | None, data: Data, meta: rpb.AvatarMeta, progress: Any = None
    ) -> tuple[Any, bool, list[str]]:
        """Blocking: quota, registration, then the key recorded as an owner (or rolled back) and the
        name added to the caller's names of the avatar. Returns (avatar, cached, the caller's names:
        the name given first).

        ``cached`` is true only for an avatar the caller already had (with API keys, a user key's
        own): a key that uploads a file another key registered gets the answer a fresh upload would
        give (the name from its own request or file name, not the other key's; the backends it
        asked for). The prepared entry is still shared (content-addressed) and that is not hidden:
        the upload is quick, and GetAvatar/ListAvatars show the entry's prepared backends, whoever
        asked for them (docs/SECURITY.md). The other key, its names and avatars stay hidden."""
        store = self.s.store
        self._check_quota(who, len(data))
        avatar, cached = store.register(
            data, meta.filename, meta.name, tuple(meta.backends), "", self._choice(meta), progress, framing_of(meta)
        )
        if store.is_protected(avatar.id):
            return avatar, cached, [avatar.name]  # (the default avatar keeps its name whoever uploads its file)
        # Read and changed under the entry's lock: another key (on this or another replica) may add
        # itself at the same time.
        owners = store.owners(avatar.id)
        stored = cached  # (the store had the entry)
        cached = cached and (not restricted(who) or who.name in owners)  # (as the caller may know it)
        # A name names one avatar of the caller's: checked before the caller becomes an owner, so
        # a refusal leaves nothing behind.
        if meta.name or cached:
            given = meta.name
        elif not stored:
            given = avatar.name  # (the file's name, as the fresh entry took it)
        else:  # another key's entry: what a fresh upload would be named, never that key's name
            given = Path(meta.filename).stem or avatar.id
        if given:
            taken = self._names_taken(who, avatar.id)
            if given in taken and meta.name:  # an explicit name never moves off another avatar
                if not stored and not owners:
                    store.delete(avatar.id)  # (this upload made the entry: nothing else refers to it)
                # (a file added before framing came, its face small: the name is its whole picture's)
                whole = avatar.report.get("framed_box") and taken[given] == store.content_id(data, self._choice(meta))
                framed = " (this upload was framed: framing as_is keeps the whole picture, which has that name)"
                raise AlreadyExists(
                    "name",
                    f"{given!r} is already the name of avatar {taken[given]}; remove that name first "
                    f"(`talkmesh avatar rm {given}`) or choose another" + (framed if whole else ""),
                )
            given = _free_name(given, taken)  # a name from the file's name: the first free variant
        if who is not None and who.name not in owners:
            name = who.name
            store.update_owners(avatar.id, lambda now: now | {name})
            try:
                self._check_quota(who, 0)
            except ResourceExhausted:
                left = store.update_owners(avatar.id, lambda now: now - {name})
                if not left and not owners and not stored:
                    store.delete(avatar.id)
                raise
        # A stored file registered again with another name gets that name too: its older names
        # (maybe another user's, when every caller is the same principal without API keys) keep
        # working. Nothing is renamed; with API keys a key only ever adds to its own names.
        key = who.name if who is not None else ""
        first = avatar.name

        def add(names: dict[str, list[str]]) -> dict[str, list[str]]:
            if not names and stored:  # an entry registered before names.json: its name stays its owners'
                names = {o: [first] for o in owners or {""}}
            mine = names.setdefault(key, [])
            if given not in mine:
                mine.append(given)
            return names

        names = store.update_names(avatar.id, add) if given else store.names(avatar.id)
        mine = _names_for(who, names, first)
        if given:  # the answer's `name` is the one just given
            mine = [given, *(n for n in mine if n != given)]
        return avatar, cached, mine

    def _names_taken(self, who: Principal | None, except_id: str) -> dict[str, str]:
        """Blocking. The names ``who`` resolves to avatars other than ``except_id``: name -> id."""
        return {
            name: a.id for a in self._visible(who) if a.id != except_id for name in _names_for(who, a.names, a.name)
        }

    async def RegisterAvatar(self, request_iterator: AsyncIterator[rpb.AvatarUpload], context: Any) -> rpb.AvatarInfo:
        meta, held = await self._read_upload(request_iterator)
        who = principal_of(context.invocation_metadata())
        # (the preparation releases the bytes when its worker is done)
        avatar, cached, names = await self.s.preparing.run(held, lambda data: self._register(who, data, meta))
        return self._info(avatar, cached, names, meta)

    async def RegisterAvatarWithProgress(
        self, request_iterator: AsyncIterator[rpb.AvatarUpload], context: Any
    ) -> AsyncIterator[rpb.AvatarRegistration]:
        meta, held = await self._read_upload(request_iterator)
        job: asyncio.Future[tuple[Any, bool, list[str]]] | None = None
        try:
            who = principal_of(context.invocation_metadata())
            size = held.received
            yield rpb.AvatarRegistration(progress=rpb.AvatarProgress(stage="received", done=size, total=size))
            progress = LatestProgress(asyncio.get_running_loop())
            job = asyncio.ensure_future(
                self.s.preparing.run(held, lambda data: self._register(who, data, meta, progress.report))
            )
            async for stage, done, total in progress.updates(job):
                yield rpb.AvatarRegistration(progress=rpb.AvatarProgress(stage=stage, done=done, total=total))
            avatar, cached, names = await job
        finally:
            await cancel_and_wait(job)
            if not held.taken:  # (else the preparation releases it when its worker is done)
                held.release()
        yield rpb.AvatarRegistration(avatar=self._info(avatar, cached, names, meta))

    def _visible(self, who: Principal | None) -> list[Any]:
        """Blocking. Every avatar without API keys or for an admin; else the key's own and the default."""
        store = self.s.store
        items = store.list()
        if not restricted(who):
            return items
        return [a for a in items if store.is_protected(a.id) or who.name in store.owners(a.id)]

    def _may_use(self, who: Principal | None, avatar_id: str, owners: frozenset[str] | set[str] | None = None) -> bool:
        """Blocking. With API keys a key uses its own avatars and the default (admins: any)."""
        store = self.s.store
        if not restricted(who) or store.is_protected(avatar_id):
            return True
        return who.name in (store.owners(avatar_id) if owners is None else owners)

    def find_avatar(self, who: Principal | None, value: str, field: str = "avatar_id") -> tuple[str, str]:
        """Blocking. (id, name) of the avatar ``value`` names for ``who``: the one place avatar
        names are resolved (the gateway's Speak and Live, Render, GetAvatar, DeleteAvatar; clients
        ask GetAvatar). An id (or an alias, "default"; empty: the default avatar) wins, name "";
        else one of the caller's names (``_names_for``) exactly, else in any case, of one avatar
        the caller may use (another key's names are never matched, nor its avatars found).

        Unknown, or an avatar the caller may not use: NOT_FOUND naming ``field`` (the same answer,
        so that a key learns nothing of another key's avatars). A name several avatars carry
        (exactly, or only in another case): FAILED_PRECONDITION naming ``field`` and listing the
        ids. Not INVALID_ARGUMENT: the value is well formed, and it is the caller's avatars (their
        names, which the caller can change) that make it ambiguous; the same value works once only
        one avatar carries the name, and the id always works."""
        store = self.s.store
        given = value or self.s.config.default_avatar
        if store.exists(given):
            avatar_id = store.resolve(given)
            if self._may_use(who, avatar_id):
                return avatar_id, ""
            # another key's id: for this caller no such id exists (it may still be a name of its own)
        mine = [a for a in store.name_table() if self._may_use(who, a.id, a.owners)]
        wanted = given.casefold()
        for same in (lambda n: n == given, lambda n: n.casefold() == wanted):
            named = [(a.id, n) for a in mine for n in _names_for(who, a.names, a.first) if same(n)]
            ids = list(dict.fromkeys(i for i, _ in named))
            if len(ids) == 1:
                return named[0]
            if ids:
                raise FailedPrecondition(
                    f"{len(ids)} avatars are named {value!r} ({', '.join(ids)}): give the id", field=field
                )
        raise NotFound(field, value, "avatar")

    def _delete(self, who: Principal | None, value: str, name: str = "") -> bool:
        """Blocking. Only an owner (or an admin) deletes; a co-owner only gives up its share.

        ``value`` is an id or a name (``find_avatar``): by a name, only that name goes. With
        ``name``, only that name goes (a key's own; without keys or for an admin, the name
        whoever gave it); the avatar (the key's share) goes with the caller's last name. An
        avatar the caller may not use is answered as an unknown one: False."""
        store = self.s.store
        try:
            avatar_id, matched = self.find_avatar(who, value)
        except NotFound:
            return False
        name = name or matched
        if store.is_protected(avatar_id):
            return store.delete(avatar_id)  # the default avatar: FAILED_PRECONDITION for everyone
        if name:
            if name not in _names_for(who, store.names(avatar_id), store.first_name(avatar_id)):
                return False  # (and an avatar that does not exist has no name)

            def drop(names: dict[str, list[str]]) -> dict[str, list[str]]:
                for key in [who.name] if restricted(who) else list(names):
                    names[key] = [n for n in names.get(key, []) if n != name]
                return names

            if _names_for(who, store.update_names(avatar_id, drop), ""):
                return True  # the avatar keeps its other names
        if not restricted(who):
            return store.delete(avatar_id)
        key = who.name
        store.update_names(avatar_id, lambda names: {k: v for k, v in names.items() if k != key})
        if store.update_owners(avatar_id, lambda now: now - {key}):
            return True  # others (maybe added meanwhile on another replica) still own it
        return store.delete(avatar_id)

    async def ListAvatars(self, request: rpb.ListAvatarsRequest, context: Any) -> rpb.ListAvatarsResponse:
        who = principal_of(context.invocation_metadata())
        (items, default) = await asyncio.to_thread(lambda: (self._visible(who), self._default_id(who)))
        infos = [_summary_info(a, _names_for(who, a.names, a.name), default=a.id == default) for a in items]
        return rpb.ListAvatarsResponse(avatars=infos)

    async def GetAvatar(self, request: rpb.GetAvatarRequest, context: Any) -> rpb.AvatarInfo:
        check_id("avatar_id", request.avatar_id)
        who = principal_of(context.invocation_metadata())

        def get() -> rpb.AvatarInfo:
            avatar_id, matched = self.find_avatar(who, request.avatar_id)
            a = self.s.store.summary(avatar_id)
            if a is None:  # deleted meanwhile
                raise NotFound("avatar_id", request.avatar_id, "avatar")
            return _summary_info(a, _names_for(who, a.names, a.name), matched, default=a.id == self._default_id(who))

        return await asyncio.to_thread(get)

    def _default_id(self, who: Principal | None) -> str:
        """Blocking. The id of the avatar a request of ``who`` that names none gets ("" if none)."""
        try:
            return self.find_avatar(who, "")[0]
        except (NotFound, FailedPrecondition):
            return ""

    async def DeleteAvatar(self, request: rpb.DeleteAvatarRequest, context: Any) -> rpb.DeleteAvatarResponse:
        if not request.avatar_id:
            raise InvalidArgument("avatar_id", "must not be empty")
        check_id("avatar_id", request.avatar_id)  # an id or a name (the store checks its paths)
        name = clean_name("name", request.name)
        if request.name and not name:  # (else it would delete the whole avatar, not one name)
            raise InvalidArgument("name", "has no printable characters: give a name of the avatar, or none")
        who = principal_of(context.invocation_metadata())
        return rpb.DeleteAvatarResponse(deleted=await asyncio.to_thread(self._delete, who, request.avatar_id, name))


def _free_name(name: str, taken: Mapping[str, str]) -> str:
    """``name``, or ``name-2``, ``name-3``... the first that no other avatar of the caller has."""
    n = 1
    free = name
    while free in taken:
        n += 1
        free = f"{name}-{n}"
    return free


def _names_for(who: Principal | None, names: dict[str, list[str]], first: str) -> list[str]:
    """The names ``who`` sees of an avatar whose names are ``names`` (``AvatarStore.names``): a
    user key its own only (a co-owner that gave none sees none: another key's names are never
    shown to it); without keys or for an admin every name, whoever gave it. An entry with no names
    recorded (from before names.json, or the default avatar): ``[first]``, or [] if empty."""
    if not names:
        return [first] if first else []
    if restricted(who):
        return list(names.get(who.name, []))
    return list(dict.fromkeys(n for key in sorted(names) for n in names[key]))


def _summary_info(a: AvatarSummary, names: list[str], name: str = "", *, default: bool = False) -> rpb.AvatarInfo:
    """A stored avatar as ListAvatars and GetAvatar answer it; ``name``: the one that matched
    (default: the first of ``names``). The same for every caller but the names: ``cached`` is
    always true (on disk, AvatarInfo's documented meaning for a listing) and ``backends`` lists
    every backend prepared for the shared entry (what a render finds ready), including those
    another key asked for; only a registration's answer shows the caller's view (``_info``)."""
    return rpb.AvatarInfo(
        id=a.id,
        name=name or (names[0] if names else ""),
        names=names,
        width=a.width,
        height=a.height,
        frame_count=a.frame_count,
        cached=True,
        backends=list(a.backends),
        face=face_report(a.report),
        default=default,
    )


def face_report(report: dict[str, Any]) -> rpb.FaceReport:
    return rpb.FaceReport(
        box=report.get("box", []),
        upload_box=report.get("upload_box", []),
        framed_box=report.get("framed_box", []),
        confidence=report.get("confidence", 0.0),
        frames_kept=report.get("frames_kept", 0),
        frames_rejected=report.get("frames_rejected", 0),
        faces_found=report.get("faces_found", 0),
        face_index=report.get("face_index", 0),
        detector=report.get("detector", ""),
    )


class RendererService(Service):
    name = "renderer"

    def __init__(self, config: RendererConfig, telemetry: Telemetry) -> None:
        super().__init__(telemetry)
        self.config = config
        self.backends: dict[str, RenderBackend] = {}
        self.runners: dict[str, FrameRunner] = {}
        self.store: AvatarStore = None  # type: ignore[assignment]  # built in start()
        self.session_ticks: Lru[str, int] = Lru(MAX_SESSIONS_REMEMBERED)
        self._ring_refusals = 0
        #: the bytes uploads hold (avatars.upload_memory_bytes)
        self.uploads = UploadBudget(config.avatars.upload_memory_limit)
        #: registrations being prepared (avatars.max_preparing); the others wait, their bytes held
        self.preparing = Preparations(config.avatars.max_preparing)

    def known_series(self) -> Sequence[Series]:
        m = self.telemetry.metrics
        return [
            Series(m.stage_duration, Stage),
            Series(m.queue_depth, Queue),
            Series(m.skipped_frames_total, SkipReason),
            Series(m.frames_total),
        ]

    def ring_opened(self, opened: bool, reason: str = "") -> None:
        """An encoder's frame ring was opened, or could not be (its frames go inline): counted as
        ``talkmesh_cache_requests_total{cache="frame_ring"}`` hit or miss. A miss is logged the first
        time and every 1000th after (a split deployment whose encoders still offer rings wants them
        off there: ``encoder.frame_ring.enabled``)."""
        self.telemetry.cache("frame_ring", opened)
        if opened:
            return
        if self._ring_refusals % 1000 == 0:
            log.warning("%s; frames go inline (%d streams so far)", reason, self._ring_refusals + 1)
        self._ring_refusals += 1

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        renderer_pb2_grpc.add_RendererServicer_to_server(RendererServicer(self), server)
        return spec("renderer").grpc_service_names()

    async def start(self) -> None:
        for line in self.config.unloaded_model_paths():
            log.warning("%s", line)
        names = list(dict.fromkeys(["viseme", *self.config.backends]))
        for name in names:
            try:
                backend = await asyncio.to_thread(create_backend, name, self.config, self.telemetry)
                # (a model that loads but cannot run, e.g. a wrong dimension, fails here: same message)
                await asyncio.to_thread(backend.warmup)
            except Exception as exc:
                if name == self.config.default_backend:
                    raise
                raise FailedPrecondition(f"renderer backend {name!r} could not be loaded: {exc}") from exc
            self.backends[name] = backend
            self.runners[name] = make_runner(backend, self.config, self.telemetry)
            self.telemetry.set_backend("renderer", name)
        if self.config.default_backend not in self.backends:
            raise FailedPrecondition(f"default_backend {self.config.default_backend!r} is not in backends")
        self.store = AvatarStore(self.config.avatars, self.backends, on_cache=self.telemetry.cache)
        avatar, _ = await asyncio.to_thread(
            self.store.register,
            default_avatar_bytes(),
            DEFAULT_AVATAR_FILE,
            DEFAULT_ALIAS,
            tuple(self.backends),
            DEFAULT_ALIAS,
        )
        log.info("renderer ready: backends %s, default avatar %s", ", ".join(self.backends), avatar.id)

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.close()
