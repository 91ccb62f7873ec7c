"""Piper voices: a VITS model exported to ONNX plus its ``.onnx.json`` config, run with ONNX Runtime.

A voice ``<name>`` is ``<voices_dir>/<name>.onnx`` with ``<name>.onnx.json`` beside it. From the
config we use ``audio.sample_rate``, ``espeak.voice`` (the phonemizer's voice), ``phoneme_id_map``
(phoneme -> list of ids), optional ``phoneme_map`` (phoneme -> replacement phonemes),
``inference`` (``noise_scale``, ``length_scale``, ``noise_w``) and ``num_speakers``.

Phonemes come from the same eSpeak NG engine as the embedded voices (IPA, NFD-decomposed into
codepoints), with the clause's final punctuation kept as a phoneme like Piper's own phonemizer.
Ids are ``^ _ (phoneme _)* $``: begin, pad after every phoneme, end. The model takes ``input``
``[1, N]`` int64, ``input_lengths`` ``[1]``, ``scales`` ``[3]`` float32 (noise, length, noise_w) and,
for multi-speaker voices, ``sid`` ``[1]``; it returns float audio ``[1, 1, T]`` in -1..1.

Piper models return no phoneme durations, so viseme timings are eSpeak's timings for the same
clause, stretched linearly onto the Piper audio (an approximation; the order is exact).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import unicodedata
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.tts.backends.base import PcmBlock, PhonemeEvent, TTSBackend, VoiceInfo, VoiceSettings, VoiceUnavailable
from services.tts.backends.espeak import espeak_params
from services.tts.config import PiperConfig
from services.tts.engine import EspeakEngine, EspeakVoiceError
from services.tts.text import final_punctuation, is_sentence_end
from talkmesh.common.onnx import ExecutionConfig, ModelError, OnnxSession, open_session

log = logging.getLogger(__name__)

BOS, EOS, PAD = "^", "$", "_"


class PiperVoiceError(ValueError):
    """A Piper voice file or its config is unusable; the message names the file."""


@dataclass(frozen=True)
class PiperVoiceConfig:
    sample_rate: int
    espeak_voice: str
    phoneme_id_map: dict[str, list[int]]
    phoneme_map: dict[str, list[str]] = field(default_factory=dict)
    noise_scale: float = 0.667
    length_scale: float = 1.0
    noise_w: float = 0.8
    num_speakers: int = 1
    language: str = ""

    @classmethod
    def from_json(cls, path: Path) -> PiperVoiceConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            inference = data.get("inference", {})
            id_map = {str(k): [int(i) for i in v] for k, v in data["phoneme_id_map"].items()}
            for needed in (BOS, EOS, PAD):
                if needed not in id_map:
                    raise PiperVoiceError(f"{path}: phoneme_id_map has no {needed!r}")
            phoneme_map = {str(k): [str(p) for p in v] for k, v in (data.get("phoneme_map") or {}).items()}
            language = data.get("language", {}).get("code", "") or data.get("espeak", {}).get("voice", "")
            return cls(
                sample_rate=int(data["audio"]["sample_rate"]),
                espeak_voice=str(data.get("espeak", {}).get("voice", "en-us")),
                phoneme_id_map=id_map,
                phoneme_map=phoneme_map,
                noise_scale=float(inference.get("noise_scale", 0.667)),
                length_scale=float(inference.get("length_scale", 1.0)),
                noise_w=float(inference.get("noise_w", 0.8)),
                num_speakers=int(data.get("num_speakers", 1)),
                language=str(language),
            )
        except PiperVoiceError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PiperVoiceError(f"{path}: not a Piper voice config ({type(exc).__name__}: {exc})") from exc

    def phoneme_ids(self, phonemes: str) -> tuple[list[int], list[str]]:
        """Ids for an IPA string (``^ _ (p _)* $``); also returns the phonemes it had no id for."""
        ids = [*self.phoneme_id_map[BOS], *self.phoneme_id_map[PAD]]
        missing: list[str] = []
        for ch in unicodedata.normalize("NFD", phonemes):
            for p in self.phoneme_map.get(ch, [ch]):
                mapped = self.phoneme_id_map.get(p)
                if mapped is None:
                    missing.append(p)
                    continue
                ids.extend(mapped)
                ids.extend(self.phoneme_id_map[PAD])
        ids.extend(self.phoneme_id_map[EOS])
        return ids, missing


class _PiperVoice:
    def __init__(
        self,
        name: str,
        model: Path,
        config: PiperVoiceConfig,
        execution: ExecutionConfig,
        on_session: Callable[[OnnxSession], None] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.config = config
        self.execution = execution
        self.on_session = on_session
        self._session: OnnxSession | None = None
        self._inputs: set[str] = set()

    def session(self) -> OnnxSession:
        """The voice's session (the shared factory: execution.providers, errors naming the file)."""
        if self._session is None:
            try:
                self._session = open_session(self.model, self.execution, name=f"piper voice {self.name}", max_batch=1)
            except ModelError as exc:
                raise PiperVoiceError(str(exc)) from None
            self._inputs = set(self._session.input_names)
            if self.on_session is not None:
                self.on_session(self._session)
        return self._session

    def run(self, ids: list[int], length_scale: float, speaker: int = 0) -> np.ndarray:
        sess = self.session()
        c = self.config
        feeds: dict[str, np.ndarray] = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray([c.noise_scale, length_scale, c.noise_w], dtype=np.float32),
        }
        if "sid" in self._inputs:
            feeds["sid"] = np.asarray([speaker], dtype=np.int64)
        audio = sess.run(feeds)[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)


class PiperBackend(TTSBackend):
    engine = "piper"

    def __init__(
        self,
        espeak: EspeakEngine,
        config: PiperConfig,
        execution: ExecutionConfig | None = None,
        on_session: Callable[[OnnxSession], None] | None = None,
    ) -> None:
        super().__init__()
        self._espeak = espeak
        self._config = config
        self._execution = execution or ExecutionConfig(intra_op_threads=1)
        self._on_session = on_session
        self._models: dict[str, _PiperVoice] = {}
        self._load_lock = asyncio.Lock()

    async def start(self) -> None:
        root = Path(os.path.expanduser(self._config.voices_dir))
        if not root.is_dir():
            raise PiperVoiceError(f"piper.voices_dir: {root} is not a directory")
        for model in sorted(root.glob("*.onnx")):
            cfg_path = model.with_name(model.name + ".json")
            if not cfg_path.exists():
                log.warning("piper voice %s has no %s; skipped", model, cfg_path.name)
                continue
            cfg = PiperVoiceConfig.from_json(cfg_path)
            name = model.name[: -len(".onnx")]
            if self._espeak.resolve(cfg.espeak_voice) is None:
                log.warning(
                    "piper voice %s needs eSpeak voice %r, which is not installed; skipped", model, cfg.espeak_voice
                )
                continue
            self._models[name] = _PiperVoice(name, model, cfg, self._execution, self._on_session)
            self._voices[name] = VoiceInfo(
                id=f"piper:{name}",
                name=name,
                language=cfg.language,
                engine=self.engine,
                sample_rate=cfg.sample_rate,
            )
        if self._models:
            # One session at start-up: a pinned provider that cannot be obtained, or a file ONNX
            # Runtime rejects, stops the service now (the other voices load on first use).
            first = next(iter(self._models.values()))
            await asyncio.to_thread(first.session)

    async def _phonemes(self, text: str, voice: _PiperVoice) -> str:
        clauses = await self._espeak.phonemize(text, voice.config.espeak_voice)
        phonemes = " ".join(c.strip() for c in clauses if c.strip())
        mark = final_punctuation(text)
        if mark and mark in voice.config.phoneme_id_map:
            phonemes += mark
        return phonemes

    async def _timings(self, text: str, voice: _PiperVoice, settings: VoiceSettings) -> tuple[list[PhonemeEvent], int]:
        events: list[PhonemeEvent] = []
        total = 0
        params = espeak_params(voice.config.espeak_voice, settings)
        async for block in self._espeak.synthesize(text, params):
            events.extend(block.phonemes)
            total += int(block.samples.size)
        return events, total

    async def synthesize(self, text: str, voice: VoiceInfo, settings: VoiceSettings) -> AsyncGenerator[PcmBlock, None]:
        model = self._models[voice.name]
        try:
            phonemes = await self._phonemes(text, model)
        except EspeakVoiceError as exc:
            raise VoiceUnavailable(str(exc)) from exc
        ids, missing = model.config.phoneme_ids(phonemes)
        if missing:
            log.debug("piper voice %s has no id for %s", voice.name, sorted(set(missing)))
        length_scale = model.config.length_scale / settings.rate
        async with self._load_lock:  # one session creation per voice, not one per request
            await asyncio.to_thread(model.session)
        audio = await asyncio.to_thread(model.run, ids, length_scale)
        pcm = self._to_pcm(audio, model.config.sample_rate, settings.volume)
        events, espeak_total = await self._timings(text, model, settings)
        scale = pcm.size / espeak_total if espeak_total else 0.0
        phon = tuple(PhonemeEvent(min(pcm.size, round(e.sample * scale)), e.phoneme) for e in events)
        if is_sentence_end(text) and self._config.sentence_silence_ms:
            silence = np.zeros(model.config.sample_rate * self._config.sentence_silence_ms // 1000, np.int16)
            pcm = np.concatenate([pcm, silence])
        yield PcmBlock(pcm, phon)

    def _to_pcm(self, audio: np.ndarray, sample_rate: int, volume: float) -> np.ndarray:
        x = np.clip(audio * volume, -1.0, 1.0)
        fade = min(x.size // 2, int(sample_rate * self._config.fade_ms / 1000))
        if fade > 0:
            ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
            x[:fade] *= ramp
            x[-fade:] *= ramp[::-1]
        return np.round(x * 32767.0).astype(np.int16)
