"""The renderer's upload handling after the second review (services/renderer/uploads.py):
``malloc_trim`` never runs on the event loop, a slow but steady upload is not cut while a
trickling one is, only the upload's own deadline is reported as such, and a preparation
cancelled as its worker starts does no work on released bytes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import grpc
import pytest

from services.renderer.config import AvatarConfig
from services.renderer.uploads import HeldUpload, Preparations, UploadBudget, UploadLimits, receive_upload
from talkmesh.common.channel import create_channel
from talkmesh.common.errors import DeadlineExceeded
from talkmesh.testing import serve
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc
from tests.renderer.uploading import MP4_HEAD, trickled_upload, upload_service


async def test_release_never_trims_on_the_loop_and_trims_coalesce():
    """A trim that takes 0.2 s: giving the last upload back returns at once, the loop keeps
    ticking meanwhile, the trim runs on another thread, and a burst of releases (uploads refused
    after a few bytes, repeated) makes one or two trims, not one each."""
    threads: list[threading.Thread] = []

    def slow_trim() -> None:
        threads.append(threading.current_thread())
        time.sleep(0.2)

    budget = UploadBudget(100, trim=slow_trim)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    try:
        slowest = 0.0
        for _ in range(20):
            held = HeldUpload(budget)
            assert held.add(b"x" * 64)
            start = time.perf_counter()
            held.release()
            slowest = max(slowest, time.perf_counter() - start)
            await asyncio.sleep(0.01)
        assert slowest < 0.05, f"release() took {slowest:.3f} s on the loop"
        before = ticks
        await asyncio.sleep(0.3)
        assert ticks - before >= 20, "the loop kept ticking while the trim ran"
    finally:
        task.cancel()
    deadline = time.monotonic() + 5
    while not threads and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert threads and all(t is not threading.current_thread() for t in threads)
    assert 1 <= len(threads) <= 2, f"{len(threads)} trims for 20 releases within 0.5 s"
    assert budget.held == 0


def test_a_steady_slow_network_is_never_cut_by_the_default_limits():
    """The review's phone: 30 MB at 1.5 Mbit/s (160 s). With the defaults its deadline is always
    ahead of it; a client that sends a byte every 10 s is cut at about the grace (30 s)."""
    limits = UploadLimits.of(AvatarConfig())
    rate = 1_500_000 / 8
    for t in range(1, 161):
        at = limits.deadline(0.0, int(rate * t))
        assert at is None or at > t, f"cut after {t} s at 1.5 Mbit/s"
    trickle = limits.deadline(0.0, 4)
    assert trickle is not None and trickle <= 31.0


async def test_a_trickling_upload_is_cut_by_its_rate_and_a_slow_steady_one_is_not(tmp_path):
    service = upload_service(tmp_path, upload_min_bytes_per_second="1000", upload_grace_seconds="1.0")

    async def steady():  # 4000 bytes/s for 2.4 s: past the grace, above the minimum
        yield rpb.AvatarUpload(meta=rpb.AvatarMeta(filename="v.mp4"))
        yield rpb.AvatarUpload(data=MP4_HEAD + bytes(800))
        for _ in range(12):
            await asyncio.sleep(0.2)
            yield rpb.AvatarUpload(data=bytes(800))

    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        loop = asyncio.get_running_loop()
        start = loop.time()
        err = await trickled_upload(stub)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "avatars.upload_min_bytes_per_second" in (err.details() or "")
        assert loop.time() - start < 4.0
        start = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as slow:
            await stub.RegisterAvatar(steady())
        assert slow.value.code() == grpc.StatusCode.INVALID_ARGUMENT, slow.value.details()  # (it is no video)
        assert loop.time() - start > 2.0
        assert service.uploads.held == 0


async def test_another_timeout_inside_the_upload_is_not_reported_as_its_deadline():
    async def requests():
        yield rpb.AvatarUpload(meta=rpb.AvatarMeta(filename="v.mp4"))
        raise TimeoutError("a timeout of something else")

    budget = UploadBudget(1000, trim=lambda: None)
    limits = UploadLimits(1000, 1000, 60.0)
    with pytest.raises(TimeoutError) as err:
        await receive_upload(requests(), budget, limits, None)
    assert not isinstance(err.value, DeadlineExceeded)
    assert "something else" in str(err.value)
    assert budget.held == 0


class _LateStart(concurrent.futures.ThreadPoolExecutor):
    """An executor whose task is already running (it cannot be cancelled any more) but reaches
    the function only once ``gate`` is set: the race of a cancellation with a worker's start."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(1)
        self.gate = gate

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()

        def run() -> None:
            self.gate.wait(10)
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                fut.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return fut


async def test_a_worker_that_starts_after_the_cancellation_does_no_work():
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    loop.set_default_executor(_LateStart(gate))
    prep = Preparations(1)
    budget = UploadBudget(100, trim=lambda: None)
    held = HeldUpload(budget)
    assert held.add(b"x" * 10)
    worked: list[bytes] = []
    job = asyncio.ensure_future(prep.run(held, lambda data: worked.append(bytes(data))))
    await asyncio.sleep(0.05)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert budget.held == 0
    gate.set()
    await asyncio.sleep(0.2)
    assert worked == [], "work ran on the released (empty) bytes"
    # the slot was given back once: another preparation runs
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
    again = HeldUpload(budget)
    assert again.add(b"y")
    assert await asyncio.wait_for(prep.run(again, bytes), 5) == b"y"
