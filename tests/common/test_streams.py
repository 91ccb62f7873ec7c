"""The config-first request stream and lenient parsing, shared by every service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from talkmesh.common.errors import DeadlineExceeded, InvalidArgument
from talkmesh.common.streams import RequestStream, Undecodable, bad_utf8_field, lenient_deserializer
from talkmesh.v1 import tts_pb2


async def _feed(*msgs: object, then_wait: float = 0.0) -> AsyncIterator[object]:
    for m in msgs:
        yield m
    if then_wait:
        await asyncio.sleep(then_wait)


def _config() -> tts_pb2.TextPiece:
    return tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(voice="espeak:en-us"))


async def test_yields_data_after_the_config_and_stops_at_end_of_stream() -> None:
    stream = await RequestStream.open(
        _feed(
            _config(),
            tts_pb2.TextPiece(text="a"),
            tts_pb2.TextPiece(text="b", end_of_stream=True),
            tts_pb2.TextPiece(text="never read"),
        )
    )
    assert stream.config.voice == "espeak:en-us"
    assert [m.text async for m in stream] == ["a", "b"]


async def test_half_close_without_end_of_stream_ends_the_same_way() -> None:
    stream = await RequestStream.open(_feed(_config(), tts_pb2.TextPiece(text="a")))
    assert [m.text async for m in stream] == ["a"]
    assert stream.ended


async def test_config_with_end_of_stream_has_no_data() -> None:
    head = _config()
    head.end_of_stream = True
    stream = await RequestStream.open(_feed(head, tts_pb2.TextPiece(text="ignored")))
    assert [m async for m in stream] == []


@pytest.mark.parametrize("first", [None, tts_pb2.TextPiece(text="hello")], ids=["empty stream", "data before config"])
async def test_first_message_must_carry_the_config(first: object) -> None:
    msgs = () if first is None else (first,)
    with pytest.raises(InvalidArgument) as err:
        await RequestStream.open(_feed(*msgs))
    assert err.value.field == "config"
    assert str(err.value) == "config: must be the first message of the stream"


async def test_config_sent_twice() -> None:
    stream = await RequestStream.open(_feed(_config(), _config()))
    with pytest.raises(InvalidArgument, match="config: must be sent only once, as the first message"):
        async for _ in stream:
            pass


async def test_idle_client_gets_deadline_exceeded() -> None:
    stream = await RequestStream.open(_feed(_config(), then_wait=5), idle_timeout=0.05, what="text stream")
    with pytest.raises(DeadlineExceeded, match=r"text stream: no message for 0\.05 s"):
        async for _ in stream:
            pass


async def test_a_timeout_inside_the_source_is_not_the_idle_limit() -> None:
    """Only the stream's own idle limit becomes "no message for ..."; a TimeoutError raised by
    whatever feeds the stream (an upstream's own deadline) goes through as it is."""

    async def source() -> AsyncIterator[object]:
        yield _config()
        raise TimeoutError("upstream gave up")

    stream = await RequestStream.open(source(), idle_timeout=30.0, what="text stream")
    with pytest.raises(TimeoutError, match="upstream gave up"):
        async for _ in stream:
            pass


async def test_no_first_message_within_the_timeout() -> None:
    with pytest.raises(DeadlineExceeded):
        await RequestStream.open(_feed(then_wait=5), first_timeout=0.05)


async def test_undecodable_messages_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match=r"config\.voice: is not valid UTF-8"):
        await RequestStream.open(_feed(Undecodable("config.voice", "is not valid UTF-8")))


def test_lenient_deserializer_names_the_bad_utf8_field() -> None:
    good = tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(voice="AAAA")).SerializeToString()
    bad = good.replace(b"AAAA", b"\xff\xfe\xfd\xfc")
    assert bad_utf8_field(bad, tts_pb2.TextPiece.DESCRIPTOR) == "config.voice"
    parsed = lenient_deserializer(tts_pb2.TextPiece)(bad)
    assert parsed == Undecodable("config.voice", "is not valid UTF-8")
    garbage = lenient_deserializer(tts_pb2.TextPiece)(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    assert isinstance(garbage, Undecodable) and garbage.field == "request"
    assert lenient_deserializer(tts_pb2.TextPiece)(good).config.voice == "AAAA"


async def test_a_cancelled_reader_stays_cancelled_when_its_message_arrives_at_the_same_moment():
    """asyncio.wait_for (Python 3.11) returns the inner result when the message and the
    cancellation land in one loop iteration, swallowing the cancel: the encoder's request router
    then blocked on a full channel forever and an unknown avatar hung the call to its deadline."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[tts_pb2.TextPiece] = loop.create_future()

    async def messages():
        yield tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig())
        yield await gate
        await asyncio.Event().wait()

    stream = await RequestStream.open(messages(), "config", idle_timeout=30.0)

    async def reader() -> None:
        async for _ in stream:
            await asyncio.Event().wait()  # e.g. a send into a channel nobody drains any more

    task = asyncio.create_task(reader())
    try:
        for _ in range(5):
            await asyncio.sleep(0)  # the reader now waits for the second message
        gate.set_result(tts_pb2.TextPiece(text="hi"))
        task.cancel()
        await asyncio.wait({task}, timeout=5)  # hang guard, not a timing assertion
        assert task.cancelled()
    finally:
        task.cancel()  # a second cancel ends it even when the first one was swallowed
        await asyncio.gather(task, return_exceptions=True)
