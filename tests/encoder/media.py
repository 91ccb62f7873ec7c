"""Helpers for the encoder tests: synthetic frames and speech-like PCM, request builders, decoding."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import numpy as np

from talkmesh.v1 import common_pb2, encoder_pb2

FPS = 25
SR = 24000


def frame_luma(index: int) -> int:
    """The flat luma value of synthetic frame ``index`` (a ramp that a decoder must reproduce)."""
    return 40 + (index * 9) % 170


def i420_frame(width: int, height: int, index: int) -> bytes:
    y = np.full((height, width), frame_luma(index), np.uint8)
    uv = np.full((height // 2, width // 2), 128, np.uint8)
    return y.tobytes() + uv.tobytes() + uv.tobytes()


def rgb_frame(width: int, height: int, index: int) -> bytes:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = 200 if index % 2 == 0 else 30  # red alternates
    rgb[..., 2] = 30 if index % 2 == 0 else 200  # blue alternates
    rgb[..., 1] = 60
    return rgb.tobytes()


def tone(samples: int, sr: int = SR, freq: float = 440.0) -> bytes:
    t = np.arange(samples) / sr
    return (np.sin(2 * math.pi * freq * t) * 8000).astype("<i2").tobytes()


def frames_for(samples: int, sr: int = SR, fps: int = FPS) -> int:
    """What the gateway sends: ceil(samples * fps / sr) frames."""
    return -(-samples * fps // sr)


def config_request(width: int, height: int, **kw: object) -> encoder_pb2.EncodeRequest:
    cfg = encoder_pb2.EncodeConfig(request_id="t", width=width, height=height, fps=FPS, sample_rate=SR)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return encoder_pb2.EncodeRequest(request_id="t", seq=0, config=cfg)


def frame_request(
    index: int,
    data: bytes,
    width: int,
    height: int,
    *,
    part: int = 0,
    parts: int = 1,
    pixel_format: common_pb2.PixelFormat = common_pb2.PIXEL_FORMAT_I420,
) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(
        frame=common_pb2.VideoFrame(
            frame_index=index,
            width=width,
            height=height,
            pixel_format=pixel_format,
            data=data,
            part_index=part,
            part_count=parts,
        )
    )


def audio_request(offset: int, pcm: bytes, sr: int = SR) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(audio=common_pb2.AudioChunk(sample_rate=sr, sample_offset=offset, pcm=pcm))


def utterance(
    width: int, height: int, samples: int, *, audio_chunk: int = 960, lookahead_chunks: int = 5, **config: object
) -> Iterator[encoder_pb2.EncodeRequest]:
    """Config, then audio running ``lookahead_chunks`` ahead of the frames (as TTS runs ahead of the
    renderer), then end_of_stream."""
    yield config_request(width, height, **config)
    pcm = tone(samples)
    chunks = [(o, pcm[2 * o : 2 * min(o + audio_chunk, samples)]) for o in range(0, samples, audio_chunk)]
    n = frames_for(samples)
    sent = 0
    for i in range(n):
        while sent < len(chunks) and sent <= i + lookahead_chunks:
            yield audio_request(*chunks[sent])
            sent += 1
        yield frame_request(i, i420_frame(width, height, i), width, height)
    for c in chunks[sent:]:
        yield audio_request(*c)
    yield encoder_pb2.EncodeRequest(end_of_stream=True)


@dataclass
class Decoded:
    video_pts: list[float] = field(default_factory=list)  # seconds
    video_durations: list[float] = field(default_factory=list)
    lumas: list[float] = field(default_factory=list)
    rgb_means: list[np.ndarray] = field(default_factory=list)
    audio_seconds: float = 0.0  # sum of audio packet durations (what the container declares)
    audio_end: float = 0.0  # end of the last audio packet
    audio_codec: str = ""
    audio_samples: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)  # the video's width and height

    @property
    def video_seconds(self) -> float:
        return self.video_pts[-1] + self.video_durations[-1] if self.video_pts else 0.0


def decode(data: bytes, fmt: str | None = None) -> Decoded:
    out = Decoded()
    with av.open(io.BytesIO(data), "r", format=fmt) as c:
        for packet in c.demux():
            if packet.size == 0 or packet.pts is None or packet.duration is None:
                continue
            tb = packet.time_base
            if packet.stream.type == "audio":
                out.audio_seconds += float(packet.duration * tb)
                out.audio_end = max(out.audio_end, float((packet.pts + packet.duration) * tb))
                out.audio_codec = packet.stream.codec_context.name
            elif packet.stream.type == "video":
                out.video_durations.append(float(packet.duration * tb))
    with av.open(io.BytesIO(data), "r", format=fmt) as c:
        for frame in c.decode(video=0):
            assert frame.pts is not None and frame.time_base is not None
            out.video_pts.append(float(frame.pts * frame.time_base))
            out.size = (frame.width, frame.height)
            yuv = frame.to_ndarray(format="yuv420p")
            out.lumas.append(float(yuv[: frame.height].mean()))
            out.rgb_means.append(frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0))
    start = out.video_pts[0] if out.video_pts else 0.0
    out.video_pts = [p - start for p in out.video_pts] if fmt == "mpegts" else out.video_pts
    return out


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decoded mono audio placed on the container's timeline (index 0 = time 0) and its rate."""
    pieces: list[tuple[int, np.ndarray]] = []
    rate = 0
    with av.open(io.BytesIO(data), "r") as c:
        for frame in c.decode(audio=0):
            rate = frame.sample_rate
            assert frame.pts is not None and frame.time_base is not None
            start = round(float(frame.pts * frame.time_base) * rate)
            pieces.append((start, frame.to_ndarray().reshape(-1).astype(np.float64)))
    end = max(s + len(a) for s, a in pieces)
    out = np.zeros(end)
    for s, a in pieces:
        lo = max(s, 0)
        out[lo : s + len(a)] = a[lo - s :]
    return out, rate


def packets(data: bytes) -> dict[str, list[tuple[int | None, int | None, int | None, bytes]]]:
    """Each track's packets: timestamps, duration and bytes."""
    tracks: dict[str, list[tuple[int | None, int | None, int | None, bytes]]] = {"audio": [], "video": []}
    with av.open(io.BytesIO(data)) as container:
        for p in container.demux():
            if p.size:
                tracks[p.stream.type].append((p.pts, p.dts, p.duration, bytes(p)))
    return tracks
