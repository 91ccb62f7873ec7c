"""Clause texts for captions: the first chunk of each clause carries the clause's text as spoken."""

from __future__ import annotations

from typing import Any

from services.tts.text import split_clauses
from talkmesh.common.markup import speakable_markdown
from talkmesh.v1 import common_pb2, tts_pb2, types_pb2

TEXT = "Hello there, Bob! Pam met Max. It is 3.5 degrees; cold."
REPLY = "**Sure!** Here are *two* options:\n- the `red` one,\n- see [the guide, part two](/docs) now. 🎉"


def _cues(chunks: list[common_pb2.AudioChunk]) -> list[tuple[int, str]]:
    """(segment_index, text) of every chunk that carries a text, checking it is its clause's first."""
    seen: set[int] = set()
    cues = []
    for c in chunks:
        first = c.pcm and c.segment_index not in seen
        seen.add(c.segment_index)
        if c.segment_text:
            assert first, f"a text on a chunk that does not start clause {c.segment_index}"
            cues.append((c.segment_index, c.segment_text))
        else:
            assert not first, f"clause {c.segment_index}'s first chunk carries no text"
    return cues


def _request(text: str, text_format: int = 0) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(text=text, config=tts_pb2.SynthesisConfig(text_format=text_format))  # type: ignore[arg-type]


async def _stream(stub: Any, text: str, text_format: int = 0, size: int = 3) -> list[common_pb2.AudioChunk]:
    """``text`` through SynthesizeStream, cut every ``size`` characters (as an LLM streams it)."""

    async def pieces() -> Any:
        yield tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(text_format=text_format))  # type: ignore[arg-type]
        for i in range(0, len(text), size):
            yield tts_pb2.TextPiece(text=text[i : i + size])
        yield tts_pb2.TextPiece(end_of_stream=True)

    return [c async for c in stub.SynthesizeStream(pieces())]


async def test_each_clause_of_a_text_starts_with_its_text_also_from_the_cache(tts: Any) -> None:
    stub, service, _ = tts
    clauses = split_clauses(TEXT)
    assert len(clauses) == 5
    first = [c async for c in stub.Synthesize(_request(TEXT))]
    assert _cues(first) == list(enumerate(clauses))
    assert not first[-1].segment_text and first[-1].end_of_stream
    assert len(service.servicer.cache) == 1
    again = [c async for c in stub.Synthesize(_request(TEXT))]  # replayed from the utterance cache
    assert _cues(again) == list(enumerate(clauses))


async def test_streamed_text_tells_the_same_clauses_as_the_whole_text(tts: Any) -> None:
    stub, _, _ = tts
    assert _cues(await _stream(stub, TEXT)) == list(enumerate(split_clauses(TEXT)))


async def test_markdown_clauses_are_told_as_spoken_without_their_markup(tts: Any) -> None:
    stub, _, _ = tts
    said = ["Sure!", "Here are two options:", "the red one,", "see the guide,", "part two now."]
    assert split_clauses(speakable_markdown(REPLY)) == said
    whole = [c async for c in stub.Synthesize(_request(REPLY, types_pb2.TEXT_FORMAT_MARKDOWN))]
    assert _cues(whole) == list(enumerate(said))
    streamed = await _stream(stub, REPLY, types_pb2.TEXT_FORMAT_MARKDOWN)
    assert _cues(streamed) == list(enumerate(said))
    # what is left of a clause once its emoji is gone (",") says nothing: no chunk, no text, its
    # index skipped
    only_marks = [c async for c in stub.Synthesize(_request("Yes. 🎉, No.", types_pb2.TEXT_FORMAT_MARKDOWN))]
    assert _cues(only_marks) == [(0, "Yes."), (2, "No.")]
