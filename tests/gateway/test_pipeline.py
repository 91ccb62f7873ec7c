"""The gateway's orchestration against fake stages, served over gRPC on port 0."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from services.gateway.config import GatewayConfig
from services.gateway.pipeline import SpeakPipeline
from services.gateway.server import GatewayService
from talkmesh.client import TalkmeshClient
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import types_pb2 as api
from tests.gateway.fakes import FPS, SR, FakeDownstreams


async def _speak(ds: FakeDownstreams, text: str = "Hello there.", config: GatewayConfig | None = None, **kw):
    svc = GatewayService(config or GatewayConfig(), Telemetry("gateway"), downstreams=ds)
    async with serve(svc) as host, TalkmeshClient(host.address) as client:
        return [c async for c in client.speak(text, **kw)]


async def test_speak_streams_media_then_summary_and_encoder_gets_config_first():
    ds = FakeDownstreams(chunks=10)
    chunks = await _speak(ds)
    kinds = [c.WhichOneof("kind") for c in chunks]
    assert kinds[-1] == "summary" and set(kinds[:-1]) == {"media"}
    assert chunks[0].media.init_segment
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].end_of_stream
    summary = chunks[-1].summary
    samples = 10 * (SR // FPS)
    assert summary.frames == math.ceil(samples * FPS / SR) == 10
    assert summary.audio_seconds == pytest.approx(samples / SR)
    assert summary.video_encoder == "fake"
    assert summary.inferred_frames == 10
    tl = summary.timeline
    assert tl.received <= tl.first_audio <= tl.first_frame <= tl.first_fragment <= tl.last_fragment
    # The encoder must see its config before any audio or frame, and end_of_stream last.
    assert ds.encoder_inputs[0] == "config"
    assert ds.encoder_inputs[-1] == "end"
    # features in batches (one per TTS chunk: a frame each here), visemes riding with the audio
    assert ds.feature_batches and ds.encoder_frames == 10
    assert ds.encoder_inputs.count("features") == 10
    assert ds.encoder_viseme_events == 10 and ds.encoder_inputs.count("visemes") == 0
    assert ds.frames_before_their_visemes == 0
    (render,) = ds.render_configs
    assert render.backend == "viseme" and render.sample_rate == SR and render.fps == FPS
    # consecutive audio chunks are merged, never dropped or reordered
    assert 1 <= ds.encoder_inputs.count("audio") <= 10
    assert ds.encoder_audio_samples == samples
    assert {s.stage for s in summary.stages} >= {"tts_first_chunk", "renderer_first_frame", "total"}


@pytest.mark.parametrize(
    ("stage", "prefix"),
    [
        ("tts", "tts: voice"),  # the stage's config.voice, named as in the request
        ("features", "audio_features: audio.pcm"),
        ("encoder", "encoder: features.features"),
    ],
)
async def test_stage_failure_reaches_client_with_its_code_and_cancels_the_rest(stage, prefix):
    ds = FakeDownstreams(fail=stage)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _speak(ds)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # In-process fakes raise TalkmeshError directly, so the stage prefix comes only over gRPC;
    # the field name is always there.
    assert prefix.split(": ", 1)[1] in err.value.details()
    assert {"tts", "features", "encoder"} <= ds.closed


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "text: must not be empty"),
        ("   ", "text: must not be empty"),
        ("a" * 51, "text: 51 characters exceed"),
        ("bell\x07", "text: contains the control character U+0007"),
    ],
)
async def test_bad_text_is_invalid_argument_naming_the_field(text, field):
    ds = FakeDownstreams()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _speak(ds, text, GatewayConfig(max_text_chars=50))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)
    assert ds.log == []  # nothing started downstream


async def test_bad_backend_size_and_container():
    ds = FakeDownstreams()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _speak(ds, backend="sadtalker")
    assert err.value.details().startswith("output.renderer_backend")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _speak(ds, size="1080p")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "output.size: '1080p' is not one of native, 360p, 480p, 512, 720p"
    assert ds.log == []  # refused before anything started downstream
    req = TalkmeshClient.request("hi")
    req.output.container = 42  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _speak(ds, req)
    assert err.value.details().startswith("output.container")


async def test_idle_motion_reaches_the_renderer_and_an_unknown_one_is_refused():
    ds = FakeDownstreams()
    await _speak(ds, idle_motion=api.IDLE_MOTION_OFF)
    (render,) = ds.render_configs
    assert render.idle_motion == api.IDLE_MOTION_OFF
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _speak(ds, idle_motion=9)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "output.idle_motion: unknown idle motion 9"
    assert len(ds.render_configs) == 1  # refused before anything started downstream


async def test_client_cancel_stops_every_stage():
    ds = FakeDownstreams(chunks=10, hold=True)
    tel = Telemetry("gateway")
    svc = GatewayService(GatewayConfig(), tel, downstreams=ds)
    async with serve(svc) as host, TalkmeshClient(host.address) as client:
        call = client.speak("Hello there.")
        first = await call.read()
        assert first.media.init_segment
        call.cancel()
        for _ in range(200):
            if {"tts", "features", "encoder"} <= ds.closed:
                break
            await asyncio.sleep(0.01)
        assert {"tts", "features", "encoder"} <= ds.closed
        for _ in range(200):
            if tel.metrics.registry.get_sample_value("talkmesh_streams_active", {"service": "gateway"}) == 0:
                break
            await asyncio.sleep(0.01)
        assert tel.metrics.registry.get_sample_value("talkmesh_streams_active", {"service": "gateway"}) == 0


async def test_speak_stream_takes_text_pieces():
    ds = FakeDownstreams()
    svc = GatewayService(GatewayConfig(), Telemetry("gateway"), downstreams=ds)

    async def pieces():
        for p in ["Hello ", "there, ", "how are ", "you?"]:
            yield p

    async with serve(svc) as host, TalkmeshClient(host.address) as client:
        chunks = [c async for c in client.speak_stream(pieces())]
    # the fake TTS answers each text piece with one 40 ms chunk, in order
    assert chunks[-1].summary.frames == 4
    assert chunks[-1].summary.audio_seconds == pytest.approx(4 / FPS)
    assert [c.WhichOneof("kind") for c in chunks] == ["media"] * 5 + ["summary"]


async def test_speak_stream_opens_nothing_before_a_piece_with_something_to_say():
    """As a live text turn does: "..." alone (an LLM's thinking dots) opens no stage; pieces before
    the first words are kept; a stream with nothing to say is refused as TTS words it."""
    ds = FakeDownstreams()
    svc = GatewayService(GatewayConfig(), Telemetry("gateway"), downstreams=ds)
    opened_before_words: list[str] = []

    async def thinking_then_words():
        yield "..."
        yield " "
        await asyncio.sleep(0.2)
        opened_before_words.extend(ds.encoder_inputs + ["tts"] * ds.tts_chunks_read)
        yield "Hello."

    async def only_dots():
        yield "..."
        yield " 。"

    async with serve(svc) as host, TalkmeshClient(host.address) as client:
        chunks = [c async for c in client.speak_stream(thinking_then_words())]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in client.speak_stream(only_dots()):
                pass
    assert opened_before_words == []
    assert chunks[-1].summary.frames == 1  # the fake TTS: a 40 ms chunk per piece; "... Hello." is one
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    nothing = "text: must not be empty (it has nothing to say: only punctuation or invisible characters)"
    assert err.value.details() == nothing


async def test_until_the_first_fragment_the_encoder_gets_only_what_frame_0_needs():
    """The start hold: the config, the audio and visemes of frame 0 and the frame after it, frame 0's
    feature batch; everything else after the first fragment, in order."""
    ds = FakeDownstreams(chunks=10)
    chunks = await _speak(ds)
    assert ds.inputs_before_first_fragment == ["config", "audio", "audio", "features"]
    # then everything, in order: every frame after its visemes, the audio whole and contiguous
    assert ds.encoder_frames == 10 and chunks[-1].summary.frames == 10
    assert ds.frames_before_their_visemes == 0
    assert ds.encoder_audio_samples == 10 * (SR // FPS)
    assert ds.encoder_inputs[-1] == "end"

    off = FakeDownstreams(chunks=10)
    await _speak(off, config=GatewayConfig(start_hold_ms=0))
    assert off.inputs_before_first_fragment is not None
    # the fake TTS yields all its chunks at once: without the hold they all came first
    assert off.inputs_before_first_fragment.count("audio") == 10
    assert off.frames_before_their_visemes == 0 and off.encoder_frames == 10


async def test_what_the_hold_kept_goes_to_the_encoder_after_the_first_fragment_went_to_the_client():
    """The hold ends once the first fragment has been handed on, not when it came from the encoder:
    the held messages would otherwise go out first, on the gateway's one event loop."""
    ds = FakeDownstreams(chunks=10)
    pipeline = SpeakPipeline(ds, GatewayConfig(start_hold_ms=60_000), Telemetry("gateway"))
    run = pipeline.run(TalkmeshClient.request("Hello there."), "rid-hold", None)
    try:
        async for chunk in run:
            if chunk.media.data and not chunk.media.init_segment:
                break
        # the consumer has not taken the fragment on yet (say gRPC is still writing it to the client)
        await asyncio.sleep(0.05)
        assert ds.inputs_before_first_fragment == ["config", "audio", "audio", "features"]
        assert ds.encoder_inputs == ds.inputs_before_first_fragment
        # once it has, the rest goes at once (not after the 60 s the hold would last)
        async with asyncio.timeout(10):
            chunks = [c async for c in run]
    finally:
        await run.aclose()
    assert chunks[-1].summary.frames == 10 and ds.encoder_frames == 10
    assert ds.encoder_inputs[-1] == "end" and ds.frames_before_their_visemes == 0


@pytest.mark.parametrize("hold_ms", [100, 0])
async def test_tts_is_not_read_while_frame_0_is_encoded(hold_ms):
    """Once frame 0's features are out, the gateway reads no more TTS until the first fragment
    (synthesis and extraction of the rest would share the cores with frame 0); without the hold it
    goes on reading. At most the chunk already received waits at the gate."""
    ds = FakeDownstreams(chunks=20, paced_tts=True)
    chunks = await _speak(ds, config=GatewayConfig(start_hold_ms=hold_ms))
    assert chunks[-1].summary.frames == 20 and ds.encoder_frames == 20
    assert ds.tts_chunks_read_during_frame_0 is not None
    if hold_ms:
        assert ds.tts_chunks_read_during_frame_0 <= 1
    else:
        assert ds.tts_chunks_read_during_frame_0 >= 5


async def test_a_first_batch_that_looks_ahead_is_never_ahead_of_its_frames_visemes():
    """A feature type with look-ahead (Wav2Lip mel, Whisper) answers frame 0 only after later
    chunks: those chunks, held by then, go to the encoder before that first batch."""
    ds = FakeDownstreams(chunks=4, chunk_frames=(5, 10), lookahead_frames=5)
    chunks = await _speak(ds)
    # nothing after chunk 1 (5 frames), frames 0-9 after chunk 2: its audio and visemes first
    assert ds.inputs_before_first_fragment == ["config", "audio", "audio", "features"]
    assert ds.frames_before_their_visemes == 0
    assert ds.encoder_frames == 35 and chunks[-1].summary.frames == 35


@pytest.mark.parametrize("container", [api.CONTAINER_FMP4, api.CONTAINER_MP4])
async def test_a_first_fragment_that_needs_later_frames_does_not_wait_forever(container):
    """An encoder that sends nothing before the end: an fMP4 request's hold ends after
    start_hold_ms, once (a hold that came back would hang the request); a whole-file MP4 is not held."""
    ds = FakeDownstreams(chunks=10, whole_file=True)
    chunks = await _speak(ds, config=GatewayConfig(start_hold_ms=50), container=container)
    assert chunks[-1].summary.frames == 10 and ds.encoder_frames == 10
    assert ds.frames_before_their_visemes == 0 and ds.encoder_inputs[-1] == "end"


@pytest.mark.parametrize(
    ("container", "counted"),
    [(api.CONTAINER_FMP4, 1), (api.CONTAINER_MPEGTS, 1), (api.CONTAINER_MP4, 0)],
)
async def test_time_to_first_frame_counts_streamed_fragments_only(container, counted):
    """talkmesh_time_to_first_frame_seconds (the SLO's metric) is the time to the first streamed
    fragment: a whole-file MP4's first chunk is the whole file, its time the request's total."""
    telemetry = Telemetry("gateway")
    svc = GatewayService(GatewayConfig(), telemetry, downstreams=FakeDownstreams(chunks=10))
    async with serve(svc) as host, TalkmeshClient(host.address) as client:
        chunks = [c async for c in client.speak("Hello there.", container=container)]
    assert chunks[-1].summary.frames == 10
    labels = {"service": "gateway"}
    count = telemetry.metrics.registry.get_sample_value("talkmesh_time_to_first_frame_seconds_count", labels)
    assert (count or 0) == counted
    # the request itself is still timed, whole file or not
    total = telemetry.metrics.registry.get_sample_value(
        "talkmesh_stage_duration_seconds_count", {"service": "gateway", "stage": "total"}
    )
    assert total == 1


async def test_realtime_factor_counts_whole_text_requests_only():
    """talkmesh_realtime_factor{service="gateway"} (TalkmeshRealtimeFactorBelowOne's metric) measures
    how fast the mesh makes media of text it has whole: a SpeakStream's text arrives at its sender's
    pace (an LLM), which reads below 1 on a healthy mesh, so it is not observed."""

    async def pieces():
        for p in ["Hello ", "there, ", "how are ", "you?"]:
            await asyncio.sleep(0.05)  # slower than the 40 ms of audio each piece makes
            yield p

    for streamed, observed in ((True, 0), (False, 1)):
        telemetry = Telemetry("gateway")
        svc = GatewayService(GatewayConfig(), telemetry, downstreams=FakeDownstreams(chunks=10))
        async with serve(svc) as host, TalkmeshClient(host.address) as client:
            if streamed:
                chunks = [c async for c in client.speak_stream(pieces())]
            else:
                chunks = [c async for c in client.speak("Hello there.")]
        assert chunks[-1].summary.frames == (4 if streamed else 10)
        count = telemetry.metrics.registry.get_sample_value("talkmesh_realtime_factor_count", {"service": "gateway"})
        assert (count or 0) == observed, f"streamed={streamed}"
