"""Python client API for the talkmesh gateway.

async with TalkmeshClient("127.0.0.1:50051") as client:
    async for chunk in client.speak("Hello there."):
        ...                                  # SpeakChunk: media fragments, then a summary
    summary = await client.speak_to_file("Hello there.", "out.mp4")
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from talkmesh.common.channel import PUBLIC_CLIENT_KEEPALIVE_MS, create_channel
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import gateway_pb2_grpc
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import tts_pb2 as tpb

UPLOAD_CHUNK_BYTES = 1 << 20


@dataclass
class SpeakResult:
    """What a finished Speak returned, with client-side timings (monotonic seconds)."""

    summary: gpb.SpeakSummary
    bytes_written: int
    mime_type: str
    time_to_first_fragment: float
    total_seconds: float
    fragment_times: list[float] = field(default_factory=list)


class TalkmeshClient:
    def __init__(self, target: str = "127.0.0.1:50051", *, max_message_bytes: int = 8 * 1024 * 1024) -> None:
        self.target = target
        self.channel = create_channel(target, max_message_bytes, keepalive_ms=PUBLIC_CLIENT_KEEPALIVE_MS)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)

    async def __aenter__(self) -> TalkmeshClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    @staticmethod
    def request(
        text: str = "",
        *,
        avatar: str = "",
        voice: str = "",
        size: str = "",
        backend: str = "",
        container: int = epb.CONTAINER_FMP4,
        request_id: str = "",
        rate: float = 0.0,
        pitch: float = 0.0,
        volume: float = 0.0,
        session_id: str = "",
    ) -> gpb.SpeakRequest:
        return gpb.SpeakRequest(
            request_id=request_id,
            text=text,
            avatar_id=avatar,
            voice=voice,
            voice_settings=tpb.VoiceSettings(rate=rate, pitch=pitch, volume=volume),
            output=gpb.OutputOptions(size=size, container=container, renderer_backend=backend),  # type: ignore[arg-type]
            session_id=session_id,
        )

    def speak(
        self, text: str | gpb.SpeakRequest, *, timeout: float | None = None, **options: object
    ) -> AsyncIterator[gpb.SpeakChunk]:
        """Streams the video of ``text``: media chunks (init segment first), then a summary."""
        req = text if isinstance(text, gpb.SpeakRequest) else self.request(text, **options)  # type: ignore[arg-type]
        return self.stub.Speak(req, timeout=timeout)  # type: ignore[no-any-return]

    def speak_stream(
        self, pieces: AsyncIterable[str], *, timeout: float | None = None, **options: object
    ) -> AsyncIterator[gpb.SpeakChunk]:
        """Like speak, for text that is still being written (e.g. LLM tokens)."""
        start = self.request("", **options)  # type: ignore[arg-type]

        async def requests() -> AsyncIterator[gpb.SpeakStreamRequest]:
            yield gpb.SpeakStreamRequest(start=start)
            async for piece in pieces:
                yield gpb.SpeakStreamRequest(text=piece)

        return self.stub.SpeakStream(requests(), timeout=timeout)  # type: ignore[no-any-return]

    async def save(self, chunks: AsyncIterator[gpb.SpeakChunk], path: str | os.PathLike[str]) -> SpeakResult:
        """Writes streamed media to ``path`` (atomically) and returns the summary and timings."""
        start = time.monotonic()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        first = 0.0
        written = 0
        mime = ""
        times: list[float] = []
        summary = gpb.SpeakSummary()
        try:
            with tmp.open("wb") as fh:
                async for chunk in chunks:
                    kind = chunk.WhichOneof("kind")
                    if kind == "media":
                        m = chunk.media
                        mime = m.mime_type or mime
                        if m.data:
                            fh.write(m.data)
                            written += len(m.data)
                        if not m.init_segment and m.data:
                            now = time.monotonic() - start
                            times.append(now)
                            first = first or now
                    elif kind == "summary":
                        summary = chunk.summary
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return SpeakResult(summary, written, mime, first, time.monotonic() - start, times)

    async def speak_to_file(
        self, text: str | gpb.SpeakRequest, path: str | os.PathLike[str], **options: object
    ) -> SpeakResult:
        return await self.save(self.speak(text, **options), path)  # type: ignore[arg-type]

    async def list_voices(self) -> list[tpb.Voice]:
        return list((await self.stub.ListVoices(tpb.ListVoicesRequest())).voices)

    async def list_avatars(self) -> list[rpb.AvatarInfo]:
        return list((await self.stub.ListAvatars(rpb.ListAvatarsRequest())).avatars)

    async def register_avatar(
        self,
        path: str | os.PathLike[str],
        name: str = "",
        backends: tuple[str, ...] = (),
        progress: Callable[[int, int], None] | None = None,
        face_index: int = 0,
    ) -> rpb.AvatarInfo:
        """Uploads an image or video; ``progress(sent_bytes, total_bytes)`` is called per block.

        ``face_index`` picks the face to animate when there are several (0 = the largest)."""
        p = Path(path)
        total = p.stat().st_size

        async def upload() -> AsyncIterator[rpb.AvatarUpload]:
            meta = rpb.AvatarMeta(name=name or p.stem, filename=p.name, backends=list(backends), face_index=face_index)
            yield rpb.AvatarUpload(meta=meta)
            sent = 0
            with p.open("rb") as fh:
                while block := fh.read(UPLOAD_CHUNK_BYTES):
                    yield rpb.AvatarUpload(data=block)
                    sent += len(block)
                    if progress is not None:
                        progress(sent, total)

        return await self.stub.RegisterAvatar(upload())  # type: ignore[no-any-return]

    async def delete_avatar(self, avatar_id: str) -> bool:
        return bool((await self.stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=avatar_id))).deleted)
