"""The benchmark runs through the real service and reports its figures (no timing assertions)."""

from __future__ import annotations

from talkmesh.bench.stages import encoder as bench


async def test_bench_reports_latency_and_throughput(config):
    bench.SIZES["tiny"] = (96, 64)
    try:
        result = await bench.measure(["tiny"], frames=12, latency_runs=2, config=config)
    finally:
        del bench.SIZES["tiny"]
    assert result["video_encoder"] in ("libx264", "h264_nvenc")
    tiny = result["sizes"]["tiny"]
    assert tiny["frames"] == 12
    assert 0 < tiny["first_fragment_ms"] <= tiny["first_fragment_max_ms"]
    assert tiny["first_fragment_paced_ms"] > 0 and tiny["fps"] > 0
    assert tiny["cpu_ms_per_frame"] > 0


def test_synthetic_frames_move():
    a, b = bench.synthetic_frames(64, 48, 2)
    assert len(a) == 64 * 48 * 3 // 2 and a != b
