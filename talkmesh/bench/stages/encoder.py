"""Encoder benchmark: first-fragment latency and throughput, in-process through the gRPC service.

``run()`` starts the encoder on a free local port, streams synthetic frames (a moving shape on a
gradient, so the encoder has real work) and PCM through ``talkmesh.v1.Encoder/Encode`` and
measures on the client side:

* ``first_fragment_ms``: from writing frame 0 to receiving the first media fragment, frames sent
  as fast as they are accepted (the fragment holding frame 0 leaves once frame 1 is encoded);
* ``first_fragment_paced_ms``: the same with frames arriving at the real frame rate (this adds
  one frame interval, 40 ms at 25 fps, of waiting for frame 1);
* ``fps``: frames encoded per second over a longer stream (frames written as fast as accepted);
* ``cpu_ms_per_frame``: CPU time of the encoding itself (``EncodeSession``: H.264, AAC and fMP4
  muxing, no gRPC) per frame, with one frame of speech-like audio per frame, in this process.

Audio runs 200 ms ahead of the frames, as the TTS runs ahead of the renderer in the mesh.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from services.encoder.backends import X264Backend
from services.encoder.config import EncoderConfig
from services.encoder.main import create_service, load_config
from services.encoder.server import EncoderService
from services.encoder.session import EncodeSession, StreamParams
from talkmesh.common.channel import create_channel
from talkmesh.common.clock import fps_fraction
from talkmesh.common.config import replace as replace_config
from talkmesh.common.server import ServiceHost
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

SIZES = {"512": (512, 512), "720p": (1280, 720), "360p": (640, 360), "480p": (854, 480)}
SAMPLE_RATE = 24000
LOOKAHEAD_SECONDS = 0.2


def synthetic_frames(width: int, height: int, count: int) -> list[bytes]:
    """I420 frames: a horizontal gradient with a bright disc moving across it."""
    width -= width % 2
    height -= height % 2
    yy, xx = np.mgrid[0:height, 0:width]
    base = (40 + 160 * xx / max(1, width - 1)).astype(np.uint8)
    chroma = np.full((height // 2, width // 2), 128, np.uint8).tobytes()
    frames = []
    for i in range(count):
        cx = width * (0.2 + 0.6 * (i % 50) / 50)
        y = base.copy()
        y[(xx - cx) ** 2 + (yy - height / 2) ** 2 < (height / 6) ** 2] = 235
        frames.append(y.tobytes() + chroma + chroma)
    return frames


def speech_like(samples: int, sample_rate: int = SAMPLE_RATE) -> bytes:
    """PCM s16le with a voice's harmonics and noise (the AAC encoder's work depends on the signal)."""
    t = np.arange(samples) / sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    noise = np.random.default_rng(0).normal(0, 0.05, samples)
    return ((voice * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + noise) * 6000).astype("<i2").tobytes()


def session_cpu_ms_per_frame(
    width: int, height: int, frames: Sequence[bytes], fps: float, config: EncoderConfig
) -> float:
    """CPU milliseconds per frame of ``EncodeSession`` alone (fMP4, x264 with the configured settings)."""
    params = StreamParams(width, height, fps_fraction(fps), "i420", SAMPLE_RATE, "fmp4", "aac", 40)
    session = EncodeSession(params, X264Backend(config.video), config.audio)
    spf = round(SAMPLE_RATE / fps)
    pcm = speech_like(spf * len(frames))
    session.open()
    try:
        start = time.process_time()
        for i, frame in enumerate(frames):
            session.add_audio_then_frame(pcm[2 * i * spf : 2 * (i + 1) * spf], frame)
        session.finish()
        return 1000 * (time.process_time() - start) / len(frames)
    finally:
        session.close()


async def _stream(
    stub: encoder_pb2_grpc.EncoderStub,
    width: int,
    height: int,
    frames: Sequence[bytes],
    fps: float,
    paced: bool,
) -> tuple[float, float, int]:
    """One utterance; returns (first fragment latency s, total encode time s, frames encoded)."""
    call = stub.Encode()
    spf = SAMPLE_RATE / fps
    n = len(frames)
    total_samples = int(n * spf)
    silence = b"\x00\x00" * int(spf)
    first_written = 0.0
    first_fragment = 0.0
    frames_encoded = 0

    async def write() -> None:
        nonlocal first_written
        await call.write(
            encoder_pb2.EncodeRequest(
                config=encoder_pb2.EncodeConfig(
                    request_id="bench",
                    width=width,
                    height=height,
                    fps=fps,
                    sample_rate=SAMPLE_RATE,
                    pixel_format=common_pb2.PIXEL_FORMAT_I420,
                )
            )
        )
        sent_samples = 0

        async def audio_until(end: int) -> None:
            nonlocal sent_samples
            while sent_samples < min(end, total_samples):
                take = min(len(silence) // 2, total_samples - sent_samples)
                await call.write(
                    encoder_pb2.EncodeRequest(
                        audio=common_pb2.AudioChunk(
                            sample_rate=SAMPLE_RATE, sample_offset=sent_samples, pcm=silence[: 2 * take]
                        )
                    )
                )
                sent_samples += take

        lookahead = int(LOOKAHEAD_SECONDS * SAMPLE_RATE)
        await audio_until(lookahead)
        start = time.perf_counter()
        for i, data in enumerate(frames):
            if paced:
                delay = start + i / fps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if i == 0:
                first_written = time.perf_counter()
            await call.write(
                encoder_pb2.EncodeRequest(
                    frame=common_pb2.VideoFrame(
                        frame_index=i,
                        width=width,
                        height=height,
                        pixel_format=common_pb2.PIXEL_FORMAT_I420,
                        data=data,
                        part_count=1,
                    )
                )
            )
            await audio_until(int((i + 1) * spf) + lookahead)
        await call.write(encoder_pb2.EncodeRequest(end_of_stream=True))
        await call.done_writing()

    async def read() -> None:
        nonlocal first_fragment, frames_encoded
        while (msg := await call.read()) is not grpc.aio.EOF:
            if msg.data and not msg.init_segment and not first_fragment:
                first_fragment = time.perf_counter()
            if msg.end_of_stream:
                frames_encoded = msg.frames_encoded

    async with asyncio.TaskGroup() as tg:
        tg.create_task(write())
        tg.create_task(read())
    done = time.perf_counter()
    return first_fragment - first_written, done - first_written, frames_encoded


async def measure(
    sizes: Sequence[str] = ("512", "720p"),
    *,
    frames: int = 150,
    latency_runs: int = 5,
    fps: float = 25.0,
    config: EncoderConfig | None = None,
) -> dict[str, Any]:
    """Runs the benchmark inside the current event loop; see ``run``."""
    cfg = config or load_config(env={})
    server = replace_config(cfg.server, host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=2.0)
    service = create_service(replace_config(cfg, server=server), Telemetry("encoder"))
    host = ServiceHost(service, server)
    await host.start()
    backend = service.backend if isinstance(service, EncoderService) else None
    results: dict[str, Any] = {"video_encoder": backend.name if backend else "", "sizes": {}}
    try:
        async with create_channel(host.address, cfg.server.max_message_bytes) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            for size in sizes:
                width, height = SIZES[size]
                clip = synthetic_frames(width, height, max(frames, 10))
                await _stream(stub, width, height, clip[:5], fps, paced=False)  # warm-up
                lat = [
                    (await _stream(stub, width, height, clip[:10], fps, paced=False))[0] for _ in range(latency_runs)
                ]
                paced = (await _stream(stub, width, height, clip[:6], fps, paced=True))[0]
                _lat, seconds, encoded = await _stream(stub, width, height, clip[:frames], fps, paced=False)
                cpu_ms = await asyncio.to_thread(session_cpu_ms_per_frame, width, height, clip[:frames], fps, cfg)
                results["sizes"][size] = {
                    "width": width,
                    "height": height,
                    "first_fragment_ms": round(1000 * statistics.median(lat), 2),
                    "first_fragment_max_ms": round(1000 * max(lat), 2),
                    "first_fragment_paced_ms": round(1000 * paced, 2),
                    "fps": round(encoded / seconds, 1),
                    "frames": encoded,
                    "cpu_ms_per_frame": round(cpu_ms, 2),
                }
    finally:
        await host.stop(grace=1.0)
    return results


def run(sizes: Sequence[str] = ("512", "720p"), **kwargs: Any) -> dict[str, Any]:
    """Runs the encoder benchmark in a fresh event loop and returns the figures as a dict."""
    return asyncio.run(measure(sizes, **kwargs))


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
