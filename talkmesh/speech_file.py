"""Reading the caller's recording for ``talkmesh say --audio``: mono 16-bit PCM and its rate.

PCM WAV files (8, 16, 24 or 32-bit integer samples, any number of channels) are read with the
standard library; other formats (float WAV, MP3, M4A, Ogg, WebM...) with PyAV when it is
installed (it comes with talkmesh's `encoder` or `all` extras). Channels are averaged; a rate the
gateway does not take (outside 8..48 kHz) is resampled to 48 kHz (PyAV) or refused (WAV). A WAV
file whose header was never finished (0 bytes of data, the samples after it) is read by PyAV too.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from talkmesh.common.clock import MAX_CALLER_RATE as MAX_RATE
from talkmesh.common.clock import MIN_CALLER_RATE as MIN_RATE


class SpeechFileError(ValueError):
    """The file cannot be read as speech; the message names the file and what to do."""


def read_speech(path: str | Path) -> tuple[bytes, int]:
    """(mono s16le PCM, sample rate) of the recording at ``path``; SpeechFileError if it holds none."""
    path = Path(path)
    if path.is_dir():
        raise SpeechFileError(f"{path}: is a directory, not a recording")
    if not path.is_file():
        raise SpeechFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise SpeechFileError(f"{path}: holds no audio (an empty file)")
    pcm, rate = _read(path)
    if not pcm:
        raise SpeechFileError(f"{path}: holds no audio")
    return pcm, rate


def _read(path: Path) -> tuple[bytes, int]:
    try:
        return _read_wav(path)
    except (wave.Error, EOFError, _RateError, _UnfinishedError) as exc:
        read_by_pyav = isinstance(exc, (_RateError, _UnfinishedError))  # PyAV, if it is here
        why = str(exc) if read_by_pyav else "not a PCM WAV file"
    try:
        import av  # noqa: F401
    except ImportError:
        raise SpeechFileError(
            f"{path}: {why}; other formats and rates need PyAV (pip install av), "
            f"or convert it: ffmpeg -i {path} -ac 1 -ar 16000 speech.wav"
        ) from None
    return _read_av(path)


class _RateError(ValueError):
    """A WAV file at a rate the gateway does not take (PyAV resamples it)."""


class _UnfinishedError(ValueError):
    """A WAV file whose header says it holds no samples while bytes follow it (FFmpeg reads them)."""


def _read_wav(path: Path) -> tuple[bytes, int]:
    with path.open("rb") as f, wave.open(f, "rb") as w:
        channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        raw = w.readframes(frames)
        after = path.stat().st_size - f.tell()  # a recorder stopped before writing the sizes leaves 0 frames
        f.seek(4)
        riff_size = int.from_bytes(f.read(4), "little")  # what the file holds, by its header (-1: unknown)
    # (a finished file's chunks after an empty data chunk, a LIST, are within its RIFF size: not samples)
    unfinished = riff_size == 0xFFFFFFFF or 8 + riff_size < path.stat().st_size
    if not raw and after >= width * channels and unfinished:
        raise _UnfinishedError(f"its header says it holds no audio, but {after} bytes follow (unfinished?)")
    if width not in (1, 2, 3, 4):
        raise SpeechFileError(f"{path}: {8 * width}-bit WAV samples are not supported")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _RateError(f"{rate} Hz is outside {MIN_RATE}..{MAX_RATE}")
    usable = len(raw) - len(raw) % (width * channels)  # a truncated file's last partial frame goes
    data = np.frombuffer(raw[:usable], np.uint8).reshape(-1, width)
    if width == 1:  # unsigned 8-bit
        samples = (data[:, 0].astype(np.int32) - 128) << 24
    else:  # little-endian signed: the top bytes make a 32-bit sample
        padded = np.zeros((len(data), 4), np.uint8)
        padded[:, 4 - width :] = data
        samples = padded.view("<i4")[:, 0]
    mono = samples.reshape(-1, channels).astype(np.float64).mean(axis=1)
    return np.clip(np.round(mono / 65536.0), -32768, 32767).astype("<i2").tobytes(), rate


def _read_av(path: Path) -> tuple[bytes, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise SpeechFileError(f"{path}: has no audio track")
            stream = container.streams.audio[0]
            rate = stream.rate if MIN_RATE <= (stream.rate or 0) <= MAX_RATE else MAX_RATE
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            pcm = bytearray()
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pcm += out.to_ndarray().astype("<i2").tobytes()
            for out in resampler.resample(None):
                pcm += out.to_ndarray().astype("<i2").tobytes()
    except av.FFmpegError as exc:
        if _mp4_without_index(path):
            raise SpeechFileError(
                f"{path}: an MP4 (M4A) file without its index (no moov box): the recording was cut short before "
                "the recorder finished writing it; stop the recording, then export or share it again"
            ) from None
        why = getattr(exc, "strerror", None) or "not a format FFmpeg knows"
        raise SpeechFileError(f"{path}: cannot decode it as audio ({why})") from None
    return bytes(pcm), rate


def _mp4_without_index(path: Path) -> bool:
    """Whether the file is an MP4 (it starts with an ``ftyp`` box) none of whose top-level boxes
    is its index, ``moov`` (a recorder writes it last: a file copied or cut before then has none).
    Reads the boxes' headers only."""
    size = path.stat().st_size
    with path.open("rb") as f:
        at = 0
        while at + 8 <= size:
            f.seek(at)
            head = f.read(16)
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if at == 0 and kind != b"ftyp":
                return False
            if kind == b"moov":
                return False
            if length == 1 and len(head) == 16:  # a 64-bit size follows the type
                length = int.from_bytes(head[8:16], "big")
            if length == 0:  # the last box, to the end of the file
                break
            if length < 8:
                return False  # not boxes after all: not ours to name
            at += length
    return size >= 8
