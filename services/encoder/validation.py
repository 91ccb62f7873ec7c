"""Checks on the Encode request stream: the config, frame order and sizes, audio continuity."""

from __future__ import annotations

import math

from services.encoder.config import EncoderConfig
from services.encoder.session import StreamParams
from talkmesh.common.clock import MAX_STAGE_RATE, MIN_STAGE_RATE, fps_fraction
from talkmesh.common.enums import choices
from talkmesh.common.errors import InvalidArgument
from talkmesh.v1 import common_pb2, encoder_pb2, types_pb2

_PIXEL_FORMATS: dict[int, str] = {
    common_pb2.PIXEL_FORMAT_UNSPECIFIED: "i420",
    common_pb2.PIXEL_FORMAT_I420: "i420",
    common_pb2.PIXEL_FORMAT_RGB24: "rgb24",
}
_CONTAINERS = {value: name for name, value in choices(types_pb2.Container).items()}
#: An AudioCodec's name ("aac"), for every value but UNSPECIFIED (the Encode call's default codec;
#: a live session's is AAC).
AUDIO_CODEC_NAMES = {value: name for name, value in choices(types_pb2.AudioCodec).items()}
MAX_PARTS = 4096


def stream_params(
    msg: encoder_pb2.EncodeConfig,
    config: EncoderConfig,
    *,
    size: tuple[int, int] | None = None,
    pixel_format_value: int | None = None,
) -> StreamParams:
    """A validated StreamParams from the first message; raises InvalidArgument naming the field.

    ``size`` and ``pixel_format_value`` replace the message's when the frames come from the
    renderer (their size is known from the first frame).
    """
    limits = config.limits
    width, height = size if size is not None else (msg.width, msg.height)
    where = "frame.width" if size is not None else "config.width"
    if width == 0 or height == 0:
        raise InvalidArgument(where, "width and height are required")
    if width > limits.max_width or height > limits.max_height:
        raise InvalidArgument(where, f"{width}x{height} exceeds the limit {limits.max_width}x{limits.max_height}")
    if width % 2 or height % 2:
        raise InvalidArgument(where, f"{width}x{height}: width and height must be even")
    fps_value = msg.fps or config.defaults.fps
    if not math.isfinite(fps_value) or not 1 <= fps_value <= limits.max_fps:
        raise InvalidArgument("config.fps", f"{msg.fps:g} is outside 1..{limits.max_fps:g}")
    fps = fps_fraction(fps_value)
    pf = int(msg.pixel_format if pixel_format_value is None else pixel_format_value)
    pixel_format = _PIXEL_FORMATS.get(pf)
    if pixel_format is None:
        raise InvalidArgument("config.pixel_format", f"unsupported pixel format {pf}")
    if msg.sample_rate and not MIN_STAGE_RATE <= msg.sample_rate <= MAX_STAGE_RATE:
        raise InvalidArgument(
            "config.sample_rate", f"{msg.sample_rate} Hz is outside {MIN_STAGE_RATE}..{MAX_STAGE_RATE}"
        )
    container = _CONTAINERS.get(msg.container, config.defaults.container)
    if msg.container not in _CONTAINERS and msg.container != encoder_pb2.CONTAINER_UNSPECIFIED:
        raise InvalidArgument("config.container", f"unsupported container {msg.container}")
    audio_codec = AUDIO_CODEC_NAMES.get(msg.audio_codec, config.defaults.audio_codec)
    if msg.audio_codec not in AUDIO_CODEC_NAMES and msg.audio_codec != encoder_pb2.AUDIO_CODEC_UNSPECIFIED:
        raise InvalidArgument("config.audio_codec", f"unsupported audio codec {msg.audio_codec}")
    fragment_ms = msg.fragment_ms or config.defaults.fragment_ms
    if fragment_ms > limits.max_fragment_ms:
        raise InvalidArgument("config.fragment_ms", f"{fragment_ms} exceeds {limits.max_fragment_ms}")
    return StreamParams(
        width=width,
        height=height,
        fps=fps,
        pixel_format=pixel_format,
        sample_rate=msg.sample_rate,
        container=container,
        audio_codec=audio_codec,
        fragment_ms=fragment_ms,
    )


class FrameAssembler:
    """Joins frame parts and enforces frame order 0, 1, 2... and the configured size and format."""

    def __init__(self, params: StreamParams) -> None:
        self.params = params
        self.next_index = 0
        self._parts: list[bytes | memoryview] = []
        self._part_count = 0
        self._bytes = 0

    @property
    def pending(self) -> bool:
        """A frame has some but not all of its parts."""
        return bool(self._parts)

    def add(
        self, frame: common_pb2.VideoFrame, where: str = "frame", pixels: memoryview | None = None
    ) -> bytes | memoryview | None:
        """The whole frame's bytes when ``frame`` completes it, else None; errors name ``where``
        (``frame``, or ``frame.frames[i]`` for a frame of a batch). ``pixels``: the frame's slot in
        the stream's frame ring (a frame with ``in_ring`` set, from the renderer)."""
        p = self.params
        if frame.in_ring and pixels is None:
            raise InvalidArgument(f"{where}.in_ring", "frames in a ring come only from the renderer's Render stream")
        if frame.in_ring and (frame.part_count > 1 or frame.data):
            raise InvalidArgument(f"{where}.in_ring", "a frame in the ring is whole: no parts, no data")
        if frame.frame_index != self.next_index:
            raise InvalidArgument(
                f"{where}.frame_index",
                f"expected frame {self.next_index}, got {frame.frame_index}: frames must arrive in order "
                "without gaps or duplicates",
            )
        if (frame.width and frame.width != p.width) or (frame.height and frame.height != p.height):
            raise InvalidArgument(
                f"{where}.width", f"frame is {frame.width}x{frame.height}, the stream is {p.width}x{p.height}"
            )
        fmt = _PIXEL_FORMATS.get(frame.pixel_format) if frame.pixel_format else p.pixel_format
        if fmt != p.pixel_format:
            raise InvalidArgument(
                f"{where}.pixel_format",
                f"frame is {common_pb2.PixelFormat.Name(frame.pixel_format)}, the stream is {p.pixel_format}",
            )
        count = frame.part_count or 1
        if not self._parts:
            if count > MAX_PARTS:
                raise InvalidArgument(f"{where}.part_count", f"{count} parts exceed {MAX_PARTS}")
            self._part_count = count
        elif count != self._part_count:
            raise InvalidArgument(f"{where}.part_count", f"changed from {self._part_count} to {count} within a frame")
        if frame.part_index != len(self._parts):
            raise InvalidArgument(
                f"{where}.part_index",
                f"expected part {len(self._parts)} of frame {frame.frame_index}, got {frame.part_index}",
            )
        # each access of a bytes field copies it out of the message (upb)
        data: bytes | memoryview = frame.data if pixels is None else pixels
        self._bytes += len(data)
        if self._bytes > p.frame_bytes:
            raise InvalidArgument(
                f"{where}.data",
                f"frame {frame.frame_index} has more than the {p.frame_bytes} bytes of a "
                f"{p.width}x{p.height} {p.pixel_format} frame",
            )
        self._parts.append(data)
        if len(self._parts) < self._part_count:
            return None
        if self._bytes != p.frame_bytes:
            raise InvalidArgument(
                f"{where}.data",
                f"frame {frame.frame_index} has {self._bytes} bytes, a {p.width}x{p.height} "
                f"{p.pixel_format} frame has {p.frame_bytes}",
            )
        whole = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        self._bytes = 0
        self.next_index += 1
        return whole


def check_audio(chunk: common_pb2.AudioChunk, params: StreamParams, samples_so_far: int) -> None:
    if not params.sample_rate:
        raise InvalidArgument("audio", "config.sample_rate is 0 (no audio track), but audio arrived")
    if chunk.sample_rate and chunk.sample_rate != params.sample_rate:
        raise InvalidArgument(
            "audio.sample_rate", f"{chunk.sample_rate} Hz differs from config.sample_rate {params.sample_rate}"
        )
    if len(chunk.pcm) % 2:
        raise InvalidArgument("audio.pcm", "PCM s16le needs an even number of bytes")
    if chunk.sample_offset != samples_so_far:
        raise InvalidArgument(
            "audio.sample_offset",
            f"expected {samples_so_far} (audio must be continuous), got {chunk.sample_offset}",
        )
