"""One Speak request: TTS -> features -> encoder (which renders), all streaming, all at once.

Rendering starts on the first TTS chunk: each chunk's audio goes to the feature stage and, with its
visemes, to the encoder (which forwards the visemes to the renderer), the moment it arrives. The
feature stage answers one batch of frames per chunk, which goes to the encoder as it is: about
1.6 messages per video frame cross the gateway (a 200 ms chunk is 5 frames; the encoder's
fragments hold about as many), instead of 3.3 with one feature message per frame. The encoder
pulls the frames from the renderer itself, so the gateway only moves text, audio, features and
compressed media: it is the control plane.

Three pump tasks move messages between the stages through bounded channels, so a slow stage slows
the ones before it instead of growing memory, and TTS is read at most ``max_audio_ahead_seconds``
ahead of the frames the encoder has finished. A failure in any stage closes the output channel
with that error (the client gets it at once, with the stage's code and name), and the client
hanging up, or the error, cancels every task and every downstream call.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from services.gateway.audio import Resampler, stage_rate
from services.gateway.checks import first_words
from services.gateway.config import GatewayConfig
from services.gateway.downstream import Downstreams
from services.gateway.fields import in_speak_terms
from services.gateway.metrics import Queue, Stage
from talkmesh.common.aio import Chan, TaskSet, all_of, wait_event
from talkmesh.common.calls import LocalStream, Stream
from talkmesh.common.clock import MediaClock
from talkmesh.common.errors import FailedPrecondition, InvalidArgument, TalkmeshError
from talkmesh.common.markup import ONLY_MARKUP
from talkmesh.common.names import check_text
from talkmesh.common.propagation import StageNotes
from talkmesh.common.registry import RENDERER_FEATURES
from talkmesh.common.telemetry import ENCODER_FIRST_FRAGMENT, RENDERER_FIRST_FRAME, ReportedStage, Telemetry
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import tts_pb2 as tpb
from talkmesh.v1 import types_pb2

log = logging.getLogger(__name__)

#: What each renderer backend needs from the feature stage (the registry's ``RENDERER_FEATURES``).
FEATURE_FOR_BACKEND = {backend: fpb.FeatureType.Value(feature) for backend, feature in RENDERER_FEATURES.items()}


def synthesis_config(
    config: GatewayConfig,
    request_id: str,
    voice: str,
    settings: types_pb2.VoiceSettings,
    text_format: types_pb2.TextFormat,
) -> tpb.SynthesisConfig:
    """TTS's config for a request or a live text turn: the voice, its settings and how the text
    is read, and the chunking of every Speak (``gateway.tts_chunk_ms`` first, growing to
    ``tts_max_chunk_ms``: TTS synthesizes a clause at once, so a longer chunk does not delay the
    first audio)."""
    return tpb.SynthesisConfig(
        request_id=request_id,
        voice=voice,
        settings=settings,
        chunk_ms=config.tts_chunk_ms,
        max_chunk_ms=config.tts_max_chunk_ms,
        text_format=text_format,
    )


@dataclass
class Timeline:
    """Monotonic clock readings of the moments a Speak request goes through."""

    received: float = field(default_factory=time.monotonic)
    first_audio: float = 0.0
    last_audio: float = 0.0
    first_features: float = 0.0
    first_frame: float = 0.0
    first_fragment: float = 0.0
    last_fragment: float = 0.0

    def since(self, t: float) -> float:
        return max(0.0, t - self.received) if t else 0.0


class ReadAhead:
    """How far TTS may run ahead: at most ``budget_seconds`` of audio past the encoded frames.

    TTS is hundreds of times faster than real time; without this bound a request would hold its
    whole utterance in queues. The feature look-ahead (up to ~1.5 s) must fit inside the budget.
    """

    def __init__(self, budget_seconds: float, fps: float) -> None:
        self.budget_seconds = budget_seconds
        self.fps = fps
        self.clock: MediaClock | None = None
        self.samples_read = 0
        self.frames_encoded = 0
        self._progress = asyncio.Event()

    def start(self, sample_rate: int) -> None:
        self.clock = MediaClock.of(self.fps, sample_rate)

    def ahead_samples(self) -> int:
        """Samples read beyond the end of the last encoded frame."""
        if self.clock is None:
            return 0
        return self.samples_read - self.clock.start(self.frames_encoded)

    def over(self) -> bool:
        return self.clock is not None and self.ahead_samples() > self.budget_seconds * self.clock.sample_rate

    async def wait_for_room(self) -> None:
        """Returns once the audio read so far is within the budget again."""
        while self.over():
            self._progress.clear()
            await self._progress.wait()

    def read(self, samples: int) -> None:
        self.samples_read += samples

    def encoded(self, frames: int) -> None:
        if frames > self.frames_encoded:
            self.frames_encoded = frames
            self._progress.set()


class StartHold:
    """First things first (``GatewayConfig.start_hold_ms``): until a request's first fragment is out,
    encoder-bound messages after the first TTS chunk wait here, in the order they came, so frame 0
    does not share the cores with the rendering and encoding of the frames behind it.

    The first feature batch goes at once, after the held chunks whose audio starts before the end
    of its frames plus one (a chunk's visemes reach the encoder ahead of its frames' features, and
    the renderer anticipates the next viseme by less than a frame); the hold ends when the first
    fragment is out or ``seconds`` after it began, and what it held goes then, in order. Once frame
    0 has its features, TTS is not read either until then (``tts_may_read``); the encoder likewise
    sends the renderer the first fragment's frames alone (services/encoder/server.py, ``_route``)."""

    def __init__(self, seconds: float, send: Callable[[dict[str, object]], Awaitable[None]]) -> None:
        self.seconds = seconds
        self.send = send
        self.holding = False
        self.held: collections.deque[tuple[int, dict[str, object]]] = collections.deque()
        self.began = asyncio.Event()
        self._frame0_fed = asyncio.Event()  # frame 0's features went to the encoder
        self._first_out = asyncio.Event()
        self.over = asyncio.Event()
        self._flushing = asyncio.Lock()  # the end of the hold and the first batch's release take turns
        if seconds <= 0:
            self.over.set()

    def begin(self) -> None:
        """The first chunk is out: from now on messages wait (once per request)."""
        if not self.over.is_set() and not self.began.is_set():
            self.holding = True
            self.began.set()

    async def put(self, fields: dict[str, object], start: int, *, now: bool = False) -> None:
        """Sends ``fields`` (a message whose audio starts at sample ``start``), or holds it."""
        if self.holding and not now:
            self.held.append((start, fields))
        else:
            await self.send(fields)

    def frame0_fed(self) -> None:
        """Frame 0's features went to the encoder (``tts_may_read`` holds TTS from now on)."""
        self._frame0_fed.set()

    def fragment_out(self) -> None:
        """The first fragment went to the client: the hold ends."""
        self._first_out.set()

    async def tts_may_read(self) -> None:
        """Once frame 0 has its features, TTS is read no further until the hold ends: synthesizing
        and extracting the rest would take the cores from frame 0. (Until then it is read: feature
        types with look-ahead answer frame 0 only after later chunks.)"""
        if self._frame0_fed.is_set():
            await self.over.wait()

    async def release_before(self, sample: int) -> None:
        """Sends the held messages whose audio starts before ``sample``."""
        async with self._flushing:
            while self.held and self.held[0][0] < sample:
                await self.send(self.held.popleft()[1])

    async def run(self) -> None:
        """Ends the hold: on the first fragment, or ``seconds`` after the hold began."""
        try:
            if self.over.is_set():
                return
            await self.began.wait()
            await wait_event(self._first_out, self.seconds)
            async with self._flushing:
                while self.held:
                    await self.send(self.held.popleft()[1])
                self.holding = False  # no await since the queue was found empty: nothing is left behind
        finally:
            self.over.set()

    async def wait_over(self) -> None:
        """Returns once nothing can be held any more (the end of the input waits for it)."""
        if self.began.is_set():
            await self.over.wait()


def video_chunk(mc: epb.MediaChunk, seq: int) -> gpb.VideoChunk:
    """The public form of the encoder's output (the public API never exposes a stage's types)."""
    return gpb.VideoChunk(
        request_id=mc.request_id,
        seq=seq,
        data=mc.data,
        init_segment=mc.init_segment,
        mime_type=mc.mime_type,
        frames_encoded=mc.frames_encoded,
        video_encoder=mc.video_encoder,
    )


async def _first_piece(pieces: AsyncIterable[str], *, markdown: bool = False) -> AsyncIterable[str]:
    """Waits for the first words (``first_words``); returns the pieces again, from those.
    INVALID_ARGUMENT naming ``text``, as TTS words it, when the stream ends first."""
    it = aiter(pieces)
    words, found = await first_words(it, markdown=markdown)
    if not found:  # nothing to say: refused here, as TTS words it
        check_text("text", words, len(words) + 1)
        raise InvalidArgument("text", ONLY_MARKUP)

    async def chained() -> AsyncIterator[str]:
        yield words
        async for rest in it:
            yield rest

    return chained()


class SpeakPipeline:
    def __init__(self, downstreams: Downstreams, config: GatewayConfig, telemetry: Telemetry) -> None:
        self.ds = downstreams
        self.config = config
        self.telemetry = telemetry

    async def run(
        self,
        request: gpb.SpeakRequest,
        request_id: str,
        timeout: float | None,
        text_pieces: AsyncIterable[str] | None = None,
        audio_pieces: AsyncIterable[tuple[int, bytes]] | None = None,
    ) -> AsyncIterator[gpb.SpeakChunk]:
        """Yields the media chunks, then a summary. ``text_pieces`` streams text (LLM) instead;
        ``audio_pieces`` (sample rate, checked PCM) is the caller's own speech, in place of TTS."""
        run = _Run(self, request, request_id, timeout, text_pieces, audio_pieces)
        try:
            async for chunk in run.go():
                yield chunk
        except TalkmeshError as exc:
            in_speak_terms(exc)  # a stage's `config.voice` is the caller's `voice`
            raise


class _Run:
    def __init__(
        self,
        owner: SpeakPipeline,
        request: gpb.SpeakRequest,
        request_id: str,
        timeout: float | None,
        text_pieces: AsyncIterable[str] | None,
        audio_pieces: AsyncIterable[tuple[int, bytes]] | None = None,
    ) -> None:
        self.o = owner
        self.req = request
        self.rid = request_id
        self.timeout = timeout
        self.text_pieces = text_pieces
        self.audio_pieces = audio_pieces
        self.tl = Timeline()
        cfg = owner.config
        tel = owner.telemetry
        self.backend = request.output.renderer_backend or cfg.default_renderer_backend
        self.avatar_id = request.avatar_id  # an id or a name: resolved to the id in go()
        self.to_features: Chan[fpb.FeatureRequest] = Chan(cfg.queue_size, gauge=tel.queue_gauge(Queue.TO_FEATURES))
        self.to_encoder: Chan[epb.EncodeRequest] = Chan(cfg.queue_size, gauge=tel.queue_gauge(Queue.TO_ENCODER))
        self.out: Chan[epb.MediaChunk] = Chan(cfg.queue_size, gauge=tel.queue_gauge(Queue.TO_CLIENT))
        self.read_ahead = ReadAhead(cfg.max_audio_ahead_seconds, cfg.fps)
        self.sample_rate = 0
        self.encoder_seq = 0
        self.open_inputs = {"tts", "features"}  # what still feeds the encoder
        self.end: epb.MediaChunk | None = None
        self.notes = StageNotes()  # TTS's warnings and the voice it spoke with, for the summary
        out = request.output
        # A whole-file MP4 has no fragments, and fragments longer than the first chunk need later
        # frames: neither is held.
        holds = out.container != cpb.CONTAINER_MP4 and out.fragment_ms <= max(cfg.tts_chunk_ms, 40)
        self.hold = StartHold(cfg.start_hold_ms / 1000 if holds else 0.0, self._send_to_encoder)

    # -- sources ---------------------------------------------------------------------------
    def _synthesis_config(self) -> tpb.SynthesisConfig:
        return synthesis_config(
            self.o.config, self.rid, self.req.voice, self.req.voice_settings, self.req.text_format
        )

    def _open_tts(self) -> Stream:
        if self.audio_pieces is not None:
            return LocalStream(self._caller_speech(self.audio_pieces))
        if self.text_pieces is None:
            return self.o.ds.synthesize(
                tpb.SynthesizeRequest(config=self._synthesis_config(), text=self.req.text), self.timeout
            )

        async def pieces() -> AsyncIterator[tpb.TextPiece]:
            yield tpb.TextPiece(request_id=self.rid, seq=0, config=self._synthesis_config())
            seq = 1
            assert self.text_pieces is not None
            async for text in self.text_pieces:
                yield tpb.TextPiece(request_id=self.rid, seq=seq, text=text)
                seq += 1
            yield tpb.TextPiece(request_id=self.rid, seq=seq, end_of_stream=True)

        return self.o.ds.synthesize_stream(pieces(), self.timeout)

    async def _caller_speech(self, pieces: AsyncIterable[tuple[int, bytes]]) -> AsyncIterator[cpb.AudioChunk]:
        """The caller's speech in TTS's place: chunks as TTS sends them, without visemes, at a rate
        the stages take (``stage_rate``)."""
        resampler: Resampler | None = None
        rate = offset = seq = 0
        async for source_rate, pcm in pieces:
            if resampler is None:
                rate = stage_rate(source_rate)
                resampler = Resampler(source_rate, rate)
            out = resampler.push(pcm)
            if out:
                yield cpb.AudioChunk(request_id=self.rid, seq=seq, sample_rate=rate, sample_offset=offset, pcm=out)
                offset += len(out) // 2
                seq += 1
        tail = resampler.push(b"", last=True) if resampler is not None else b""
        if tail:
            yield cpb.AudioChunk(request_id=self.rid, seq=seq, sample_rate=rate, sample_offset=offset, pcm=tail)

    def _encode_config(self, sample_rate: int) -> epb.EncodeConfig:
        out = self.req.output
        return epb.EncodeConfig(
            request_id=self.rid,
            fps=self.o.config.fps,
            pixel_format=cpb.PIXEL_FORMAT_I420,
            sample_rate=sample_rate,
            container=out.container,
            audio_codec=out.audio_codec,
            fragment_ms=out.fragment_ms,
            render=rpb.RenderConfig(
                request_id=self.rid,
                avatar_id=self.avatar_id,
                backend=self.backend,
                size=out.size,
                fps=self.o.config.fps,
                pixel_format=cpb.PIXEL_FORMAT_I420,
                sample_rate=sample_rate,
                session_id=self.req.session_id,
                idle_motion=out.idle_motion,
            ),
        )

    async def _to_encoder(self, start: int = 0, *, now: bool = False, **fields: object) -> None:
        """A message for the encoder (its audio starts at sample ``start``), through the start hold."""
        await self.hold.put(fields, start, now=now)

    async def _send_to_encoder(self, fields: dict[str, object]) -> None:
        seq = self.encoder_seq
        self.encoder_seq += 1  # taken before the send: unique even when both pumps send at once
        await self.to_encoder.send(epb.EncodeRequest(request_id=self.rid, seq=seq, **fields))  # type: ignore[arg-type]

    async def _input_done(self, name: str) -> None:
        """One of the encoder's inputs ended; after the last one the encoder stream ends."""
        self.open_inputs.discard(name)
        if not self.open_inputs:
            await self._to_encoder(self.read_ahead.samples_read, end_of_stream=True)
            await self.hold.wait_over()  # a short utterance may end during the start hold
            self.to_encoder.close()

    # -- pumps -----------------------------------------------------------------------------
    async def _pump_tts(self, tts: Stream) -> None:
        """TTS audio to the feature stage and the encoder, visemes to the encoder (renderer)."""
        seq = 1
        async for chunk in tts:
            await self.read_ahead.wait_for_room()
            await self.hold.tts_may_read()
            if not self.sample_rate and chunk.sample_rate:
                self.sample_rate = chunk.sample_rate
                self.read_ahead.start(chunk.sample_rate)
                self.tl.first_audio = time.monotonic()
                tel = self.o.telemetry
                tel.metrics.time_to_first_audio.labels(tel.service).observe(self.tl.since(self.tl.first_audio))
                await self._to_encoder(config=self._encode_config(chunk.sample_rate))
            if chunk.pcm:
                audio = cpb.AudioChunk(
                    request_id=self.rid,
                    seq=chunk.seq,
                    sample_rate=chunk.sample_rate,
                    sample_offset=chunk.sample_offset,
                    pcm=chunk.pcm,
                    segment_index=chunk.segment_index,
                )
                self.read_ahead.read(len(chunk.pcm) // 2)
                features = fpb.FeatureRequest(request_id=self.rid, seq=seq, audio=audio)
                # The chunk's visemes ride with its audio (the encoder hands them to the renderer),
                # queued before the chunk reaches the feature stage: so before its frames' features.
                audio.visemes.extend(chunk.visemes)
                await self._to_encoder(chunk.sample_offset, audio=audio)
                await self.to_features.send(features)
                seq += 1
                self.hold.begin()  # the first chunk is out: what follows waits for the first fragment
            elif chunk.visemes:  # TTS's last message: the remaining visemes, no audio
                start = min(v.start_sample for v in chunk.visemes)
                await self._to_encoder(start, visemes=rpb.VisemeTrack(events=chunk.visemes))
            # end_of_stream: the loop still reads to the stream's end (TTS's OK), as for the media
        self.tl.last_audio = time.monotonic()
        self.notes = StageNotes.of(await tts.trailers())
        if not self.read_ahead.samples_read:
            if self.audio_pieces is not None:
                raise InvalidArgument("audio.pcm", "no audio: every piece was empty")
            raise FailedPrecondition("tts: produced no audio for this text")
        await self.to_features.send(fpb.FeatureRequest(request_id=self.rid, seq=seq, end_of_stream=True))
        self.to_features.close()
        await self._input_done("tts")

    async def _feature_requests(self) -> AsyncIterator[fpb.FeatureRequest]:
        yield fpb.FeatureRequest(
            request_id=self.rid,
            seq=0,
            # one answer per TTS chunk with all its frames, not one per frame: half the messages
            # the gateway relays (the renderer takes the batch as it is, through the encoder)
            config=fpb.FeatureConfig(
                request_id=self.rid,
                feature_type=FEATURE_FOR_BACKEND[self.backend],
                fps=self.o.config.fps,
                batch_frames=True,
            ),
        )
        async for item in self.to_features:
            yield item

    async def _pump_features(self, features: Stream) -> None:
        """Feature batches (a TTS chunk's frames each) to the encoder, which forwards them to the renderer."""
        async for fc in features:  # to the stream's end (its OK), as for the media
            if fc.end_of_stream:
                continue
            first = not self.tl.first_features
            if first:
                self.tl.first_features = time.monotonic()
                # frame 0's batch is not held; the audio and visemes of its frames (and of the
                # frame after them) go first
                last = fc.frames[-1].frame_index if fc.frames else fc.frame_index
                if self.read_ahead.clock is not None:
                    await self.hold.release_before(self.read_ahead.clock.start(last + 2))
            await self._to_encoder(now=first, features=fc)
            if first:
                self.hold.frame0_fed()
        await self._input_done("features")

    async def _pump_media(self, media: Stream) -> None:
        """Compressed media to the client; the encoder's progress releases TTS read-ahead."""
        # Read to the stream's end, not just to end_of_stream: the encoder's call then finishes with
        # its own OK before the cleanup below cancels what is left (else it may count CANCELLED).
        async for mc in media:
            self.read_ahead.encoded(mc.frames_encoded)
            if mc.data:
                await self.out.send(mc)
            if mc.end_of_stream:
                self.end = mc
        self.out.close()

    # -- the run ---------------------------------------------------------------------------
    async def go(self) -> AsyncIterator[gpb.SpeakChunk]:
        ds = self.o.ds
        streams: list[Stream] = []
        tasks = TaskSet(f"gateway-{self.rid}", on_error=self.out.close)
        try:
            if self.text_pieces is not None:
                # capacity is taken when there is work: nothing opens before the first text piece
                markdown = self.req.text_format == types_pb2.TEXT_FORMAT_MARKDOWN
                self.text_pieces = await _first_piece(self.text_pieces, markdown=markdown)
            # The scarce stages admit the request before any work starts: an overloaded encoder
            # answers RESOURCE_EXHAUSTED in one round trip, and TTS never starts for it. The
            # renderer resolves the avatar (a name to its id) meanwhile: no round trip of its own
            # on frame 0's path, and an unknown avatar is NOT_FOUND before TTS starts.
            media = ds.encode(self.to_encoder, self.timeout)
            streams.append(media)
            features = ds.extract(self._feature_requests(), self.timeout)
            streams.append(features)
            await all_of(media.admitted(), features.admitted(), self._resolve_avatar())
            tts = self._open_tts()
            streams.append(tts)
            tasks.spawn(self._pump_tts(tts), name="tts")
            tasks.spawn(self._pump_features(features), name="features")
            tasks.spawn(self._pump_media(media), name="media")
            tasks.spawn(self.hold.run(), name="start-hold")
            seq = 0
            async for item in self.out:
                first = not item.init_segment and not self.tl.first_fragment
                if first:
                    self._first_fragment()
                yield gpb.SpeakChunk(request_id=self.rid, seq=seq, media=video_chunk(item, seq))
                seq += 1
                if first:
                    # the start hold ends once the first fragment is on its way to the client: what
                    # it held goes to the encoder after the fragment, not ahead of it
                    self.hold.fragment_out()
            self.tl.last_fragment = time.monotonic()
            yield gpb.SpeakChunk(request_id=self.rid, seq=seq, end_of_stream=True, summary=self._summary())
        finally:
            await tasks.aclose()
            for s in streams:
                await s.cancel()
            # What still waits is never read (the stream failed or was cancelled): drop it, and
            # its depth from talkmesh_queue_depth.
            self.to_features.discard()
            self.to_encoder.discard()
            self.out.discard()

    async def _resolve_avatar(self) -> None:
        timeout = self.o.config.renderer.timeout_seconds
        self.avatar_id = await self.o.ds.avatar_id(self.req.avatar_id, "avatar_id", timeout)

    def _first_fragment(self) -> None:
        self.tl.first_fragment = time.monotonic()
        since = self.tl.since(self.tl.first_fragment)
        trace.get_current_span().add_event("first_fragment", {"talkmesh.seconds_since_request": since})
        # talkmesh_time_to_first_frame_seconds is the time to the first *streamed* fragment (the
        # SLO's metric). A whole-file MP4's first chunk comes after the whole utterance is encoded:
        # its time is the request's total (talkmesh_stage_duration_seconds{stage="total"}), and
        # recording it here would make a batch of `talkmesh say -o x.mp4` fire the SLO alert.
        if self.req.output.container != cpb.CONTAINER_MP4:
            tel = self.o.telemetry
            tel.metrics.time_to_first_frame.labels(tel.service).observe(since)

    def _summary(self) -> gpb.SpeakSummary:
        tl = self.tl
        end = self.end or epb.MediaChunk()
        reported = {ReportedStage(s.service, s.stage): s.seconds for s in end.stages}
        encode_first = reported.get(ENCODER_FIRST_FRAGMENT, 0.0)
        if tl.first_fragment:
            tl.first_frame = max(tl.first_features or tl.first_audio, tl.first_fragment - encode_first)
        sample_rate = self.read_ahead.clock.sample_rate if self.read_ahead.clock else 0
        audio_seconds = self.read_ahead.samples_read / sample_rate if sample_rate else 0.0
        total = tl.since(tl.last_fragment)
        stages = {
            Stage.TTS_FIRST_CHUNK: tl.since(tl.first_audio),
            Stage.TTS_TOTAL: tl.since(tl.last_audio),
            Stage.FEATURES_FIRST: max(0.0, tl.first_features - tl.first_audio) if tl.first_features else 0.0,
            Stage.RENDERER_FIRST_FRAME: reported.get(RENDERER_FIRST_FRAME, 0.0),
            Stage.ENCODER_FIRST_FRAGMENT: encode_first,
            Stage.TOTAL: total,
        }
        if ENCODER_FIRST_FRAGMENT not in reported:  # a whole MP4: no fragment to time
            del stages[Stage.ENCODER_FIRST_FRAGMENT]
        if self.audio_pieces is not None:  # the caller's own speech: TTS had no part in it
            del stages[Stage.TTS_FIRST_CHUNK], stages[Stage.TTS_TOTAL]
        tel = self.o.telemetry
        for name, secs in stages.items():
            tel.observe_stage(name, secs)
        # The real-time factor measures how fast the mesh makes media of text it has whole. Input
        # that arrives as a stream (SpeakStream's text pieces from an LLM, the caller's own speech)
        # paces the request at its own speed, so its factor is below 1 on a healthy mesh: it is not
        # observed, or TalkmeshRealtimeFactorBelowOne would fire on healthy streamed traffic.
        streamed_input = self.text_pieces is not None or self.audio_pieces is not None
        if total > 0 and audio_seconds > 0 and not streamed_input:
            tel.metrics.realtime_factor.labels(tel.service).observe(audio_seconds / total)
        tel.metrics.frames_total.labels(tel.service).inc(end.frames_encoded)
        return gpb.SpeakSummary(
            request_id=self.rid,
            stages=[cpb.StageTiming(service=tel.service, stage=k, seconds=v) for k, v in stages.items()],
            time_to_first_audio_seconds=tl.since(tl.first_audio),
            time_to_first_frame_seconds=tl.since(tl.first_frame),
            time_to_first_fragment_seconds=tl.since(tl.first_fragment),
            audio_seconds=audio_seconds,
            frames=end.frames_encoded,
            total_seconds=total,
            timeline=gpb.SpeakTimeline(
                received=tl.received,
                first_audio=tl.first_audio,
                last_audio=tl.last_audio,
                first_frame=tl.first_frame,
                first_fragment=tl.first_fragment,
                last_fragment=tl.last_fragment,
            ),
            video_encoder=end.video_encoder,
            inferred_frames=end.frames_inferred,
            warnings=self.notes.warnings,
            voice=self.notes.voice,
        )
