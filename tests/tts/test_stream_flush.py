"""Streamed text without punctuation is spoken after ``max_words`` words or ``max_wait_seconds``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.tts.pieces import StreamRules, read_clauses
from services.tts.text import ClauseSplitter
from talkmesh.common.aio import Chan
from talkmesh.common.streams import RequestStream
from talkmesh.v1 import tts_pb2
from tests.tts.conftest import default_config, serve_tts

HANG_GUARD = 30.0  # a failing test ends here instead of hanging; not a timing assertion


def test_word_rule_cuts_a_run_without_punctuation_after_max_words() -> None:
    s = ClauseSplitter(max_chars=300, max_words=4)
    assert s.push("one two thr") == []
    assert s.push("ee fo") == []  # "fo" may still grow: only three complete words
    assert s.push("ur five six") == ["one two three four"]
    assert s.push(" seven eight, nine") == ["five six seven eight,"]  # punctuation first
    assert s.flush() == ["nine"]


def test_word_rule_cuts_only_the_first_clause() -> None:
    """The word rule bounds how long the *first* words wait. Once speech is under way, the text an
    LLM writes while it plays is not cut every ``max_words`` words: each cut is a clause of its own
    with its own closing pause (300 ms in the middle of a sentence, measured on a live turn)."""
    s = ClauseSplitter(max_chars=300, max_words=4)
    assert s.push("The weather is mild and sunny, with a light breeze coming in from the sea ") == [
        "The weather is mild and sunny,"
    ]
    assert s.push("over the hills. Then") == ["with a light breeze coming in from the sea over the hills."]
    assert s.flush() == ["Then"]
    s = ClauseSplitter(max_chars=300, max_words=4)
    assert s.push("one two three four five six seven eight nine ten ") == ["one two three four"]
    assert s.push("eleven twelve ") == []  # (the time rule and max_chars still bound it)
    assert s.flush() == ["five six seven eight nine ten eleven twelve"]


def test_word_rule_waits_for_punctuation_already_in_hand() -> None:
    """The word rule is for punctuation that has not arrived: a long sentence that came whole (a
    live turn's finished reply) is one clause, not cut every ``max_words`` words with a pause."""
    sentence = "This is a fairly long sentence without any commas that keeps going on until it ends here."
    s = ClauseSplitter(max_chars=300, max_words=4)
    assert s.push(sentence) == []  # its full stop waits for the next character or the end
    assert s.flush() == [sentence]
    s = ClauseSplitter(max_chars=300, max_words=4)
    assert s.push(sentence + " And then") == [sentence]
    assert s.push(" a few more words") == []  # speech is under way: the word rule is over
    assert s.flush() == ["And then a few more words"]
    s = ClauseSplitter(max_chars=40, max_words=4)
    assert s.push(sentence + " ")[0] == "This is a fairly"  # over max_chars: the word cut stands


def test_word_rule_is_off_by_default_and_for_whole_texts() -> None:
    s = ClauseSplitter(max_chars=300)
    assert s.push(" ".join(["word"] * 40) + " ") == []


def test_flush_waiting_speaks_complete_words_or_everything_without_a_space() -> None:
    s = ClauseSplitter(max_words=0)
    s.push("hello there wor")
    assert s.flush_waiting() == ["hello there"]
    assert s.pending
    # a word cut by the stream ("wor" + "ld", an LLM that stalls mid-word) is not spoken as a word
    # of its own: it waits for the rest (or the end of the stream)
    assert s.flush_waiting() == []
    assert s.pending
    assert s.push("ld is big, ") == ["world is big,"]
    s.push("Unbeliev")
    assert s.flush_waiting() == []
    assert s.flush() == ["Unbeliev"]
    s.push("你好我是一个机器人")  # a script written without spaces: all of it
    assert s.flush_waiting() == ["你好我是一个机器人"]
    s.push("今日はGoo")  # up to the script's last letter: the Latin word may still grow
    assert s.flush_waiting() == ["今日は"]
    assert s.flush() == ["Goo"]


async def _stream(pieces: asyncio.Queue[tts_pb2.TextPiece | None]) -> RequestStream[tts_pb2.TextPiece]:
    async def messages() -> AsyncIterator[tts_pb2.TextPiece]:
        while (p := await pieces.get()) is not None:
            yield p

    await pieces.put(tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig()))
    return await RequestStream.open(messages(), "config")


async def test_time_rule_speaks_waiting_text_while_the_stream_stays_open() -> None:
    pieces: asyncio.Queue[tts_pb2.TextPiece | None] = asyncio.Queue()
    stream = await _stream(pieces)
    clauses: Chan[str] = Chan(8)
    rules = StreamRules(max_text_chars=1000, max_segment_chars=300, max_words=0, max_wait_seconds=0.05)
    reader = asyncio.create_task(read_clauses(stream, clauses, rules))
    try:
        await pieces.put(tts_pb2.TextPiece(text="so here is a thought tha"))
        # nothing more arrives: the complete words are spoken; the cut word waits for its rest
        assert await asyncio.wait_for(clauses.recv(), HANG_GUARD) == "so here is a thought"
        await asyncio.sleep(0.2)
        assert clauses.qsize() == 0
        await pieces.put(tts_pb2.TextPiece(text="t ends. Bye", end_of_stream=True))
        await pieces.put(None)
        assert [c async for c in clauses] == ["that ends.", "Bye"]
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_time_rule_waits_while_speech_already_made_is_still_playing() -> None:
    """Text an LLM writes while its earlier clauses still play is not cut by the time rule (a cut is
    heard as a 300 ms pause mid-sentence): it waits until the speech ahead runs low."""
    pieces: asyncio.Queue[tts_pb2.TextPiece | None] = asyncio.Queue()
    stream = await _stream(pieces)
    clauses: Chan[str] = Chan(8)
    rules = StreamRules(max_text_chars=1000, max_segment_chars=300, max_words=0, max_wait_seconds=0.05)
    ahead = [5.0]
    reader = asyncio.create_task(read_clauses(stream, clauses, rules, speech_ahead=lambda: ahead[0]))
    try:
        await pieces.put(tts_pb2.TextPiece(text="so here is a thought that "))
        await asyncio.sleep(0.3)
        assert clauses.qsize() == 0  # 5 s of speech ahead: no hurry
        ahead[0] = 0.0  # (the next wait: the speech ran out)
        await pieces.put(tts_pb2.TextPiece(text="goes on "))
        assert await asyncio.wait_for(clauses.recv(), HANG_GUARD) == "so here is a thought that goes on"
        await pieces.put(None)
        assert [c async for c in clauses] == []
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_without_the_time_rule_unpunctuated_text_waits_for_the_end() -> None:
    """The same stream with the rule off: nothing is spoken while the client holds it open."""
    pieces: asyncio.Queue[tts_pb2.TextPiece | None] = asyncio.Queue()
    stream = await _stream(pieces)
    clauses: Chan[str] = Chan(8)
    rules = StreamRules(max_text_chars=1000, max_segment_chars=300, max_words=0, max_wait_seconds=0)
    reader = asyncio.create_task(read_clauses(stream, clauses, rules))
    try:
        await pieces.put(tts_pb2.TextPiece(text="so here is a thought tha"))
        await asyncio.sleep(0.3)
        assert clauses.qsize() == 0
        await pieces.put(None)
        assert [c async for c in clauses] == ["so here is a thought tha"]
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _first_audio_while_open(stub: Any, text: str) -> tts_pb2.TextPiece:
    pieces: asyncio.Queue[tts_pb2.TextPiece | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[tts_pb2.TextPiece]:
        while (p := await pieces.get()) is not None:
            yield p

    call = stub.SynthesizeStream(requests())
    await pieces.put(tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(request_id="llm")))
    for word in text.split(" "):
        await pieces.put(tts_pb2.TextPiece(text=word + " "))
    try:
        first = await asyncio.wait_for(call.read(), HANG_GUARD)  # the stream is still open here
    finally:
        await pieces.put(None)
        async for _ in call:
            pass
    return first  # type: ignore[no-any-return]


async def test_llm_text_without_punctuation_is_heard_before_the_stream_ends_by_word_count() -> None:
    async with serve_tts(default_config(stream_flush_words=6, stream_flush_seconds=0.0)) as (stub, _, _):
        first = await _first_audio_while_open(stub, "so this is what i think about the weather today")
    assert first is not grpc.aio.EOF and len(first.pcm) > 0 and first.segment_index == 0


async def test_llm_text_without_punctuation_is_heard_before_the_stream_ends_by_time() -> None:
    async with serve_tts(default_config(stream_flush_words=0, stream_flush_seconds=0.2)) as (stub, _, _):
        first = await _first_audio_while_open(stub, "well i suppose")
    assert first is not grpc.aio.EOF and len(first.pcm) > 0


async def test_the_service_holds_the_time_rule_while_the_speech_it_sent_still_plays() -> None:
    """The service's own measure of the speech ahead (sent, counted as playing from its first
    chunk): unpunctuated text that waits while a clause plays is spoken once less than the rule's
    wait is left of that clause, not after the wait alone (a cut mid-sentence), nor never."""
    wait = 0.2
    async with serve_tts(default_config(stream_flush_words=0, stream_flush_seconds=wait)) as (stub, _, _):
        pieces: asyncio.Queue[tts_pb2.TextPiece | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[tts_pb2.TextPiece]:
            while (p := await pieces.get()) is not None:
                yield p

        loop = asyncio.get_running_loop()
        call = stub.SynthesizeStream(requests())
        await pieces.put(tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(request_id="llm")))
        await pieces.put(tts_pb2.TextPiece(text="So this is what I think about the weather we had today, "))
        first = await asyncio.wait_for(call.read(), HANG_GUARD)  # read at once: faster than it plays
        heard, rate = loop.time(), first.sample_rate
        await pieces.put(tts_pb2.TextPiece(text="and then a few more words "))  # no punctuation: the time rule
        samples, msg = len(first.pcm) // 2, first
        while msg.segment_index == first.segment_index:
            samples += len(msg.pcm) // 2 if msg is not first else 0
            msg = await asyncio.wait_for(call.read(), HANG_GUARD)
        second_at = loop.time() - heard
        await pieces.put(None)
        async for _ in call:
            pass
    played = samples / rate
    assert played > 4 * wait, played  # (a clause long enough to tell the two apart)
    assert played - wait - 0.05 <= second_at, (second_at, played)
