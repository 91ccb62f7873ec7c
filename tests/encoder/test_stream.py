"""End-to-end through the gRPC service: decode what comes out and check it against what went in."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from talkmesh.v1 import common_pb2, encoder_pb2

from .media import (
    FPS,
    SR,
    audio_request,
    config_request,
    decode,
    decode_audio,
    frame_luma,
    frame_request,
    frames_for,
    i420_frame,
    rgb_frame,
    utterance,
)

W, H = 128, 96


async def collect(stub, requests) -> list[encoder_pb2.MediaChunk]:
    return [m async for m in stub.Encode(iter(list(requests)))]


async def test_fmp4_stream_has_every_frame_on_a_25fps_grid_and_audio_ends_with_video(stub):
    samples = SR * 23 // 25 + 123  # not a whole number of frames: the last frame is partly silent
    n = frames_for(samples)
    out = await collect(stub, utterance(W, H, samples))

    assert out[0].init_segment and out[0].data[4:8] == b"ftyp"
    assert out[0].video_encoder == "libx264"
    assert out[0].mime_type.startswith('video/mp4; codecs="avc1.42')
    assert out[0].mime_type.endswith(', mp4a.40.2"')
    assert [m.seq for m in out] == list(range(len(out)))
    assert out[-1].end_of_stream and out[-1].frames_encoded == n
    assert not any(m.init_segment for m in out[1:])
    assert all(m.data[4:8] == b"moof" for m in out[1:-1] if m.data)
    counts = [m.frames_encoded for m in out[:-1]]
    assert counts == sorted(counts) and counts[-1] == n

    d = decode(b"".join(m.data for m in out))
    assert len(d.video_pts) == n
    assert d.video_pts == pytest.approx([i / FPS for i in range(n)], abs=1e-6)
    assert d.lumas == pytest.approx([frame_luma(i) for i in range(n)], abs=3)
    assert abs(d.audio_end - d.video_seconds) <= 0.040
    assert d.audio_seconds == pytest.approx(d.audio_end, abs=1e-6)  # no gaps in the audio track


@pytest.mark.parametrize("audio_codec", [common_pb2.AUDIO_CODEC_AAC, common_pb2.AUDIO_CODEC_OPUS])
async def test_audio_onset_plays_with_its_frame(stub, audio_codec):
    """A tone starting exactly at frame 10's first sample is heard at 0.4 s (priming removed), and
    the audio ends with the video (fMP4, AAC and Opus)."""
    n = 20
    onset = 10 * SR // FPS
    pcm = np.zeros(n * SR // FPS, "<i2")
    t = np.arange(pcm.size - onset) / SR
    pcm[onset:] = (np.sin(2 * np.pi * 1000 * t) * 12000).astype("<i2")
    config = config_request(W, H)
    config.config.audio_codec = audio_codec
    reqs = [config, audio_request(0, pcm.tobytes())]
    reqs += [frame_request(i, i420_frame(W, H, i), W, H) for i in range(n)]
    reqs.append(encoder_pb2.EncodeRequest(end_of_stream=True))
    out = await collect(stub, reqs)

    data = b"".join(m.data for m in out)
    audio, rate = decode_audio(data)
    envelope = np.abs(audio) > 0.1 * np.abs(audio).max()
    heard = np.argmax(envelope) / rate
    assert heard == pytest.approx(onset / SR, abs=0.005)
    d = decode(data)
    assert abs(d.audio_end - n / FPS) < 0.005  # priming cut: the track is not 6.5 ms (Opus) longer


async def test_the_first_fragment_leaves_with_frame_0_and_its_audio(stub):
    """A fragment does not wait for the next frame: frame 0 alone comes back, decodable with the
    init segment, with the audio that plays with it (fragment_ms is one frame by default)."""
    call = stub.Encode()
    await call.write(config_request(W, H))
    init = await call.read()
    assert init.init_segment
    await call.write(audio_request(0, b"\x00\x00" * (SR // 5)))  # 200 ms of audio look-ahead
    await call.write(frame_request(0, i420_frame(W, H, 0), W, H))
    async with asyncio.timeout(20):  # the old muxer held it until frames 1 and 2 came: a hang
        first = await call.read()  # nothing else has been sent: this must come from frame 0 alone
    assert not first.end_of_stream and first.data[4:8] == b"moof"
    assert first.frames_encoded == 1
    d = decode(init.data + first.data)
    assert len(d.video_pts) == 1
    assert d.lumas[0] == pytest.approx(frame_luma(0), abs=3)
    assert d.audio_end >= 1 / FPS  # frame 0's audio is in it
    await call.write(frame_request(1, i420_frame(W, H, 1), W, H))
    second = await call.read()
    assert second.frames_encoded == 2
    await call.write(encoder_pb2.EncodeRequest(end_of_stream=True))
    await call.done_writing()
    rest = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        rest.append(msg)
    assert rest[-1].end_of_stream and rest[-1].frames_encoded == 2


async def test_rgb_frames_in_parts(stub):
    n = 6
    reqs = [config_request(W, H, pixel_format=common_pb2.PIXEL_FORMAT_RGB24, sample_rate=0)]
    for i in range(n):
        data = rgb_frame(W, H, i)
        cut = [0, 1000, 20000, len(data)]
        for p in range(3):
            reqs.append(
                frame_request(
                    i, data[cut[p] : cut[p + 1]], W, H, part=p, parts=3, pixel_format=common_pb2.PIXEL_FORMAT_RGB24
                )
            )
    reqs.append(encoder_pb2.EncodeRequest(end_of_stream=True))
    out = await collect(stub, reqs)

    assert out[0].mime_type.startswith('video/mp4; codecs="avc1.') and "mp4a" not in out[0].mime_type
    d = decode(b"".join(m.data for m in out))
    assert len(d.video_pts) == n
    for i, mean in enumerate(d.rgb_means):
        red, blue = (200, 30) if i % 2 == 0 else (30, 200)
        assert mean == pytest.approx([red, 60, blue], abs=8)


async def test_whole_mp4_file_is_faststart(stub):
    samples = SR // 2
    out = await collect(stub, utterance(W, H, samples, container=encoder_pb2.CONTAINER_MP4))
    data = [m for m in out if m.data]
    assert len(data) == 1 and not data[0].init_segment
    assert out[-1].end_of_stream
    blob = data[0].data
    assert blob.find(b"moov") < blob.find(b"mdat")
    d = decode(blob)
    assert len(d.video_pts) == frames_for(samples)
    assert abs(d.audio_end - d.video_seconds) <= 0.040


async def test_mpegts_and_opus(stub):
    samples = SR // 2
    out = await collect(
        stub, utterance(W, H, samples, container=encoder_pb2.CONTAINER_MPEGTS, audio_codec=encoder_pb2.AUDIO_CODEC_OPUS)
    )
    assert out[0].mime_type.startswith('video/mp2t; codecs="avc1.')
    assert out[0].mime_type.endswith(', opus"')
    d = decode(b"".join(m.data for m in out), fmt="mpegts")
    assert len(d.video_pts) == frames_for(samples)
    assert d.video_pts == pytest.approx([i / FPS for i in range(len(d.video_pts))], abs=1e-3)
    assert d.audio_codec in ("opus", "libopus")


async def test_large_output_is_split_under_the_chunk_limit(config):
    from services.encoder.main import create_service
    from talkmesh.common.channel import create_channel
    from talkmesh.common.config import replace
    from talkmesh.common.telemetry import Telemetry
    from talkmesh.testing import serve
    from talkmesh.v1 import encoder_pb2_grpc

    limit = 64 * 1024
    small = replace(config, limits=replace(config.limits, max_chunk_bytes=limit))
    rng = np.random.default_rng(0)
    w, h, n = 256, 256, 8
    reqs = [config_request(w, h, sample_rate=0, container=encoder_pb2.CONTAINER_MP4)]
    reqs += [frame_request(i, rng.integers(0, 256, w * h * 3 // 2, np.uint8).tobytes(), w, h) for i in range(n)]
    reqs.append(encoder_pb2.EncodeRequest(end_of_stream=True))
    service = create_service(small, Telemetry("encoder"), nvenc_probe=lambda _gpu: False)
    async with serve(service) as host, create_channel(host.address) as channel:
        out = await collect(encoder_pb2_grpc.EncoderStub(channel), reqs)
    parts = [m.data for m in out if m.data]
    assert len(parts) > 1 and all(len(p) <= limit for p in parts)
    assert len(decode(b"".join(parts)).video_pts) == n


async def test_cancelled_stream_releases_the_encoder_and_the_service_goes_on(stub):
    call = stub.Encode()
    await call.write(config_request(W, H))
    assert (await call.read()).init_segment
    await call.write(audio_request(0, b"\x00\x00" * SR))
    for i in range(3):
        await call.write(frame_request(i, i420_frame(W, H, i), W, H))
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    out = await collect(stub, utterance(W, H, SR // 5))
    assert out[-1].end_of_stream and out[-1].frames_encoded == frames_for(SR // 5)


async def test_frames_sent_in_batches_are_encoded_like_single_frames(stub):
    """EncodeRequest.frame may be a batch (VideoFrame.frames, as the renderer sends them with
    RenderConfig.batch_frames): its frames are encoded in order, the same video as one by one."""
    samples = SR * 14 // 25
    single = list(utterance(W, H, samples))
    batched: list[encoder_pb2.EncodeRequest] = []
    batch: encoder_pb2.EncodeRequest | None = None
    for req in single:
        if req.WhichOneof("kind") != "frame":
            batch = None
            batched.append(req)
            continue
        if batch is None or len(batch.frame.frames) == 4:
            batch = encoder_pb2.EncodeRequest(frame=common_pb2.VideoFrame(frame_index=req.frame.frame_index))
            batched.append(batch)
        batch.frame.frames.append(req.frame)
    assert any(len(r.frame.frames) > 1 for r in batched)
    n = frames_for(samples)
    out = await collect(stub, batched)
    assert out[-1].end_of_stream and out[-1].frames_encoded == n
    d = decode(b"".join(m.data for m in out))
    assert d.video_pts == pytest.approx([i / FPS for i in range(n)], abs=1e-6)
    assert d.lumas == pytest.approx([frame_luma(i) for i in range(n)], abs=3)
    # a batch whose frames skip one is refused like single frames out of order
    fifth = next(r.frame for r in single if r.WhichOneof("kind") == "frame" and r.frame.frame_index == 5)
    bad = [single[0], encoder_pb2.EncodeRequest(frame=common_pb2.VideoFrame(frames=[fifth]))]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("frame.frames[0].frame_index"), "the error names the frame"
    # a batch holds whole frames only: no pixels of its own, no split or nested frames
    first = next(r.frame for r in single if r.WhichOneof("kind") == "frame")
    split = common_pb2.VideoFrame(frame_index=0, part_count=2, data=first.data[:10])
    for batch_frame, field in (
        (common_pb2.VideoFrame(data=b"xx", frames=[first]), "frame.data"),
        (common_pb2.VideoFrame(frames=[split]), "frame.frames[0]"),
        (common_pb2.VideoFrame(frames=[common_pb2.VideoFrame(frames=[first])]), "frame.frames[0]"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, [single[0], encoder_pb2.EncodeRequest(frame=batch_frame)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(field), (field, err.value.details())
