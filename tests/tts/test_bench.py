from __future__ import annotations

from talkmesh.bench.stages.tts import run_benchmark


async def test_benchmark_reports_figures() -> None:
    figures = await run_benchmark(runs=3, paragraph_runs=1)
    assert figures["runs"] == 3
    for key in ("server_first_audio_ms_p50", "client_first_audio_ms_p95", "inprocess_first_audio_ms_p50"):
        assert figures[key] > 0
    assert figures["paragraph_audio_seconds"] > 15  # the paragraph really was spoken
    assert figures["paragraph_speed_x_realtime_median"] > 0
