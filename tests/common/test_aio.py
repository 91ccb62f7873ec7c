"""The streaming core: Chan, cancel_and_wait, TaskSet."""

from __future__ import annotations

import asyncio

import pytest

from talkmesh.common.aio import Chan, ChanClosed, TaskSet, any_event, cancel_and_wait


class _Gauge:
    def __init__(self) -> None:
        self.values: list[float] = []

    def inc(self, amount: float = 1) -> None:
        self.values.append((self.values[-1] if self.values else 0) + amount)


async def test_chan_iteration_ends_on_close_after_draining() -> None:
    ch: Chan[int] = Chan(4)
    for i in range(3):
        await ch.send(i)
    ch.close()
    assert [i async for i in ch] == [0, 1, 2]
    with pytest.raises(ChanClosed):
        await ch.send(3)


async def test_chan_close_with_error_raises_after_the_items_before_it() -> None:
    ch: Chan[int] = Chan(4)
    await ch.send(1)
    ch.close(ValueError("stage failed"))
    got = []
    with pytest.raises(ValueError, match="stage failed"):
        async for item in ch:
            got.append(item)
    assert got == [1]


async def test_chan_is_bounded_and_send_waits_for_room() -> None:
    ch: Chan[int] = Chan(2)
    await ch.send(1)
    await ch.send(2)
    sender = asyncio.create_task(ch.send(3))
    await asyncio.sleep(0.01)
    assert not sender.done() and ch.qsize() == 2
    assert await ch.recv() == 1
    await asyncio.wait_for(sender, 1)
    assert ch.qsize() == 2


async def test_a_blocked_sender_is_released_by_close() -> None:
    ch: Chan[int] = Chan(1)
    await ch.send(1)
    sender = asyncio.create_task(ch.send(2))
    await asyncio.sleep(0.01)
    ch.close()
    with pytest.raises(ChanClosed):
        await asyncio.wait_for(sender, 1)


async def test_a_waiting_receiver_is_released_by_close() -> None:
    ch: Chan[int] = Chan(1)
    receiver = asyncio.create_task(ch.recv())
    await asyncio.sleep(0.01)
    ch.close()
    with pytest.raises(ChanClosed):
        await asyncio.wait_for(receiver, 1)


async def test_chan_gauge_follows_depth_and_resets_on_close() -> None:
    gauge = _Gauge()
    ch: Chan[int] = Chan(8, gauge=gauge)
    await ch.send(1)
    await ch.send(2)
    assert gauge.values[-1] == 2
    ch.clear()
    assert gauge.values[-1] == 0
    await ch.send(3)
    ch.close()
    assert gauge.values[-1] == 1  # one item still waiting to be read
    await ch.recv()
    assert gauge.values[-1] == 0


async def test_chans_sharing_a_gauge_sum_and_discard_takes_their_depth_back() -> None:
    gauge = _Gauge()
    a: Chan[int] = Chan(8, gauge=gauge)
    b: Chan[int] = Chan(8, gauge=gauge)
    for i in range(3):
        await a.send(i)
    await b.send(9)
    assert gauge.values[-1] == 4
    await b.recv()
    assert gauge.values[-1] == 3
    a.discard()  # a cancelled stream: nobody will read what waits
    assert gauge.values[-1] == 0
    assert a.closed
    with pytest.raises(ChanClosed):
        await a.recv()


async def test_clear_drops_queued_items() -> None:
    ch: Chan[int] = Chan(8)
    for i in range(5):
        await ch.send(i)
    assert ch.clear() == [0, 1, 2, 3, 4]
    assert ch.qsize() == 0


def test_chan_must_be_bounded() -> None:
    with pytest.raises(ValueError):
        Chan(0)


async def test_cancel_and_wait_waits_for_the_task_to_finish() -> None:
    finished = asyncio.Event()

    async def worker() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a moment
            finished.set()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert finished.is_set() and task.cancelled()


async def test_cancel_and_wait_does_not_swallow_the_callers_cancellation() -> None:
    """The idiom ``task.cancel(); with suppress(CancelledError): await task`` swallows it."""
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await release.wait()  # takes a while to stop

    inner = asyncio.create_task(stubborn())
    await asyncio.sleep(0)

    async def caller() -> str:
        await cancel_and_wait(inner)
        return "returned normally"

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    outer.cancel()  # the caller itself is cancelled while waiting
    await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.wait([inner])


async def test_cancel_and_wait_ignores_finished_and_none() -> None:
    async def ok() -> int:
        return 1

    async def boom() -> None:
        raise RuntimeError("x")

    t1, t2 = asyncio.create_task(ok()), asyncio.create_task(boom())
    await asyncio.sleep(0.01)
    await cancel_and_wait(t1, t2, None)


async def test_taskset_reports_the_first_failure_and_aclose_cancels_the_rest() -> None:
    errors: list[BaseException] = []
    stopped = asyncio.Event()

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("first")

    async def fails_later() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("second")

    async def runs() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            stopped.set()

    async with TaskSet("t", on_error=errors.append) as tasks:
        tasks.spawn(fails(), name="a")
        tasks.spawn(runs(), name="b")
        assert str(await asyncio.wait_for(tasks.wait_failure(), 1)) == "first"
    assert stopped.is_set()
    assert [str(e) for e in errors] == ["first"]
    assert not tasks.tasks
    with pytest.raises(RuntimeError):
        tasks.spawn(fails_later(), name="c")


async def test_taskset_join_raises_the_failure() -> None:
    async def boom() -> None:
        raise KeyError("k")

    tasks = TaskSet()
    tasks.spawn(boom(), name="boom")
    with pytest.raises(KeyError):
        await tasks.join()
    await tasks.aclose()


async def test_wait_event_never_swallows_the_callers_cancellation():
    """The event is set at the very moment the waiter is cancelled: the waiter must still end
    cancelled (Python 3.11's asyncio.wait_for returns normally here and the task runs on)."""
    from talkmesh.common.aio import wait_event

    for _ in range(20):
        event = asyncio.Event()
        loops = 0

        async def poller(event: asyncio.Event) -> None:
            nonlocal loops
            while True:  # like a session's lifetime loop
                loops += 1
                await wait_event(event, 10)
                event.clear()

        task = asyncio.create_task(poller(event))
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1)
        assert task.cancelled()


async def test_wait_event_times_out_and_reports_the_state():
    from talkmesh.common.aio import wait_event

    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_any_event_returns_on_the_first_event_set_and_leaves_no_waiter() -> None:
    a, b = asyncio.Event(), asyncio.Event()
    waiter = asyncio.create_task(any_event(a, b))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    b.set()
    async with asyncio.timeout(1.0):
        await waiter
    assert not a._waiters  # type: ignore[attr-defined]  # its wait on the other event is gone
    await any_event(a, b)  # one is already set: at once


@pytest.mark.parametrize("end", ["close", "close_error", "discard"])
async def test_chan_closed_event_is_set_by_every_way_of_ending_it(end: str) -> None:
    chan: Chan[int] = Chan(2)
    chan.send_nowait(1)
    waiter = asyncio.create_task(any_event(asyncio.Event(), chan.closed_event))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    if end == "discard":
        chan.discard()
    else:
        chan.close(RuntimeError("x") if end == "close_error" else None)
    async with asyncio.timeout(1.0):
        await waiter
