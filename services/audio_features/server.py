"""The AudioFeatures gRPC service: PCM in, one FeatureChunk per video frame out.

Stream protocol (``Extract``, bidirectional):

* request 1: ``config`` (feature type, fps; 0 selects 25);
* then ``audio`` chunks: PCM s16le mono at 16000, 22050, 24000, 44100 or 48000 Hz, one rate per
  stream, ``sample_offset`` continuous (visemes are ignored here);
* then a request with ``end_of_stream=True`` (it may carry the last audio chunk too); a half-close
  without it means the same (talkmesh.common.streams: one meaning in every service).

Responses: one ``FeatureChunk`` per video frame, in frame order, as soon as the audio the frame
depends on has arrived (see ``streaming.py`` for the look-ahead of each type), then a final message
with ``end_of_stream=True``, ``frame_count = ceil(source_samples * fps / sample_rate)`` and
``frame_index = frame_count`` (it carries no frame). With ``config.batch_frames`` the frames that
one audio message completed leave together, in one ``FeatureChunk`` whose ``frames`` lists them
(and those flushed at the end in one more): the gateway relays one message per TTS chunk instead
of one per frame. The final message also carries ``activity_state``: a caller sends it back in
its next stream's ``config.activity_state`` (a live session's next turn) so the activity's noise
floor and speech peak carry on (activity.py); the service keeps nothing between streams.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from fractions import Fraction
from typing import Any

import grpc
import numpy as np
from opentelemetry import trace

from services.audio_features import dsp
from services.audio_features.activity import LevelState
from services.audio_features.backends import create_encoder
from services.audio_features.backends.base import WhisperEncoder
from services.audio_features.cache import BlockCache
from services.audio_features.config import AudioFeaturesConfig
from services.audio_features.metrics import Stage
from services.audio_features.streaming import (
    MUSETALK_VERSIONS,
    EmbeddingGeometry,
    FeatureKind,
    FeatureStream,
    Frame,
    StreamOptions,
    pcm_to_float,
)
from talkmesh.common.clock import SPEECH_SAMPLE_RATES, request_fps
from talkmesh.common.errors import FailedPrecondition, InvalidArgument
from talkmesh.common.logs import request_id_var
from talkmesh.common.registry import spec
from talkmesh.common.server import Service
from talkmesh.common.streams import RequestStream
from talkmesh.common.telemetry import Series, Telemetry
from talkmesh.common.tensors import to_tensor
from talkmesh.v1 import audio_features_pb2 as pb
from talkmesh.v1 import audio_features_pb2_grpc as pb_grpc
from talkmesh.v1 import common_pb2

log = logging.getLogger(__name__)

KINDS = {
    pb.FEATURE_TYPE_WHISPER_LOG_MEL: FeatureKind.WHISPER_LOG_MEL,
    pb.FEATURE_TYPE_WAV2LIP_MEL: FeatureKind.WAV2LIP_MEL,
    pb.FEATURE_TYPE_WHISPER_EMBEDDING: FeatureKind.WHISPER_EMBEDDING,
    pb.FEATURE_TYPE_ACTIVITY: FeatureKind.ACTIVITY,
}


class _Request:
    """Per-stream state: the validated config, the pipeline (created at the first audio chunk)."""

    def __init__(
        self,
        kind: str,
        fps: Fraction,
        request_id: str,
        batch: bool = False,
        activity_start: LevelState | None = None,
        musetalk_version: str = "",
    ) -> None:
        self.kind = kind
        # what every message says its embeddings are for (FeatureChunk.musetalk_version); "" for
        # the other feature types
        self.musetalk_version = musetalk_version
        self.activity_start = activity_start
        self.fps = fps
        self.request_id = request_id
        self.batch = batch
        self.stream: FeatureStream | None = None
        self.sample_rate = 0
        self.seq = 0
        self.compute_seconds = 0.0


class AudioFeaturesServicer(pb_grpc.AudioFeaturesServicer):
    def __init__(self, service: AudioFeaturesService) -> None:
        self.service = service

    async def Extract(
        self, request_iterator: AsyncIterator[pb.FeatureRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FeatureChunk]:
        started = time.perf_counter()
        idle = self.service.config.server.idle_timeout
        requests: RequestStream[pb.FeatureRequest] = await RequestStream.open(
            request_iterator, "config", first_timeout=idle, idle_timeout=idle, what="audio stream"
        )
        req = self._open(requests.head)
        telemetry = self.service.telemetry
        # One span for the extraction, ended by hand (see services/tts/server.py::_speak).
        span = telemetry.tracer.start_span("audio_features.extract", attributes={"talkmesh.feature": req.kind})
        try:
            async for chunk in self._extract(req, requests, started):
                yield chunk
        finally:
            span.end()

    async def _extract(
        self, req: _Request, requests: RequestStream[pb.FeatureRequest], started: float
    ) -> AsyncIterator[pb.FeatureChunk]:
        telemetry = self.service.telemetry
        first_frame = True
        async for message in requests:
            if message.WhichOneof("kind") == "audio":
                frames = await self._push(req, message.audio)
                if frames and first_frame:
                    first_frame = False
                    telemetry.metrics.time_to_first_frame.labels(telemetry.service).observe(
                        time.perf_counter() - started
                    )
                    trace.get_current_span().add_event("first_frame")
                for chunk in self._chunks(req, frames):
                    yield chunk
        for chunk in self._chunks(req, await self._finish(req)):
            yield chunk
        count = req.stream.frame_count if req.stream is not None else 0
        telemetry.metrics.frames_total.labels(telemetry.service).inc(count)
        telemetry.observe_stage(Stage.EXTRACT, req.compute_seconds)
        wall = time.perf_counter() - started
        if req.stream is not None and wall > 0:
            audio_seconds = req.stream.source_samples / req.sample_rate
            telemetry.metrics.realtime_factor.labels(telemetry.service).observe(audio_seconds / wall)
        yield pb.FeatureChunk(
            request_id=req.request_id,
            seq=req.seq,
            end_of_stream=True,
            frame_index=count,
            frame_count=count,
            activity_state=_activity_state(req),
            musetalk_version=req.musetalk_version,
        )

    # -- steps --------------------------------------------------------------------------------------
    def _open(self, first: pb.FeatureRequest) -> _Request:
        cfg = first.config
        kind = KINDS.get(cfg.feature_type)
        if kind is None:
            raise InvalidArgument(
                "config.feature_type", f"{cfg.feature_type} is not one of {sorted(pb.FeatureType.keys())[1:]}"
            )
        if kind == FeatureKind.WHISPER_EMBEDDING and self.service.encoder is None:
            raise FailedPrecondition(
                "config.feature_type: WHISPER_EMBEDDING (the features of the musetalk renderer backend) "
                "needs a Whisper encoder; set whisper_encoder.path in the audio_features config "
                "(tools/export_whisper_encoder.py makes one); the renderer needs its MuseTalk models "
                "too (renderer.musetalk.path)"
            )
        fps = request_fps(cfg.fps)
        request_id = cfg.request_id or first.request_id or request_id_var.get()
        start = _level_state(cfg.activity_state) if cfg.HasField("activity_state") else None
        version = self.service.config.musetalk.version if kind == FeatureKind.WHISPER_EMBEDDING else ""
        return _Request(kind, fps, request_id, batch=cfg.batch_frames, activity_start=start, musetalk_version=version)

    def _stream(self, req: _Request, sample_rate: int) -> FeatureStream:
        svc = self.service
        options = StreamOptions(
            kind=req.kind,
            fps=req.fps,
            sample_rate=sample_rate,
            activity=svc.config.activity,
            resample_quality=svc.config.resample_quality,
            activity_start=req.activity_start,
        )
        return FeatureStream(options, svc.encoder, svc.geometry, svc.cache)

    def _validate(self, req: _Request, audio: common_pb2.AudioChunk) -> np.ndarray:
        if len(audio.pcm) % 2:
            raise InvalidArgument("audio.pcm", f"{len(audio.pcm)} bytes is not a whole number of s16le samples")
        if audio.sample_rate not in SPEECH_SAMPLE_RATES:
            if not audio.pcm and audio.sample_rate == 0:
                return np.zeros(0, dtype=np.float32)  # an empty marker chunk
            raise InvalidArgument(
                "audio.sample_rate", f"{audio.sample_rate} Hz is not supported (one of {SPEECH_SAMPLE_RATES})"
            )
        if req.stream is None:
            req.sample_rate = audio.sample_rate
            req.stream = self._stream(req, audio.sample_rate)
        elif audio.sample_rate != req.sample_rate:
            raise InvalidArgument(
                "audio.sample_rate", f"changed from {req.sample_rate} to {audio.sample_rate} Hz mid-stream"
            )
        expected = req.stream.source_samples
        if audio.sample_offset != expected:
            raise InvalidArgument(
                "audio.sample_offset",
                f"expected {expected} (continuous with the previous chunk), got {audio.sample_offset}: "
                "chunks out of order, missing or repeated",
            )
        return pcm_to_float(audio.pcm)

    async def _push(self, req: _Request, audio: common_pb2.AudioChunk) -> list[Frame]:
        samples = self._validate(req, audio)
        if req.stream is None or len(samples) == 0:
            return []
        return await self._run(req, req.stream.push, samples)

    async def _finish(self, req: _Request) -> list[Frame]:
        if req.stream is None:
            return []
        return await self._run(req, req.stream.finish)

    async def _run(self, req: _Request, fn: Callable[..., list[Frame]], *args: Any) -> list[Frame]:
        start = time.perf_counter()
        try:
            if req.kind == FeatureKind.ACTIVITY:
                result: list[Frame] = fn(*args)  # microseconds of numpy: cheaper than a thread hop
            else:
                result = await asyncio.to_thread(fn, *args)
        finally:
            req.compute_seconds += time.perf_counter() - start
        return result

    def _chunks(self, req: _Request, frames: list[Frame]) -> list[pb.FeatureChunk]:
        """The response messages for ``frames``: one per frame, or one batch of them all."""
        if not frames:
            return []
        if not req.batch:
            out = [
                _frame(frame, request_id=req.request_id, seq=req.seq + i, musetalk_version=req.musetalk_version)
                for i, frame in enumerate(frames)
            ]
        else:
            batch = pb.FeatureChunk(
                request_id=req.request_id,
                seq=req.seq,
                frame_index=frames[0].index,
                musetalk_version=req.musetalk_version,
            )
            add = batch.frames.add
            for frame in frames:
                _fill(add(), frame)
            out = [batch]
        req.seq += len(out)
        return out


#: The most levels an ActivityState may carry (a minute at 60 fps; the floor window keeps fewer).
MAX_STATE_LEVELS = 4096


def _level_state(state: pb.ActivityState) -> LevelState:
    """A caller's ActivityState, checked: levels within -120..+20 dBFS, at most MAX_STATE_LEVELS."""
    if len(state.levels) > MAX_STATE_LEVELS:
        raise InvalidArgument(
            "config.activity_state.levels", f"{len(state.levels)} levels exceed the limit of {MAX_STATE_LEVELS}"
        )
    levels = tuple(state.levels)
    peak = state.peak_dbfs if state.HasField("peak_dbfs") else -math.inf
    for name, values in (("levels", levels), ("peak_dbfs", (peak,) if state.HasField("peak_dbfs") else ())):
        if not all(dsp.SILENCE_DBFS <= v <= 20.0 for v in values):  # NaN fails too
            raise InvalidArgument(f"config.activity_state.{name}", "must be within -120..20 dBFS")
    return LevelState(levels, peak)


def _activity_state(req: _Request) -> pb.ActivityState:
    """The state the stream's activity ended in (the one it started from, if it got no audio)."""
    state = req.stream.activity.tracker.state() if req.stream is not None else req.activity_start or LevelState()
    out = pb.ActivityState(levels=state.levels)
    if state.peak > -math.inf:
        out.peak_dbfs = state.peak
    return out


def _fill(msg: pb.FeatureChunk, frame: Frame) -> pb.FeatureChunk:
    msg.frame_index = frame.index
    msg.activity.rms_dbfs = frame.rms_dbfs
    msg.activity.voiced = frame.voiced
    msg.activity.loudness = frame.loudness
    if frame.features is not None:
        msg.features.CopyFrom(to_tensor(frame.features))
    return msg


def _frame(frame: Frame, request_id: str, seq: int, musetalk_version: str = "") -> pb.FeatureChunk:
    """One frame's own message (``batch_frames`` unset)."""
    return _fill(pb.FeatureChunk(request_id=request_id, seq=seq, musetalk_version=musetalk_version), frame)


class AudioFeaturesService(Service):
    name = "audio_features"

    def __init__(
        self, config: AudioFeaturesConfig, telemetry: Telemetry, encoder: WhisperEncoder | None = None
    ) -> None:
        """``encoder`` overrides the configured backend (tests, benchmarks)."""
        super().__init__(telemetry)
        self.config = config
        self.encoder = encoder
        self.geometry: EmbeddingGeometry | None = None
        self.cache: BlockCache | None = None
        if encoder is not None:
            self._prepare_encoder(encoder)

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        pb_grpc.add_AudioFeaturesServicer_to_server(AudioFeaturesServicer(self), server)
        return spec("audio_features").grpc_service_names()

    def known_series(self) -> Sequence[Series]:
        m = self.telemetry.metrics
        return [
            Series(m.stage_duration, Stage),
            Series(m.time_to_first_frame),
            Series(m.realtime_factor),
            Series(m.frames_total),
        ]

    def _prepare_encoder(self, encoder: WhisperEncoder) -> None:
        cfg = self.config.whisper_encoder
        version = MUSETALK_VERSIONS[self.config.musetalk.version]
        refused = version.refusal(encoder.name, (encoder.musetalk_version, encoder.final_layer_norm))
        if refused:
            raise ValueError(refused)
        geometry = EmbeddingGeometry(
            cfg.block_frames,
            cfg.left_frames,
            cfg.right_frames,
            encoder.output_frames,
            padding=version.padding,
            fill=cfg.future_fill,
        )
        try:
            geometry.validate()
        except ValueError as exc:
            raise ValueError(f"whisper_encoder.block_seconds/*_context_seconds: {exc}") from exc
        self.geometry = geometry
        if self.config.cache.max_bytes > 0:
            telemetry = self.telemetry
            self.cache = BlockCache(
                self.config.cache.max_bytes,
                namespace=f"{encoder.name}/{encoder.input_frames}",
                on_lookup=lambda hit: telemetry.cache("whisper_encoder", hit),
            )

    async def start(self) -> None:
        if self.encoder is None and self.config.whisper_encoder.path:
            self.encoder = await asyncio.to_thread(create_encoder, self.config.whisper_encoder, self.config.execution)
            self._prepare_encoder(self.encoder)
        if self.encoder is not None:
            encoder = self.encoder
            warm = np.full((1, 80, encoder.input_frames), -1.5, dtype=np.float32)
            await asyncio.to_thread(encoder.encode, warm)
            self.telemetry.set_backend("execution_provider", encoder.provider or "none")
            self.telemetry.set_backend("whisper_encoder", encoder.name)
