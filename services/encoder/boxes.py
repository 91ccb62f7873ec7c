"""Small ISO-BMFF (MP4) helpers: top-level box framing, the H.264 codecs string, moov relocation."""

from __future__ import annotations

import struct
from collections.abc import Iterator

_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex", b"udta"}


def _box_header(data: bytes | bytearray | memoryview, offset: int, end: int) -> tuple[int, bytes, int] | None:
    """(size, type, header length) of the box at ``offset``, or None when its header is incomplete."""
    if end - offset < 8:
        return None
    size, kind = struct.unpack_from(">I4s", data, offset)
    header = 8
    if size == 1:
        if end - offset < 16:
            return None
        (size,) = struct.unpack_from(">Q", data, offset + 8)
        header = 16
    elif size == 0:
        size = end - offset
    if size < header:
        raise ValueError(f"corrupt box {kind!r} of size {size} at {offset}")
    return size, kind, header


def iter_boxes(
    data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None
) -> Iterator[tuple[bytes, int, int, int]]:
    """Yields (type, offset, size, header length) of the complete boxes in ``data[start:end]``."""
    end = len(data) if end is None else end
    offset = start
    while True:
        head = _box_header(data, offset, end)
        if head is None:
            return
        size, kind, header = head
        if offset + size > end:
            return
        yield kind, offset, size, header
        offset += size


def avc_codecs_string(extradata: bytes) -> str:
    """RFC 6381 codecs string ("avc1.PPCCLL") from avcC or Annex B extradata (SPS/PPS)."""
    if len(extradata) >= 4 and extradata[0] == 1:  # AVCDecoderConfigurationRecord
        profile, compat, level = extradata[1], extradata[2], extradata[3]
        return f"avc1.{profile:02X}{compat:02X}{level:02X}"
    data = bytes(extradata)
    i = 0
    while True:
        i = data.find(b"\x00\x00\x01", i)
        if i < 0 or i + 6 > len(data):
            break
        nal = data[i + 3]
        if nal & 0x1F == 7:  # sequence parameter set
            return f"avc1.{data[i + 4]:02X}{data[i + 5]:02X}{data[i + 6]:02X}"
        i += 3
    raise ValueError("no H.264 SPS in the encoder's extradata")


def faststart(data: bytes) -> bytes:
    """Moves ``moov`` in front of ``mdat`` (a progressive-download MP4), fixing chunk offsets.

    FFmpeg's own +faststart re-reads the output by file name, which an in-memory output does not
    have; this does the same rewrite in memory.
    """
    boxes = list(iter_boxes(data))
    kinds = [b[0] for b in boxes]
    if b"moov" not in kinds or b"mdat" not in kinds:
        raise ValueError("not a complete MP4 file (moov or mdat missing)")
    moov_i, mdat_i = kinds.index(b"moov"), kinds.index(b"mdat")
    if moov_i < mdat_i:
        return data
    _k, moov_off, moov_size, _h = boxes[moov_i]
    moov = bytearray(data[moov_off : moov_off + moov_size])
    _shift_chunk_offsets(moov, 0, len(moov), moov_size)
    out = bytearray()
    for kind, offset, size, _header in boxes:
        if kind == b"mdat" and offset == boxes[mdat_i][1]:
            out += moov
        if kind != b"moov":
            out += data[offset : offset + size]
    return bytes(out)


def _shift_chunk_offsets(buf: bytearray, start: int, end: int, delta: int) -> None:
    for kind, offset, size, header in list(iter_boxes(buf, start, end)):
        body = offset + header
        if kind in _CONTAINER_BOXES:
            _shift_chunk_offsets(buf, body, offset + size, delta)
        elif kind == b"stco":
            (count,) = struct.unpack_from(">I", buf, body + 4)
            for n in range(count):
                pos = body + 8 + 4 * n
                (value,) = struct.unpack_from(">I", buf, pos)
                if value + delta > 0xFFFFFFFF:
                    raise ValueError("file too large for 32-bit chunk offsets")
                struct.pack_into(">I", buf, pos, value + delta)
        elif kind == b"co64":
            (count,) = struct.unpack_from(">I", buf, body + 4)
            for n in range(count):
                pos = body + 8 + 8 * n
                (value,) = struct.unpack_from(">Q", buf, pos)
                struct.pack_into(">Q", buf, pos, value + delta)
