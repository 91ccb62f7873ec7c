"""`talkmesh bench web`: what a user sees in a real browser (headless Chromium via Playwright).

Starts the mesh (six processes, the web edge included) on free ports, opens the page in the
system's Chromium and measures, with the page's own instruments (``window.talkmesh``, fed by
``requestVideoFrameCallback``):

* speak pressed -> the turn's first speaking frame painted (target <= 400 ms p95);
* interrupt pressed -> the first idle frame after the cut painted (target <= 500 ms p95);
* the distance between the playhead and the live edge (newest buffered frame that is due) over the run
  (target: within 300 ms), and the playhead's media time against the wall clock.

Figures include Chromium's own decoding and compositing on the same loaded machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkmesh.bench.report import git_revision, machine, publish

#: Flags for headless Chromium: play media without a user gesture, no sandbox when run as root
#: (CI containers), no GPU process (software decode and compositing).
CHROMIUM_ARGS = (
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
)
SENTENCES = (
    "Hello there, it is good to see you again.",
    "Let me check that for you right away.",
    "The answer has three short parts.",
    "Thanks for waiting, here is what I found.",
)
LONG = "Here is a longer answer, which goes on for a while so that there is something to interrupt. " * 3


def find_chromium() -> str | None:
    """The system's Chromium (Debian: /usr/bin/chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


async def launch(playwright: Any, executable: str, extra_args: tuple[str, ...] = ()) -> Any:
    """Headless Chromium with CHROMIUM_ARGS (and ``extra_args``, e.g. a fake microphone's file)."""
    args = [*CHROMIUM_ARGS, *extra_args]
    return await playwright.chromium.launch(executable_path=executable, headless=True, args=args)


async def wait_js(page: Any, expression: str, timeout: float = 30.0) -> Any:
    """Polls ``expression`` in the page (or a frame) every 20 ms until it is truthy; returns its
    value. With ``evaluate``, not Playwright's ``wait_for_function``, which runs its expression
    through the page's ``eval``: the edge's Content-Security-Policy (no 'unsafe-eval') refuses it."""
    from playwright.async_api import Error as PlaywrightError

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await page.evaluate(expression)
        except PlaywrightError as exc:  # a navigation between two polls: ask the new document
            if "context was destroyed" not in str(exc) and "navigat" not in str(exc):
                raise
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page's {expression[:200]!r} was not true within {timeout:g} s")
        await asyncio.sleep(0.02)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--turns", type=int, default=20, help="speak and interrupt turns each")
    p.add_argument("--out-dir", default="docs/benchmarks", help="where the JSON goes")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file to append the results to ('' = none)")
    p.add_argument("--screenshot", default="", help="save a screenshot of the page here")
    p.add_argument("--page-query", default="", help="query string for the page's tuning knobs, e.g. 'target_lag=0.2'")
    p.add_argument(
        "--browser-flag",
        action="append",
        default=[],
        help="an extra Chromium command-line flag (repeatable), e.g. --enable-blink-features=MediaLatencyHint",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="keep the session going this long in all (a sentence every 20 s) to sample the live-edge distance",
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class WebReport:
    command: str
    machine: str
    revision: str
    speak_to_paint_ms: list[float] = field(default_factory=list)
    speak_to_event_ms: list[float] = field(default_factory=list)
    interrupt_to_idle_ms: list[float] = field(default_factory=list)
    interrupt_to_ack_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    wall_lag_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    browser: str = ""
    #: 1-minute load average when the run started (other work on the machine shows here)
    load_at_start: float = 0.0
    #: where speak -> paint goes, per turn (ms): see BREAKDOWN
    breakdown: dict[str, list[float]] = field(default_factory=dict)
    skips: int = 0
    stalls: int = 0
    #: the page's audio=webaudio counters (window.talkmesh.audio), None on the default page
    audio: dict[str, Any] | None = None
    #: the same after the speak turns, before the interrupts (whose cuts skip speech on purpose)
    audio_after_turns: dict[str, Any] | None = None
    #: console errors and uncaught exceptions in the page
    console_errors: list[str] = field(default_factory=list)


#: speak -> paint in parts, from the page's per-turn timestamps (performance.now(); the server's
#: send time is its wall clock mapped onto the page's, one machine so one clock).
BREAKDOWN = (
    (
        "speak → server sent speaking_started (page, WS, edge, gateway, TTS, features, renderer, encoder)",
        "serverSent",
        "pressed",
    ),
    ("server sent → event received (gRPC, edge, WS)", "startedEvent", "serverSent"),
    ("server sent → edge received (encoder → gateway → edge, gRPC)", "edgeReceived", "serverSent"),
    ("edge received → event received (edge → WebSocket → page)", "startedEvent", "edgeReceived"),
    ("speak → first speech fragment received", "mediaAt", "pressed"),
    ("fragment received → appended (MSE)", "appendedAt", "mediaAt"),
    ("fragment received → appendBuffer called (queued behind earlier appends)", "appendCalledAt", "mediaAt"),
    ("appendBuffer called → updateend", "appendedAt", "appendCalledAt"),
    ("appended → painted (seek or playhead, decode, compositing)", "firstPainted", "appendedAt"),
    ("seek issued → seeked (the seeking turns)", "seekedAt", "seekAt"),
    ("seeked → painted (the seeking turns; < 0: painted before `seeked` fired)", "firstPainted", "seekedAt"),
)


#: per-turn values the page records as they are (not a difference of two timestamps)
RAW = (
    ("appends queued or running when the first speech fragment arrived (count)", "queuedBefore"),
    ("the turn's first fragment is a keyframe (1 = yes)", "firstKey"),
    ("playhead behind the newest frame when speak was pressed (ms)", "lagAtPress"),
    ("first speech frame ahead of the playhead when speaking_started arrived (ms)", "ahead"),
    ("the page's estimate of a speech seek's cost then (ms)", "seekCost"),
    ("clock drift: Date.now() ahead of performance.timeOrigin + now() (ms; not a delay)", "clockDrift"),
    ("audio=webaudio: the first speaking frame's sound heard minus the frame shown (ms; lip sync)", "avSync"),
)
#: audio=webaudio: the turn's first sound minus its first frame on the media timeline (ms)
ONSET = "audio=webaudio: the turn's first sound minus its first speaking frame (media time, ms)"


async def _turns(page: Any, report: WebReport, turns: int) -> None:
    for i in range(turns):
        n = await page.evaluate("Object.keys(window.talkmesh.turns).length")
        await page.fill("#text", SENTENCES[i % len(SENTENCES)])
        await page.click("#speak")
        tid = f"t{n + 1}"
        ttff = await wait_js(page, f"window.talkmesh.turns['{tid}'] && window.talkmesh.turns['{tid}'].ttff")
        report.speak_to_paint_ms.append(float(ttff))
        turn = f"window.talkmesh.turns['{tid}']"
        started = await page.evaluate(f"{turn}.startedEvent - {turn}.pressed")
        report.speak_to_event_ms.append(float(started))
        t = await page.evaluate(turn)
        for name, end, begin in BREAKDOWN:
            if t.get(end) is not None and t.get(begin) is not None:
                report.breakdown.setdefault(name, []).append(float(t[end]) - float(t[begin]))
        report.breakdown.setdefault("turns whose idle was skipped by a seek (1 = yes)", []).append(
            1.0 if t.get("seekAt") is not None else 0.0
        )
        for name, key in RAW:
            if t.get(key) is not None:
                report.breakdown.setdefault(name, []).append(float(t[key]))
        await wait_js(page, f"window.talkmesh.turns['{tid}'].stopFrame != null && !window.talkmesh.speakingVisible")
        onset = await page.evaluate(f"window.talkmesh.audioOnset('{tid}')")
        if onset is not None:
            report.breakdown.setdefault(ONSET, []).append(1000 * float(onset))
        await asyncio.sleep(0.3)


async def _interrupts(page: Any, report: WebReport, turns: int) -> None:
    for _ in range(turns):
        n = await page.evaluate("Object.keys(window.talkmesh.turns).length")
        await page.fill("#text", LONG)
        await page.click("#speak")
        tid = f"t{n + 1}"
        await wait_js(page, f"window.talkmesh.turns['{tid}'] && window.talkmesh.turns['{tid}'].firstPainted")
        await asyncio.sleep(0.8)
        k = await page.evaluate("window.talkmesh.interrupts.length")
        await page.click("#interrupt")
        idle = await wait_js(page, f"window.talkmesh.interrupts[{k}] && window.talkmesh.interrupts[{k}].toIdle")
        report.interrupt_to_idle_ms.append(float(idle))
        ack = await page.evaluate(f"window.talkmesh.interrupts[{k}].ackAt - window.talkmesh.interrupts[{k}].pressed")
        report.interrupt_to_ack_ms.append(float(ack))
        await asyncio.sleep(0.3)


WALL_LAG = """() => {
  const s = window.talkmesh.started, v = document.getElementById('avatar');
  return (Date.now() / 1000 - s.frame0_unix_seconds) - (v.currentTime - (window.talkmesh.offset || 0));
}"""


async def bench(args: argparse.Namespace) -> WebReport:
    from playwright.async_api import async_playwright

    from talkmesh.launcher import Mesh

    exe = find_chromium()
    if exe is None:
        raise SystemExit("bench web: no Chromium found (scripts/ci_system_deps.sh installs it)")
    m = machine()
    report = WebReport(
        command="talkmesh bench " + shlex.join(sys.argv[2:]),
        machine=f"{m.cpu}, {m.cores} cores, {m.memory}, {m.os}, Python {m.python}, GPU: {m.gpu}",
        revision=git_revision(),
        browser=exe,
        load_at_start=os.getloadavg()[0],
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(Path(tmp) / "avatars")}
        async with Mesh(env=env, log_dir=Path(tmp) / "logs") as mesh, async_playwright() as pw:
            browser = await launch(pw, exe, tuple(args.browser_flag))
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                page.on("console", lambda m: report.console_errors.extend([m.text] if m.type == "error" else []))
                page.on("pageerror", lambda e: report.console_errors.append(str(e)))
                # timing=1: the edge stamps its messages, so the relay's share shows (docs/WEB.md)
                query = "?" + "&".join(q for q in ("timing=1", args.page_query) if q)
                await page.goto(f"http://{mesh.address('web')}/{query}")
                await wait_js(page, "window.talkmesh.started && window.talkmesh.painted > 25")
                start = time.monotonic()
                sampler = asyncio.create_task(_sample_lag(page, report))
                try:
                    await _turns(page, report, args.turns)
                    report.audio_after_turns = await page.evaluate("window.talkmesh.audio")
                    await _interrupts(page, report, args.turns)
                    await _keep_going(page, start + 60 * args.minutes)
                finally:
                    sampler.cancel()
                    await asyncio.gather(sampler, return_exceptions=True)
                report.seconds = time.monotonic() - start
                report.lag_ms = [1000 * x for x in await page.evaluate("window.talkmesh.lag.samples")]
                report.skips = int(await page.evaluate("window.talkmesh.lag.skips"))
                report.stalls = int(await page.evaluate("window.talkmesh.waiting"))
                report.audio = await page.evaluate("window.talkmesh.audio")
                if args.screenshot:
                    await page.screenshot(path=args.screenshot)
            finally:
                await browser.close()
    return report


async def _keep_going(page: Any, until: float) -> None:
    """A sentence every 20 s until ``until`` (monotonic): a long session's live-edge distance."""
    while time.monotonic() < until:
        await page.fill("#text", SENTENCES[0])
        await page.click("#speak")
        await asyncio.sleep(min(20.0, max(0.0, until - time.monotonic())))


async def _sample_lag(page: Any, report: WebReport) -> None:
    while True:
        report.wall_lag_ms.append(1000 * float(await page.evaluate(WALL_LAG)))
        await asyncio.sleep(0.5)


def markdown(r: WebReport) -> str:
    def row(name: str, v: list[float], target: str) -> str:
        top = max(v) if v else float("nan")
        return f"| {name} | {len(v)} | {pct(v, 50):.0f} | {pct(v, 95):.0f} | {top:.0f} | {target} |"

    return "\n".join(
        [
            "",
            f"### Web (browser) run ({time.strftime('%Y-%m-%d')}, revision {r.revision})",
            "",
            f"Machine: {r.machine}; 1-minute load average at the start: {r.load_at_start:.2f}.",
            f"Command: `{r.command}` (headless Chromium {r.browser}, software decoding; {r.seconds:.0f} s of session).",
            "",
            "| browser-visible | n | p50 ms | p95 ms | max ms | target |",
            "|---|---|---|---|---|---|",
            row("speak pressed → first speaking frame painted", r.speak_to_paint_ms, "≤ 400 p95"),
            row("speak pressed → speaking_started event received", r.speak_to_event_ms, "—"),
            row("interrupt pressed → acknowledged (event received)", r.interrupt_to_ack_ms, "—"),
            row("interrupt pressed → idle frame painted", r.interrupt_to_idle_ms, "≤ 500 p95"),
            row("playhead behind the live edge (newest due frame)", r.lag_ms, "≤ 300"),
            row("playhead behind the wall clock (frame 0 + media time)", r.wall_lag_ms, "—"),
            "",
            f"Skips forward (playhead too far behind the live edge): {r.skips}; stalls (`waiting`): {r.stalls}.",
            *(
                [f"audio=webaudio counters after the turns: {r.audio_after_turns}; at the end: {r.audio}."]
                if r.audio
                else []
            ),
            *([f"Console errors: {len(r.console_errors)} (first: {r.console_errors[0]})."] if r.console_errors else []),
            "",
            "Where speak → paint goes (per turn, ms):",
            "",
            "| part | n | p50 ms | p95 ms | max ms | |",
            "|---|---|---|---|---|---|",
            *(row(name, v, "") for name, v in r.breakdown.items()),
            "",
        ]
    )


def run(args: argparse.Namespace) -> int:
    report = asyncio.run(bench(args))
    publish(markdown(report), report, args.out_dir, "web.json", args.markdown)
    return 0
