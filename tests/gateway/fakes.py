"""Fake stages behind the gateway's Downstreams interface (no gRPC, no models)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from services.gateway.downstream import Downstreams
from talkmesh.common.calls import Stream
from talkmesh.common.errors import InvalidArgument
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import tts_pb2 as tpb

SR = 16000
FPS = 25


class GenStream(Stream):
    def __init__(self, gen: AsyncIterator[Any], log: list[str], name: str) -> None:
        self.gen = gen
        self.log = log
        self.name = name

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.gen

    async def cancel(self) -> None:
        self.log.append(f"cancel:{self.name}")
        await self.gen.aclose()  # type: ignore[attr-defined]


class FakeDownstreams(Downstreams):
    """TTS gives ``chunks`` chunks of 40 ms; features one per frame, or one batch per audio message
    (``batch_frames``); the encoder (which renders) one fragment per frame. ``fail`` names a stage
    that raises; ``hold`` makes TTS wait forever after its first chunk (for cancellation tests)."""

    def __init__(
        self,
        chunks: int = 10,
        fail: str = "",
        hold: bool = False,
        whole_file: bool = False,
        chunk_frames: tuple[int, ...] = (),
        lookahead_frames: int = 0,
        paced_tts: bool = False,
    ) -> None:
        self.chunks = chunks
        #: TTS yields a chunk only once the feature stage has the audio before it (a TTS slower than
        #: the feature stage), and the encoder takes 50 event-loop steps to encode frame 0
        self.paced_tts = paced_tts
        self.feature_samples = 0
        #: TTS chunks the gateway read while frame 0 was being encoded (paced_tts)
        self.tts_chunks_read_during_frame_0: int | None = None
        #: frames of audio in each TTS chunk (the last size repeats); default one frame each
        self.chunk_frames = chunk_frames
        #: a frame's features need this many frames of audio after it (Wav2Lip mel, Whisper)
        self.lookahead_frames = lookahead_frames
        #: the encoder sends nothing before the end (like a whole-file MP4)
        self.whole_file = whole_file
        #: encoder_inputs received when the first fragment went out
        self.inputs_before_first_fragment: list[str] | None = None
        #: TTS chunks the gateway has read
        self.tts_chunks_read = 0
        self.fail = fail
        self.hold = hold
        self.log: list[str] = []
        self.encoder_inputs: list[str] = []
        self.encoder_audio_samples = 0
        self.encoder_frames = 0
        #: end sample of the viseme events the encoder received so far (with audio or alone)
        self.encoder_visemes_until = 0
        self.encoder_viseme_events = 0
        self.frames_before_their_visemes = 0
        self.feature_batches = False
        self.render_configs: list[Any] = []
        self.closed: set[str] = set()

    def _track(self, name: str, gen: AsyncIterator[Any]) -> Stream:
        async def wrapped() -> AsyncIterator[Any]:
            try:
                async for item in gen:
                    yield item
            finally:
                self.closed.add(name)

        return GenStream(wrapped(), self.log, name)

    def synthesize(self, request: tpb.SynthesizeRequest, timeout: float | None) -> Stream:
        async def gen() -> AsyncIterator[cpb.AudioChunk]:
            n = SR // FPS
            offset = 0
            for i in range(self.chunks):
                if self.fail == "tts" and i == 2:
                    raise InvalidArgument("config.voice", "fake failure")
                frames = self.chunk_frames[min(i, len(self.chunk_frames) - 1)] if self.chunk_frames else 1
                while self.paced_tts and self.feature_samples < offset:
                    await asyncio.sleep(0)
                self.tts_chunks_read = i + 1
                yield cpb.AudioChunk(
                    seq=i,
                    sample_rate=SR,
                    sample_offset=offset,
                    pcm=b"\x01\x00" * n * frames,
                    visemes=[
                        cpb.VisemeEvent(
                            viseme=cpb.VISEME_OPEN, start_sample=offset + k * n, end_sample=offset + (k + 1) * n
                        )
                        for k in range(frames)
                    ],
                )
                offset += n * frames
                if self.hold and i == 0:
                    await asyncio.Event().wait()
            yield cpb.AudioChunk(seq=self.chunks, sample_rate=SR, sample_offset=offset, end_of_stream=True)

        return self._track("tts", gen())

    def synthesize_stream(self, requests: AsyncIterable[tpb.TextPiece], timeout: float | None) -> Stream:
        async def gen() -> AsyncIterator[cpb.AudioChunk]:
            n = SR // FPS
            seq = 0
            async for piece in requests:
                if piece.WhichOneof("kind") == "text":
                    yield cpb.AudioChunk(seq=seq, sample_rate=SR, sample_offset=seq * n, pcm=b"\x00\x00" * n)
                    seq += 1
            yield cpb.AudioChunk(seq=seq, sample_rate=SR, sample_offset=seq * n, end_of_stream=True)

        return self._track("tts", gen())

    def extract(self, requests: AsyncIterable[fpb.FeatureRequest], timeout: float | None) -> Stream:
        async def gen() -> AsyncIterator[fpb.FeatureChunk]:
            samples = 0
            emitted = 0
            batch = False

            def answer(frames: list[fpb.FeatureChunk]) -> list[fpb.FeatureChunk]:
                if not batch or not frames:
                    return frames
                return [fpb.FeatureChunk(frame_index=frames[0].frame_index, frames=frames)]

            async for req in requests:
                if req.WhichOneof("kind") == "config":
                    batch = self.feature_batches = req.config.batch_frames
                if req.WhichOneof("kind") == "audio":
                    samples += len(req.audio.pcm) // 2
                    self.feature_samples = samples
                    if self.fail == "features":
                        raise InvalidArgument("audio.pcm", "fake failure")
                    ready = []
                    while (emitted + 1 + self.lookahead_frames) * SR // FPS <= samples:
                        ready.append(fpb.FeatureChunk(frame_index=emitted, activity=cpb.FrameActivity(voiced=True)))
                        emitted += 1
                    for msg in answer(ready):
                        yield msg
            total = math.ceil(samples * FPS / SR)
            rest = []
            while emitted < total:
                rest.append(fpb.FeatureChunk(frame_index=emitted))
                emitted += 1
            for msg in answer(rest):
                yield msg
            yield fpb.FeatureChunk(end_of_stream=True, frame_count=total, frame_index=total)

        return self._track("features", gen())

    async def list_voices(self, request: tpb.ListVoicesRequest, timeout: float | None) -> tpb.ListVoicesResponse:
        raise NotImplementedError("voices are tested through the real mesh (tests/test_live.py)")

    def live(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        raise NotImplementedError("live sessions are tested through the real mesh (tests/test_live.py)")

    def encode(self, requests: AsyncIterable[epb.EncodeRequest], timeout: float | None) -> Stream:
        """Renders (one 'frame' per features message) and encodes one fragment per frame."""

        async def gen() -> AsyncIterator[epb.MediaChunk]:
            frames = inferred = 0
            async for req in requests:
                kind = req.WhichOneof("kind") or ("end" if req.end_of_stream else "")
                self.encoder_inputs.append(kind)
                if kind == "config":
                    assert req.config.sample_rate == SR and req.config.HasField("render")
                    self.render_configs.append(req.config.render)
                    yield epb.MediaChunk(init_segment=True, data=b"init", mime_type="video/mp4")
                elif kind == "audio":
                    assert req.audio.sample_offset == self.encoder_audio_samples, "audio must stay contiguous"
                    self.encoder_audio_samples += len(req.audio.pcm) // 2
                    self._visemes(req.audio.visemes)
                elif kind == "visemes":
                    self._visemes(req.visemes.events)
                elif kind == "features":
                    if self.fail == "encoder":
                        raise InvalidArgument("features.features", "fake failure")
                    for fc in req.features.frames or [req.features]:
                        assert fc.frame_index == frames
                        if fc.activity.voiced and self.encoder_visemes_until < (frames + 1) * SR // FPS:
                            self.frames_before_their_visemes += 1  # renderer input out of order
                        frames += 1
                        self.encoder_frames = frames
                        inferred += int(fc.activity.voiced)
                        if self.whole_file:
                            continue
                        if self.inputs_before_first_fragment is None:
                            if self.paced_tts:
                                read = self.tts_chunks_read
                                for _ in range(50):
                                    await asyncio.sleep(0)
                                self.tts_chunks_read_during_frame_0 = self.tts_chunks_read - read
                            self.inputs_before_first_fragment = list(self.encoder_inputs)
                        yield epb.MediaChunk(data=b"frag", frames_encoded=frames)
            if self.whole_file:
                yield epb.MediaChunk(data=b"file", frames_encoded=frames)
            yield epb.MediaChunk(
                end_of_stream=True,
                frames_encoded=frames,
                frames_inferred=inferred,
                video_encoder="fake",
                stages=[
                    cpb.StageTiming(service="renderer", stage="first_frame", seconds=0.001),
                    cpb.StageTiming(service="encoder", stage="first_fragment", seconds=0.002),
                ],
            )

        return self._track("encoder", gen())

    def _visemes(self, events: Any) -> None:
        self.encoder_viseme_events += len(events)
        for e in events:
            self.encoder_visemes_until = max(self.encoder_visemes_until, e.end_sample)
