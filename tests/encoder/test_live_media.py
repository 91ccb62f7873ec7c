"""The live encoder's own pieces: hand-written fMP4 fragments, free silence, idle loops."""

from __future__ import annotations

import io
import itertools
import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from services.encoder import boxes
from services.encoder.backends import X264Backend
from services.encoder.config import AudioConfig, VideoConfig
from services.encoder.fmp4 import FragmentWriter, annexb_to_avcc, parse_tracks
from services.encoder.live import media
from services.encoder.live.idle import blend_i420, encode_loop, loop_frames, ping_pong_order
from services.encoder.live.media import LiveCodecs, LiveParams

W, H, SR = 64, 48, 24000
SPF = SR // 25


def _frame(value: int) -> bytes:
    y = np.full((H, W), value, np.uint8)
    y[: H // 2, : W // 2] = 255 - value  # some structure for the encoder
    return y.tobytes() + np.full(W * H // 2, 128, np.uint8).tobytes()


def _tone(n: int, start: int) -> bytes:
    t = np.arange(start, start + n)
    return (np.sin(2 * np.pi * 330 * t / SR) * 6000).astype("<i2").tobytes()


def _session(ticks: list[bool], *, skip: bool, audio: AudioConfig | None = None) -> tuple[bytes, list[int]]:
    """A stream of ``len(ticks)`` frames (True: tone, False: silence) as fMP4 bytes."""
    params = LiveParams(W, H, Fraction(25), SR, "aac")
    codecs = LiveCodecs(params, X264Backend(VideoConfig()), audio or AudioConfig())
    if not skip:
        codecs._skip_ratio = 0  # the reference: every silent tick encoded
    writer = FragmentWriter(codecs.init_segment, Fraction(25))
    out = io.BytesIO()
    out.write(codecs.init_segment)
    packets_per_tick = []
    for n, speech in enumerate(ticks):
        pcm = _tone(SPF, n * SPF) if speech else b"\x00\x00" * SPF
        video, key = codecs.video.encode(_frame(n % 200), n, force_keyframe=n == 0)
        audio = codecs.encode_audio(pcm)
        packets_per_tick.append(len(audio))
        out.write(writer.fragment([video], [key], audio))
    out.write(writer.fragment([], [], codecs.flush_audio()))
    codecs.close()
    return out.getvalue(), packets_per_tick


def _decode(data: bytes) -> tuple[list[int], np.ndarray, int]:
    with av.open(io.BytesIO(data)) as c:
        pts = [int(f.pts) for f in c.decode(video=0)]
    with av.open(io.BytesIO(data)) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    return pts, pcm, len(pts)


def test_fragments_decode_with_exact_gap_free_timestamps():
    ticks = [False] * 20 + [True] * 30 + [False] * 50
    data, _ = _session(ticks, skip=True)
    pts, pcm, frames = _decode(data)
    assert frames == len(ticks)
    steps = {b - a for a, b in itertools.pairwise(pts)}
    assert len(steps) == 1, "monotonic and gap-free"
    tracks = parse_tracks(data)
    assert tracks[b"vide"].timescale * Fraction(1, 25) == next(iter(steps))
    assert abs(len(pcm) / 48000 - len(ticks) / 25) < 1 / 25, "audio ends with the video"


@pytest.mark.parametrize(("aac_sample_rate", "track"), [(0, SR), (44100, 44100), (32000, 32000)])
def test_the_audio_track_rate_is_the_encoders_setting(aac_sample_rate, track):
    """``audio.aac_sample_rate`` sets the live track's rate as it does Speak's (0: the session's
    rate), free silence included; the audio still ends with the video."""
    ticks = [True] * 10 + [False] * 40 + [True] * 10
    data, _ = _session(ticks, skip=True, audio=AudioConfig(aac_sample_rate=aac_sample_rate))
    assert parse_tracks(data)[b"soun"].timescale == track
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.audio[0].codec_context.sample_rate == track
    _, pcm, frames = _decode(data)
    assert frames == len(ticks)
    assert abs(len(pcm) / track - len(ticks) / 25) < 1 / 25, "audio ends with the video"
    reference, _ = _session(ticks, skip=False, audio=AudioConfig(aac_sample_rate=aac_sample_rate))
    assert len(_decode(reference)[1]) == len(pcm), "free silence keeps the track's length"


def test_free_silence_is_sample_exact_against_encoding_every_tick():
    """Idle sessions reuse the encoder's silent packet instead of encoding; the decoded audio must
    be the same as when every silent tick is encoded (same length, speech at the same place)."""
    ticks = [True] * 10 + [False] * 60 + [True] * 20 + [False] * 37 + [True] * 5 + [False] * 20
    fast, per_tick = _session(ticks, skip=True)
    slow, _ = _session(ticks, skip=False)
    _, a, _ = _decode(fast)
    _, b, _ = _decode(slow)
    assert len(a) == len(b)
    assert np.max(np.abs(a - b)) < 1e-3
    skipped = sum(1 for n, p in enumerate(per_tick) if not ticks[n] and p in (1, 2))
    assert skipped > 60, "most silent ticks went the free way (one or two cached packets)"


def _batched_session(ticks: list[bool], batch: int) -> tuple[bytes, list[int]]:
    """As ``_session(skip=True)``, but silent ticks go ``batch`` frames per fragment with their
    audio from ``encode_silence`` (a live session idling on its loop); returns the frames per
    fragment too."""
    codecs = LiveCodecs(LiveParams(W, H, Fraction(25), SR, "aac"), X264Backend(VideoConfig()), AudioConfig())
    writer = FragmentWriter(codecs.init_segment, Fraction(25))
    out = io.BytesIO()
    out.write(codecs.init_segment)
    counts = []
    n = 0
    while n < len(ticks):
        count = 1
        if not ticks[n]:
            while count < batch and n + count < len(ticks) and not ticks[n + count]:
                count += 1
        videos, keys = [], []
        for k in range(n, n + count):
            video, key = codecs.video.encode(_frame(k % 200), k, force_keyframe=k == 0)
            videos.append(video)
            keys.append(key)
        if ticks[n]:
            audio = codecs.encode_audio(_tone(SPF, n * SPF))
        else:
            audio = codecs.encode_silence(count * SPF)
        out.write(writer.fragment(videos, keys, audio))
        counts.append(count)
        n += count
    out.write(writer.fragment([], [], codecs.flush_audio()))
    codecs.close()
    return out.getvalue(), counts


@pytest.mark.parametrize("batch", [2, 3])
def test_several_idle_frames_per_fragment_decode_like_one_per_fragment(batch):
    """Multi-frame idle fragments with free silence: the same frames at the same times and the same
    audio as one frame per fragment with every silent tick encoded."""
    ticks = [True] * 10 + [False] * 61 + [True] * 20 + [False] * 37 + [True] * 5 + [False] * 20
    batched, counts = _batched_session(ticks, batch)
    reference, _ = _session(ticks, skip=False)
    assert max(counts) == batch and sum(counts) == len(ticks)
    pts_a, a, frames_a = _decode(batched)
    pts_b, b, frames_b = _decode(reference)
    assert frames_a == frames_b == len(ticks)
    assert pts_a == pts_b and len(set(np.diff(pts_a))) == 1, "gap-free, no overlap"
    assert len(a) == len(b)
    assert np.max(np.abs(a - b)) < 1e-3


def test_no_free_silence_when_the_rate_does_not_divide_an_aac_frame():
    c = LiveCodecs(LiveParams(W, H, Fraction(25), 22050, "aac"), X264Backend(VideoConfig()), AudioConfig())
    assert c._skip_ratio == 0
    c.close()


def test_annexb_becomes_length_prefixed_nal_units():
    nal1, nal2 = b"\x67\x42\x00\x1e", b"\x65" + b"\x88" * 300
    assert annexb_to_avcc(b"\x00\x00\x00\x01" + nal1 + b"\x00\x00\x01" + nal2) == (
        struct.pack(">I", 4) + nal1 + struct.pack(">I", 301) + nal2
    )


def test_idle_loop_is_a_ping_pong_of_whole_gops_each_starting_with_an_idr():
    assert ping_pong_order(4) == [0, 1, 2, 3, 2, 1]
    n = loop_frames(4.0, 25, 25)
    assert (2 * n - 2) % 25 == 0 and 2 * n - 2 == 100
    params = LiveParams(W, H, Fraction(25), SR, "aac")
    backend = X264Backend(VideoConfig())
    probe = LiveCodecs(params, backend, AudioConfig())
    rendered = [(W, H, _frame((10 * i) % 256)) for i in range(n)]
    loop = encode_loop(rendered, backend, params, 25, probe.video.extradata)
    probe.close()
    assert loop.spliceable, "the loop's encoder makes the live encoder's parameter sets"
    assert len(loop) == 100 and [i for i, k in enumerate(loop.keyframes) if k] == [0, 25, 50, 75]
    assert sorted(loop.entries) == [0, 25, 50, 75]
    assert loop.entry_at_or_after(26) == 50 and loop.entry_at_or_after(76) == 0
    assert boxes.avc_codecs_string(media.VideoEncoder.standalone(backend, params).extradata).startswith("avc1.")


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
def test_blend_is_a_cross_fade(weight):
    a, b = bytes([0]) * 12, bytes([200]) * 12
    assert set(blend_i420(a, b, weight)) == {round(200 * weight)}


@pytest.mark.parametrize("rate", [16000, 22050, 24000])
def test_an_interrupt_cut_drops_the_unsent_speech_and_keeps_the_timeline_exact(rate):
    """Speech fed ahead of the picture and cut (``cut_audio``): the track goes on silent from the
    packets sent, and later sound lands where it does in a stream never cut."""
    spf = rate // 25
    lead = 3 * 1024 * rate // 48000 + 100  # more than LiveCodecs.audio_lead's samples past the frame

    def tone(n: int, start: int) -> bytes:
        t = np.arange(start, start + n)
        return (np.sin(2 * np.pi * 1500 * t / rate) * 6000).astype("<i2").tobytes()

    def stream(cut: bool) -> np.ndarray:
        codecs = LiveCodecs(LiveParams(W, H, Fraction(25), rate, "aac"), X264Backend(VideoConfig()), AudioConfig())
        writer = FragmentWriter(codecs.init_segment, Fraction(25))
        out = io.BytesIO()
        out.write(codecs.init_segment)
        for n in range(60):
            video, key = codecs.video.encode(_frame(n), n, force_keyframe=n == 0)
            lo, hi = n * spf, (n + 1) * spf
            if n < 20:  # speech, fed with a lead past the frame (nothing past frame 19's end when not cut)
                upto = hi + lead if cut else min(hi + lead, 20 * spf)
                pcm = tone(upto - codecs.fed, codecs.fed) if upto > codecs.fed else b""
            elif n < 40 or n >= 45:  # silence (the cut at frame 20), then speech again from 45
                pcm = b"\x00\x00" * (hi - max(lo, codecs.fed))
            else:
                pcm = tone(hi - max(lo, codecs.fed), max(lo, codecs.fed))
            audio = codecs.encode_audio(pcm)
            if cut and n == 19:
                audio += codecs.cut_audio()
            out.write(writer.fragment([video], [key], audio))
        out.write(writer.fragment([], [], codecs.flush_audio()))
        codecs.close()
        return _decode(out.getvalue())[1]

    cut, reference = stream(True), stream(False)
    assert abs(len(cut) - len(reference)) <= 1024
    assert np.max(np.abs(cut[21 * 1920 : 40 * 1920 - 2048])) < 1e-3, "silent after the cut"
    # the later sound lands where it does uncut, to the 48 kHz sample (the silence's length is a
    # whole number of session samples: at 16 and 22.05 kHz the cut rounds to the nearest one)
    lo, hi = 40 * 1920 + 2048, 45 * 1920 - 1024  # clear of its edges
    off = min(np.max(np.abs(cut[lo:hi] - reference[lo + s : hi + s])) for s in (-1, 0, 1))
    assert off < 0.02, "at the same place"


@pytest.mark.parametrize("codec", ["aac", "opus"])
def test_the_audio_track_is_exactly_the_input(codec):
    """The encoder's priming before sample 0 is not counted in the track's time (AAC: a whole
    packet, dropped; Opus: 312 samples at the head of its first packet, cut from its duration, as
    Speak's fMP4 does), and the encoders trim their last packet to the input's end, so the track's
    duration is the input's to the sample (counted with Opus's priming it was 312 samples longer,
    its sound 6.5 ms late)."""
    codecs = LiveCodecs(LiveParams(W, H, Fraction(25), 48_000, codec), X264Backend(VideoConfig()), AudioConfig())
    fed = 10 * codecs.audio_ctx.frame_size + 1 - 312
    samples = codecs.encode_audio(np.full(fed, 1000, "<i2").tobytes()) + codecs.flush_audio()
    assert sum(s.duration for s in samples) == fed
