"""Turning a backend's PCM blocks into AudioChunk messages on one continuous sample clock.

Per request, clauses (segments) follow each other on one clock: ``sample_offset`` of every chunk
is the previous chunk's offset plus its sample count, with no gaps between clauses. The first chunk
is ``chunk_samples`` long and, when ``max_chunk_samples`` is set, each later one twice the one
before up to that length (a reader faster than real time gets its first audio as early, and far
fewer messages); the last chunk of a clause carries the remainder, so a chunk never spans two
clauses and ``segment_index`` is exact. A clause's first chunk carries its text (``segment_text``:
captions follow the speech clause by clause).

Visemes tile the audio: each phoneme event opens a viseme that lasts until the next event (the
stretch before the first event is REST). A chunk leaves only once every viseme starting inside it
is complete, so a viseme always travels with the chunk its audio starts in or an earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.tts.backends.base import PcmBlock, PhonemeEvent
from services.tts.visemes import viseme_for
from talkmesh.v1 import common_pb2


@dataclass
class SegmentRecord:
    """One clause as produced: for the cache, and replayable through the assembler."""

    index: int
    samples: np.ndarray
    phonemes: tuple[PhonemeEvent, ...]
    text: str = ""


@dataclass
class ChunkAssembler:
    request_id: str
    sample_rate: int
    chunk_samples: int
    max_chunk_samples: int = 0  # 0: every chunk is chunk_samples long
    offset: int = 0
    seq: int = 0
    record: list[SegmentRecord] | None = None
    _segment: int = 0
    _segment_text: str = ""  # the clause's text
    _text_sent: bool = True  # the clause's first chunk has carried it
    _seg_base: int = 0
    _pending: list[np.ndarray] = field(default_factory=list)
    _pending_len: int = 0
    _done_visemes: list[common_pb2.VisemeEvent] = field(default_factory=list)
    _open_start: int = 0
    _open_phoneme: str = ""
    _seg_phonemes: list[PhonemeEvent] = field(default_factory=list)
    _seg_audio: list[np.ndarray] = field(default_factory=list)
    _size: int = 0  # length of the next whole chunk

    def __post_init__(self) -> None:
        self._size = self.chunk_samples

    @property
    def samples(self) -> int:
        """Samples added so far (sent or waiting to fill a chunk)."""
        return self.offset + self._pending_len

    def _sizes(self, available: int) -> list[int]:
        """Lengths of the whole chunks that fit in ``available`` samples (the growth advances)."""
        sizes: list[int] = []
        while available >= self._size:
            sizes.append(self._size)
            available -= self._size
            if self.max_chunk_samples:
                self._size = min(2 * self._size, self.max_chunk_samples)
        return sizes

    def begin_segment(self, index: int, text: str = "") -> None:
        self._segment = index
        self._segment_text, self._text_sent = text, False
        self._seg_base = self.offset + self._pending_len
        self._open_start, self._open_phoneme = 0, ""
        self._seg_phonemes, self._seg_audio = [], []

    def add(self, block: PcmBlock) -> list[common_pb2.AudioChunk]:
        if block.samples.size:
            s = block.samples.astype(np.int16, copy=False)
            self._pending.append(s)
            self._pending_len += s.size
            if self.record is not None:
                self._seg_audio.append(s)
        for ev in block.phonemes:
            self._seg_phonemes.append(ev)
            if ev.sample > self._open_start:
                self._close_open(ev.sample)
            self._open_start, self._open_phoneme = max(ev.sample, self._open_start), ev.phoneme
        # Audio before the open viseme's start is safe to send.
        safe = self._seg_base + self._open_start - self.offset
        return self._emit(min(safe, self._pending_len), final=False)

    def end_segment(self) -> list[common_pb2.AudioChunk]:
        seg_len = self.offset + self._pending_len - self._seg_base
        if seg_len > self._open_start:
            self._close_open(seg_len)
        end = self._seg_base + seg_len
        kept = []
        for v in self._done_visemes:  # a last event may sit past the clause's final sample
            v.end_sample = min(v.end_sample, end)
            if v.end_sample > v.start_sample:
                kept.append(v)
        self._done_visemes = kept
        if self.record is not None:
            audio = np.concatenate(self._seg_audio) if self._seg_audio else np.zeros(0, np.int16)
            self.record.append(SegmentRecord(self._segment, audio, tuple(self._seg_phonemes), self._segment_text))
        return self._emit(self._pending_len, final=True)

    def finish(self) -> common_pb2.AudioChunk:
        msg = common_pb2.AudioChunk(
            request_id=self.request_id,
            seq=self.seq,
            end_of_stream=True,
            sample_rate=self.sample_rate,
            sample_offset=self.offset,
            segment_index=self._segment,
        )
        msg.visemes.extend(self._done_visemes)
        self._done_visemes = []
        self.seq += 1
        return msg

    def _close_open(self, end: int) -> None:
        self._done_visemes.append(
            common_pb2.VisemeEvent(
                viseme=viseme_for(self._open_phoneme),  # type: ignore[arg-type]
                start_sample=self._seg_base + self._open_start,
                end_sample=self._seg_base + end,
                phoneme=self._open_phoneme,
            )
        )

    def _emit(self, available: int, *, final: bool) -> list[common_pb2.AudioChunk]:
        out: list[common_pb2.AudioChunk] = []
        sizes = self._sizes(self._pending_len if final else available)
        count = sum(sizes)
        if final and count < self._pending_len:
            sizes.append(self._pending_len - count)  # the clause's remainder
            count = self._pending_len
        if count <= 0:
            return out
        data = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        take, rest = data[:count], data[count:]
        self._pending = [rest] if rest.size else []
        self._pending_len = int(rest.size)
        start = 0
        for size in sizes:
            piece = take[start : start + size]
            msg = common_pb2.AudioChunk(
                request_id=self.request_id,
                seq=self.seq,
                sample_rate=self.sample_rate,
                sample_offset=self.offset,
                pcm=piece.astype("<i2", copy=False).tobytes(),
                segment_index=self._segment,
            )
            if not self._text_sent:
                msg.segment_text = self._segment_text
                self._text_sent = True
            if start == 0:
                msg.visemes.extend(self._done_visemes)
                self._done_visemes = []
            out.append(msg)
            start += size
            self.offset += int(piece.size)
            self.seq += 1
        return out
