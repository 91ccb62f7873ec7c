"""The TTS servicer: Synthesize (text in, chunks out), SynthesizeStream (text pieces in), ListVoices.

Requests are checked by ``request.resolve_job``; streamed text becomes clauses in ``pieces``;
each clause is spoken by its backend and cut into AudioChunks by ``stream.ChunkAssembler``.
The service's life (engine, backends, warm-up) is in ``service``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

from services.tts.backends.base import PcmBlock, TTSBackend, VoiceUnavailable
from services.tts.cache import UtteranceCache
from services.tts.config import TTSConfig
from services.tts.metrics import Stage
from services.tts.pieces import StreamRules, read_clauses
from services.tts.request import SynthesisJob, find_voice, resolve_job, voice_not_found
from services.tts.scripts import check_voice_reads
from services.tts.stream import ChunkAssembler, SegmentRecord
from services.tts.text import normalize, split_clauses
from talkmesh.common.aio import Chan, cancel_and_wait
from talkmesh.common.errors import InvalidArgument, NotFound
from talkmesh.common.markup import ONLY_MARKUP, speakable_markdown
from talkmesh.common.names import check_id, check_text, has_speech
from talkmesh.common.propagation import VOICE_KEY, WARNING_KEY
from talkmesh.common.streams import RequestStream
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import common_pb2, tts_pb2, tts_pb2_grpc


class TTSServicer(tts_pb2_grpc.TTSServicer):
    def __init__(self, config: TTSConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        self.backends: dict[str, TTSBackend] = {}
        self.cache = UtteranceCache(config.cache.max_entries, config.cache.max_bytes)
        self.stream_rules = StreamRules(
            max_text_chars=config.max_text_chars,
            max_segment_chars=config.max_segment_chars,
            max_words=config.stream_flush_words,
            max_wait_seconds=config.stream_flush_seconds,
        )

    # -- speaking clauses ----------------------------------------------------------------------
    async def _speak(
        self, asm: ChunkAssembler, job: SynthesisJob, index: int, text: str
    ) -> AsyncGenerator[common_pb2.AudioChunk, None]:
        start = time.perf_counter()
        # A span per clause, started and ended by hand: this generator may be closed from another
        # task when the client cancels, where a context-manager span could not be detached.
        span = self.telemetry.tracer.start_span(
            "tts.synthesize_clause", attributes={"talkmesh.segment_index": index, "talkmesh.chars": len(text)}
        )
        try:
            # the one place text is normalized, for both RPCs and every backend (see text.normalize)
            spoken = normalize(text)
            if job.markdown and not has_speech(spoken):
                return  # what is left of markup ("(", "—"): nothing to say
            asm.begin_segment(index, text.strip())
            async with contextlib.aclosing(job.backend.synthesize(spoken, job.voice, job.settings)) as blocks:
                async for block in blocks:
                    for msg in asm.add(block):
                        yield msg
            for msg in asm.end_segment():
                yield msg
        except VoiceUnavailable as exc:
            raise NotFound("config.voice", job.voice.id, "voice") from exc
        finally:
            span.end()
        self.telemetry.observe_stage(Stage.SYNTHESIZE_CLAUSE, time.perf_counter() - start)

    async def _speak_all(
        self, asm: ChunkAssembler, job: SynthesisJob, clauses: AsyncIterable[str], started: float
    ) -> AsyncGenerator[common_pb2.AudioChunk, None]:
        first = True
        index = 0
        async for clause in clauses:
            async for msg in self._speak(asm, job, index, clause):
                first = self._observe(first, started, msg)
                yield msg
            index += 1
        if job.markdown and not asm.samples:
            # every clause was markup: refused as a text with nothing to say is
            raise InvalidArgument("text", ONLY_MARKUP)
        yield asm.finish()
        self._done(asm, started)

    def _replay(self, asm: ChunkAssembler, segments: list[SegmentRecord]) -> list[common_pb2.AudioChunk]:
        out: list[common_pb2.AudioChunk] = []
        for seg in segments:
            asm.begin_segment(seg.index, seg.text)
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

    @staticmethod
    def _trailers(context: Any, voice_id: str, warning: str = "") -> None:
        """The voice spoken with and a warning about the request (logged by its maker), for the
        caller, in trailing metadata."""
        context.set_trailing_metadata(((VOICE_KEY, voice_id),) + (((WARNING_KEY, warning),) if warning else ()))

    # -- RPCs ----------------------------------------------------------------------------------
    async def Synthesize(self, request: Any, context: Any) -> AsyncGenerator[common_pb2.AudioChunk, None]:  # type: ignore[override]
        started = time.perf_counter()
        job = resolve_job(self.config, self.backends, request.config, context)
        check_text("text", request.text, self.config.max_text_chars)
        # Markdown is filtered before the text is split, so a link or code span stays whole
        text = speakable_markdown(request.text) if job.markdown else request.text
        warning = check_voice_reads(normalize(text), job.voice.id, job.voice.language)
        self._trailers(context, job.voice.id, job.warnings(warning))
        asm = ChunkAssembler(job.request_id, job.voice.sample_rate, job.chunk_samples, job.max_chunk_samples)
        key = (job.voice.id, job.settings, job.markdown, request.text)
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

        async def clauses() -> AsyncGenerator[str, None]:
            for segment in split_clauses(text, self.config.max_segment_chars):
                yield segment

        async with contextlib.aclosing(self._speak_all(asm, job, clauses(), started)) as chunks:
            async for msg in chunks:
                yield msg
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
        job = resolve_job(self.config, self.backends, stream.head.config, context)
        self._trailers(context, job.voice.id, job.warnings())
        asm = ChunkAssembler(job.request_id, job.voice.sample_rate, job.chunk_samples, job.max_chunk_samples)
        clauses: Chan[str] = Chan(self.config.stream_queue_segments)
        first_sound: list[float] = []  # when the stream's first chunk left

        def speech_ahead() -> float:
            """Speech sent and not yet played, if its listener started playing it at once."""
            return asm.offset / asm.sample_rate - (time.monotonic() - first_sound[0]) if first_sound else 0.0

        reading = read_clauses(stream, clauses, self.stream_rules, markdown=job.markdown, speech_ahead=speech_ahead)
        reader = asyncio.create_task(reading, name="tts-read-pieces")

        async def checked() -> AsyncGenerator[str, None]:
            """The first clause with letters decides whether the voice can read the stream's text
            at all (it is refused, as a whole text would be); later ones can only warn, once."""
            decided = warned = False
            async for clause in clauses:
                if not warned:
                    text = normalize(clause)
                    warning = check_voice_reads(
                        text, job.voice.id, job.voice.language, refuse=not decided, unit="clause"
                    )
                    decided = decided or any(ch.isalpha() for ch in text)
                    if warning:
                        self._trailers(context, job.voice.id, job.warnings(warning))
                        warned = True
                yield clause

        try:
            async with contextlib.aclosing(self._speak_all(asm, job, checked(), started)) as chunks:
                async for msg in chunks:
                    if not first_sound:
                        first_sound.append(time.monotonic())
                    yield msg
        finally:
            await cancel_and_wait(reader)

    async def ListVoices(self, request: Any, context: Any) -> tts_pb2.ListVoicesResponse:  # type: ignore[override]
        if request.voice:  # one voice, in any spelling a request accepts
            found = find_voice(self.backends, check_id("voice", request.voice))
            if found is None:
                raise voice_not_found("voice", self.backends, request.voice)
            voices = [found[1]]
        else:
            voices = [v for backend in self.backends.values() for v in backend.voices()]
        default = find_voice(self.backends, self.config.default_voice)
        default_id = default[1].id if default is not None else ""
        if default is not None and not request.voice and all(v.id != default_id for v in voices):
            # an unlisted default (a variant: espeak:en-us+f3) is listed after its voice, marked default
            base = default_id.partition("+")[0]
            at = next((i + 1 for i, v in enumerate(voices) if v.id == base), len(voices))
            voices.insert(at, default[1])
        resp = tts_pb2.ListVoicesResponse()
        for v in voices:
            resp.voices.add(
                id=v.id,
                name=v.name,
                language=v.language,
                engine=v.engine,
                sample_rate=v.sample_rate,
                default=v.id == default_id,
            )
        return resp
