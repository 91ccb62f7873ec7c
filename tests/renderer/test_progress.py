"""Progress from a worker thread: coalesced within a stage, never losing where a stage ended."""

from __future__ import annotations

import asyncio
import threading

from services.renderer.progress import LatestProgress


async def test_each_stage_ends_on_its_last_state_in_order() -> None:
    progress = LatestProgress(asyncio.get_running_loop())
    go = threading.Event()

    def work() -> None:
        go.wait(10)
        progress.report("decoding", 0, 0)
        for i in range(1, 501):
            progress.report("faces", i, 500)
        progress.report("saving", 0, 0)
        progress.report("backend:viseme", 0, 1)
        progress.report("backend:viseme", 1, 1)

    job = asyncio.ensure_future(asyncio.to_thread(work))
    go.set()
    seen = [state async for state in progress.updates(job)]
    await job
    stages = [s for s, _, _ in seen]
    # stages in order, each once per run of reports (coalesced), each ending on its last state
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "decoding", "faces", "saving", "backend:viseme",
    ]  # fmt: skip
    last = {s: (d, t) for s, d, t in seen}
    assert last == {"decoding": (0, 0), "faces": (500, 500), "saving": (0, 0), "backend:viseme": (1, 1)}
    faces = [d for s, d, _ in seen if s == "faces"]
    assert faces == sorted(faces)
