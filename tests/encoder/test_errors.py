"""Bad input gets INVALID_ARGUMENT naming the field, and the service keeps serving."""

from __future__ import annotations

import grpc
import pytest

from talkmesh.v1 import common_pb2, encoder_pb2

from .media import SR, audio_request, config_request, frame_request, i420_frame, rgb_frame, utterance

W, H = 64, 48
EOS = encoder_pb2.EncodeRequest(end_of_stream=True)


def frame(i: int, **kw: object) -> encoder_pb2.EncodeRequest:
    return frame_request(i, i420_frame(W, H, i), W, H, **kw)  # type: ignore[arg-type]


CASES = {
    "gap": ([frame(0), frame(2)], "frame.frame_index"),
    "duplicate": ([frame(0), frame(0)], "frame.frame_index"),
    "starts_at_one": ([frame(1)], "frame.frame_index"),
    "wrong_size": ([frame_request(0, i420_frame(W * 2, H, 0), W * 2, H)], "frame.width"),
    "short_data": ([frame_request(0, i420_frame(W, H, 0)[:-10], W, H)], "frame.data"),
    "oversized": ([frame_request(0, i420_frame(W, H, 0) + b"\0" * 64, W, H)], "frame.data"),
    "oversized_parts": (
        [frame_request(0, i420_frame(W, H, 0), W, H, part=p, parts=3) for p in range(2)],
        "frame.data",
    ),
    "wrong_pixel_format": (
        [frame_request(0, rgb_frame(W, H, 0), W, H, pixel_format=common_pb2.PIXEL_FORMAT_RGB24)],
        "frame.pixel_format",
    ),
    "part_out_of_order": (
        [frame_request(0, b"\0" * 100, W, H, part=1, parts=2)],
        "frame.part_index",
    ),
    "missing_part": ([frame_request(0, b"\0" * 100, W, H, part=0, parts=2), EOS], "frame.part_index"),
    "audio_gap": ([audio_request(0, b"\0\0" * 100), audio_request(150, b"\0\0" * 100)], "audio.sample_offset"),
    "audio_rate": ([audio_request(0, b"\0\0" * 100, sr=16000)], "audio.sample_rate"),
    "odd_pcm": ([audio_request(0, b"\0" * 3)], "audio.pcm"),
    "second_config": ([config_request(W, H)], "config"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_stream_is_invalid_argument(stub, case):
    body, field = CASES[case]
    requests = [config_request(W, H), *body, frame(99), EOS]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Encode(iter(requests)):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"width": 0}, "config.width"),
        ({"height": 0}, "config.width"),
        ({"width": 63}, "config.width"),
        ({"width": 8192, "height": 8192}, "config.width"),
        ({"fps": 1000.0}, "config.fps"),
        ({"sample_rate": 100}, "config.sample_rate"),
        ({"pixel_format": 99}, "config.pixel_format"),
        ({"container": 42}, "config.container"),
        ({"fragment_ms": 999_999}, "config.fragment_ms"),
    ],
)
async def test_bad_config_is_invalid_argument(stub, changes, field):
    changes = dict(changes)
    size = {"width": changes.pop("width", W), "height": changes.pop("height", H)}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Encode(iter([config_request(size["width"], size["height"], **changes), EOS])):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


async def test_stream_must_start_with_config_and_a_half_close_ends_it(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Encode(iter([frame(0), EOS])):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "config: must be the first message of the stream"

    # Closing the request stream without end_of_stream is the end of the stream (one meaning in
    # every service, see talkmesh/common/streams.py): the frame sent is encoded, nothing is lost.
    out = [m async for m in stub.Encode(iter([config_request(W, H), frame(0)]))]
    assert out[-1].end_of_stream and out[-1].frames_encoded == 1


async def test_audio_without_an_audio_track_is_refused(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Encode(iter([config_request(W, H, sample_rate=0), audio_request(0, b"\0\0"), EOS])):
            pass
    assert err.value.details().startswith("audio:")


async def test_service_keeps_serving_after_errors(stub):
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in stub.Encode(iter([config_request(W, H), frame(1), EOS])):
            pass
    out = [m async for m in stub.Encode(iter(list(utterance(W, H, SR // 5))))]
    assert out[-1].end_of_stream and out[-1].frames_encoded == 5
