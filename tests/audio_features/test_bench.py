"""The benchmark function returns figures for every type (tiny run; speed itself is not asserted)."""

from __future__ import annotations

from talkmesh.bench.stages.audio_features import run_bench

from .helpers import FakeEncoder


def test_bench_reports_every_type() -> None:
    report = run_bench(seconds=1.2, sample_rate=22050, lookahead_seconds=1.2, encoder=FakeEncoder())
    features = report["features"]
    assert set(features) == {"activity", "whisper_log_mel", "wav2lip_mel", "whisper_embedding"}
    for entry in features.values():
        assert entry["frames"] == 30 and entry["realtime_factor"] > 0
    assert features["activity"]["lookahead_ms_max"] == 0.0
    # Wav2Lip needs the 16 mel frames of its window: well over 100 ms past the end of the frame
    assert features["wav2lip_mel"]["lookahead_ms_max"] > 150
    assert 0 < features["whisper_log_mel"]["lookahead_ms_max"] < features["wav2lip_mel"]["lookahead_ms_max"]


def test_bench_without_encoder_skips_the_embedding() -> None:
    report = run_bench(seconds=0.3, sample_rate=16000, lookahead_seconds=0.3)
    assert "skipped" in report["features"]["whisper_embedding"]
    assert report["features"]["whisper_log_mel"]["lookahead_ms_max"] <= 2.5 + 1.0  # 40 samples + 1 ms step
