"""The AudioFeatures gRPC service, in process on port 0."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import numpy as np
import pytest

from services.audio_features.config import AudioFeaturesConfig, WhisperEncoderConfig
from services.audio_features.main import create_service, load_config
from services.audio_features.server import AudioFeaturesService
from services.audio_features.streaming import StreamOptions, extract_offline
from talkmesh.common.channel import create_channel
from talkmesh.common.clock import fps_fraction
from talkmesh.common.config import ConfigError, ServerConfig
from talkmesh.common.registry import spec
from talkmesh.common.telemetry import Telemetry
from talkmesh.common.tensors import from_tensor
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2 as pb
from talkmesh.v1 import audio_features_pb2_grpc as pb_grpc
from talkmesh.v1 import common_pb2

from .helpers import FakeEncoder, quantise, speech_like, to_pcm

SERVER = ServerConfig(port=0, metrics_port=-1, grace_seconds=2.0)
SMALL_BLOCKS = WhisperEncoderConfig(block_seconds=0.2, left_context_seconds=0.1, right_context_seconds=0.14)
KIND_OF: dict[Any, str] = {
    pb.FEATURE_TYPE_WHISPER_LOG_MEL: "whisper_log_mel",
    pb.FEATURE_TYPE_WAV2LIP_MEL: "wav2lip_mel",
    pb.FEATURE_TYPE_WHISPER_EMBEDDING: "whisper_embedding",
    pb.FEATURE_TYPE_ACTIVITY: "activity",
}


def config(**changes: Any) -> AudioFeaturesConfig:
    return AudioFeaturesConfig(server=SERVER, whisper_encoder=SMALL_BLOCKS, **changes)


def requests(
    feature_type: Any, pcm: bytes, sample_rate: int, chunk_bytes: int = 3000, fps: float = 0.0
) -> list[pb.FeatureRequest]:
    out = [pb.FeatureRequest(seq=0, config=pb.FeatureConfig(request_id="r1", feature_type=feature_type, fps=fps))]
    offset = 0
    for start in range(0, len(pcm), chunk_bytes):
        part = pcm[start : start + chunk_bytes]
        out.append(
            pb.FeatureRequest(
                seq=len(out),
                audio=common_pb2.AudioChunk(
                    sample_rate=sample_rate,
                    sample_offset=offset,
                    pcm=part,
                    visemes=[common_pb2.VisemeEvent(viseme=common_pb2.VISEME_OPEN, start_sample=0, end_sample=10)],
                ),
            )
        )
        offset += len(part) // 2
    out.append(pb.FeatureRequest(seq=len(out), end_of_stream=True))
    return out


async def call(address: str, reqs: Sequence[pb.FeatureRequest]) -> list[pb.FeatureChunk]:
    """Writes every request, half-closes, then reads (raising the status the call ended with).

    Error cases pass the requests up to the offending one only: a write racing the server's abort
    would make grpc-aio replace the server's status by a local INTERNAL."""
    async with create_channel(address) as channel:
        stream = pb_grpc.AudioFeaturesStub(channel).Extract(timeout=30)
        for r in reqs:
            await stream.write(r)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await stream.done_writing()
        out = []
        while (m := await stream.read()) is not grpc.aio.EOF:
            out.append(m)
        return out


@pytest.fixture
async def host() -> AsyncIterator[Any]:
    service = AudioFeaturesService(config(), Telemetry("audio_features"), encoder=FakeEncoder())
    async with serve(service, SERVER) as h:
        yield h


@pytest.mark.parametrize("feature_type", sorted(KIND_OF))
async def test_extract_streams_one_chunk_per_frame(host: Any, feature_type: int) -> None:
    x = quantise(speech_like(24000, 0.9))
    out = await call(host.address, requests(feature_type, to_pcm(x), 24000))
    service: AudioFeaturesService = host.service
    expected = extract_offline(
        x, StreamOptions(KIND_OF[feature_type], fps_fraction(25), 24000), service.encoder, service.geometry
    )
    frames, last = out[:-1], out[-1]
    assert last.end_of_stream and last.frame_count == len(expected) == 23 and not last.HasField("features")
    assert [m.seq for m in out] == list(range(len(out)))
    assert all(m.request_id == "r1" for m in out)
    assert [m.frame_index for m in frames] == list(range(len(expected)))
    for m, e in zip(frames, expected, strict=True):
        assert not m.end_of_stream
        assert m.activity.rms_dbfs == pytest.approx(e.rms_dbfs, abs=1e-4)
        assert m.activity.voiced == e.voiced
        assert m.activity.loudness == pytest.approx(e.loudness, abs=1e-6)
        if e.features is None:
            assert not m.HasField("features")
        else:
            np.testing.assert_array_equal(from_tensor(m.features), e.features)


@pytest.mark.parametrize("feature_type", [pb.FEATURE_TYPE_ACTIVITY, pb.FEATURE_TYPE_WAV2LIP_MEL])
async def test_batch_frames_answers_once_per_audio_message_with_the_same_frames(host: Any, feature_type: int) -> None:
    """batch_frames: one message per audio chunk that completed frames, carrying them all; the
    frames are exactly the unbatched stream's."""
    x = quantise(speech_like(16000, 1.0))
    reqs = requests(feature_type, to_pcm(x), 16000, chunk_bytes=6400)  # 200 ms chunks: 5 frames
    single = await call(host.address, reqs)
    reqs[0].config.batch_frames = True
    batched = await call(host.address, reqs)
    audio_messages = len(reqs) - 2
    assert len(batched) - 1 <= audio_messages + 1  # at most one per audio message, plus the flush
    assert len(batched) < len(single) // 3
    assert [m.seq for m in batched] == list(range(len(batched)))
    assert batched[-1].end_of_stream and batched[-1].frame_count == single[-1].frame_count == 25
    frames = [f for m in batched[:-1] for f in m.frames]
    for m in batched[:-1]:
        assert m.request_id == "r1" and m.frames and m.frame_index == m.frames[0].frame_index
        assert not m.HasField("features") and not m.HasField("activity")
    assert [f.frame_index for f in frames] == list(range(25))
    for f, s in zip(frames, single[:-1], strict=True):
        assert not f.frames and f.HasField("activity")
        assert f.activity == s.activity and f.features == s.features


@pytest.mark.parametrize("version", ["1.5", "1.0"])
async def test_every_embedding_message_says_the_musetalk_release_it_is_for(version: str) -> None:
    """FeatureChunk.musetalk_version: the stage's musetalk.version on every message of a
    WHISPER_EMBEDDING stream, single frames and batches alike (the renderer refuses another
    release's); the other feature types say nothing."""
    from services.audio_features.config import MuseTalkConfig

    service = AudioFeaturesService(config(musetalk=MuseTalkConfig(version)), Telemetry("audio_features"),
                                   encoder=FakeEncoder())  # fmt: skip
    pcm = to_pcm(quantise(speech_like(16000, 0.5)))
    async with serve(service, SERVER) as h:
        for batch in (False, True):
            reqs = requests(pb.FEATURE_TYPE_WHISPER_EMBEDDING, pcm, 16000, chunk_bytes=6400)
            reqs[0].config.batch_frames = batch
            out = await call(h.address, reqs)
            assert len(out) > 2 and {m.musetalk_version for m in out} == {version}
            assert all(f.musetalk_version == "" for m in out for f in m.frames)  # (said once, on the batch)
        out = await call(h.address, requests(pb.FEATURE_TYPE_WAV2LIP_MEL, pcm, 16000))
        assert {m.musetalk_version for m in out} == {""}


async def test_frames_leave_before_the_end_of_stream(host: Any) -> None:
    """Frames of the first chunks arrive while the client is still holding the rest of the audio."""
    x = quantise(speech_like(16000, 1.0))
    reqs = requests(pb.FEATURE_TYPE_WAV2LIP_MEL, to_pcm(x), 16000, chunk_bytes=6400)
    async with create_channel(host.address) as channel:
        call_ = pb_grpc.AudioFeaturesStub(channel).Extract(timeout=30)
        await call_.write(reqs[0])
        for r in reqs[1:5]:  # 0.4 s of audio
            await call_.write(r)
        early = [await call_.read() for _ in range(5)]
        assert [m.frame_index for m in early] == list(range(5))
        for r in reqs[5:]:
            await call_.write(r)
        await call_.done_writing()
        rest = []
        while (m := await call_.read()) is not grpc.aio.EOF:
            rest.append(m)
    assert rest[-1].end_of_stream and rest[-1].frame_count == 25
    assert len(early) + len(rest) - 1 == 25


async def expect_error(address: str, reqs: list[pb.FeatureRequest], code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(address, reqs)
    assert info.value.code() == code
    assert field in (info.value.details() or "")


async def test_bad_input_is_invalid_argument(host: Any) -> None:
    pcm = to_pcm(quantise(speech_like(16000, 0.3)))
    good = requests(pb.FEATURE_TYPE_WHISPER_LOG_MEL, pcm, 16000)
    odd = list(good)
    odd[1] = pb.FeatureRequest(audio=common_pb2.AudioChunk(sample_rate=16000, sample_offset=0, pcm=b"\x00\x01\x02"))
    await expect_error(host.address, odd[:2], grpc.StatusCode.INVALID_ARGUMENT, "audio.pcm")
    rate = requests(pb.FEATURE_TYPE_WHISPER_LOG_MEL, pcm, 8000)
    await expect_error(host.address, rate[:2], grpc.StatusCode.INVALID_ARGUMENT, "audio.sample_rate")
    swapped = [good[0], good[2]]
    await expect_error(host.address, swapped, grpc.StatusCode.INVALID_ARGUMENT, "audio.sample_offset")
    changed = list(good)
    changed[2] = pb.FeatureRequest(audio=common_pb2.AudioChunk(sample_rate=24000, sample_offset=1500, pcm=b"\0\0"))
    await expect_error(host.address, changed[:3], grpc.StatusCode.INVALID_ARGUMENT, "audio.sample_rate")
    await expect_error(host.address, good[1:2], grpc.StatusCode.INVALID_ARGUMENT, "config")
    await expect_error(host.address, [good[0], good[0]], grpc.StatusCode.INVALID_ARGUMENT, "config")
    unspecified = [pb.FeatureRequest(config=pb.FeatureConfig())]
    await expect_error(host.address, unspecified, grpc.StatusCode.INVALID_ARGUMENT, "config.feature_type")
    fast = requests(pb.FEATURE_TYPE_ACTIVITY, pcm, 16000, fps=500.0)
    await expect_error(host.address, fast[:1], grpc.StatusCode.INVALID_ARGUMENT, "config.fps")
    # the service is still fine afterwards
    out = await call(host.address, good)
    assert out[-1].frame_count == 8


async def test_embedding_without_encoder_is_failed_precondition() -> None:
    service = create_service(config(), Telemetry("audio_features"))
    async with serve(service, SERVER) as h:
        reqs = requests(pb.FEATURE_TYPE_WHISPER_EMBEDDING, b"\0\0" * 1600, 16000)
        await expect_error(h.address, reqs[:1], grpc.StatusCode.FAILED_PRECONDITION, "whisper_encoder.path")


async def test_empty_audio_and_half_close_without_end_of_stream(host: Any) -> None:
    out = await call(
        host.address,
        [
            pb.FeatureRequest(config=pb.FeatureConfig(feature_type=pb.FEATURE_TYPE_ACTIVITY)),
            pb.FeatureRequest(end_of_stream=True),
        ],
    )
    assert len(out) == 1 and out[0].end_of_stream and out[0].frame_count == 0
    reqs = requests(pb.FEATURE_TYPE_WAV2LIP_MEL, b"\0\0" * 1000, 16000)[:-1]
    out = await call(host.address, reqs)
    assert out[-1].end_of_stream and out[-1].frame_count == 2 and len(out) == 3


async def test_repeated_audio_hits_the_encoder_cache(host: Any) -> None:
    x = quantise(speech_like(16000, 0.6))
    reqs = requests(pb.FEATURE_TYPE_WHISPER_EMBEDDING, to_pcm(x), 16000)
    encoder: FakeEncoder = host.service.encoder
    first = await call(host.address, reqs)
    calls = encoder.calls
    second = await call(host.address, reqs)
    assert encoder.calls == calls
    assert [m.features.data for m in first] == [m.features.data for m in second]
    registry = host.service.telemetry.metrics.registry
    hits = registry.get_sample_value(
        "talkmesh_cache_requests_total", {"service": "audio_features", "cache": "whisper_encoder", "result": "hit"}
    )
    assert hits == calls - 1  # the warm-up encode is not a lookup


def test_load_config_defaults_and_env() -> None:
    cfg = load_config(env={})
    assert (cfg.server.port, cfg.server.metrics_port) == spec("audio_features").ports()
    assert cfg.activity.min_voiced_dbfs == -60.0 and cfg.whisper_encoder.path == ""
    env = {
        "TALKMESH_AUDIO_FEATURES__WHISPER_ENCODER__PATH": "/models/enc.onnx",
        "TALKMESH_AUDIO_FEATURES__SERVER__PORT": "6000",
    }
    cfg = load_config(env=env)
    assert cfg.whisper_encoder.path == "/models/enc.onnx" and cfg.server.port == 6000
    with pytest.raises(ConfigError, match="resample_quality"):
        load_config(env={"TALKMESH_AUDIO_FEATURES__RESAMPLE_QUALITY": "best"})
    with pytest.raises(ConfigError, match="block_seconds"):
        load_config(env={"TALKMESH_AUDIO_FEATURES__WHISPER_ENCODER__BLOCK_SECONDS": "0"})
    assert load_config(env={"TALKMESH_AUDIO_FEATURES__ACTIVITY__VOICED_MARGIN_DB": "9"}).activity.voiced_margin_db == 9
    with pytest.raises(ConfigError, match=r"activity\.loudness_range_db"):
        load_config(env={"TALKMESH_AUDIO_FEATURES__ACTIVITY__LOUDNESS_RANGE_DB": "3"})


def test_block_geometry_is_checked_against_the_model_window() -> None:
    too_big = WhisperEncoderConfig(block_seconds=3.5)  # the FakeEncoder's window is 3 s
    with pytest.raises(ValueError, match="whisper_encoder"):
        AudioFeaturesService(
            AudioFeaturesConfig(server=SERVER, whisper_encoder=too_big),
            Telemetry("audio_features"),
            encoder=FakeEncoder(),
        )


async def test_client_cancel_stops_the_stream(host: Any) -> None:
    x = quantise(speech_like(16000, 1.0))
    reqs = requests(pb.FEATURE_TYPE_WHISPER_EMBEDDING, to_pcm(x), 16000, chunk_bytes=3200)
    async with create_channel(host.address) as channel:
        stream = pb_grpc.AudioFeaturesStub(channel).Extract(timeout=30)
        for r in reqs[:10]:
            await stream.write(r)
        await stream.read()  # a frame is out: the stream is mid-flight
        stream.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stream.read()
    for _ in range(100):  # the server side notices the cancellation and closes the stream
        if host.admission.active == 0:
            break
        await asyncio.sleep(0.02)
    assert host.admission.active == 0
    out = await call(host.address, requests(pb.FEATURE_TYPE_ACTIVITY, to_pcm(x), 16000))
    assert out[-1].frame_count == 25


def _syllables(sample_rate: int, seconds: float, seed: int) -> np.ndarray:
    """A voiced speaker from the first sample on (a syllable's peak at t=0, 4 a second) over a
    -50 dBFS room."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    phase = 2 * np.pi * np.cumsum(120.0 + 20.0 * np.sin(2 * np.pi * 0.7 * t)) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.55 + 0.45 * np.cos(2 * np.pi * 4.0 * t))
    room = np.random.default_rng(seed).standard_normal(len(t)) * 10 ** (-50 / 20)
    return (0.2 * voice / np.abs(voice).max() + room).astype(np.float32)


async def test_a_stream_started_from_the_previous_ones_state_is_voiced_from_its_first_frame(host: Any) -> None:
    """A live session's turns: the second turn's stream starts from the state the first ended with
    (FeatureConfig.activity_state), so its first speech frame is voiced; a fresh stream's first
    frames are its own floor, never above it. The state is at most the floor window's levels."""
    sr = 24000
    room = (np.random.default_rng(2).standard_normal(sr // 2) * 10 ** (-50 / 20)).astype(np.float32)
    first_turn = np.concatenate([room, _syllables(sr, 3.0, 3)])
    out = await call(host.address, requests(pb.FEATURE_TYPE_ACTIVITY, to_pcm(first_turn), sr))
    end = out[-1]
    assert end.end_of_stream and end.HasField("activity_state")
    state = end.activity_state
    window = round(config().activity.floor_window_seconds * 25)
    assert len(state.levels) == window < end.frame_count, "bounded: the floor window, not the stream"
    assert state.HasField("peak_dbfs") and -40 < state.peak_dbfs < 0

    second_turn = to_pcm(_syllables(sr, 1.0, 4))
    fresh = await call(host.address, requests(pb.FEATURE_TYPE_ACTIVITY, second_turn, sr))
    carried_reqs = requests(pb.FEATURE_TYPE_ACTIVITY, second_turn, sr)
    carried_reqs[0].config.activity_state.CopyFrom(state)
    carried = await call(host.address, carried_reqs)

    def voiced(chunks: list[pb.FeatureChunk]) -> list[bool]:
        return [c.activity.voiced for c in chunks if not c.end_of_stream]

    assert voiced(carried)[:5] == [True] * 5, voiced(carried)
    assert not voiced(fresh)[0], "a fresh stream's first frame is its own floor (why the state is carried)"
    assert sum(voiced(carried)) > sum(voiced(fresh))

    too_many = requests(pb.FEATURE_TYPE_ACTIVITY, second_turn, sr)
    too_many[0].config.activity_state.levels.extend([-60.0] * 4097)
    await expect_error(host.address, too_many[:1], grpc.StatusCode.INVALID_ARGUMENT, "config.activity_state.levels")
    not_a_level = requests(pb.FEATURE_TYPE_ACTIVITY, second_turn, sr)
    not_a_level[0].config.activity_state.levels.append(float("nan"))
    await expect_error(host.address, not_a_level[:1], grpc.StatusCode.INVALID_ARGUMENT, "config.activity_state.levels")
