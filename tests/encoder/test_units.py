"""Config loading, MP4 box helpers and bounded buffering."""

from __future__ import annotations

import asyncio
import io

import av
import numpy as np
import pytest

from services.encoder import boxes
from services.encoder.main import create_service, load_config
from talkmesh.common.config import ConfigError
from talkmesh.common.inprocess import InProcessContext
from talkmesh.common.registry import spec
from talkmesh.common.telemetry import Telemetry

from .media import config_request, frame_request, i420_frame


def test_default_config_and_env_overrides():
    cfg = load_config(env={})
    assert (cfg.server.port, cfg.server.metrics_port) == spec("encoder").ports()
    assert cfg.video.encoder == "auto" and cfg.defaults.fragment_ms == 40
    cfg = load_config(env={"TALKMESH_ENCODER__VIDEO__X264__CRF": "23", "TALKMESH_ENCODER__SERVER__PORT": "6000"})
    assert cfg.video.x264.crf == 23.0 and cfg.server.port == 6000
    with pytest.raises(ConfigError, match=r"video\.encoder"):
        load_config(env={"TALKMESH_ENCODER__VIDEO__ENCODER": "quicksync"})
    with pytest.raises(ConfigError, match="max_chunk_bytes"):
        load_config(env={"TALKMESH_ENCODER__LIMITS__MAX_CHUNK_BYTES": str(16 * 1024 * 1024)})
    with pytest.raises(ConfigError, match=r"video\.nvenc\.rc: 'abr' is not one of cbr, vbr, constqp"):
        load_config(env={"TALKMESH_ENCODER__VIDEO__NVENC__RC": "abr"})


def _mp4() -> bytes:
    sink = io.BytesIO()
    with av.open(sink, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"  # type: ignore[union-attr]
        for i in range(5):
            f = av.VideoFrame.from_ndarray(np.full((96, 64), i * 40, np.uint8), format="yuv420p")
            f.pts = i
            c.mux(s.encode(f))  # type: ignore[union-attr, arg-type]
        c.mux(s.encode(None))  # type: ignore[union-attr, arg-type]
    return sink.getvalue()


def test_faststart_moves_moov_and_keeps_the_file_decodable():
    plain = _mp4()
    kinds = [k for k, *_ in boxes.iter_boxes(plain)]
    assert kinds.index(b"mdat") < kinds.index(b"moov")
    fast = boxes.faststart(plain)
    kinds = [k for k, *_ in boxes.iter_boxes(fast)]
    assert kinds.index(b"moov") < kinds.index(b"mdat") and len(fast) == len(plain)

    def planes(data: bytes) -> list[np.ndarray]:
        with av.open(io.BytesIO(data), "r") as c:
            return [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]

    a, b = planes(plain), planes(fast)  # wrong chunk offsets would decode garbage or nothing
    assert len(a) == len(b) == 5 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_codecs_string_from_avcc_and_annex_b():
    assert boxes.avc_codecs_string(bytes([1, 0x42, 0xC0, 0x1E, 0xFF])) == "avc1.42C01E"
    annex_b = b"\x00\x00\x00\x01\x67\x64\x00\x1f\xac" + b"\x00\x00\x00\x01\x68\xee"
    assert boxes.avc_codecs_string(annex_b) == "avc1.64001F"
    with pytest.raises(ValueError):
        boxes.avc_codecs_string(b"\x00\x00\x01\x68\xee\x00\x00")


async def test_a_stalled_receiver_bounds_what_is_read_ahead(config):
    """The receiver stops reading after the init segment: the service must stop pulling requests
    after at most limits.input_queue of them, not buffer the whole (endless) stream."""
    service = create_service(config, Telemetry("encoder"), nvenc_probe=lambda _gpu: False)
    await service.start()
    pulled = 0

    async def endless():
        nonlocal pulled
        pulled += 1
        yield config_request(64, 64, sample_rate=0)
        i = 0
        while True:
            pulled += 1
            yield frame_request(i, i420_frame(64, 64, i), 64, 64)
            i += 1

    handler = service.servicer.Encode(endless(), InProcessContext())  # type: ignore[attr-defined]
    first = await anext(handler)
    assert first.init_segment
    for _ in range(50):
        await asyncio.sleep(0.01)  # let the reader run as far as it can
    assert pulled <= 1 + config.limits.input_queue + 1
    await handler.aclose()


def test_aac_coder_is_configurable_and_reaches_the_encoder():
    from dataclasses import replace
    from fractions import Fraction

    from services.encoder.backends import X264Backend
    from services.encoder.session import EncodeSession, StreamParams

    cfg = load_config(env={})
    assert cfg.audio.aac_coder == "fast"
    with pytest.raises(ConfigError, match=r"audio\.aac_coder"):
        load_config(env={"TALKMESH_ENCODER__AUDIO__AAC_CODER": "slowest"})
    t = np.arange(24000) / 24000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000 + np.sin(2 * np.pi * 3100 * t) * 3000).astype("<i2").tobytes()
    params = StreamParams(64, 64, Fraction(25), "i420", 24000, "fmp4", "aac", 40)

    def encoded(coder: str) -> bytes:
        session = EncodeSession(params, X264Backend(cfg.video), replace(cfg.audio, aac_coder=coder))
        session.open()
        try:
            return session.add_audio(pcm) + session.finish()
        finally:
            session.close()

    # a different coder makes a different bitstream: the option is not silently dropped
    assert encoded("fast") != encoded("twoloop")


def test_a_session_closed_before_its_open_ran_stays_closed():
    """A cancelled stream closes its session while the open queued for a worker thread has not run
    yet: that open must not leave codecs and a muxer behind that nothing will close."""
    from fractions import Fraction

    from services.encoder.backends import X264Backend
    from services.encoder.session import EncodeSession, StreamParams

    cfg = load_config(env={})
    session = EncodeSession(
        StreamParams(64, 64, Fraction(25), "i420", 24000, "fmp4", "aac", 40), X264Backend(cfg.video), cfg.audio
    )
    session.close()
    with pytest.raises(RuntimeError, match="closed before"):
        session.open()
    assert session._container is None


@pytest.mark.parametrize("height", [64, 66, 270])  # 66 and 270: heights of 2 mod 4 (even, allowed)
def test_wrapped_i420_frames_keep_their_planes(height):
    from services.encoder.frames import i420_frame

    data = (np.arange(64 * height * 3 // 2) % 251).astype(np.uint8).tobytes()  # Y, then U, then V
    frame = i420_frame(data, 64, height)
    assert frame.format.name == "yuv420p" and (frame.width, frame.height) == (64, height)
    assert frame.to_ndarray(format="yuv420p").tobytes() == data


async def test_a_turn_skips_its_start_buffer_only_when_its_input_runs_ahead():
    """Live: a turn starts once `buffer` frames are rendered; a turn whose audio already covers twice
    the buffer (a text turn: TTS runs ahead of real time) starts with two, never with one."""
    from services.encoder.live.session import Turn
    from talkmesh.common.clock import MediaClock

    clock = MediaClock.of(25, 16000)

    def turn(seconds_of_audio: float, frames: int) -> Turn:
        t = Turn("t", 16000, clock, lead=10)
        t.audio_samples = int(seconds_of_audio * 16000)
        t.frames.extend((k, b"", True) for k in range(frames))
        t.rendered = frames
        return t

    assert not turn(0.08, 2).can_start(3)  # real-time input (a caller's audio), 2 of 3 frames buffered
    assert turn(0.16, 3).can_start(3)
    assert not turn(1.0, 1).can_start(3)  # input ahead, but only one frame rendered
    assert turn(1.0, 2).can_start(3)
