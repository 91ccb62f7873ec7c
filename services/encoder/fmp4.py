"""Fragmented MP4 written by hand: movie fragments out the moment their frames are encoded.

libavformat's mov muxer closes a fragment only when the next packet arrives, after interleaving
the tracks by timestamp, which delays every fragment by a frame or two: a live session's frame
would leave after it is due (and a frame of an interrupted turn after the interrupt), and a Speak's
first fragment would wait for frames 1 and 2. So the encoder takes the init segment (``ftyp`` +
``moov``, with the codecs' configuration) from libavformat and writes the fragments itself:
``moof`` (``mfhd``, one ``traf`` per track with ``tfhd``, ``tfdt``, ``trun``) and ``mdat``. That
also makes re-stamping pre-encoded idle frames trivial: a sample's time is whatever the fragment
says. Used by the live sessions (``live/session.py``) and by Speak's fMP4 (``session.py``).

Times are exact: video sample ``n`` starts at ``floor(n * timescale / fps)`` in the video track's
timescale, and audio samples follow each other without gaps in the audio track's timescale.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av

from services.encoder import boxes

#: sample_depends_on = 2 (an IDR: depends on no other sample)
SYNC_SAMPLE_FLAGS = 0x02000000
#: sample_depends_on = 1, sample_is_non_sync_sample = 1
NON_SYNC_SAMPLE_FLAGS = 0x01010000
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
_TRUN_DATA_OFFSET = 0x000001
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400


@dataclass(frozen=True)
class Track:
    track_id: int
    timescale: int
    handler: bytes  # b"vide" or b"soun"


@dataclass(frozen=True)
class Sample:
    data: bytes
    duration: int  # in the track's timescale
    keyframe: bool = True


def parse_tracks(init: bytes) -> dict[bytes, Track]:
    """The tracks of an init segment by handler type (b"vide", b"soun")."""
    out: dict[bytes, Track] = {}
    for kind, off, size, head in boxes.iter_boxes(init):
        if kind != b"moov":
            continue
        for tkind, toff, tsize, thead in boxes.iter_boxes(init, off + head, off + size):
            if tkind == b"trak":
                track = _parse_trak(init, toff + thead, toff + tsize)
                out[track.handler] = track
    if b"vide" not in out:
        raise ValueError("init segment has no video track")
    return out


def _parse_trak(data: bytes, start: int, end: int) -> Track:
    track_id = timescale = 0
    handler = b""
    for kind, off, size, head in boxes.iter_boxes(data, start, end):
        body = off + head
        if kind == b"tkhd":
            version = data[body]
            (track_id,) = struct.unpack_from(">I", data, body + (20 if version == 1 else 12))
        elif kind == b"mdia":
            for mkind, moff, _msize, mhead in boxes.iter_boxes(data, body, off + size):
                mbody = moff + mhead
                if mkind == b"mdhd":
                    version = data[mbody]
                    (timescale,) = struct.unpack_from(">I", data, mbody + (20 if version == 1 else 12))
                elif mkind == b"hdlr":
                    handler = bytes(data[mbody + 8 : mbody + 12])
    if not (track_id and timescale and handler):
        raise ValueError("init segment: incomplete trak box")
    return Track(track_id, timescale, handler)


def before_start(packet: av.Packet) -> bool:
    """An audio packet that is all encoder priming before sample 0 (or has no time): not sent."""
    return packet.pts is None or packet.pts + (packet.duration or 0) <= 0


def audio_sample(packet: av.Packet, rate: int, timescale: int, frame_size: int) -> Sample:
    """An encoded audio packet (not ``before_start``) as a fragment sample, its duration in the
    track's ``timescale``: the part of it before sample 0 (Opus's priming, 312 samples at 48 kHz) is
    cut, so the track's sample 0 is the input's. ``rate`` is the encoder's sample rate and
    ``frame_size`` its samples per packet (for packets without a duration)."""
    samples = packet.duration or frame_size
    if packet.pts is not None and packet.pts < 0:
        samples += packet.pts
    if packet.time_base is not None and packet.time_base != Fraction(1, rate):
        samples = round(samples * packet.time_base * rate)
    return Sample(bytes(packet), samples * timescale // rate)


def annexb_to_avcc(data: bytes) -> bytes:
    """H.264 Annex B (start codes) to the length-prefixed NAL units MP4 samples hold.

    Call it exactly once per packet: a length prefix can look like a start code."""
    out = bytearray()
    starts: list[tuple[int, int]] = []  # (start code position, payload position)
    i = 0
    n = len(data)
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        code = j - 1 if j > 0 and data[j - 1] == 0 else j
        starts.append((code, j + 3))
        i = j + 3
    for k, (_code, payload) in enumerate(starts):
        stop = starts[k + 1][0] if k + 1 < len(starts) else n
        nal = data[payload:stop]
        if nal:
            out += struct.pack(">I", len(nal)) + nal
    return bytes(out)


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


class FragmentWriter:
    """Writes ``moof`` + ``mdat`` pairs for the tracks of an init segment, keeping decode times."""

    def __init__(self, init: bytes, fps: Fraction) -> None:
        tracks = parse_tracks(init)
        self.video = tracks[b"vide"]
        self.audio = tracks.get(b"soun")
        self.fps = fps
        self.sequence = 0
        self.video_frames = 0  # video samples written so far (their decode time follows from it)
        self.audio_time = 0  # audio decode time in the audio timescale

    def video_time(self, frame: int) -> int:
        """Decode time of video frame ``frame`` in the video timescale (exact, never drifts)."""
        return frame * self.video.timescale * self.fps.denominator // self.fps.numerator

    def frame_duration(self, frame: int) -> int:
        return self.video_time(frame + 1) - self.video_time(frame)

    def fragment(self, video: Sequence[bytes], keyframes: Sequence[bool], audio: Sequence[Sample]) -> bytes:
        """One fragment holding the next ``len(video)`` frames (length-prefixed NAL units, see
        ``annexb_to_avcc``) and the audio ``audio``."""
        self.sequence += 1
        first = self.video_frames
        v_samples = [
            Sample(data, self.frame_duration(first + i), key)
            for i, (data, key) in enumerate(zip(video, keyframes, strict=True))
        ]
        trafs: list[tuple[Track, int, list[Sample]]] = []
        if v_samples:
            trafs.append((self.video, self.video_time(first), v_samples))
        if audio and self.audio is not None:
            trafs.append((self.audio, self.audio_time, list(audio)))
        moof = self._moof(trafs)
        mdat = _box(b"mdat", *(s.data for _t, _time, samples in trafs for s in samples))
        self.video_frames += len(video)
        self.audio_time += sum(s.duration for s in audio)
        return moof + mdat

    def _moof(self, trafs: list[tuple[Track, int, list[Sample]]]) -> bytes:
        # Data offsets are relative to the start of moof, whose size follows from the sample counts:
        # mfhd 16, and per traf 8 + tfhd 16 + tfdt 20 + trun (20 + 12 per sample).
        size = 8 + 16 + sum(8 + 16 + 20 + 20 + 12 * len(samples) for _t, _time, samples in trafs)
        trun_flags = _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS
        parts = [_full_box(b"mfhd", 0, 0, struct.pack(">I", self.sequence))]
        offset = size + 8  # past the mdat header
        for track, time, samples in trafs:
            entries = b"".join(
                struct.pack(">III", s.duration, len(s.data), SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS)
                for s in samples
            )
            parts.append(
                _box(
                    b"traf",
                    _full_box(b"tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", track.track_id)),
                    _full_box(b"tfdt", 1, 0, struct.pack(">Q", time)),
                    _full_box(b"trun", 0, trun_flags, struct.pack(">Ii", len(samples), offset), entries),
                )
            )
            offset += sum(len(s.data) for s in samples)
        moof = _box(b"moof", *parts)
        assert len(moof) == size
        return moof
