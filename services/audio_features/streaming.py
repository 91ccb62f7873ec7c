"""Streaming feature extraction: audio in, per-video-frame features out, as early as possible.

``FeatureStream`` is the whole per-request pipeline (blocking; the servicer runs it in a thread):

    source PCM ──▶ ActivityMeter (activity.py: source clock, zero look-ahead)
        └──────▶ Resampler (soxr, to 16 kHz) ──▶ tensor extractor (Whisper log-mel | Wav2Lip mel |
                                                                   Whisper-encoder embedding)

``push`` returns the frames whose inputs are complete; ``finish`` flushes the rest, so that exactly
``frame_count = ceil(source_samples * fps / sr)`` frames come out, in order. Every step depends only
on sample positions, never on how the audio was chunked, so streamed output equals offline output
(``extract_offline``) for the same audio.

Clocks: video frame ``i`` covers source samples ``[i*sr//fps, (i+1)*sr//fps)`` and 16 kHz samples
``[i*16000//fps, (i+1)*16000//fps)`` (exact rational arithmetic, so 29.97 fps works too).

Streaming Whisper log-mel clamp: the reference clamps every column to ``max - 8`` where ``max`` is
the maximum over the *whole* input, which a stream does not know yet. The stream clamps the columns
of frame ``i`` against the running maximum ``R_i`` over all columns of frames ``0..i`` (no extra
look-ahead). Values at or above ``max - 8`` are identical; a value below it differs from the reference
by at most ``(max - R_i) / 4`` on the output scale, and not at all once the loudest column has
arrived (``R_i == max``). In speech this only touches quiet columns (silence, weak high bins)
before the first loud syllable; ``tests/audio_features/test_reference.py`` checks the bound.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import soxr

from services.audio_features import dsp
from services.audio_features.activity import Activity, ActivityConfig, ActivityMeter, LevelState
from services.audio_features.backends.base import WhisperEncoder
from services.audio_features.cache import BlockCache
from talkmesh.common.clock import frame_start_sample, frames_for_samples

SR16 = dsp.SAMPLE_RATE


@dataclass
class Frame:
    index: int
    rms_dbfs: float
    voiced: bool
    loudness: float
    features: np.ndarray | None = None


# -- resampling -----------------------------------------------------------------------------------
class Resampler:
    """Streaming resampler to 16 kHz. soxr keeps its filter state across chunks, its output does not
    depend on the chunking, and after the final flush the total is ``round(n_in * 16000 / sr)``: no
    drift however long the stream."""

    def __init__(self, sample_rate: int, quality: str = "HQ") -> None:
        self.sample_rate = sample_rate
        self._stream = (
            None if sample_rate == SR16 else soxr.ResampleStream(sample_rate, SR16, 1, dtype="float32", quality=quality)
        )

    def push(self, x: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x.astype(np.float32, copy=False))

    def finish(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


# -- centred STFT framing of a growing signal -----------------------------------------------------
class StreamingFramer:
    """Produces the windowed frames of a centred, reflect-padded STFT as the signal grows.

    Frame ``j`` covers padded indices ``[j*hop, j*hop + n_fft)``; it is complete before the end of
    the stream once the signal reaches it (the left reflection needs ``n_fft//2 + 1`` samples). At
    the end the right reflection is appended and the remaining ``1 + n // hop`` frames come out.
    The padded samples are exactly those of ``dsp.reflect_pad`` on the whole signal.
    """

    def __init__(self, spec: dsp.MelSpec) -> None:
        self.spec = spec
        self._raw: list[np.ndarray] = []  # samples before the left padding could be built
        self._buf = np.zeros(0)  # padded signal from padded index self._base
        self._base = 0
        self._started = False
        self.samples = 0
        self.next_frame = 0

    def _take(self, last: int) -> np.ndarray:
        frames = dsp.frame_columns(self._buf, self.spec, self.next_frame, last - self.next_frame, self._base)
        self.next_frame = last
        keep_from = min(self.next_frame * self.spec.hop, self._base + len(self._buf) - (self.spec.pad + 1))
        if keep_from > self._base:
            self._buf = self._buf[keep_from - self._base :]
            self._base = keep_from
        return frames

    def push(self, x: np.ndarray) -> np.ndarray:
        pad = self.spec.pad
        self.samples += len(x)
        if not self._started:
            self._raw.append(np.asarray(x, dtype=np.float64))
            if self.samples <= pad:
                return np.zeros((0, self.spec.n_fft))
            raw = np.concatenate(self._raw)
            self._raw = []
            self._buf = np.concatenate([raw[pad:0:-1], raw])
            self._started = True
        else:
            self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        available = self._base + len(self._buf)  # padded samples known so far
        last = max(self.next_frame, (available - self.spec.n_fft) // self.spec.hop + 1)
        return self._take(last)

    def finish(self) -> np.ndarray:
        pad = self.spec.pad
        if self.samples == 0:
            return np.zeros((0, self.spec.n_fft))
        if not self._started:
            self._buf = dsp.reflect_pad(np.concatenate(self._raw), pad)
            self._raw = []
            self._started = True
        else:
            tail = self._buf[len(self._buf) - pad - 1 : len(self._buf) - 1]
            self._buf = np.concatenate([self._buf, tail[::-1]])
        return self._take(1 + self.samples // self.spec.hop)


# -- tensor extractors (16 kHz clock) -------------------------------------------------------------
class TensorExtractor(ABC):
    """Turns 16 kHz audio into per-frame tensors; ``finish(frames)`` flushes up to ``frames``."""

    def __init__(self, fps: Fraction) -> None:
        self.fps = fps
        self.next_frame = 0

    @abstractmethod
    def push(self, x: np.ndarray) -> list[tuple[int, np.ndarray]]: ...

    @abstractmethod
    def finish(self, frames: int) -> list[tuple[int, np.ndarray]]: ...


class WhisperLogMelExtractor(TensorExtractor):
    """The 100 Hz Whisper log-mel columns of each frame: ``[80, c(i+1) - c(i)]`` with
    ``c(i) = floor(i * 100 / fps)`` ([80, 4] at 25 fps). The audio is zero-padded to the end of the
    last video frame (Whisper itself pads with zeros), so every frame gets its full columns.
    Look-ahead: 40 samples (2.5 ms) past the end of the frame, for the half window of its last column."""

    def __init__(self, fps: Fraction) -> None:
        super().__init__(fps)
        self._framer = StreamingFramer(dsp.WHISPER)
        self._cols = np.zeros((dsp.WHISPER.n_mels, 0))
        self._cols_base = 0
        self._running_max = -math.inf

    def _col(self, i: int) -> int:
        return frame_start_sample(i, 100, self.fps)  # Whisper: 100 mel columns a second

    def _add(self, frames: np.ndarray) -> None:
        if len(frames):
            self._cols = np.concatenate([self._cols, dsp.whisper_log10_columns(frames)], axis=1)

    def _emit(self, limit: int | None) -> list[tuple[int, np.ndarray]]:
        out = []
        available = self._cols_base + self._cols.shape[1]
        while limit is None or self.next_frame < limit:
            c0, c1 = self._col(self.next_frame), self._col(self.next_frame + 1)
            if c1 > available:
                break
            block = self._cols[:, c0 - self._cols_base : c1 - self._cols_base]
            if block.size:
                self._running_max = max(self._running_max, float(block.max()))
            out.append((self.next_frame, dsp.whisper_scale(block, self._running_max).astype(np.float32)))
            self.next_frame += 1
        drop = self._col(self.next_frame) - self._cols_base
        if drop > 0:
            self._cols = self._cols[:, drop:]
            self._cols_base += drop
        return out

    def push(self, x: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self._add(self._framer.push(x))
        return self._emit(None)

    def finish(self, frames: int) -> list[tuple[int, np.ndarray]]:
        padded = -((-frames * SR16 * self.fps.denominator) // self.fps.numerator)
        if padded > self._framer.samples:
            self._add(self._framer.push(np.zeros(padded - self._framer.samples)))
        self._add(self._framer.finish())
        return self._emit(frames)


class Wav2LipMelExtractor(TensorExtractor):
    """Wav2Lip's ``[80, 16]`` mel window per frame, starting at mel frame ``int(80 * i / fps)``;
    windows running past the end are clamped to the last 16 mel frames (known at end of stream).
    Look-ahead: 16 mel frames from the window start plus half an FFT window, about 170 ms at 25 fps."""

    def __init__(self, fps: Fraction) -> None:
        super().__init__(fps)
        self._framer = StreamingFramer(dsp.WAV2LIP)
        self._previous = 0.0
        self._cols = np.zeros((dsp.WAV2LIP.n_mels, 0), dtype=np.float32)
        self._cols_base = 0

    def _start(self, i: int) -> int:
        return frame_start_sample(i, 80, self.fps)  # Wav2Lip: 80 mel frames a second

    def _add(self, frames: np.ndarray) -> None:
        if len(frames):
            cols = dsp.wav2lip_scale_columns(frames).astype(np.float32)
            self._cols = np.concatenate([self._cols, cols], axis=1)

    def _trim(self, keep_from: int) -> None:
        drop = keep_from - self._cols_base
        if drop > 0:
            self._cols = self._cols[:, drop:]
            self._cols_base += drop

    def push(self, x: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if len(x):
            emphasised = dsp.preemphasis(x, self._previous)
            self._previous = float(x[-1])
            self._add(self._framer.push(emphasised))
        out = []
        available = self._cols_base + self._cols.shape[1]
        while True:
            s = self._start(self.next_frame)
            if s + dsp.WAV2LIP_WINDOW > available:
                break
            local = s - self._cols_base
            out.append((self.next_frame, np.ascontiguousarray(self._cols[:, local : local + dsp.WAV2LIP_WINDOW])))
            self.next_frame += 1
        # keep what the next window (or, at the end, the clamped last window) may still need
        self._trim(min(self._start(self.next_frame), available - dsp.WAV2LIP_WINDOW))
        return out

    def finish(self, frames: int) -> list[tuple[int, np.ndarray]]:
        self._add(self._framer.finish())
        out = []
        total = self._cols_base + self._cols.shape[1]
        for i in range(self.next_frame, frames):
            start = min(self._start(i), max(0, total - dsp.WAV2LIP_WINDOW))
            out.append((i, dsp.wav2lip_window(self._cols[:, start - self._cols_base :], 0)))
        self.next_frame = max(self.next_frame, frames)
        return out


@dataclass(frozen=True)
class EmbeddingGeometry:
    """How the Whisper encoder is run over a stream, in Whisper frames (50 Hz, 320 samples).

    The reference (MuseTalk's offline recipe) cuts the audio into segments of ``window`` frames (30 s),
    encodes each segment zero-padded to the window and keeps the hidden states of its frames: frame
    ``t`` is encoded at position ``t % window`` of segment ``t // window``, seeing the whole segment.

    The stream cuts each segment into blocks of ``block`` frames (the last block of a segment may be
    shorter: blocks never cross a segment boundary). The block ``[first, end)`` of the segment starting
    at frame ``s`` is encoded from the clip ``[max(s, first - left), min(s + window, end + right))``
    (clipped to the audio) placed at its TRUE position in the segment's window, the rest of the window
    silent (zeros) like the extractor's own padding; its hidden states for ``[first, end)`` are kept.
    Positions are therefore exactly the reference's; what differs is only that the encoder's attention
    sees silence instead of the segment's audio beyond the contexts (see the audio features README for
    the measured error). ``block = window, left = right = 0`` IS the reference. Memory stays flat: one
    window at a time.
    """

    block: int
    left: int
    right: int
    window: int  # encoder output frames per window (1500 for Whisper)
    # Per-frame windows reaching outside the audio: "zero" rows (MuseTalk 1.5) or the first/last
    # frame's states repeated (MuseTalk 1.0). See MUSETALK_VERSIONS.
    padding: str = "zero"
    # The part of the encoder window the block cannot know yet (the segment's future, and its past
    # beyond the left context): "silence", or "repeat" the clip periodically (then silence after the
    # end of the audio once the stream has ended, as the reference has).
    fill: str = "silence"

    def validate(self) -> None:
        if self.block < 1 or self.left < 0 or self.right < 0:
            raise ValueError("embedding block must be at least one frame and contexts non-negative")
        if self.padding not in PADDINGS:
            raise ValueError(f"embedding padding {self.padding!r} is not one of {PADDINGS}")
        if self.fill not in FILLS:
            raise ValueError(f"embedding fill {self.fill!r} is not one of {FILLS}")
        if self.block > self.window:
            raise ValueError(f"embedding block ({self.block} frames) exceeds the encoder window ({self.window} frames)")

    def block_end(self, first: int) -> int:
        """End (exclusive) of the block starting at Whisper frame ``first``."""
        segment = first - first % self.window
        return min(segment + self.window, segment + ((first - segment) // self.block + 1) * self.block)

    def clip(self, first: int, end: int) -> tuple[int, int, int]:
        """``(segment start, clip start, clip end)`` in Whisper frames for the block ``[first, end)``."""
        segment = first - first % self.window
        return segment, max(segment, first - self.left), min(segment + self.window, end + self.right)


PADDINGS = ("zero", "edge")
FILLS = ("silence", "repeat")


@dataclass(frozen=True)
class MuseTalkVersion:
    """How a MuseTalk release turns Whisper-tiny into its audio features. Both stack the embedding
    output and every encoder layer (5 states for tiny) over the same 10-frame window per video frame.

    * 1.5 (``musetalk/utils/audio_processor.py``): transformers' ``hidden_states``, whose last entry
      has the encoder's final LayerNorm applied; windows padded with zero states.
    * 1.0 (``musetalk/whisper/audio2feature.py`` on openai-whisper): the output of every block with
      NO final LayerNorm (``ln_post`` comes after the collected states); window indices clamped to
      the audio, i.e. the first and last frames' states repeated.
    """

    version: str
    final_layer_norm: bool
    padding: str

    def refusal(self, name: str, release: tuple[str | None, bool | None]) -> str:
        """Why audio_features refuses the Whisper encoder ``name`` of ``release`` (the MuseTalk
        release it was exported for, whether its last state has the final LayerNorm; None: not
        known; ``backends.onnx.encoder_release`` reads them) for this release, or "" (its check at
        start; doctor makes the same)."""
        exported_for, final_layer_norm = release
        if exported_for is not None and exported_for != self.version:
            return (
                f"musetalk.version {self.version}: the Whisper encoder {name} was exported for "
                f"MuseTalk {exported_for} (its talkmesh.musetalk_version); set musetalk.version: "
                f"{exported_for}, or re-export it: python -m tools.export_whisper_encoder "
                f"--musetalk-version {self.version}"
            )
        if final_layer_norm is not None and final_layer_norm != self.final_layer_norm:
            return (
                f"musetalk.version {self.version}: needs a Whisper encoder "
                f"{'with' if self.final_layer_norm else 'without'} its final LayerNorm on the last state, "
                f"{name} is {'with' if final_layer_norm else 'without'} "
                f"(re-export it: python -m tools.export_whisper_encoder --musetalk-version {self.version})"
            )
        return ""


MUSETALK_VERSIONS = {
    "1.5": MuseTalkVersion("1.5", final_layer_norm=True, padding="zero"),
    "1.0": MuseTalkVersion("1.0", final_layer_norm=False, padding="edge"),
}


WHISPER_FRAME = 320  # 16 kHz samples per encoder output frame (hop 160, conv stride 2)
# MuseTalk: 2 video frames of context on each side: a window of 2 * (2 + 2 + 1) Whisper frames.
EMBED_PAD_FRAMES = 2
EMBED_WINDOW = 2 * (EMBED_PAD_FRAMES + EMBED_PAD_FRAMES + 1)


class WhisperEmbeddingExtractor(TensorExtractor):
    """Whisper-encoder hidden states (embedding output + every layer) per video frame, MuseTalk style:
    Whisper frames ``[floor(i*50/fps) - 2*ceil(50/fps), ... + 10)``, padded outside the audio
    (``t < 0``, ``t >= n16 // 320``) as ``geometry.padding`` says (zeros, or the edge frames
    repeated), ``[10, layers, width]`` reshaped to ``[10 * layers, width]`` ([50, 384] for
    Whisper-tiny). Each block is encoded at its true position in its 30 s segment (``EmbeddingGeometry``).
    Look-ahead: up to one block plus the right context (less at a segment's end) plus 6 Whisper frames."""

    def __init__(
        self, fps: Fraction, encoder: WhisperEncoder, geometry: EmbeddingGeometry, cache: BlockCache | None
    ) -> None:
        super().__init__(fps)
        self.encoder = encoder
        self.geo = geometry
        self.cache = cache
        self._audio = np.zeros(0, dtype=np.float32)  # 16 kHz samples from self._audio_base
        self._audio_base = 0
        self.samples = 0
        self._states: deque[np.ndarray] = deque()  # [layers, width] per Whisper frame from _states_base
        self._states_base = 0
        self._next_first = 0  # first Whisper frame of the next block to encode
        self._zero = np.zeros((encoder.layers, encoder.width), dtype=np.float32)
        self._edge = geometry.padding == "edge"
        self._first_state: np.ndarray | None = None  # frame 0's states (edge padding)
        self._last_state: np.ndarray | None = None  # the latest computed frame's states

    def _window_start(self, i: int) -> int:
        first = frame_start_sample(i, 50, self.fps)  # the encoder: 50 states a second
        pad = -((-50 * self.fps.denominator) // self.fps.numerator)  # ceil(50 / fps)
        return first - pad * EMBED_PAD_FRAMES

    def _run_block(self, first: int, end: int, valid_frames: int, ended: bool) -> None:
        g = self.geo
        segment, lo, hi = g.clip(first, end)
        clip = self._audio[
            lo * WHISPER_FRAME - self._audio_base : min(self.samples, hi * WHISPER_FRAME) - self._audio_base
        ]
        position = lo - segment  # where the clip sits in the encoder window (Whisper frames)
        offset = first - lo
        count = min(end, valid_frames) - first
        # "repeat": the window outside the clip is the clip's periodic extension, except after the
        # end of the audio once it is known (silence there, as in the reference)
        silent_after = None if g.fill == "silence" else (len(clip) + position * WHISPER_FRAME if ended else -1)
        key = None
        states = None
        if self.cache is not None:
            key = self.cache.key(clip, position, offset, count, extra=(-2 if silent_after is None else silent_after,))
            states = self.cache.get(key)
        if states is None:
            mel = dsp.whisper_log_mel(self._window(clip, position * WHISPER_FRAME, silent_after))
            hidden = self.encoder.encode(mel[None].astype(np.float32))[0]  # [layers, window, width]
            at = position + offset
            states = np.ascontiguousarray(hidden[:, at : at + count].transpose(1, 0, 2))
            if self.cache is not None and key is not None:
                self.cache.put(key, states)
        self._states.extend(states)
        if len(states):
            if self._first_state is None:
                self._first_state = states[0]
            self._last_state = states[-1]
        self._next_first = end
        # audio before the next block's left context is no longer needed
        keep = max(0, end - g.left) * WHISPER_FRAME
        if keep > self._audio_base:
            self._audio = self._audio[keep - self._audio_base :]
            self._audio_base = keep

    def _window(self, clip: np.ndarray, at: int, silent_after: int | None) -> np.ndarray:
        """The encoder's 30 s input: ``clip`` at sample ``at``; elsewhere silence (``silent_after`` None)
        or the clip's periodic extension, silent from sample ``silent_after`` when that is >= 0."""
        n = self.geo.window * WHISPER_FRAME
        if silent_after is None or len(clip) == 0:
            window = np.zeros(n, dtype=np.float64)
            window[at : at + len(clip)] = clip
            return window
        window = np.asarray(clip, dtype=np.float64)[(np.arange(n) - at) % len(clip)]
        if silent_after >= 0:
            window[silent_after:] = 0.0
        return window

    def _emit(self, computed: int, valid: int | None, limit: int | None) -> list[tuple[int, np.ndarray]]:
        """Frames whose window lies in computed states (or past ``valid``, the end of the audio)."""
        out = []
        while limit is None or self.next_frame < limit:
            t0 = self._window_start(self.next_frame)
            t_end = t0 + EMBED_WINDOW
            if valid is None and t_end > computed:
                break
            rows = []
            known = computed if valid is None else min(valid, computed)
            for t in range(t0, t_end):
                if 0 <= t < known:
                    rows.append(self._states[t - self._states_base])
                elif self._edge and known > 0 and self._first_state is not None and self._last_state is not None:
                    rows.append(self._first_state if t < 0 else self._last_state)  # t >= valid: at the end
                else:
                    rows.append(self._zero)
            out.append((self.next_frame, np.stack(rows).reshape(-1, self.encoder.width)))
            self.next_frame += 1
        drop = max(0, self._window_start(self.next_frame)) - self._states_base
        for _ in range(min(drop, len(self._states))):
            self._states.popleft()
            self._states_base += 1
        return out

    def push(self, x: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self._audio = np.concatenate([self._audio, x.astype(np.float32, copy=False)])
        self.samples += len(x)
        while True:
            first = self._next_first
            end = self.geo.block_end(first)
            if self.geo.clip(first, end)[2] * WHISPER_FRAME > self.samples:
                break
            self._run_block(first, end, valid_frames=end, ended=False)
        return self._emit(self._next_first, None, None)

    def finish(self, frames: int) -> list[tuple[int, np.ndarray]]:
        valid = self.samples // WHISPER_FRAME
        while self._next_first < valid:
            self._run_block(self._next_first, self.geo.block_end(self._next_first), valid_frames=valid, ended=True)
        return self._emit(valid, valid, frames)


# -- the whole pipeline -----------------------------------------------------------------------------
class FeatureKind:
    WHISPER_LOG_MEL = "whisper_log_mel"
    WAV2LIP_MEL = "wav2lip_mel"
    WHISPER_EMBEDDING = "whisper_embedding"
    ACTIVITY = "activity"


@dataclass(frozen=True)
class StreamOptions:
    kind: str
    fps: Fraction
    sample_rate: int
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    resample_quality: str = "HQ"
    #: where the activity's floor and peak start (the previous stream's end state), if anywhere
    activity_start: LevelState | None = None


class FeatureStream:
    """One request's pipeline. Not thread-safe: one caller at a time (the servicer's stream)."""

    def __init__(
        self,
        options: StreamOptions,
        encoder: WhisperEncoder | None = None,
        geometry: EmbeddingGeometry | None = None,
        cache: BlockCache | None = None,
    ) -> None:
        self.options = options
        self.activity = ActivityMeter(options.sample_rate, options.fps, options.activity, options.activity_start)
        self.tensors: TensorExtractor | None
        if options.kind == FeatureKind.ACTIVITY:
            self.tensors = None
        elif options.kind == FeatureKind.WHISPER_LOG_MEL:
            self.tensors = WhisperLogMelExtractor(options.fps)
        elif options.kind == FeatureKind.WAV2LIP_MEL:
            self.tensors = Wav2LipMelExtractor(options.fps)
        elif options.kind == FeatureKind.WHISPER_EMBEDDING:
            if encoder is None or geometry is None:
                raise ValueError("the Whisper embedding needs an encoder and a block geometry")
            self.tensors = WhisperEmbeddingExtractor(options.fps, encoder, geometry, cache)
        else:
            raise ValueError(f"unknown feature kind {options.kind!r}")
        self.resampler = Resampler(options.sample_rate, options.resample_quality) if self.tensors else None
        self._levels: deque[Activity] = deque()
        self._features: deque[tuple[int, np.ndarray]] = deque()
        self.frames_out = 0
        self.finished = False

    @property
    def source_samples(self) -> int:
        return self.activity.samples

    def _merge(self) -> list[Frame]:
        out = []
        while self._levels and (self.tensors is None or self._features):
            a = self._levels.popleft()
            features = None
            if self.tensors is not None:
                j, features = self._features.popleft()
                assert a.index == j, f"activity frame {a.index} met feature frame {j}"
            out.append(Frame(a.index, a.rms_dbfs, a.voiced, a.loudness, features))
        self.frames_out += len(out)
        return out

    def push(self, pcm: np.ndarray) -> list[Frame]:
        """``pcm``: source samples as float32 in [-1, 1]."""
        self._levels.extend(self.activity.push(pcm))
        if self.tensors is not None and self.resampler is not None:
            self._features.extend(self.tensors.push(self.resampler.push(pcm)))
        return self._merge()

    def finish(self) -> list[Frame]:
        self.finished = True
        self._levels.extend(self.activity.finish())
        total = self.frame_count
        if self.tensors is not None and self.resampler is not None:
            tail = self.resampler.finish()
            if len(tail):
                self._features.extend(self.tensors.push(tail))
            self._features.extend(self.tensors.finish(total))
        out = self._merge()
        assert self.frames_out == total and not self._levels and not self._features
        return out

    @property
    def frame_count(self) -> int:
        return frames_for_samples(self.activity.samples, self.options.sample_rate, self.options.fps)


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """PCM s16le bytes to float32 samples in [-1, 1)."""
    return (np.frombuffer(pcm, dtype="<i2").astype(np.float32)) / 32768.0


def extract_offline(
    samples: np.ndarray,
    options: StreamOptions,
    encoder: WhisperEncoder | None = None,
    geometry: EmbeddingGeometry | None = None,
) -> list[Frame]:
    """All frames of ``samples`` (float32 source samples) in one go: the streaming yardstick."""
    stream = FeatureStream(options, encoder, geometry)
    return stream.push(samples) + stream.finish()
