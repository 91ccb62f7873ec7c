"""The Encoder gRPC servicer and service.

Two ways in, one encoder: the caller sends raw frames (``_encode_frames``), or it sends the
renderer's input and the encoder pulls the frames from the renderer itself (``_encode_rendered``,
the mesh's data plane: raw frames stay between the renderer and the encoder). Either way a reader
task feeds a bounded channel, frames are encoded in a worker thread, and a slow receiver stops the
handler at ``yield``, which stops the reader and lets gRPC flow control push back on the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import grpc
from opentelemetry import trace

from services.encoder.backends import X264Backend, open_errors, probe_nvenc, select_backend
from services.encoder.backends.base import VideoBackend
from services.encoder.config import EncoderConfig
from services.encoder.interleave import AudioInterleaver
from services.encoder.live.idle import IdleLoop, IdleLoops, encode_loop, loop_frames, render_idle_frames
from services.encoder.live.media import LiveCodecs, LiveParams
from services.encoder.live.session import LiveSession
from services.encoder.metrics import LiveState, Queue, Stage
from services.encoder.render import FrameRings, FrameSource, GrpcFrameSource, RingOffer, unbatched
from services.encoder.session import EncodeSession, StreamParams
from services.encoder.spares import SpareSessions
from services.encoder.validation import AUDIO_CODEC_NAMES, FrameAssembler, check_audio, stream_params
from talkmesh.common.aio import Chan, TaskSet, wait_event
from talkmesh.common.clock import MediaClock, request_fps
from talkmesh.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from talkmesh.common.framering import FrameRing
from talkmesh.common.logs import request_id_var
from talkmesh.common.lru import Lru
from talkmesh.common.registry import spec
from talkmesh.common.server import Service
from talkmesh.common.streams import RequestStream
from talkmesh.common.telemetry import ENCODER_FIRST_FRAGMENT, RENDERER_FIRST_FRAME, Series, Telemetry
from talkmesh.v1 import audio_features_pb2, common_pb2, encoder_pb2, encoder_pb2_grpc, live_pb2, renderer_pb2

log = logging.getLogger(__name__)

#: Avatar frame sizes remembered for opening an encoder before frame 0 (EncoderServicer.frame_sizes).
FRAME_SIZES_KEPT = 1024

#: Whole-file MP4 streams output nothing until the end; they report progress this often (frames).
PROGRESS_EVERY_FRAMES = 5


def _frames_of(vf: common_pb2.VideoFrame) -> list[tuple[common_pb2.VideoFrame, str]]:
    """A frame (or one part of it), or the frames of a batch (``VideoFrame.frames``), each with the
    path its errors name. A batch holds whole frames only: no pixels or parts of its own, no
    nested batches, no split frames."""
    if not vf.frames:
        return [(vf, "frame")]
    if vf.data or vf.part_count > 1:
        raise InvalidArgument("frame.data", "a batch (frame.frames) carries no pixels or parts of its own")
    out = []
    for i, f in enumerate(vf.frames):
        if f.frames or f.part_count > 1:
            raise InvalidArgument(f"frame.frames[{i}]", "a frame of a batch is whole: not split, not a batch")
        out.append((f, f"frame.frames[{i}]"))
    return out


class _Output:
    """Builds the MediaChunks of one stream: seq numbers, chunk splitting, first-message fields."""

    def __init__(self, request_id: str, max_chunk_bytes: int) -> None:
        self.request_id = request_id
        self.max_chunk_bytes = max_chunk_bytes
        self.seq = 0
        self.described = False
        self.stages: list[common_pb2.StageTiming] = []
        self.frames_inferred = 0

    def chunks(self, data: bytes, session: EncodeSession, *, init: bool = False) -> list[encoder_pb2.MediaChunk]:
        out = []
        for start in range(0, len(data), self.max_chunk_bytes):
            msg = encoder_pb2.MediaChunk(
                request_id=self.request_id,
                seq=self.seq,
                data=data[start : start + self.max_chunk_bytes],
                init_segment=init,
                frames_encoded=self._frames(session),
            )
            if not self.described:
                # The first message names the format, so a client can set up its player.
                msg.mime_type = session.mime_type
                msg.video_encoder = session.video_encoder
                self.described = True
            self.seq += 1
            out.append(msg)
        return out

    def end(self, session: EncodeSession) -> encoder_pb2.MediaChunk:
        msg = encoder_pb2.MediaChunk(
            request_id=self.request_id,
            seq=self.seq,
            end_of_stream=True,
            frames_encoded=session.frames_in,
            mime_type=session.mime_type,
            video_encoder=session.video_encoder,
            stages=self.stages,
            frames_inferred=self.frames_inferred,
        )
        self.seq += 1
        return msg

    def progress(self, session: EncodeSession) -> encoder_pb2.MediaChunk:
        """A message without data that only reports ``frames_encoded`` (whole-file MP4 streams)."""
        msg = encoder_pb2.MediaChunk(request_id=self.request_id, seq=self.seq, frames_encoded=session.frames_in)
        self.seq += 1
        return msg

    @staticmethod
    def _frames(session: EncodeSession) -> int:
        # fMP4 counts the video samples in the fragments sent; other containers the frames fed.
        return session.frames_out if session.params.container == "fmp4" else session.frames_in


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, config: EncoderConfig, telemetry: Telemetry, frame_source: FrameSource | None = None) -> None:
        self.config = config
        self.telemetry = telemetry
        self.frame_source = frame_source
        self.idle_loops = IdleLoops(config.live.max_loops)
        self.renderer_down = False
        # The frame size (width, height, pixel format) the renderer sent last for an avatar, backend,
        # size preset and pixel format: the next such stream opens its encoder ahead of frame 0.
        self.frame_sizes: Lru[tuple[str, str, str, int], tuple[int, int, int]] = Lru(FRAME_SIZES_KEPT)
        self.spares = SpareSessions(config.spare_sessions, self._session, self._open_spare)
        # Frame rings for a renderer in another process on this machine (docs/ARCHITECTURE.md).
        rings = config.frame_ring
        remote = frame_source is not None and frame_source.remote
        self.rings = FrameRings(rings.directory, rings.slots, rings.ready, enabled=rings.enabled and remote)
        # Set by EncoderService.start() once the probe has run.
        self.backend: VideoBackend | None = None
        self.fallback: VideoBackend | None = None

    async def Encode(
        self, request_iterator: AsyncIterator[encoder_pb2.EncodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[encoder_pb2.MediaChunk]:
        if self.backend is None:
            raise Unavailable("the encoder is still starting")
        idle = self.config.server.idle_timeout
        stream: RequestStream[encoder_pb2.EncodeRequest] = await RequestStream.open(
            request_iterator, "config", first_timeout=idle, idle_timeout=idle, what="encode stream"
        )
        if stream.config.HasField("render"):
            encode = self._encode_rendered(stream, context.time_remaining())
        else:
            encode = self._encode_frames(stream)
        async with contextlib.aclosing(encode) as chunks:
            async for chunk in chunks:
                yield chunk

    def _renderer(self, field: str) -> FrameSource:
        """The renderer for a stream that renders (``field``: the request's field asking for it;
        "" for a live session, which always does); refused without one configured
        (FAILED_PRECONDITION) or while it fails its health checks (UNAVAILABLE: retry)."""
        if self.frame_source is None:
            why = "this encoder has no renderer (set its renderer.target)"
            raise FailedPrecondition(f"{field}: {why}" if field else f"live sessions need a renderer: {why}")
        if self.renderer_down:
            raise Unavailable("renderer: not answering health checks", retry_after=1.0)
        return self.frame_source

    # -- live sessions -----------------------------------------------------------------------------
    async def Live(
        self, request_iterator: AsyncIterator[encoder_pb2.LiveEncodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[live_pb2.LiveServerMessage]:
        if self.backend is None:
            raise Unavailable("the encoder is still starting")
        renderer = self._renderer("")
        # The gateway owns the session's lifetime: no idle limit here after the first message.
        stream: RequestStream[encoder_pb2.LiveEncodeRequest] = await RequestStream.open(
            request_iterator, "config", first_timeout=self.config.server.idle_timeout, what="live stream"
        )
        cfg = stream.config
        fps = request_fps(cfg.fps or self.config.defaults.fps)
        if not 8000 <= cfg.sample_rate <= 48000:
            raise InvalidArgument("config.sample_rate", f"{cfg.sample_rate} Hz is outside 8000..48000")
        codec = AUDIO_CODEC_NAMES.get(cfg.audio_codec or encoder_pb2.AUDIO_CODEC_AAC)
        if codec is None:
            raise InvalidArgument("config.audio_codec", f"unknown audio codec {cfg.audio_codec}")
        render = renderer_pb2.RenderConfig()
        render.CopyFrom(cfg.render)
        render.fps = float(fps)
        render.sample_rate = cfg.sample_rate
        render.pixel_format = common_pb2.PIXEL_FORMAT_I420
        render.session_id = render.session_id or cfg.session_id
        render.request_id = render.request_id or cfg.request_id
        render.batch_frames = True  # frames rendered together come in one message (see unbatched)
        timeout = context.time_remaining()
        loop = await self._idle_loop(render, fps, cfg.sample_rate, codec, timeout)
        params = LiveParams(loop.width, loop.height, fps, cfg.sample_rate, codec)
        assert self.backend is not None
        session = LiveSession(
            self.config, self.telemetry, self.backend, renderer, cfg, render, params, loop, timeout, self.rings
        )
        async with contextlib.aclosing(session.run(stream)) as messages:
            async for msg in messages:
                yield msg

    async def _idle_loop(
        self, render: renderer_pb2.RenderConfig, fps: Fraction, sample_rate: int, codec: str, timeout: float | None
    ) -> IdleLoop:
        """The avatar's idle loop for this size and rate, built (render + encode) on first use."""
        assert self.backend is not None and self.frame_source is not None
        backend, source = self.backend, self.frame_source
        live = self.config.live
        gop = live.loop_gop_frames or max(1, round(float(fps)))
        frames = loop_frames(live.loop_seconds, float(fps), gop)
        still = render.idle_motion == renderer_pb2.IDLE_MOTION_OFF  # (unspecified and on draw the same loop)
        key = (render.avatar_id, render.backend, render.size, still, fps, backend.name, frames, gop)

        async def build() -> IdleLoop:
            idle_render = renderer_pb2.RenderConfig()
            idle_render.CopyFrom(render)
            idle_render.session_id = ""  # the loop's own idle motion, from tick 0
            with self.telemetry.stage(Stage.IDLE_LOOP, frames=frames):
                rendered = await render_idle_frames(source, idle_render, frames, timeout)
                params = LiveParams(rendered[0][0], rendered[0][1], fps, sample_rate, codec)

                def encode() -> IdleLoop:
                    with open_errors(backend):  # NVENC's session limit -> RESOURCE_EXHAUSTED
                        probe = LiveCodecs(params, backend, self.config.audio)
                        try:
                            return encode_loop(rendered, backend, params, gop, probe.video.extradata)
                        finally:
                            probe.close()

                return await asyncio.to_thread(encode)

        return await self.idle_loops.get(key, build)

    def _session(self, params: StreamParams) -> EncodeSession:
        assert self.backend is not None
        return EncodeSession(
            params,
            self.backend,
            self.config.audio,
            fallback=self.fallback if self.config.video.fallback_to_x264 else None,
            max_file_bytes=self.config.limits.max_file_bytes,
        )

    async def _open(self, session: EncodeSession, output: _Output) -> list[encoder_pb2.MediaChunk]:
        init = await self._open_session(session)
        return output.chunks(init, session, init=session.params.container == "fmp4")

    async def _open_ahead(self, session: EncodeSession) -> bytes | None:
        """``_open_session`` before frame 0 is here (stage ``open_ahead``); None if it failed (frame
        0 then gets a session of its own, which reports the error if it has one)."""
        try:
            return await self._open_session(session, stage=Stage.OPEN_AHEAD)
        except Exception as exc:  # a miss, not the stream's failure
            log.info("opening the encoder ahead of frame 0 failed: %s", exc)
            return None

    async def _open_spare(self, session: EncodeSession) -> bytes:
        return await self._open_session(session, stage=Stage.OPEN_SPARE)

    async def _open_session(self, session: EncodeSession, stage: Stage = Stage.OPEN) -> bytes:
        """Opens the session's codecs and muxer; returns the init segment (or the header bytes)."""
        params = session.params
        with self.telemetry.stage(stage, container=params.container):
            init = await asyncio.to_thread(session.open)
        log.log(
            logging.DEBUG if stage == Stage.OPEN_SPARE else logging.INFO,  # a spare is not a stream's
            "%s %dx%d@%s %s (%s) with %s",
            "opened a spare session for" if stage == Stage.OPEN_SPARE else "encoding",
            params.width,
            params.height,
            params.fps,
            params.container,
            session.mime_type,
            session.video_encoder,
        )
        return init

    def _remember_size(self, key: tuple[str, str, str, int], size: tuple[int, int, int]) -> None:
        self.frame_sizes.put(key, size)

    async def _finish(self, session: EncodeSession, output: _Output, started: float) -> list[encoder_pb2.MediaChunk]:
        with self.telemetry.stage(Stage.FINISH):
            tail = await asyncio.to_thread(session.finish)
        wall = time.perf_counter() - started
        if wall > 0 and session.frames_in:
            self.telemetry.metrics.realtime_factor.labels(self.telemetry.service).observe(
                session.frames_in / float(session.params.fps) / wall
            )
        return [*output.chunks(tail, session), output.end(session)]

    def _first_fragment(self, started: float) -> None:
        self.telemetry.metrics.time_to_first_frame.labels(self.telemetry.service).observe(time.perf_counter() - started)
        trace.get_current_span().add_event("first_fragment")

    # -- raw frames from the caller ------------------------------------------------------------
    async def _encode_frames(
        self, stream: RequestStream[encoder_pb2.EncodeRequest]
    ) -> AsyncGenerator[encoder_pb2.MediaChunk, None]:
        """Frames and audio from the caller, encoded in the order they arrive.

        A reader task moves requests into a bounded channel (``limits.input_queue``) while the
        previous one is being encoded; a slow receiver stops this generator at ``yield``, the
        channel fills, the reader stops reading and gRPC flow control pushes back on the sender.
        """
        started = time.perf_counter()
        params = stream_params(stream.config, self.config)
        request_id = stream.config.request_id or stream.head.request_id or request_id_var.get()
        session = self._session(params)
        output = _Output(request_id, self.config.limits.max_chunk_bytes)
        frames = FrameAssembler(params)
        inputs: Chan[encoder_pb2.EncodeRequest] = Chan(
            self.config.limits.input_queue, gauge=self.telemetry.queue_gauge(Queue.INPUT)
        )
        first_fragment_sent = False
        try:
            async with TaskSet("encoder", on_error=inputs.close) as tasks:
                tasks.spawn(_forward(stream, inputs), name="read-requests")
                for msg in await self._open(session, output):
                    yield msg
                async for req in inputs:
                    kind = req.WhichOneof("kind")
                    data = b""
                    if kind == "frame":
                        for frame, where in _frames_of(req.frame):  # a frame (part), or a batch
                            raw = frames.add(frame, where)
                            if raw is not None:
                                data += await self._encode_frame(session, b"", raw)
                    elif kind == "audio":
                        check_audio(req.audio, params, session.samples_in)
                        data = await asyncio.to_thread(session.add_audio, req.audio.pcm)
                    elif kind in ("visemes", "features"):
                        raise InvalidArgument(kind, "renderer input needs config.render (the encoder renders)")
                    if data:
                        if not first_fragment_sent:
                            first_fragment_sent = True
                            self._first_fragment(started)
                        for msg in output.chunks(data, session):
                            yield msg
                if frames.pending:
                    raise InvalidArgument("frame.part_index", f"frame {frames.next_index} is missing parts")
                for msg in await self._finish(session, output, started):
                    yield msg
        finally:
            inputs.discard()  # unread requests of a failed or cancelled stream
            # Releases the encoder if the stream failed or was cancelled (no-op after finish()).
            await asyncio.to_thread(session.close)

    async def _encode_frame(self, session: EncodeSession, pcm: bytes, raw: bytes | memoryview) -> bytes:
        t0 = time.perf_counter()
        data = await asyncio.to_thread(session.add_audio_then_frame, pcm, raw)
        self.telemetry.observe_stage(Stage.FRAME, time.perf_counter() - t0)
        self.telemetry.metrics.frames_total.labels(self.telemetry.service).inc()
        return data

    # -- frames pulled from the renderer ---------------------------------------------------------
    async def _encode_rendered(
        self, stream: RequestStream[encoder_pb2.EncodeRequest], timeout: float | None
    ) -> AsyncGenerator[encoder_pb2.MediaChunk, None]:
        """The caller sends audio and the renderer's input; the encoder pulls the frames.

        A reader task routes the caller's messages: audio into the ``AudioInterleaver``, visemes
        and features into the Render stream's bounded input channel. Frames are encoded as they
        come back, each after the audio up to its end (plus ``audio_lead_seconds``).
        """
        renderer = self._renderer("config.render")
        started = time.perf_counter()
        cfg = stream.config
        base = stream_params(cfg, self.config, size=(2, 2), pixel_format_value=common_pb2.PIXEL_FORMAT_I420)
        request_id = cfg.request_id or stream.head.request_id or request_id_var.get()
        rate = base.sample_rate or 1
        audio = AudioInterleaver(MediaClock(base.fps, rate), round(self.config.audio_lead_seconds * rate))
        render_in: Chan[renderer_pb2.RenderRequest] = Chan(
            self.config.limits.input_queue, gauge=self.telemetry.queue_gauge(Queue.RENDER_INPUT)
        )
        render_in.send_nowait(renderer_pb2.RenderRequest(request_id=request_id, config=_render_config(cfg, base)))
        output = _Output(request_id, self.config.limits.max_chunk_bytes)
        timing = _RenderTiming()
        session: EncodeSession | None = None
        frames: FrameAssembler | None = None
        source = renderer.render(render_in, timeout)
        # Frames waiting to be encoded: when one is, the fragments before it join one message.
        waiting: Chan[common_pb2.VideoFrame] = Chan(self.config.limits.input_queue)
        coalesce = self.config.defaults.coalesce_frames
        pending = bytearray()
        pending_frames = 0

        def fail(exc: BaseException) -> None:
            render_in.close(exc)
            waiting.close(exc)

        # The size this avatar's frames had last time: a frame ring of slots that size, and an
        # encoder session of it (a frame 0 of another size gets its own session, and goes inline).
        key = (cfg.render.avatar_id, cfg.render.backend, cfg.render.size, cfg.render.pixel_format)
        guess = self.frame_sizes.get(key)
        guessed: StreamParams | None = None
        if guess is not None:
            w, h, pixel_format = guess
            guessed = stream_params(cfg, self.config, size=(w, h), pixel_format_value=pixel_format)
        ring: RingOffer | None = None
        try:
            async with TaskSet("encoder", on_error=fail) as tasks:
                if guessed is not None:  # offered ahead of the first renderer input (_route)
                    ring = self.rings.take(guessed.frame_bytes)
                # fMP4: the first fragment's frames are rendered alone (see _route)
                wait = self.config.first_fragment_wait_ms / 1000
                first_frames = base.fragment_frames if base.container == "fmp4" and wait else 0
                reader = tasks.spawn(
                    _route(
                        stream, audio, render_in, timing, base, first_batch=first_frames, wait=wait, ring=ring
                    ),
                    name="route-requests",
                )
                tasks.spawn(_pull_frames(source, waiting), name="pull-frames")
                # The stream takes a spare session already open (spares.py), or the encoder opens
                # one now, while TTS, the feature stage and the renderer make frame 0.
                opening: asyncio.Future[bytes | None] | None = None
                spare = None
                if guessed is not None:
                    spare = self.spares.take(guessed)
                    if spare is not None:
                        session, ready = spare
                        log.info("encoding %dx%d with a spare %s session", w, h, session.video_encoder)
                        opening = asyncio.get_running_loop().create_future()
                        opening.set_result(ready)
                    else:
                        session = self._session(guessed)
                        opening = tasks.spawn(self._open_ahead(session), name="open-encoder")
                trace.get_current_span().set_attribute("talkmesh.encoder.spare_session", spare is not None)
                async for vf in waiting:
                    if vf.end_of_stream:
                        break
                    if frames is None:
                        timing.first_frame = time.perf_counter()
                        trace.get_current_span().add_event("first_frame")
                        params = stream_params(
                            cfg, self.config, size=(vf.width, vf.height), pixel_format_value=vf.pixel_format
                        )
                        self._remember_size(key, (vf.width, vf.height, vf.pixel_format))
                        init = await opening if opening is not None else None
                        if init is None or session is None or session.params != params:
                            if session is not None:  # opened ahead at another size, or failed to
                                await asyncio.to_thread(session.close)
                            session = self._session(params)
                            init = await self._open_session(session)
                        frames = FrameAssembler(params)
                        for msg in output.chunks(init, session, init=params.container == "fmp4"):
                            yield msg
                    assert session is not None
                    assert frames is not None
                    pixels = None
                    if vf.in_ring:
                        if ring is None:
                            raise InvalidArgument("frame.in_ring", "no frame ring was offered to the renderer")
                        p = session.params
                        pixels = ring.pixels(vf, p.width, p.height, p.frame_bytes)
                        if session.video_encoder != X264Backend.name:
                            # x264 copies the picture as it takes it; FFmpeg's NVENC may keep a frame it
                            # cannot take at once (no free input surface) past the call: not the slot
                            pixels = memoryview(bytes(pixels))
                    raw = frames.add(vf, pixels=pixels)
                    if raw is None:
                        continue
                    output.frames_inferred += int(vf.inferred)
                    data = await self._encode_frame(session, audio.until_frame(vf.frame_index), raw)
                    if ring is not None:  # its slot (if it used one) may take another frame
                        ring.release(vf.frame_index + 1)
                    if data:
                        first = not timing.first_fragment
                        if first:
                            timing.first_fragment = time.perf_counter()
                            self._first_fragment(started)
                        pending += data
                        pending_frames += 1
                        if first or pending_frames >= coalesce or not waiting.qsize():
                            for msg in output.chunks(bytes(pending), session):
                                yield msg
                            pending.clear()
                            pending_frames = 0
                            if first:  # a spare for the next such stream, now that its fragment is out
                                # (its own trace and logs: not this request's)
                                contextvars.Context().run(self.spares.replenish, session.params)
                                self.rings.prepare(session.params.frame_bytes)
                    elif not pending and session.frames_in % PROGRESS_EVERY_FRAMES == 0:
                        yield output.progress(session)  # whole-file MP4: the caller still sees progress
                    if session.frames_in >= first_frames:
                        # the renderer gets the rest (_route) once the first fragment has gone out
                        timing.first_frames_encoded.set()
                if pending and session is not None:
                    for msg in output.chunks(bytes(pending), session):
                        yield msg
                await reader  # the caller's input has ended, so the audio is complete
                if session is None or frames is None:
                    raise FailedPrecondition("renderer: produced no frames")
                if frames.pending:
                    raise InvalidArgument("frame.part_index", f"frame {frames.next_index} is missing parts")
                tail = audio.rest()
                if tail:
                    for msg in output.chunks(await asyncio.to_thread(session.add_audio, tail), session):
                        yield msg
                output.stages = timing.stages()
                for msg in await self._finish(session, output, started):
                    yield msg
        finally:
            if ring is not None:  # first: nothing below may stop it
                ring.close()
            await source.cancel()
            render_in.discard()
            if session is not None:
                await asyncio.to_thread(session.close)


def _render_config(cfg: encoder_pb2.EncodeConfig, params: StreamParams) -> renderer_pb2.RenderConfig:
    """The caller's render config with the stream's clock filled in (request id, fps, sample rate)."""
    out = renderer_pb2.RenderConfig()
    out.CopyFrom(cfg.render)
    out.request_id = out.request_id or cfg.request_id
    out.fps = out.fps or float(params.fps)
    out.sample_rate = out.sample_rate or params.sample_rate
    out.batch_frames = True  # frames rendered together come in one message (_pull_frames splits it)
    return out


def _split_batch(
    batch: audio_features_pb2.FeatureChunk, frames: int
) -> tuple[audio_features_pb2.FeatureChunk | None, audio_features_pb2.FeatureChunk]:
    """A feature batch as (its first ``frames`` frames, the rest), each saying what the batch says of
    its frames (``musetalk_version``); (None, batch) when it holds no more."""
    if len(batch.frames) <= frames:
        return None, batch
    head = audio_features_pb2.FeatureChunk(
        request_id=batch.request_id,
        seq=batch.seq,
        frame_index=batch.frames[0].frame_index,
        frames=batch.frames[:frames],
        musetalk_version=batch.musetalk_version,  # (the renderer checks a stream's first features)
    )
    rest = audio_features_pb2.FeatureChunk(
        request_id=batch.request_id,
        seq=batch.seq,
        frame_index=batch.frames[frames].frame_index,
        frames=batch.frames[frames:],
        musetalk_version=batch.musetalk_version,
    )
    return head, rest


@dataclass
class _RenderTiming:
    first_input: float = 0.0
    first_frame: float = 0.0
    first_fragment: float = 0.0
    # the first fragment's frames are encoded and it has gone out (_route then sends the renderer the rest)
    first_frames_encoded: asyncio.Event = field(default_factory=asyncio.Event)

    def stages(self) -> list[common_pb2.StageTiming]:
        out = []
        if self.first_input and self.first_frame:
            seconds = max(0.0, self.first_frame - self.first_input)
            out.append(RENDERER_FIRST_FRAME.timing(seconds))
        if self.first_frame and self.first_fragment:
            seconds = max(0.0, self.first_fragment - self.first_frame)
            out.append(ENCODER_FIRST_FRAGMENT.timing(seconds))
        return out


async def _pull_frames(source: AsyncIterable[common_pb2.VideoFrame], out: Chan[common_pb2.VideoFrame]) -> None:
    """Moves the renderer's frames into ``out`` (closed after the last one); a batch
    (``VideoFrame.frames``) goes in as its frames, one by one."""
    async for vf in unbatched(source):
        await out.send(vf)
        if vf.end_of_stream:
            break
    out.close()


async def _forward(stream: RequestStream[encoder_pb2.EncodeRequest], inputs: Chan[encoder_pb2.EncodeRequest]) -> None:
    """Moves the caller's requests into ``inputs`` (closed at the end)."""
    async for req in stream:
        await inputs.send(req)
    inputs.close()


async def _route(
    stream: RequestStream[encoder_pb2.EncodeRequest],
    audio: AudioInterleaver,
    render_in: Chan[renderer_pb2.RenderRequest],
    timing: _RenderTiming,
    params: StreamParams,
    *,
    first_batch: int = 0,
    wait: float = 0.0,
    ring: RingOffer | None = None,
) -> None:
    """Audio to the interleaver, renderer input to the Render stream; closes it at the end.

    First things first: if the stream's first feature batch holds more than ``first_batch`` frames
    (the first fragment's), the renderer gets those frames alone and the rest once the fragment
    has gone out (or after ``wait`` seconds, for a renderer that needs more input first), so frame
    0 is not encoded and sent while the frames behind it are rendered. Meanwhile the caller's input
    waits.

    ``ring``: the stream's frame ring, being made; it is offered to the renderer ahead of the
    first message that finds it made.
    """
    seq = 1

    async def send(msg: renderer_pb2.RenderRequest) -> None:
        nonlocal seq
        offer = ring.offer(seq) if ring is not None else None
        if offer is not None:
            await render_in.send(offer)
            seq += 1
        msg.seq = seq
        await render_in.send(msg)
        seq += 1

    async for req in stream:
        kind = req.WhichOneof("kind")
        if kind == "audio":
            if not params.sample_rate:
                raise InvalidArgument("audio", "config.sample_rate is 0 (no audio track), but audio arrived")
            audio.add(req.audio)
            if req.audio.visemes:  # the audio's own viseme timings: renderer input too
                if not timing.first_input:
                    timing.first_input = time.perf_counter()
                track = renderer_pb2.VisemeTrack(events=req.audio.visemes)
                await send(renderer_pb2.RenderRequest(request_id=req.request_id, visemes=track))
        elif kind in ("visemes", "features"):
            if not timing.first_input:
                timing.first_input = time.perf_counter()
            msg = renderer_pb2.RenderRequest(request_id=req.request_id)
            if kind == "visemes":
                msg.visemes.CopyFrom(req.visemes)
            else:
                head, batch = _split_batch(req.features, first_batch) if first_batch else (None, req.features)
                first_batch = 0
                if head is not None:
                    await send(renderer_pb2.RenderRequest(request_id=req.request_id, features=head))
                    await wait_event(timing.first_frames_encoded, wait)
                msg.features.CopyFrom(batch)
            await send(msg)
        elif kind == "frame":
            raise InvalidArgument("frame", "config.render is set: the frames come from the renderer")
    await render_in.send(renderer_pb2.RenderRequest(seq=seq, end_of_stream=True))
    render_in.close()


class EncoderService(Service):
    name = "encoder"

    def __init__(
        self,
        config: EncoderConfig,
        telemetry: Telemetry,
        *,
        nvenc_probe: Callable[[int], bool] = probe_nvenc,
        frame_source: FrameSource | None = None,
    ) -> None:
        """``frame_source`` replaces the gRPC connection to ``config.renderer`` (in-process runs)."""
        super().__init__(telemetry)
        self.config = config
        self.frame_source = frame_source or GrpcFrameSource(config.renderer, config.server.max_message_bytes)
        self.servicer = EncoderServicer(config, telemetry, self.frame_source)
        self._probe = nvenc_probe
        self.backend: VideoBackend | None = None

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        encoder_pb2_grpc.add_EncoderServicer_to_server(self.servicer, server)
        return spec("encoder").grpc_service_names()

    async def start(self) -> None:
        video = self.config.video
        probe = self._probe
        if self.servicer.rings.enabled:  # rings an encoder that died left behind in a shared directory
            try:
                swept = await asyncio.to_thread(FrameRing.sweep, self.config.frame_ring.directory)
            except OSError as exc:
                log.warning("could not sweep %s for frame rings: %s", self.config.frame_ring.directory, exc)
                swept = 0
            if swept:
                log.info("removed %d frame rings left behind in %s", swept, self.config.frame_ring.directory)
        # The probe may initialise CUDA: keep it off the event loop.
        backend = await asyncio.to_thread(select_backend, video, probe)
        self.backend = backend
        self.servicer.fallback = X264Backend(video) if backend.name != X264Backend.name else None
        self.servicer.backend = backend
        if backend.scarce_sessions:
            self.servicer.spares.keep = 0
        self.telemetry.set_backend("video_encoder", backend.name)
        log.info(
            "video encoder: %s (video.encoder=%s)",
            backend.name,
            video.encoder,
            extra={"fields": {"video_encoder": backend.name}},
        )

    def known_series(self) -> Sequence[Series]:
        m = self.telemetry.metrics
        return [
            Series(m.stage_duration, Stage),
            Series(m.queue_depth, Queue),
            Series(m.time_to_first_frame),
            Series(m.realtime_factor),
            Series(m.frames_total),
            Series(m.live_interrupt_seconds),
            Series(m.live_underruns_total),
            Series(m.live_late_ticks_total),
            Series(m.live_lead_frames),
            Series(m.live_sessions, LiveState),
        ]

    def dependencies(self) -> Mapping[str, grpc.aio.Channel]:
        source = self.frame_source
        return {"renderer": source.channel} if isinstance(source, GrpcFrameSource) else {}

    def dependencies_changed(self, down: list[str]) -> str:
        # raw-frame encoding needs no renderer: only the streams that render are refused
        self.servicer.renderer_down = "renderer" in down
        return ""

    async def stop(self) -> None:
        try:
            self.servicer.rings.close()
            await self.servicer.spares.aclose()
        finally:
            await self.frame_source.close()
