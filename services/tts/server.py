"""The TTS gRPC service: Synthesize (text in, chunks out), SynthesizeStream (text pieces in), ListVoices."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from services.tts.backends.base import TTSBackend, VoiceInfo, VoiceSettings
from services.tts.backends.espeak import EspeakBackend
from services.tts.cache import UtteranceCache
from services.tts.config import TTSConfig
from services.tts.engine import EspeakEngine
from services.tts.stream import ChunkAssembler, SegmentRecord
from services.tts.text import ClauseSplitter, check_text, split_clauses
from talkmesh.common.aio import cancel_and_wait
from talkmesh.common.config import ConfigError
from talkmesh.common.errors import InvalidArgument, NotFound, Unavailable
from talkmesh.common.server import Service
from talkmesh.common.streams import RequestStream
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import common_pb2, tts_pb2, tts_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "talkmesh.v1.TTS"
WARMUP_TEXT = "Ready."
_REQUEST_ID_KEY = "x-request-id"


# -- per-request settings ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    request_id: str
    backend: TTSBackend
    voice: VoiceInfo
    settings: VoiceSettings
    chunk_samples: int


def _multiple(value: float, field: str, low: float, high: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgument(field, "must be a finite number")
    if value == 0:
        return 1.0
    if not low <= value <= high:
        raise InvalidArgument(field, f"{value:g} is outside {low:g}..{high:g} (0 = default)")
    return float(value)


class TTSServicer(tts_pb2_grpc.TTSServicer):
    def __init__(self, config: TTSConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        self.backends: dict[str, TTSBackend] = {}
        self.cache = UtteranceCache(config.cache.max_entries, config.cache.max_bytes)

    # -- helpers -------------------------------------------------------------------------------
    def _resolve(self, cfg: tts_pb2.SynthesisConfig, context: Any) -> _Job:
        if not self.backends:
            raise Unavailable("tts: engine not started yet")
        voice_id = cfg.voice or self.config.default_voice
        engine, sep, name = voice_id.partition(":")
        backend = self.backends.get(engine) if sep else None
        voice = backend.voice(name) if backend is not None else None
        if backend is None or voice is None:
            raise NotFound("config.voice", voice_id, "voice")
        settings = VoiceSettings(
            rate=_multiple(cfg.settings.rate, "config.settings.rate", 0.25, 4.0),
            pitch=_multiple(cfg.settings.pitch, "config.settings.pitch", 0.25, 4.0),
            volume=_multiple(cfg.settings.volume, "config.settings.volume", 0.0, 2.0),
        )
        chunk_ms = cfg.chunk_ms or self.config.chunk_ms
        if not self.config.min_chunk_ms <= chunk_ms <= self.config.max_chunk_ms:
            raise InvalidArgument(
                "config.chunk_ms",
                f"{chunk_ms} is outside {self.config.min_chunk_ms}..{self.config.max_chunk_ms}",
            )
        rid = cfg.request_id
        if not rid:
            md = dict((k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str))
            rid = md.get(_REQUEST_ID_KEY) or uuid.uuid4().hex
        chunk_samples = max(1, voice.sample_rate * chunk_ms // 1000)
        return _Job(rid, backend, voice, settings, chunk_samples)

    async def _speak(
        self, asm: ChunkAssembler, job: _Job, index: int, text: str
    ) -> AsyncGenerator[common_pb2.AudioChunk, None]:
        start = time.perf_counter()
        # A span per clause, started and ended by hand: this generator may be closed from another
        # task when the client cancels, where a context-manager span could not be detached.
        span = self.telemetry.tracer.start_span(
            "tts.synthesize_clause", attributes={"talkmesh.segment_index": index, "talkmesh.chars": len(text)}
        )
        try:
            asm.begin_segment(index)
            async with contextlib.aclosing(job.backend.synthesize(text, job.voice, job.settings)) as blocks:
                async for block in blocks:
                    for msg in asm.add(block):
                        yield msg
            for msg in asm.end_segment():
                yield msg
        finally:
            span.end()
        self.telemetry.observe_stage("synthesize_clause", time.perf_counter() - start)

    def _replay(self, asm: ChunkAssembler, segments: list[SegmentRecord]) -> list[common_pb2.AudioChunk]:
        from services.tts.engine import PcmBlock

        out: list[common_pb2.AudioChunk] = []
        for seg in segments:
            asm.begin_segment(seg.index)
            out.extend(asm.add(PcmBlock(seg.samples, seg.phonemes)))
            out.extend(asm.end_segment())
        return out

    def _observe(self, first: bool, started: float, msg: common_pb2.AudioChunk) -> bool:
        if first and msg.pcm:
            self.telemetry.metrics.time_to_first_audio.labels(self.telemetry.service).observe(
                time.perf_counter() - started
            )
            return False
        return first

    def _done(self, asm: ChunkAssembler, started: float) -> None:
        wall = time.perf_counter() - started
        if asm.offset and wall > 0:
            self.telemetry.metrics.realtime_factor.labels(self.telemetry.service).observe(
                asm.offset / asm.sample_rate / wall
            )

    # -- RPCs ----------------------------------------------------------------------------------
    async def Synthesize(self, request: Any, context: Any) -> AsyncGenerator[common_pb2.AudioChunk, None]:  # type: ignore[override]
        started = time.perf_counter()
        job = self._resolve(request.config, context)
        check_text(request.text, "text", self.config.max_text_chars)
        asm = ChunkAssembler(job.request_id, job.voice.sample_rate, job.chunk_samples)
        key = (job.voice.id, job.settings, request.text)
        if self.cache.enabled:
            cached = self.cache.get(key)
            self.telemetry.cache("utterance", cached is not None)
            if cached is not None:
                first = True
                for msg in self._replay(asm, cached):
                    first = self._observe(first, started, msg)
                    yield msg
                yield asm.finish()
                return
            asm.record = []
        first = True
        for index, segment in enumerate(split_clauses(request.text, self.config.max_segment_chars)):
            async for msg in self._speak(asm, job, index, segment):
                first = self._observe(first, started, msg)
                yield msg
        yield asm.finish()
        self._done(asm, started)
        if asm.record is not None:
            self.cache.put(key, asm.record)

    async def SynthesizeStream(  # type: ignore[override]
        self, request_iterator: Any, context: Any
    ) -> AsyncGenerator[common_pb2.AudioChunk, None]:
        started = time.perf_counter()
        idle = self.config.server.idle_timeout
        stream: RequestStream[tts_pb2.TextPiece] = await RequestStream.open(
            request_iterator, "config", first_timeout=idle, idle_timeout=idle, what="text stream"
        )
        head = stream.head
        job = self._resolve(head.config, context)
        asm = ChunkAssembler(job.request_id, job.voice.sample_rate, job.chunk_samples)
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue(self.config.stream_queue_segments)
        reader = asyncio.create_task(self._read_pieces(stream, queue), name="tts-read-pieces")
        try:
            first = True
            index = 0
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                async for msg in self._speak(asm, job, index, item):
                    first = self._observe(first, started, msg)
                    yield msg
                index += 1
            yield asm.finish()
            self._done(asm, started)
        finally:
            await cancel_and_wait(reader)

    async def _read_pieces(
        self, pieces: RequestStream[tts_pb2.TextPiece], queue: asyncio.Queue[str | BaseException | None]
    ) -> None:
        splitter = ClauseSplitter(self.config.max_segment_chars)
        total = 0
        spoken = False
        limit = self.config.max_text_chars
        try:
            async for piece in pieces:
                if piece.WhichOneof("kind") == "text":
                    check_text(piece.text, "text", limit, allow_empty=True)
                    total += len(piece.text)
                    if total > limit:
                        raise InvalidArgument("text", f"the stream's text is over the limit of {limit}")
                    spoken = spoken or bool(piece.text.strip())
                    for seg in splitter.push(piece.text):
                        await queue.put(seg)
            for seg in splitter.flush():
                await queue.put(seg)
            if not spoken:
                raise InvalidArgument("text", "must not be empty")
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put(exc)

    async def ListVoices(self, request: Any, context: Any) -> tts_pb2.ListVoicesResponse:  # type: ignore[override]
        resp = tts_pb2.ListVoicesResponse()
        for backend in self.backends.values():
            for v in backend.voices():
                resp.voices.add(id=v.id, name=v.name, language=v.language, engine=v.engine, sample_rate=v.sample_rate)
        return resp


class TTSService(Service):
    name = "tts"

    def __init__(self, config: TTSConfig, telemetry: Telemetry) -> None:
        super().__init__(telemetry)
        self.config = config
        self.servicer = TTSServicer(config, telemetry)
        self.engine: EspeakEngine | None = None

    @property
    def backends(self) -> dict[str, TTSBackend]:
        return self.servicer.backends

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        tts_pb2_grpc.add_TTSServicer_to_server(self.servicer, server)
        return [SERVICE_NAME]

    async def start(self) -> None:
        cfg = self.config
        engine = EspeakEngine(cfg.espeak.library_path, cfg.espeak.data_path, cfg.espeak.buffer_ms)
        await engine.start()
        self.engine = engine
        backends: dict[str, TTSBackend] = {"espeak": EspeakBackend(engine)}
        if cfg.piper.voices_dir:
            from services.tts.backends.piper import PiperBackend

            backends["piper"] = PiperBackend(engine, cfg.piper)
        for backend in backends.values():
            await backend.start()
            self.telemetry.set_backend("tts_engine", backend.engine)
        engine_name, _, voice_name = cfg.default_voice.partition(":")
        default = backends.get(engine_name)
        if default is None or default.voice(voice_name) is None:
            raise ConfigError(f"default_voice: {cfg.default_voice!r} is not an available voice")
        # Warm-up: the first synthesis loads the voice's dictionaries.
        async with contextlib.aclosing(
            default.synthesize(WARMUP_TEXT, default.voice(voice_name), VoiceSettings())  # type: ignore[arg-type]
        ) as blocks:
            async for _ in blocks:
                pass
        self.servicer.backends = backends
        log.info("tts ready: %d voices, default %s", sum(len(b.voices()) for b in backends.values()), cfg.default_voice)

    async def stop(self) -> None:
        backends, self.servicer.backends = self.servicer.backends, {}
        for backend in backends.values():
            await backend.close()
        if self.engine is not None:
            await self.engine.close()
            self.engine = None
