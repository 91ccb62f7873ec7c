"""The renderer's per-avatar bench figures (landmarks, render, lip-sync) on one transformed portrait."""

from __future__ import annotations

import pytest

from talkmesh.bench.stages.renderer import faces_bench


@pytest.mark.timeout(300)
def test_faces_bench_reports_landmark_render_and_lipsync_figures():
    out = faces_bench(quick=True, names=("tight-crop",))
    assert list(out) == ["tight-crop"]
    fig = out["tight-crop"]
    assert fig["size"] == "130x140x1"
    assert 0 < fig["landmark_ms_per_frame"] < 5000
    assert 0 < fig["render_ms_median"] <= fig["render_ms_p95"] < 5000
    # the lip-sync figure is a real measurement on the decoded video: the mouth follows speech
    assert fig["lipsync_r"] >= 0.7 and abs(fig["lipsync_lag_frames"]) <= 1, fig
    assert fig["closed_in_silence"] >= 0.95 and fig["frames"] > 60, fig
