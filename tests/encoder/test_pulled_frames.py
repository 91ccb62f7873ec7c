"""The data plane's own path: the encoder pulls frames from a renderer (here a fake one that has
every frame ready at once, as a renderer running ahead of the encoder does) and sends fragments
that were ready together in one message, without losing or reordering a frame."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.encoder.main import create_service, load_config
from services.encoder.render import LocalFrameSource
from talkmesh.common.channel import create_channel
from talkmesh.common.inprocess import InProcessContext
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2, common_pb2, encoder_pb2, encoder_pb2_grpc, renderer_pb2

from .media import FPS, SR, audio_request, decode, frame_luma, frames_for, i420_frame, packets, tone

W, H = 128, 96


def rendered(i: int, width: int = W, height: int = H) -> common_pb2.VideoFrame:
    """Frame ``i`` as a fake renderer sends it (I420, a luma that tells it apart)."""
    return common_pb2.VideoFrame(
        frame_index=i,
        width=width,
        height=height,
        pixel_format=common_pb2.PIXEL_FORMAT_I420,
        data=i420_frame(width, height, i),
    )


def rendering_config(**fields: Any) -> encoder_pb2.EncodeConfig:
    """An Encode stream's config whose frames come from the renderer."""
    return encoder_pb2.EncodeConfig(
        request_id="t", fps=FPS, sample_rate=SR, render=renderer_pb2.RenderConfig(request_id="t"), **fields
    )


def fake_renderer(frames: int):
    """A Render handler that answers the config with ``frames`` ready frames (then ends)."""

    async def render(requests: AsyncIterator[renderer_pb2.RenderRequest], _context: Any):
        first = await anext(requests)
        assert first.WhichOneof("kind") == "config"
        for i in range(frames):
            yield rendered(i)
        yield common_pb2.VideoFrame(end_of_stream=True)

    return render


def requests(samples: int) -> list[encoder_pb2.EncodeRequest]:
    cfg = rendering_config()
    pcm = tone(samples)
    out = [encoder_pb2.EncodeRequest(config=cfg)]
    out += [audio_request(o, pcm[2 * o : 2 * min(o + 960, samples)]) for o in range(0, samples, 960)]
    return [*out, encoder_pb2.EncodeRequest(end_of_stream=True)]


@pytest.mark.parametrize("coalesce", [1, 5])
async def test_fragments_ready_together_leave_in_one_message(coalesce: int) -> None:
    samples = SR * 3
    n = frames_for(samples)
    env = {"TALKMESH_ENCODER__DEFAULTS__COALESCE_FRAMES": str(coalesce)}
    service = create_service(
        load_config(env=env),
        Telemetry("encoder"),
        nvenc_probe=lambda _: False,
        frame_source=LocalFrameSource(fake_renderer(n)),
    )
    async with serve(service) as host, create_channel(host.address) as channel:
        out = [m async for m in encoder_pb2_grpc.EncoderStub(channel).Encode(iter(requests(samples)))]

    media = [m for m in out if m.data and not m.init_segment]
    d = decode(b"".join(m.data for m in out))
    assert len(d.video_pts) == n  # nothing lost
    assert d.lumas == pytest.approx([frame_luma(i) for i in range(n)], abs=3)  # nothing reordered
    assert [m.seq for m in out] == list(range(len(out)))
    counts = [m.frames_encoded for m in out[:-1]]
    assert counts == sorted(counts)
    if coalesce == 1:
        assert len(media) >= n - 2  # one message per fragment (the muxer holds the last one)
    else:
        # The first fragment leaves alone (time to first fragment is unchanged); after it, the
        # frames were all waiting, so fragments leave five at a time.
        assert media[0].frames_encoded <= 2
        assert len(media) <= 2 + n // 5 + 1


async def test_visemes_riding_with_the_audio_reach_the_renderer_before_later_features() -> None:
    """EncodeRequest.audio.visemes go to the renderer as a visemes message, in their place among the
    renderer input (so before the features sent after that audio). The first feature batch reaches
    this renderer, which reads all its input before its first frame, in two parts: frame 0's, and
    the rest after first_fragment_wait_ms (no first fragment can come before it)."""
    samples = SR // 5  # one 200 ms chunk: 5 frames
    n = frames_for(samples)
    seen: list[renderer_pb2.RenderRequest] = []

    async def render(requests: AsyncIterator[renderer_pb2.RenderRequest], _context: Any):
        async for req in requests:
            seen.append(req)
        for i in range(n):
            yield rendered(i)
        yield common_pb2.VideoFrame(end_of_stream=True)

    cfg = rendering_config()
    audio = audio_request(0, tone(samples))
    event = common_pb2.VisemeEvent(viseme=common_pb2.VISEME_OPEN, start_sample=0, end_sample=samples)
    audio.audio.visemes.append(event)
    batch = audio_features_pb2.FeatureChunk(frame_index=0)
    for i in range(n):
        batch.frames.add(frame_index=i)
    reqs = [
        encoder_pb2.EncodeRequest(config=cfg),
        audio,
        encoder_pb2.EncodeRequest(features=batch),
        encoder_pb2.EncodeRequest(end_of_stream=True),
    ]
    service = create_service(
        load_config(), Telemetry("encoder"), nvenc_probe=lambda _: False, frame_source=LocalFrameSource(render)
    )
    async with serve(service) as host, create_channel(host.address) as channel:
        out = [m async for m in encoder_pb2_grpc.EncoderStub(channel).Encode(iter(reqs))]
    assert out[-1].end_of_stream and out[-1].frames_encoded == n
    kinds = [r.WhichOneof("kind") or ("end" if r.end_of_stream else "") for r in seen]
    assert kinds == ["config", "visemes", "features", "features", "end"]
    assert list(seen[1].visemes.events) == [event]
    assert list(seen[2].features.frames) == list(batch.frames[:1])
    assert list(seen[3].features.frames) == list(batch.frames[1:]) and seen[3].features.frame_index == 1


@pytest.mark.parametrize("fragment_ms", [0, 120])
async def test_the_first_fragments_frames_are_rendered_alone(fragment_ms: int) -> None:
    """First things first: from a first batch of more frames than the first fragment holds, the
    renderer gets only that fragment's frames, and the rest once they are encoded. This renderer
    takes 20 ms per frame and sees input arriving meanwhile; first_fragment_wait_ms is 10 s, so a
    rest released by that timeout would miss the test's deadline."""
    n = 10
    first = max(1, -(-fragment_ms * FPS // 1000))  # frames per fragment (one at the default 40 ms)
    known_when_rendering: list[int] = []  # feature frames the renderer had, per frame it rendered

    async def render(requests: AsyncIterator[renderer_pb2.RenderRequest], _context: Any):
        known: list[int] = []
        arrived, ended = asyncio.Event(), asyncio.Event()

        async def read() -> None:
            async for req in requests:
                if req.WhichOneof("kind") == "features":
                    known.extend(fc.frame_index for fc in req.features.frames)
                    arrived.set()
            ended.set()
            arrived.set()

        reader = asyncio.create_task(read())
        try:
            done = 0
            while done < len(known) or not ended.is_set():
                if done == len(known):
                    arrived.clear()
                    await arrived.wait()
                    continue
                await asyncio.sleep(0.02)  # rendering
                known_when_rendering.append(len(known))
                yield rendered(done)
                done += 1
            yield common_pb2.VideoFrame(end_of_stream=True)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    cfg = rendering_config(fragment_ms=fragment_ms)
    samples = n * SR // FPS
    batch = audio_features_pb2.FeatureChunk(frame_index=0)
    for i in range(n):
        batch.frames.add(frame_index=i)
    reqs = [
        encoder_pb2.EncodeRequest(config=cfg),
        audio_request(0, tone(samples)),
        encoder_pb2.EncodeRequest(features=batch),
        encoder_pb2.EncodeRequest(end_of_stream=True),
    ]
    env = {"TALKMESH_ENCODER__FIRST_FRAGMENT_WAIT_MS": "10000"}
    service = create_service(
        load_config(env=env), Telemetry("encoder"), nvenc_probe=lambda _: False, frame_source=LocalFrameSource(render)
    )
    async with asyncio.timeout(5), serve(service) as host, create_channel(host.address) as channel:
        out = [m async for m in encoder_pb2_grpc.EncoderStub(channel).Encode(iter(reqs))]
    assert out[-1].end_of_stream and out[-1].frames_encoded == n
    assert known_when_rendering == [first] * first + [n] * (n - first)
    d = decode(b"".join(m.data for m in out))
    assert d.lumas == pytest.approx([frame_luma(i) for i in range(n)], abs=3)  # nothing lost or reordered


def stage_count(telemetry: Telemetry, stage: str) -> float:
    labels = {"service": "encoder", "stage": stage}
    return telemetry.metrics.registry.get_sample_value("talkmesh_stage_duration_seconds_count", labels) or 0.0


async def test_the_encoder_opens_ahead_of_frame_0_at_the_size_it_had_last_time() -> None:
    """The second stream of an avatar opens its encoder before the renderer sends frame 0 (this
    renderer waits up to 1 s for that open); a frame 0 of another size gets a session of its own.
    (No spare sessions here: with them the second stream finds one already open, tested below.)"""
    telemetry = Telemetry("encoder")

    def opens(stage: str) -> float:
        return stage_count(telemetry, stage)

    opened_ahead: list[bool] = []
    streams = iter([(W, H, False), (W, H, True), (W * 2, H, True)])  # size, and whether to wait for the open
    ahead_before = 0.0

    async def render(requests: AsyncIterator[renderer_pb2.RenderRequest], _context: Any):
        w, h, wait = next(streams)
        await anext(requests)  # the config
        for _ in range(100 if wait else 0):
            if opens("open_ahead") > ahead_before:
                break
            await asyncio.sleep(0.01)
        opened_ahead.append(opens("open_ahead") > ahead_before)
        for i in range(n):
            yield rendered(i, w, h)
        yield common_pb2.VideoFrame(end_of_stream=True)

    samples = SR // 2
    n = frames_for(samples)
    config = load_config(env={"TALKMESH_ENCODER__SPARE_SESSIONS": "0"})
    service = create_service(config, telemetry, nvenc_probe=lambda _: False, frame_source=LocalFrameSource(render))
    decoded = []
    async with serve(service) as host, create_channel(host.address) as channel:
        for _ in range(3):
            ahead_before = opens("open_ahead")
            out = [m async for m in encoder_pb2_grpc.EncoderStub(channel).Encode(iter(requests(samples)))]
            decoded.append(decode(b"".join(m.data for m in out)))
    assert opened_ahead == [False, True, True]
    # the third opened ahead at the old size, then again at its own
    assert (opens("open_ahead"), opens("open")) == (2, 2)
    for d, w in zip(decoded, (W, W, W * 2), strict=True):
        assert d.size == (w, H) and len(d.video_pts) == n
        assert d.lumas == pytest.approx([frame_luma(i) for i in range(n)], abs=3)


async def test_a_stream_takes_the_spare_session_the_one_before_left_open() -> None:
    """Once a stream's first fragment is out the encoder opens a spare session of its parameters:
    the next such stream opens nothing, and its tracks are a fresh session's, packet for packet. A spare
    of other parameters is neither taken nor evicted while fresh (two sizes in turn would evict
    each other's); a stale one makes way; stopping the service closes what is held."""
    telemetry = Telemetry("encoder")
    widths: list[int] = []

    async def render(requests: AsyncIterator[renderer_pb2.RenderRequest], _context: Any):
        w = widths.pop(0)
        await anext(requests)  # the config
        for i in range(n):
            yield rendered(i, w)
        yield common_pb2.VideoFrame(end_of_stream=True)

    samples = SR // 2
    n = frames_for(samples)
    config = load_config(env={"TALKMESH_ENCODER__SPARE_SESSIONS": "1"})
    service = create_service(config, telemetry, nvenc_probe=lambda _: False, frame_source=LocalFrameSource(render))
    spares = service.servicer.spares  # type: ignore[attr-defined]
    outputs: list[bytes] = []
    counts = []
    held = []

    async def stream(avatar: str, width: int, *, expect_held: int) -> None:
        widths.append(width)
        reqs = requests(samples)
        reqs[0].config.render.avatar_id = avatar
        out = [m async for m in encoder_pb2_grpc.EncoderStub(channel).Encode(iter(reqs))]
        outputs.append(b"".join(m.data for m in out))
        async with asyncio.timeout(10):
            while stage_count(telemetry, "open_spare") < expect_held:  # spares open in the background
                await asyncio.sleep(0.01)
        counts.append(tuple(int(stage_count(telemetry, s)) for s in ("open", "open_ahead", "open_spare")))
        held.append([p.width for p in spares.held()])

    async with serve(service) as host, create_channel(host.address) as channel:
        await stream("a", W, expect_held=1)  # opens its own at frame 0 (no size known); a W spare
        await stream("a", W, expect_held=2)  # takes it; another W spare
        await stream("b", 2 * W, expect_held=2)  # opens its own; the W spare is fresh: stays
        (first_w_spare,) = [s for s, _init, _at in spares._held.values()]
        spares.stale_seconds = 0.0
        await stream("b", 2 * W, expect_held=3)  # no 2W spare: opens ahead; the stale W spare makes way
        await stream("a", W, expect_held=4)  # the 2W spare is not its: opens ahead; then a W spare
        assert first_w_spare._container is None  # the evicted spare was closed
        last_spare = next(iter(spares._held.values()))[0]
    assert counts == [(1, 0, 1), (1, 0, 2), (2, 0, 2), (2, 1, 3), (2, 2, 4)]
    assert held == [[W], [W], [W], [2 * W], [W]]
    assert len(spares) == 0 and last_spare._container is None  # closed with the service
    # the spare's tracks are a fresh session's, packet for packet (which fragment carries which
    # audio packet depends on when the encoder was open, not on the session)
    assert packets(outputs[1]) == packets(outputs[0])
    for data, w in zip(outputs, (W, W, 2 * W, 2 * W, W), strict=True):
        d = decode(data)
        assert d.size == (w, H) and len(d.video_pts) == n
        assert d.lumas == pytest.approx([frame_luma(i) for i in range(n)], abs=3)
        assert d.audio_end == pytest.approx(samples / SR, abs=1 / FPS)


async def test_the_rest_of_the_first_batch_goes_to_the_renderer_after_the_first_fragment_went_out() -> None:
    """The renderer gets the rest of the first batch once the first fragment has been handed to the
    caller (the handler resumed after it), not as soon as it was encoded: rendering the rest would
    otherwise share the event loop and the cores with sending that fragment."""
    n = 5
    features_seen: list[int] = []

    async def render(requests: AsyncIterator[renderer_pb2.RenderRequest], _context: Any):
        done = 0
        async for req in requests:
            if req.WhichOneof("kind") != "features":
                continue
            features_seen.extend(fc.frame_index for fc in req.features.frames)
            while done < len(features_seen):
                yield rendered(done)
                done += 1
        yield common_pb2.VideoFrame(end_of_stream=True)

    cfg = rendering_config()
    samples = n * SR // FPS
    batch = audio_features_pb2.FeatureChunk(frame_index=0)
    for i in range(n):
        batch.frames.add(frame_index=i)

    async def reqs() -> AsyncIterator[encoder_pb2.EncodeRequest]:
        yield encoder_pb2.EncodeRequest(config=cfg)
        yield audio_request(0, tone(samples))
        yield encoder_pb2.EncodeRequest(features=batch)
        yield encoder_pb2.EncodeRequest(end_of_stream=True)

    env = {"TALKMESH_ENCODER__FIRST_FRAGMENT_WAIT_MS": "10000"}
    service = create_service(
        load_config(env=env), Telemetry("encoder"), nvenc_probe=lambda _: False, frame_source=LocalFrameSource(render)
    )
    await service.start()
    out = service.servicer.Encode(reqs(), InProcessContext())
    try:
        async with asyncio.timeout(10):
            async for msg in out:
                if msg.data and not msg.init_segment:
                    break
            await asyncio.sleep(0.05)  # the caller has not taken the fragment on yet
            assert features_seen == [0]
            rest = [m async for m in out]  # now it has
    finally:
        await out.aclose()
        await service.stop()
    assert features_seen == list(range(n)) and rest[-1].end_of_stream and rest[-1].frames_encoded == n
