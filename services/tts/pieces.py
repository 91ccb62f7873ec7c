"""Streamed text (``SynthesizeStream``) into clauses, as soon as each may be spoken.

The reader takes the text pieces of a client's stream, checks them (characters, total length)
and sends complete clauses to the synthesis loop through a bounded channel. A clause is complete
at punctuation, or by the two streaming rules of ``services.tts.text`` (``max_words`` complete
words without punctuation; text unspoken for ``max_wait_seconds``), so an LLM that writes no
punctuation is still heard within a bounded delay of its first words.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.tts.text import ClauseSplitter
from talkmesh.common.aio import Chan, cancel_and_wait
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.markup import MarkdownStream
from talkmesh.common.names import check_text, has_speech
from talkmesh.common.streams import RequestStream
from talkmesh.v1 import tts_pb2


@dataclass(frozen=True)
class StreamRules:
    """Limits and flush rule of one text stream (see the module docstring)."""

    max_text_chars: int
    max_segment_chars: int
    #: a run without punctuation is spoken after this many complete words (0 = only at punctuation)
    max_words: int
    #: unspoken text is spoken after waiting this long, in seconds (0 = never by time)
    max_wait_seconds: float


class _Waiting:
    """When the text now waiting in the splitter started to wait."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.since: float | None = None

    def update(self, splitter: ClauseSplitter, *, restart: bool = False, held: str = "") -> None:
        if not splitter.pending and not held:
            self.since = None
        elif self.since is None or restart:
            self.since = self.clock()

    def left(self, max_wait: float) -> float | None:
        if self.since is None or max_wait <= 0:
            return None
        return max(0.0, self.since + max_wait - self.clock())


async def read_clauses(
    pieces: RequestStream[tts_pb2.TextPiece],
    clauses: Chan[str],
    rules: StreamRules,
    *,
    clock: Callable[[], float] = time.monotonic,
    markdown: bool = False,
    speech_ahead: Callable[[], float] | None = None,
) -> None:
    """Sends each complete clause of the stream to ``clauses``, then closes it. With ``markdown``
    the text reaches the splitter as ``MarkdownStream`` releases it (its words, whole links).
    ``speech_ahead``: seconds of the stream's speech made and not yet played; while it is longer
    than ``max_wait_seconds`` the time rule waits (text written while earlier clauses play is not
    cut mid-sentence: the listener hears no silence to bound).

    Bad input closes ``clauses`` with the error (the synthesis loop raises it, after the clauses
    before it); the reader's own cancellation propagates.
    """
    splitter = ClauseSplitter(rules.max_segment_chars, rules.max_words)
    md = MarkdownStream() if markdown else None
    waiting = _Waiting(clock)
    total = 0
    spoken = False
    it = aiter(pieces)

    async def next_piece() -> tts_pb2.TextPiece | None:
        return await anext(it, None)

    reading: asyncio.Task[tts_pb2.TextPiece | None] | None = None
    try:
        while True:
            if reading is None:
                reading = asyncio.create_task(next_piece(), name="tts-next-piece")
            left = waiting.left(rules.max_wait_seconds)
            if left is not None and speech_ahead is not None:
                left = max(left, speech_ahead() - rules.max_wait_seconds)
            done, _ = await asyncio.wait({reading}, timeout=left)
            if not done and speech_ahead is not None and speech_ahead() > rules.max_wait_seconds:
                continue  # speech made during the wait (its clause synthesized on) still plays: wait on
            if not done:  # the waiting text's time is up: speak what can be spoken
                if md is not None:  # (Markdown held back for a construct goes too, whole words)
                    for seg in splitter.push(md.release(whole=False)):
                        await clauses.send(seg)
                for seg in splitter.flush_waiting():
                    await clauses.send(seg)
                waiting.update(splitter, restart=True)
                continue
            piece, reading = reading.result(), None
            if piece is None:
                break
            if piece.WhichOneof("kind") != "text":
                continue
            check_text("text", piece.text, rules.max_text_chars, allow_empty=True, offset=total)
            total += len(piece.text)
            if total > rules.max_text_chars:
                raise InvalidArgument("text", f"the stream's text is over the limit of {rules.max_text_chars}")
            spoken = spoken or has_speech(piece.text)
            for seg in splitter.push(md.push(piece.text) if md is not None else piece.text):
                await clauses.send(seg)
                waiting.since = None
            waiting.update(splitter, held=md.pending if md is not None else "")
        if md is not None:
            for seg in splitter.push(md.release()):
                await clauses.send(seg)
        for seg in splitter.flush():
            await clauses.send(seg)
        if not spoken:  # as check_text refuses a whole text with nothing to say
            check_text("text", "", rules.max_text_chars)
        clauses.close()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        clauses.close(exc)
    finally:
        await cancel_and_wait(reading)
