"""Streaming behaviour: random chunkings give the offline result, frames leave as early as claimed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.audio_features import dsp
from services.audio_features.streaming import (
    MUSETALK_VERSIONS,
    EmbeddingGeometry,
    FeatureKind,
    FeatureStream,
    Frame,
    StreamingFramer,
    StreamOptions,
    extract_offline,
)
from talkmesh.common.clock import SPEECH_SAMPLE_RATES, fps_fraction

from .helpers import FakeEncoder, quantise, speech_like

KINDS = [FeatureKind.WHISPER_LOG_MEL, FeatureKind.WAV2LIP_MEL, FeatureKind.WHISPER_EMBEDDING, FeatureKind.ACTIVITY]
GEOMETRY = EmbeddingGeometry(block=10, left=5, right=7, window=150)  # FakeEncoder: 3 s windows


def run_chunked(x: np.ndarray, options: StreamOptions, cuts: list[int], encoder: FakeEncoder) -> list[Frame]:
    stream = FeatureStream(options, encoder, GEOMETRY)
    frames: list[Frame] = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(x)), len(x)]
    for a, b in itertools.pairwise(bounds):
        frames += stream.push(x[a:b])
    return frames + stream.finish()


def assert_same(streamed: list[Frame], offline: list[Frame]) -> None:
    assert [f.index for f in streamed] == list(range(len(offline)))
    for s, o in zip(streamed, offline, strict=True):
        assert s.rms_dbfs == o.rms_dbfs and s.voiced == o.voiced and s.loudness == o.loudness
        if o.features is None:
            assert s.features is None
        else:
            assert s.features is not None and s.features.shape == o.features.shape
            np.testing.assert_allclose(s.features, o.features, rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    sample_rate=st.sampled_from(SPEECH_SAMPLE_RATES),
    fps=st.sampled_from([25.0, 30.0, 29.97, 12.5]),
    seconds=st.floats(0.01, 1.3),
    cuts=st.lists(st.floats(0, 1), max_size=12),
)
def test_random_chunkings_equal_offline(
    kind: str, sample_rate: int, fps: float, seconds: float, cuts: list[float]
) -> None:
    x = quantise(speech_like(sample_rate, seconds, seed=3))
    options = StreamOptions(kind, fps_fraction(fps), sample_rate)
    encoder = FakeEncoder()
    offline = extract_offline(x, options, encoder, GEOMETRY)
    assert len(offline) == math.ceil(len(x) * fps_fraction(fps) / sample_rate)
    streamed = run_chunked(x, options, [int(c * len(x)) for c in cuts], encoder)
    assert_same(streamed, offline)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_by_sample_equals_offline(kind: str) -> None:
    """The extreme chunking (many tiny chunks, including 1-sample ones) for every type."""
    x = quantise(speech_like(22050, 0.7, seed=5))
    options = StreamOptions(kind, fps_fraction(25), 22050)
    encoder = FakeEncoder()
    cuts = list(range(1, 600)) + list(range(600, len(x), 37))
    assert_same(run_chunked(x, options, cuts, encoder), extract_offline(x, options, encoder, GEOMETRY))


def test_streaming_framer_equals_reflect_padded_frames() -> None:
    x = np.random.default_rng(0).standard_normal(1234)
    for n in (0, 1, 150, 200, 201, 1234):
        framer = StreamingFramer(dsp.WHISPER)
        got = [framer.push(x[i : min(i + 7, n)]) for i in range(0, n, 7)]
        frames = np.concatenate([*got, framer.finish()])
        if n == 0:
            assert len(frames) == 0
            continue
        ref = dsp.frame_columns(dsp.reflect_pad(x[:n], 200), dsp.WHISPER, 0, 1 + n // 160)
        np.testing.assert_array_equal(frames, ref)


def emission_points(kind: str, x: np.ndarray, encoder: FakeEncoder | None = None) -> dict[int, int]:
    """For each frame, how many 16 kHz samples had been pushed when it came out (sample by sample)."""
    stream = FeatureStream(StreamOptions(kind, fps_fraction(25), 16000), encoder, GEOMETRY)
    seen: dict[int, int] = {}
    for n in range(len(x)):
        for f in stream.push(x[n : n + 1]):
            seen[f.index] = n + 1
    return seen


@pytest.mark.parametrize(
    ("kind", "lookahead"),
    [
        (FeatureKind.ACTIVITY, 0),  # the frame's own samples only
        (FeatureKind.WHISPER_LOG_MEL, 40),  # half a 400-sample window past the last 160-sample hop
    ],
)
def test_frames_leave_as_soon_as_their_audio_is_in(kind: str, lookahead: int) -> None:
    x = quantise(speech_like(16000, 0.5))
    seen = emission_points(kind, x)
    expected = {i: (i + 1) * 640 + lookahead for i in range(len(x) // 640) if (i + 1) * 640 + lookahead <= len(x)}
    assert {i: seen[i] for i in expected} == expected


def test_wav2lip_lookahead() -> None:
    """Window i starts at mel frame floor(3.2 i) and needs 16 frames of 800 samples hopped by 200."""
    x = quantise(speech_like(16000, 0.8))
    seen = emission_points(FeatureKind.WAV2LIP_MEL, x)
    for i, at in seen.items():
        start = (80 * i) // 25
        assert at == (start + 15) * 200 + 400
        assert at - (i + 1) * 640 <= 2760 + 200  # ~ 172 ms (+ one hop) past the frame's end
    assert len(seen) >= 6


def test_embedding_lookahead_is_one_block_plus_right_context() -> None:
    x = quantise(speech_like(16000, 1.2))
    seen = emission_points(FeatureKind.WHISPER_EMBEDDING, x, FakeEncoder())
    g = GEOMETRY
    for i, at in seen.items():
        last_frame = 2 * i + 5  # the window is Whisper frames [2i - 4, 2i + 6)
        block = last_frame // g.block
        assert at == ((block + 1) * g.block + g.right) * 320


def direct_block_states(x: np.ndarray, encoder: FakeEncoder, g: EmbeddingGeometry) -> np.ndarray:
    """The definition, written out: per 30 s (here 3 s) segment, blocks of ``g.block`` frames (the
    last one of a segment shorter), each from its clip placed at its true position in a silent window."""
    valid = len(x) // 320
    states = []
    for segment in range(0, valid, g.window):
        for first in range(segment, min(valid, segment + g.window), g.block):
            end = min(first + g.block, segment + g.window)
            lo, hi = max(segment, first - g.left), min(segment + g.window, end + g.right)
            clip = x[lo * 320 : min(len(x), hi * 320)]
            at = (lo - segment) * 320
            if g.fill == "repeat":  # the clip's periodic extension; silence after the audio once ended
                window = clip[(np.arange(g.window * 320) - at) % len(clip)]
                if hi * 320 > len(x):  # the block waited for the end of the stream
                    window[at + len(clip) :] = 0.0
            else:
                window = np.zeros(g.window * 320, dtype=np.float32)
                window[at : at + len(clip)] = clip
            hidden = encoder.encode(dsp.whisper_log_mel(window)[None])[0]  # [layers, window, width]
            states.append(hidden[:, first - segment : min(end, valid) - segment])
    return np.concatenate(states, axis=1).transpose(1, 0, 2)  # [valid, layers, width]


@pytest.mark.parametrize(
    ("seconds", "geometry"),
    [
        (0.9, GEOMETRY),
        (7.3, EmbeddingGeometry(block=20, left=5, right=7, window=150)),  # 2 segment boundaries
        (7.3, EmbeddingGeometry(block=20, left=150, right=7, window=150, fill="repeat")),
        (2.9, EmbeddingGeometry(block=20, left=5, right=7, window=150, fill="repeat")),
    ],
)
def test_embedding_windows_match_a_direct_computation(seconds: float, geometry: EmbeddingGeometry) -> None:
    """Per-frame windows against a direct MuseTalk-style computation from whole blocks, each encoded
    at its true position in its segment (blocks of 20 frames do not divide the 150-frame segments)."""
    x = quantise(speech_like(16000, seconds))
    encoder = FakeEncoder()
    options = StreamOptions(FeatureKind.WHISPER_EMBEDDING, fps_fraction(25), 16000)
    stream = FeatureStream(options, encoder, geometry)
    frames: list[Frame] = []
    for a in range(0, len(x), 1111):
        frames += stream.push(x[a : a + 1111])
    frames += stream.finish()
    feats = direct_block_states(x, encoder, geometry)
    padded = np.concatenate([np.zeros((4, 3, 8)), feats, np.zeros((12, 3, 8))])  # MuseTalk's padding
    assert len(frames) == math.ceil(len(x) * 25 / 16000)
    for i, f in enumerate(frames):
        expected = padded[2 * i : 2 * i + 10].reshape(30, 8)
        assert f.features is not None and f.features.shape == (30, 8) and f.features.dtype == np.float32
        np.testing.assert_allclose(f.features, expected, atol=1e-6)


def test_block_at_the_wrong_position_is_not_the_definition() -> None:
    """The check above can fail: the same blocks placed at the start of their windows differ."""
    x = quantise(speech_like(16000, 2.0))
    encoder = FakeEncoder()
    g = GEOMETRY
    frames = extract_offline(x, StreamOptions(FeatureKind.WHISPER_EMBEDDING, fps_fraction(25), 16000), encoder, g)
    states = direct_block_states(x, encoder, g)
    first = 40  # a block well inside the segment: its clip starts at frame 35, not 0
    window = np.zeros(g.window * 320, dtype=np.float32)
    clip = x[(first - g.left) * 320 : (first + g.block + g.right) * 320]
    window[: len(clip)] = clip
    at_start = encoder.encode(dsp.whisper_log_mel(window)[None])[0][:, g.left : g.left + g.block].transpose(1, 0, 2)
    assert not np.allclose(at_start, states[first : first + g.block], atol=1e-3)
    got = frames[(first + 4) // 2].features  # frame i's window starts at Whisper frame 2i - 4
    assert got is not None
    np.testing.assert_allclose(got.reshape(10, 3, 8), states[first : first + 10], atol=1e-6)


def test_embedding_blocks_come_from_the_cache_for_repeated_audio() -> None:
    from services.audio_features.cache import BlockCache

    x = quantise(speech_like(16000, 0.7))
    encoder = FakeEncoder()
    lookups: list[bool] = []
    cache = BlockCache(1 << 20, "fake", on_lookup=lookups.append)
    options = StreamOptions(FeatureKind.WHISPER_EMBEDDING, fps_fraction(25), 16000)
    first = FeatureStream(options, encoder, GEOMETRY, cache)
    a = first.push(x) + first.finish()
    calls = encoder.calls
    second = FeatureStream(options, encoder, GEOMETRY, cache)
    b = second.push(x) + second.finish()
    assert encoder.calls == calls  # every block came from the cache
    assert lookups == [False] * calls + [True] * calls
    assert_same(b, a)
    # different audio misses
    third = FeatureStream(options, encoder, GEOMETRY, cache)
    third.push(x * 0.5)
    third.finish()
    assert encoder.calls > calls


def test_cache_is_bounded() -> None:
    from services.audio_features.cache import BlockCache

    cache = BlockCache(max_bytes=3 * 400, namespace="n")
    for k in range(10):
        cache.put(str(k), np.zeros(100, dtype=np.float32))
    assert len(cache) == 3 and cache.bytes <= 1200
    assert cache.get("9") is not None and cache.get("0") is None


def test_geometry_must_fit_the_encoder_window() -> None:
    with pytest.raises(ValueError, match="exceed"):
        EmbeddingGeometry(block=151, left=0, right=0, window=150).validate()
    # contexts are clipped to the block's segment, so any context fits
    EmbeddingGeometry(block=150, left=1500, right=150, window=150).validate()


def test_frame_count_rule() -> None:
    for sr in SPEECH_SAMPLE_RATES:
        for n in (1, sr // 25 - 1, sr // 25, sr // 25 + 1, 12345):
            stream = FeatureStream(StreamOptions(FeatureKind.ACTIVITY, fps_fraction(25), sr))
            frames = stream.push(np.zeros(n, dtype=np.float32)) + stream.finish()
            assert len(frames) == stream.frame_count == math.ceil(n * 25 / sr)


@pytest.mark.parametrize("version", sorted(MUSETALK_VERSIONS))
def test_musetalk_versions_pad_as_defined(version: str) -> None:
    """1.5 pads the per-frame windows with zero states, 1.0 clamps the Whisper frame index to the
    audio (``max(0, min(length - 1, t))``, audio2feature.get_sliced_feature)."""
    x = quantise(speech_like(16000, 0.9))
    encoder = FakeEncoder()
    g = EmbeddingGeometry(block=10, left=5, right=7, window=150, padding=MUSETALK_VERSIONS[version].padding)
    frames = extract_offline(x, StreamOptions(FeatureKind.WHISPER_EMBEDDING, fps_fraction(25), 16000), encoder, g)
    states = direct_block_states(x, encoder, g)  # [valid, layers, width]
    valid = len(states)
    for i, f in enumerate(frames):
        assert f.features is not None
        rows = f.features.reshape(10, 3, 8)
        for k, t in enumerate(range(2 * i - 4, 2 * i + 6)):
            if version == "1.0":
                expected = states[max(0, min(valid - 1, t))]
            else:
                expected = states[t] if 0 <= t < valid else np.zeros((3, 8))
            np.testing.assert_allclose(rows[k], expected, atol=1e-6)
    assert MUSETALK_VERSIONS["1.5"].final_layer_norm and not MUSETALK_VERSIONS["1.0"].final_layer_norm
