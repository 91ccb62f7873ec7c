"""One Speak request: TTS -> features -> renderer -> encoder, all streaming, all at once.

Rendering starts on the first TTS chunk: every chunk's audio goes to the feature stage (and the
encoder's audio track) and its visemes to the renderer the moment it arrives. Four pump tasks move
messages between the stages through bounded queues, so a slow stage slows the ones before it
instead of growing memory. A failure in any stage, or the client hanging up, cancels every task and
every downstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace

from services.gateway.config import GatewayConfig
from services.gateway.downstream import Downstreams, Stream
from talkmesh.common.errors import FailedPrecondition, TalkmeshError
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import tts_pb2 as tpb

log = logging.getLogger(__name__)

FEATURE_FOR_BACKEND = {
    "viseme": fpb.FEATURE_TYPE_ACTIVITY,
    "wav2lip": fpb.FEATURE_TYPE_WAV2LIP_MEL,
    "musetalk": fpb.FEATURE_TYPE_WHISPER_EMBEDDING,
}

_END = object()
MAX_MERGED_AUDIO_SECONDS = 1.0
# Audio sent ahead of the frame about to be encoded (covers the AAC encoder's look-ahead).
AUDIO_LEAD_SECONDS = 0.25


def merge_audio(chunks: list[cpb.AudioChunk], max_seconds: float) -> list[cpb.AudioChunk]:
    """Joins consecutive, contiguous chunks into chunks of at most ``max_seconds`` (never reorders)."""
    out: list[cpb.AudioChunk] = []
    for c in chunks:
        last = out[-1] if out else None
        if (
            last is not None
            and last.sample_rate == c.sample_rate
            and last.sample_offset + len(last.pcm) // 2 == c.sample_offset
            and (len(last.pcm) + len(c.pcm)) // 2 <= max_seconds * c.sample_rate
        ):
            last.pcm += c.pcm
        else:
            out.append(
                cpb.AudioChunk(
                    request_id=c.request_id,
                    seq=c.seq,
                    sample_rate=c.sample_rate,
                    sample_offset=c.sample_offset,
                    pcm=c.pcm,
                    segment_index=c.segment_index,
                )
            )
    return out


class StageError(TalkmeshError):
    """A downstream stage failed; keeps its status code and names the stage."""

    def __init__(self, stage: str, exc: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{stage}: {exc.details() or exc.code().name}")
        self.code = exc.code()


@dataclass
class Timeline:
    received: float = field(default_factory=time.monotonic)
    first_audio: float = 0.0
    last_audio: float = 0.0
    first_features: float = 0.0
    first_frame: float = 0.0
    first_fragment: float = 0.0
    last_fragment: float = 0.0

    def since(self, t: float) -> float:
        return max(0.0, t - self.received) if t else 0.0


class _Queue:
    """A bounded queue closed by a sentinel, with its depth exported as a gauge."""

    def __init__(self, size: int, gauge: Any) -> None:
        self.q: asyncio.Queue[Any] = asyncio.Queue(size)
        self.gauge = gauge

    async def put(self, item: Any) -> None:
        await self.q.put(item)
        self.gauge.set(self.q.qsize())

    async def close(self) -> None:
        await self.q.put(_END)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            item = await self.q.get()
            self.gauge.set(self.q.qsize())
            if item is _END:
                return
            yield item


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
    ) -> AsyncIterator[gpb.SpeakChunk]:
        """Yields the media chunks, then a summary. ``text_pieces`` streams text (LLM) instead."""
        run = _Run(self, request, request_id, timeout, text_pieces)
        async for chunk in run.go():
            yield chunk


class _Run:
    def __init__(
        self,
        owner: SpeakPipeline,
        request: gpb.SpeakRequest,
        request_id: str,
        timeout: float | None,
        text_pieces: AsyncIterable[str] | None,
    ) -> None:
        self.o = owner
        self.req = request
        self.rid = request_id
        self.timeout = timeout
        self.text_pieces = text_pieces
        self.tl = Timeline()
        cfg = owner.config
        tel = owner.telemetry
        self.backend = request.output.renderer_backend or cfg.default_renderer_backend
        self.q_feat = _Queue(cfg.queue_size, tel.queue_gauge("gateway_to_features"))
        self.q_rend = _Queue(cfg.queue_size, tel.queue_gauge("gateway_to_renderer"))
        self.q_enc = _Queue(cfg.queue_size, tel.queue_gauge("gateway_to_encoder"))
        self.q_out = _Queue(cfg.queue_size, tel.queue_gauge("gateway_to_client"))
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.samples = 0
        self.sample_rate = 0
        self.frames_to_encoder = 0
        self.progress = asyncio.Event()  # set whenever a frame went to the encoder
        self.frames = 0
        self.inferred = 0
        self.video_encoder = ""
        self.streams: list[Stream] = []

    # -- sources ---------------------------------------------------------------------------
    def _synthesis_config(self) -> tpb.SynthesisConfig:
        return tpb.SynthesisConfig(request_id=self.rid, voice=self.req.voice, settings=self.req.voice_settings)

    def _open_tts(self) -> Stream:
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

    # -- pumps -----------------------------------------------------------------------------
    async def _pump_tts(self, tts: Stream) -> None:
        seq = 1
        first = True
        fps = self.o.config.fps
        budget = self.o.config.max_audio_ahead_seconds
        async for chunk in tts:
            # Read ahead at most `budget` seconds of audio beyond what the encoder has frames for.
            while (
                self.sample_rate
                and self.samples - self.frames_to_encoder * self.sample_rate / fps > budget * self.sample_rate
            ):
                self.progress.clear()
                await self.progress.wait()
            if first:
                first = False
                self.tl.first_audio = time.monotonic()
                self.sample_rate = chunk.sample_rate
                self.o.telemetry.metrics.time_to_first_audio.labels("gateway").observe(
                    self.tl.since(self.tl.first_audio)
                )
                await self.q_rend.put(
                    rpb.RenderRequest(
                        request_id=self.rid,
                        seq=0,
                        config=rpb.RenderConfig(
                            request_id=self.rid,
                            avatar_id=self.req.avatar_id,
                            backend=self.backend,
                            size=self.req.output.size,
                            fps=self.o.config.fps,
                            pixel_format=cpb.PIXEL_FORMAT_I420,
                            sample_rate=chunk.sample_rate,
                            session_id=self.req.session_id,
                        ),
                    )
                )
            if chunk.visemes:
                await self.q_rend.put(
                    rpb.RenderRequest(request_id=self.rid, visemes=rpb.VisemeTrack(events=chunk.visemes))
                )
            if chunk.pcm:
                audio = cpb.AudioChunk(
                    request_id=self.rid,
                    seq=chunk.seq,
                    sample_rate=chunk.sample_rate,
                    sample_offset=chunk.sample_offset,
                    pcm=chunk.pcm,
                    segment_index=chunk.segment_index,
                )
                self.samples += len(chunk.pcm) // 2
                await self.q_feat.put(fpb.FeatureRequest(request_id=self.rid, seq=seq, audio=audio))
                await self.q_enc.put(("audio", audio))
                seq += 1
            if chunk.end_of_stream:
                break
        self.tl.last_audio = time.monotonic()
        if first or self.samples == 0:
            raise FailedPrecondition("tts: produced no audio for this text")
        await self.q_feat.put(fpb.FeatureRequest(request_id=self.rid, seq=seq, end_of_stream=True))
        await self.q_feat.close()
        await self.q_enc.put(("audio_end", None))

    async def _feature_requests(self) -> AsyncIterator[fpb.FeatureRequest]:
        yield fpb.FeatureRequest(
            request_id=self.rid,
            seq=0,
            config=fpb.FeatureConfig(
                request_id=self.rid,
                feature_type=FEATURE_FOR_BACKEND[self.backend],
                fps=self.o.config.fps,
            ),
        )
        async for item in self.q_feat:
            yield item

    async def _pump_features(self, features: Stream) -> None:
        seq = 1
        async for fc in features:
            if fc.end_of_stream:
                break
            if not self.tl.first_features:
                self.tl.first_features = time.monotonic()
            await self.q_rend.put(rpb.RenderRequest(request_id=self.rid, seq=seq, features=fc))
            seq += 1
        await self.q_rend.put(rpb.RenderRequest(request_id=self.rid, seq=seq, end_of_stream=True))
        await self.q_rend.close()

    async def _pump_frames(self, frames: Stream) -> None:
        async for vf in frames:
            if vf.end_of_stream:
                break
            if not self.tl.first_frame:
                self.tl.first_frame = time.monotonic()
                trace.get_current_span().add_event(
                    "first_frame", {"talkmesh.seconds_since_request": self.tl.since(self.tl.first_frame)}
                )
            if vf.part_index + 1 >= max(1, vf.part_count):
                self.frames += 1
                self.inferred += int(vf.inferred)
            await self.q_enc.put(("frame", vf))
        await self.q_enc.put(("frames_end", None))

    async def _encode_requests(self) -> AsyncIterator[epb.EncodeRequest]:
        """Audio and frames for the encoder, interleaved in time order like a muxer wants them.

        The config goes first, when the first frame tells the size. TTS runs far ahead of real
        time, so audio is held back and released only up to ``AUDIO_LEAD_SECONDS`` past the end of
        the frame about to be sent (enough for the AAC encoder to cover the frame), in merged
        messages: a frame never waits behind seconds of audio being encoded. Everything left is
        flushed when both sources end.
        """
        audio: list[cpb.AudioChunk] = []
        configured = False
        open_sources = {"audio", "frames"}
        seq = 0
        fps = self.o.config.fps

        def wrap(**kw: Any) -> epb.EncodeRequest:
            nonlocal seq
            seq += 1
            return epb.EncodeRequest(request_id=self.rid, seq=seq - 1, **kw)

        def release(until_sample: float) -> list[epb.EncodeRequest]:
            n = 0
            while n < len(audio) and audio[n].sample_offset < until_sample:
                n += 1
            ready = audio[:n]
            del audio[:n]
            return [wrap(audio=a) for a in merge_audio(ready, MAX_MERGED_AUDIO_SECONDS)]

        async for kind, item in self.q_enc:
            if kind == "audio":
                audio.append(item)
            elif kind == "frame":
                if not configured:
                    configured = True
                    yield wrap(config=self._encode_config(item))
                if item.part_index == 0:
                    horizon = ((item.frame_index + 1) / fps + AUDIO_LEAD_SECONDS) * self.sample_rate
                    for req in release(horizon):
                        yield req
                yield wrap(frame=item)
                if item.part_index + 1 >= max(1, item.part_count):
                    self.frames_to_encoder += 1
                    self.progress.set()
            else:
                open_sources.discard(kind.removesuffix("_end"))
                if not open_sources:
                    break
        if not configured:
            raise FailedPrecondition("renderer: produced no frames")
        for req in release(math.inf):
            yield req
        yield wrap(end_of_stream=True)

    def _encode_config(self, frame: cpb.VideoFrame) -> epb.EncodeConfig:
        out = self.req.output
        return epb.EncodeConfig(
            request_id=self.rid,
            width=frame.width,
            height=frame.height,
            fps=self.o.config.fps,
            pixel_format=frame.pixel_format,
            sample_rate=self.sample_rate,
            container=out.container,
            audio_codec=out.audio_codec,
            fragment_ms=out.fragment_ms,
        )

    async def _pump_media(self, media: Stream) -> None:
        async for mc in media:
            if mc.video_encoder:
                self.video_encoder = mc.video_encoder
            if mc.end_of_stream and not mc.data:
                break
            await self.q_out.put(mc)
            if mc.end_of_stream:
                break
        await self.q_out.close()

    # -- the run ---------------------------------------------------------------------------
    def _spawn(self, name: str, stage: str, coro: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self._fail(StageError(stage, exc))
            except BaseException as exc:
                self._fail(exc)

        return asyncio.create_task(guarded(), name=f"gateway-{name}-{self.rid}")

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self.failed.set()

    async def go(self) -> AsyncIterator[gpb.SpeakChunk]:
        ds = self.o.ds
        tts = self._open_tts()
        features = ds.extract(self._feature_requests(), self.timeout)
        frames = ds.render(self.q_rend, self.timeout)
        media = ds.encode(self._encode_requests(), self.timeout)
        self.streams = [tts, features, frames, media]
        tasks = [
            self._spawn("tts", "tts", lambda: self._pump_tts(tts)),
            self._spawn("features", "audio_features", lambda: self._pump_features(features)),
            self._spawn("frames", "renderer", lambda: self._pump_frames(frames)),
            self._spawn("media", "encoder", lambda: self._pump_media(media)),
        ]
        seq = 0
        try:
            outputs = aiter(self.q_out)
            while True:
                item = await self._next_or_failure(outputs)
                if item is _END:
                    break
                if not item.init_segment and not self.tl.first_fragment:
                    self.tl.first_fragment = time.monotonic()
                    trace.get_current_span().add_event(
                        "first_fragment", {"talkmesh.seconds_since_request": self.tl.since(self.tl.first_fragment)}
                    )
                    self.o.telemetry.metrics.time_to_first_frame.labels("gateway").observe(
                        self.tl.since(self.tl.first_fragment)
                    )
                yield gpb.SpeakChunk(request_id=self.rid, seq=seq, media=item)
                seq += 1
            if self.failure is not None:
                raise self.failure
            self.tl.last_fragment = time.monotonic()
            yield gpb.SpeakChunk(request_id=self.rid, seq=seq, end_of_stream=True, summary=self._summary())
        finally:
            for t in tasks:
                t.cancel()
            for s in self.streams:
                with contextlib.suppress(Exception):
                    await s.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _next_or_failure(self, outputs: AsyncIterator[Any]) -> Any:
        if self.failure is not None:
            raise self.failure
        get = asyncio.ensure_future(anext(outputs, _END))
        fail = asyncio.ensure_future(self.failed.wait())
        try:
            done, _ = await asyncio.wait({get, fail}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fail.cancel()
            if not get.done():
                get.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await get
        if get in done and not get.cancelled():
            return get.result()
        assert self.failure is not None
        raise self.failure

    def _summary(self) -> gpb.SpeakSummary:
        tl = self.tl
        audio_seconds = self.samples / self.sample_rate if self.sample_rate else 0.0
        total = tl.since(tl.last_fragment)
        stages = {
            "tts_first_chunk": tl.since(tl.first_audio),
            "tts_total": tl.since(tl.last_audio),
            "features_first": max(0.0, tl.first_features - tl.first_audio) if tl.first_features else 0.0,
            "renderer_first_frame": max(0.0, tl.first_frame - tl.first_features) if tl.first_frame else 0.0,
            "encoder_first_fragment": max(0.0, tl.first_fragment - tl.first_frame) if tl.first_fragment else 0.0,
            "total": total,
        }
        tel = self.o.telemetry
        for name, secs in stages.items():
            tel.observe_stage(name, secs)
        if total > 0 and audio_seconds > 0:
            tel.metrics.realtime_factor.labels("gateway").observe(audio_seconds / total)
        tel.metrics.frames_total.labels("gateway").inc(self.frames)
        return gpb.SpeakSummary(
            request_id=self.rid,
            stages=[cpb.StageTiming(service="gateway", stage=k, seconds=v) for k, v in stages.items()],
            time_to_first_audio_seconds=stages["tts_first_chunk"],
            time_to_first_frame_seconds=tl.since(tl.first_frame),
            time_to_first_fragment_seconds=tl.since(tl.first_fragment),
            audio_seconds=audio_seconds,
            frames=self.frames,
            total_seconds=total,
            timeline=gpb.SpeakTimeline(
                received=tl.received,
                first_audio=tl.first_audio,
                last_audio=tl.last_audio,
                first_frame=tl.first_frame,
                first_fragment=tl.first_fragment,
                last_fragment=tl.last_fragment,
            ),
            video_encoder=self.video_encoder,
            inferred_frames=self.inferred,
        )
