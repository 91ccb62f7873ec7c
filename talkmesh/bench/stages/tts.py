"""TTS benchmark: first-audio latency and synthesis speed, through the real gRPC service on port 0.

``await run_benchmark()`` returns a dict of figures (milliseconds and "x real time"); ``talkmesh
bench`` calls it, ``python -m talkmesh.bench.stages.tts`` prints it. The cache is off so every run
synthesizes. Latencies are measured three ways:

* ``server_first_audio_ms``: request arrival in the handler to the first audio chunk handed to
  gRPC (what the issue's 20 ms bar is about);
* ``client_first_audio_ms``: call started on the client to first chunk received (adds gRPC);
* ``inprocess_first_audio_ms``: the handler called directly with ``InProcessContext`` (no gRPC).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from services.tts.config import CacheConfig
from services.tts.main import create_service, load_config
from services.tts.service import TTSService
from talkmesh.common.channel import create_channel
from talkmesh.common.config import replace
from talkmesh.common.inprocess import InProcessContext
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import tts_pb2, tts_pb2_grpc

SENTENCE = "The quick brown fox jumps over the lazy dog."
PARAGRAPH = (
    "Streaming speech starts with the first clause, while the rest of the paragraph is still being "
    "written. Each clause is synthesized as soon as it is complete, then cut into chunks of about "
    "forty milliseconds. The renderer receives mouth shapes with exact sample positions, so the "
    "avatar's lips close on every p, b and m. Nothing waits for the end of the text, and nothing "
    "is lost at the joins between sentences."
)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _FirstAudioProbe:
    """Wraps the servicer's Synthesize to time arrival -> first audio chunk inside the server."""

    def __init__(self, service: TTSService) -> None:
        self.samples: list[float] = []
        inner = service.servicer.Synthesize

        async def timed(request: Any, context: Any) -> Any:
            start = time.perf_counter()
            first = True
            async for msg in inner(request, context):
                if first and msg.pcm:
                    self.samples.append(time.perf_counter() - start)
                    first = False
                yield msg

        service.servicer.Synthesize = timed  # type: ignore[method-assign]


async def run_benchmark(runs: int = 50, paragraph_runs: int = 5) -> dict[str, Any]:
    config = replace(load_config(env={}), cache=CacheConfig(max_entries=0))
    service = create_service(config, Telemetry("tts-bench"))
    assert isinstance(service, TTSService)
    probe = _FirstAudioProbe(service)  # before register(): the wrapped handler is what gRPC calls
    client: list[float] = []
    inprocess: list[float] = []
    speeds: list[float] = []
    audio_seconds = 0.0
    async with serve(service) as host:
        channel = create_channel(host.address)
        stub = tts_pb2_grpc.TTSStub(channel)
        try:
            request = tts_pb2.SynthesizeRequest(text=SENTENCE)
            for _ in range(3):  # warm the channel
                _ = [c async for c in stub.Synthesize(request)]
            probe.samples.clear()
            for _ in range(runs):
                start = time.perf_counter()
                got = False
                async for chunk in stub.Synthesize(request):
                    if not got and chunk.pcm:
                        client.append(time.perf_counter() - start)
                        got = True
            for _ in range(runs):
                start = time.perf_counter()
                gen = service.servicer.Synthesize(request, InProcessContext())
                async for chunk in gen:
                    if chunk.pcm:
                        inprocess.append(time.perf_counter() - start)
                        break
                await gen.aclose()
            para = tts_pb2.SynthesizeRequest(text=PARAGRAPH)
            for _ in range(paragraph_runs):
                start = time.perf_counter()
                samples = 0
                rate = 1
                async for chunk in stub.Synthesize(para):
                    samples += len(chunk.pcm) // 2
                    rate = chunk.sample_rate or rate
                wall = time.perf_counter() - start
                audio_seconds = samples / rate
                speeds.append(audio_seconds / wall)
        finally:
            await channel.close()
    server = probe.samples[-runs:]
    ms = 1000.0
    return {
        "runs": runs,
        "server_first_audio_ms_p50": _pct(server, 0.5) * ms,
        "server_first_audio_ms_p95": _pct(server, 0.95) * ms,
        "client_first_audio_ms_p50": _pct(client, 0.5) * ms,
        "client_first_audio_ms_p95": _pct(client, 0.95) * ms,
        "inprocess_first_audio_ms_p50": _pct(inprocess, 0.5) * ms,
        "inprocess_first_audio_ms_p95": _pct(inprocess, 0.95) * ms,
        "paragraph_audio_seconds": audio_seconds,
        "paragraph_speed_x_realtime_median": statistics.median(speeds),
        "paragraph_speed_x_realtime_min": min(speeds),
    }


def main() -> None:
    print(json.dumps(asyncio.run(run_benchmark()), indent=2))


if __name__ == "__main__":
    main()
