"""Where the encoder gets rendered frames: the renderer's Render stream, pulled by the encoder.

The data plane keeps raw frames between the renderer and the encoder (one pod, one GPU, a Unix
socket or localhost in Kubernetes): the caller sends the renderer's input (visemes, per-frame
features) inside its Encode stream, and the encoder forwards it to the renderer and encodes the
frames that come back. ``FrameSource`` is that one call; ``GrpcFrameSource`` makes it over gRPC,
and the benchmark's in-process yardstick passes the renderer's handler directly (``LocalFrameSource``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from talkmesh.common.calls import CallStream, LocalStream, Stream
from talkmesh.common.channel import create_channel
from talkmesh.common.config import Endpoint
from talkmesh.common.inprocess import InProcessContext
from talkmesh.common.principal import principal_metadata
from talkmesh.common.propagation import outgoing_metadata
from talkmesh.v1 import common_pb2, renderer_pb2, renderer_pb2_grpc


class FrameSource(abc.ABC):
    """Opens a Render stream: ``requests`` (config first) in, VideoFrame messages out."""

    #: The renderer is another process, which may share this machine's memory: streams offer it a
    #: frame ring (talkmesh/common/framering.py). In-process, frames are passed as they are.
    remote = False

    @abc.abstractmethod
    def render(self, requests: AsyncIterable[renderer_pb2.RenderRequest], timeout: float | None) -> Stream: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases the connection."""


class GrpcFrameSource(FrameSource):
    """The renderer over gRPC (``renderer.target``: ``host:port``, ``dns:///...`` or ``unix:///path``)."""

    remote = True

    def __init__(self, endpoint: Endpoint, max_message_bytes: int) -> None:
        # Raw frames come back: the stream window starts large enough for two whole messages.
        self.channel = create_channel(
            endpoint.target, max_message_bytes, interceptors=False, large_window=True, tls=endpoint.tls
        )
        self.stub = renderer_pb2_grpc.RendererStub(self.channel)

    def render(self, requests: AsyncIterable[renderer_pb2.RenderRequest], timeout: float | None) -> Stream:
        # The API key the gateway named (if any): the renderer renders only avatars the key may use.
        call = self.stub.Render(timeout=timeout, metadata=outgoing_metadata(principal_metadata()))
        return CallStream(call, requests, stage="renderer")

    async def close(self) -> None:
        await self.channel.close()


class LocalFrameSource(FrameSource):
    """The renderer's Render handler called in this process (no gRPC): the benchmark's yardstick."""

    def __init__(self, handler: Callable[[Any, Any], Any]) -> None:
        self.handler = handler

    def render(self, requests: AsyncIterable[renderer_pb2.RenderRequest], timeout: float | None) -> Stream:
        return LocalStream(self.handler(aiter(requests), InProcessContext(timeout)))


async def unbatched(stream: AsyncIterable[common_pb2.VideoFrame]) -> AsyncIterator[common_pb2.VideoFrame]:
    """The Render stream's messages with each batch (``VideoFrame.frames``, asked for with
    ``RenderConfig.batch_frames``) replaced by its frames, in order."""
    async for vf in stream:
        if vf.frames:
            for frame in vf.frames:
                yield frame
        else:
            yield vf
