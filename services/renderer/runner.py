"""How a session's frame jobs reach a backend: directly, or through the cross-session batcher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from services.renderer.backends.base import Avatar, FrameJob, RenderBackend
from services.renderer.config import RendererConfig
from talkmesh.common.telemetry import Telemetry

#: The backend's own blocking render call.
BlockingRender = Callable[[Avatar, Sequence[FrameJob]], list[np.ndarray]]


class FrameRunner(Protocol):
    #: The backend's blocking call when the runner adds nothing to it (no batching across
    #: sessions): a session may then call it in the thread it composes frames in, one thread hop
    #: per group instead of two. None when frames must go through ``render``.
    blocking_render: BlockingRender | None

    async def render(self, avatar: Avatar, jobs: Sequence[FrameJob]) -> list[np.ndarray]: ...

    async def close(self) -> None: ...


class DirectRunner:
    """Runs each call in a worker thread (the procedural backend needs no batching)."""

    def __init__(self, backend: RenderBackend) -> None:
        self.backend = backend
        self.blocking_render: BlockingRender | None = backend.render

    async def render(self, avatar: Avatar, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        return await asyncio.to_thread(self.backend.render, avatar, jobs)

    async def close(self) -> None:
        return None


def make_runner(backend: RenderBackend, config: RendererConfig, telemetry: Telemetry) -> FrameRunner:
    """The runner for ``backend``; neural backends go through the dynamic batcher when enabled.

    The batcher's size bound is the backend's (``batch.max_size`` on CPU, adapted to free GPU
    memory up to ``batch.max_size_gpu`` on a GPU, see backends/onnx_models.py).
    """
    from services.renderer.backends.neural import NeuralBackend

    if isinstance(backend, NeuralBackend) and config.batch.enabled:
        from services.renderer.batcher import DynamicBatcher

        return DynamicBatcher(backend, telemetry, max_size=backend.max_batch, max_delay_ms=config.batch.max_delay_ms)
    return DirectRunner(backend)
