"""`talkmesh bench web`'s report (the browser run itself is what tests/web/test_browser.py checks)."""

from __future__ import annotations

from talkmesh.bench.web import WebReport, markdown


def test_the_report_has_a_row_per_measure_with_percentiles() -> None:
    r = WebReport(command="talkmesh bench web", machine="m", revision="r")
    r.speak_to_paint_ms = [100.0, 200.0, 300.0]
    r.interrupt_to_idle_ms = [50.0]
    r.breakdown = {"fragment received → appended (MSE)": [10.0, 30.0]}
    r.skips, r.stalls = 2, 5
    text = markdown(r)
    assert "| fragment received → appended (MSE) | 2 | 20 | 29 | 30 |  |" in text
    assert "Skips forward (playhead too far behind the live edge): 2; stalls (`waiting`): 5." in text
    assert "| speak pressed → first speaking frame painted | 3 | 200 | 290 | 300 | ≤ 400 p95 |" in text
    assert "| interrupt pressed → idle frame painted | 1 | 50 | 50 | 50 | ≤ 500 p95 |" in text
    assert "talkmesh bench web" in text and "1-minute load average at the start: " in text
