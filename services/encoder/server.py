"""The Encoder gRPC servicer and service.

Per stream: a reader task moves requests into a bounded queue (``limits.input_queue``), the
handler takes them one by one, encodes in a worker thread and yields the output before taking the
next. A slow receiver therefore stops the handler at ``yield``, the queue fills, the reader stops
reading and gRPC flow control pushes back on the sender: memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from services.encoder.backends import X264Backend, probe_nvenc, select_backend
from services.encoder.backends.base import VideoBackend
from services.encoder.config import EncoderConfig
from services.encoder.session import EncodeSession
from services.encoder.validation import FrameAssembler, check_audio, stream_params
from talkmesh.common.errors import InvalidArgument, Unavailable
from talkmesh.common.logs import request_id_var
from talkmesh.common.server import Service
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import encoder_pb2, encoder_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "talkmesh.v1.Encoder"


@dataclass(frozen=True)
class _Closed:
    """The request stream ended (``error`` set when reading it failed)."""

    error: BaseException | None = None


class _Output:
    """Builds the MediaChunks of one stream: seq numbers, chunk splitting, first-message fields."""

    def __init__(self, request_id: str, max_chunk_bytes: int) -> None:
        self.request_id = request_id
        self.max_chunk_bytes = max_chunk_bytes
        self.seq = 0
        self.described = False

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
        )
        self.seq += 1
        return msg

    @staticmethod
    def _frames(session: EncodeSession) -> int:
        # fMP4 counts the video samples in the fragments sent; other containers the frames fed.
        return session.frames_out if session.params.container == "fmp4" else session.frames_in


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, config: EncoderConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        # Set by EncoderService.start() once the probe has run.
        self.backend: VideoBackend | None = None
        self.fallback: VideoBackend | None = None

    async def Encode(
        self, request_iterator: AsyncIterator[encoder_pb2.EncodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[encoder_pb2.MediaChunk]:
        if self.backend is None:
            raise Unavailable("the encoder is still starting")
        queue: asyncio.Queue[encoder_pb2.EncodeRequest | _Closed] = asyncio.Queue(
            maxsize=self.config.limits.input_queue
        )
        reader = asyncio.create_task(_read(request_iterator, queue), name="encoder-read-requests")
        try:
            async for chunk in self._encode(queue, self.backend):
                yield chunk
        finally:
            reader.cancel()
            await asyncio.wait([reader])

    async def _encode(
        self, queue: asyncio.Queue[encoder_pb2.EncodeRequest | _Closed], backend: VideoBackend
    ) -> AsyncIterator[encoder_pb2.MediaChunk]:
        started = time.perf_counter()
        gauge = self.telemetry.queue_gauge("input")
        metrics = self.telemetry.metrics
        svc = self.telemetry.service

        async def next_request() -> encoder_pb2.EncodeRequest:
            item = await queue.get()
            gauge.set(queue.qsize())
            if isinstance(item, _Closed):
                if item.error is not None:
                    raise item.error
                raise InvalidArgument("end_of_stream", "the request stream ended without end_of_stream")
            return item

        first = await next_request()
        if first.WhichOneof("kind") != "config":
            raise InvalidArgument("config", "the first message must carry the EncodeConfig")
        params = stream_params(first.config, self.config)
        request_id = first.config.request_id or first.request_id or request_id_var.get()
        session = EncodeSession(
            params,
            backend,
            self.config.audio,
            fallback=self.fallback if self.config.video.fallback_to_x264 else None,
            max_file_bytes=self.config.limits.max_file_bytes,
        )
        output = _Output(request_id, self.config.limits.max_chunk_bytes)
        frames = FrameAssembler(params)
        first_fragment_sent = False
        try:
            with self.telemetry.stage("open", container=params.container):
                init = await asyncio.to_thread(session.open)
            log.info(
                "encoding %dx%d@%s %s (%s) with %s",
                params.width,
                params.height,
                params.fps,
                params.container,
                session.mime_type,
                session.video_encoder,
            )
            for msg in output.chunks(init, session, init=params.container == "fmp4"):
                yield msg
            done = first.end_of_stream
            while not done:
                req = await next_request()
                done = req.end_of_stream
                kind = req.WhichOneof("kind")
                data = b""
                if kind == "frame":
                    raw = frames.add(req.frame)
                    if raw is not None:
                        t0 = time.perf_counter()
                        data = await asyncio.to_thread(session.add_frame, raw)
                        self.telemetry.observe_stage("frame", time.perf_counter() - t0)
                        metrics.frames_total.labels(svc).inc()
                elif kind == "audio":
                    check_audio(req.audio, params, session.samples_in)
                    data = await asyncio.to_thread(session.add_audio, req.audio.pcm)
                elif kind == "config":
                    raise InvalidArgument("config", "sent twice; only the first message carries it")
                if data:
                    if not first_fragment_sent:
                        first_fragment_sent = True
                        metrics.time_to_first_frame.labels(svc).observe(time.perf_counter() - started)
                        trace.get_current_span().add_event("first_fragment")
                    for msg in output.chunks(data, session):
                        yield msg
            if frames.pending:
                raise InvalidArgument("frame.part_index", f"frame {frames.next_index} is missing parts")
            with self.telemetry.stage("finish"):
                tail = await asyncio.to_thread(session.finish)
            for msg in output.chunks(tail, session):
                yield msg
            yield output.end(session)
            wall = time.perf_counter() - started
            if wall > 0 and session.frames_in:
                metrics.realtime_factor.labels(svc).observe(session.frames_in / float(params.fps) / wall)
        finally:
            # Releases the encoder if the stream failed or was cancelled (no-op after finish()).
            await asyncio.to_thread(session.close)


async def _read(
    requests: AsyncIterator[encoder_pb2.EncodeRequest], queue: asyncio.Queue[encoder_pb2.EncodeRequest | _Closed]
) -> None:
    try:
        async for req in requests:
            await queue.put(req)
            if req.end_of_stream:
                return
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a broken request stream ends the encode with that error
        await queue.put(_Closed(exc))
        return
    await queue.put(_Closed())


class EncoderService(Service):
    name = "encoder"

    def __init__(
        self, config: EncoderConfig, telemetry: Telemetry, *, nvenc_probe: Callable[[int], bool] = probe_nvenc
    ) -> None:
        super().__init__(telemetry)
        self.config = config
        self.servicer = EncoderServicer(config, telemetry)
        self._probe = nvenc_probe
        self.backend: VideoBackend | None = None

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        encoder_pb2_grpc.add_EncoderServicer_to_server(self.servicer, server)
        return [SERVICE_NAME]

    async def start(self) -> None:
        video = self.config.video
        probe = self._probe
        # The probe may initialise CUDA: keep it off the event loop.
        backend = await asyncio.to_thread(select_backend, video, probe)
        self.backend = backend
        self.servicer.fallback = X264Backend(video) if backend.name != X264Backend.name else None
        self.servicer.backend = backend
        self.telemetry.set_backend("video_encoder", backend.name)
        log.info(
            "video encoder: %s (video.encoder=%s)",
            backend.name,
            video.encoder,
            extra={"fields": {"video_encoder": backend.name}},
        )
