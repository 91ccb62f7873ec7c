"""`talkmesh bench web`'s report (the browser run itself is what tests/web/test_browser.py checks)."""

from __future__ import annotations

from talkmesh.bench.web import WebReport, markdown


def test_the_report_has_a_row_per_measure_with_percentiles() -> None:
    r = WebReport(command="talkmesh bench web", machine="m", revision="r")
    r.speak_to_paint_ms = [100.0, 200.0, 300.0]
    r.interrupt_to_idle_ms = [50.0]
    text = markdown(r)
    assert "| speak pressed → first speaking frame painted | 3 | 200 | 290 | 300 | ≤ 400 p95 |" in text
    assert "| interrupt pressed → idle frame painted | 1 | 50 | 50 | 50 | ≤ 500 p95 |" in text
    assert "talkmesh bench web" in text and "loaded by parallel work" in text
