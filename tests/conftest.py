"""Fixtures shared by every test: a check that no test leaks asyncio tasks."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(autouse=True)
async def _no_leaked_tasks():
    """Fails a test that leaves asyncio tasks running after it returns (grpc's own excepted)."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    for _ in range(50):
        leaked = [
            t
            for t in asyncio.all_tasks()
            if t not in before and t is not current and not t.done() and not _is_grpc_internal(t)
        ]
        if not leaked:
            return
        await asyncio.sleep(0.02)
    names = ", ".join(f"{t.get_name()}:{t.get_coro()!r}" for t in leaked)
    pytest.fail(f"test leaked {len(leaked)} asyncio task(s): {names}")


def _is_grpc_internal(task: asyncio.Task) -> bool:
    coro = repr(task.get_coro())
    return "grpc" in coro and "talkmesh" not in coro and "services" not in coro
