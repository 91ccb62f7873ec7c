"""What one synthesis request asks for: the backend and voice, prosody, chunk size and request id."""

from __future__ import annotations

import difflib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.tts.backends.base import TTSBackend, VoiceInfo, VoiceSettings
from services.tts.bcp47 import strip_extensions
from services.tts.config import TTSConfig
from services.tts.engine import primary_language, voice_key
from talkmesh.common.errors import InvalidArgument, NotFound, Unavailable
from talkmesh.common.names import check_voice_settings
from talkmesh.common.propagation import REQUEST_ID_KEY
from talkmesh.v1 import tts_pb2, types_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthesisJob:
    request_id: str
    backend: TTSBackend
    voice: VoiceInfo
    settings: VoiceSettings
    chunk_samples: int
    max_chunk_samples: int = 0  # 0: every chunk is chunk_samples long
    markdown: bool = False  # TEXT_FORMAT_MARKDOWN: the markup is not read (talkmesh/common/markup.py)
    #: what the caller should know about the voice (``voice_warning``), for the trailers; "" if nothing
    warning: str = ""

    def warnings(self, *more: str) -> str:
        """This job's warnings and ``more`` as one trailer value ("" when there are none)."""
        return "; ".join(w for w in (self.warning, *more) if w)


def find_voice(backends: Mapping[str, TTSBackend], voice_id: str) -> tuple[TTSBackend, VoiceInfo] | None:
    """The backend and listed voice ``<engine>:<name>`` names (the engine may accept other spellings)."""
    engine, sep, name = voice_id.partition(":")
    backend = backends.get(engine.strip().lower()) if sep else None
    voice = backend.voice(name) if backend is not None else None
    return (backend, voice) if backend is not None and voice is not None else None


def close_voices(backends: Mapping[str, TTSBackend], voice_id: str, limit: int = 8) -> list[str]:
    """Ids of listed voices of the language ``voice_id`` names (its engine's first), for NOT_FOUND."""
    engine, sep, name = voice_id.partition(":")
    if not sep:
        engine, name = "", voice_id
    language = primary_language(name)
    engine = engine.strip().lower()
    found = [
        v
        for b in sorted(backends.values(), key=lambda b: b.engine != engine)
        for v in b.voices()
        if language and primary_language(v.language) == language
    ]
    return [v.id for v in found[:limit]]


def voice_warning(voice_id: str, voice: VoiceInfo) -> str:
    """A warning when an eSpeak voice name asked for more than the voice that speaks it: an
    extension or private-use tail (``en-US-x-female``), which RFC 4647 lookup drops, is a wish no
    voice fulfils. Regions and scripts dropped (``es-ES`` -> es) are the documented lookup: no warning."""
    engine, _, name = voice_id.partition(":")
    if engine.strip().lower() != "espeak":
        return ""
    asked = voice_key(name.partition("+")[0])
    if asked == voice_key(voice.id.partition(":")[2].partition("+")[0]):
        return ""  # a listed voice with a tail of its own (en-gb-x-rp) is what was asked for
    subtags = asked.split("-")
    kept = strip_extensions(subtags)
    if kept is None or len(kept) == len(subtags):
        return ""
    dropped = "-".join(subtags[len(kept) :])
    return (
        f"voice {voice_id!r} is spoken as {voice.id}: {dropped!r} names no voice "
        f"(eSpeak's variants come after a '+', e.g. {voice.id}+f3 is female)"
    )


#: Variants an unknown one's NOT_FOUND names when no known one is spelt like it (eSpeak's female and male
#: registers, and a whisper)
VARIANT_EXAMPLES = ("f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "whisper")
VARIANTS_SHOWN = len(VARIANT_EXAMPLES)


def voice_not_found(field: str, backends: Mapping[str, TTSBackend], voice_id: str) -> NotFound:
    """NOT_FOUND for ``voice_id``, suggesting voices of the same language when there are some (and
    the ``engine:`` a bare name lacks: `fr-fr` is `espeak:fr-fr`); for a voice with a variant its
    engine does not know (``espeak:en-us+nosuch``), naming the variant and listing the known ones."""
    engine, sep, name = voice_id.partition(":")
    engine = engine.strip().lower()
    backend = backends.get(engine) if sep else None
    base, plus, variant = name.partition("+")
    voice = backend.voice(base) if backend is not None and plus else None
    if backend is not None and voice is not None:
        known = backend.variants()
        asked = variant.strip()
        what = f"unknown variant {asked!r}" if asked else "no variant"
        # ~100 variants: the closest spellings, else the usual ones, and where the rest are told
        # (compared in lower case: eSpeak's files are spelt "Andy", "f3"; shown as they are spelt)
        spelt = {v.lower(): v for v in known}
        close = [spelt[v] for v in difflib.get_close_matches(asked.lower(), list(spelt), n=3)] if asked else []
        usual = [v for v in VARIANT_EXAMPLES if v in known] or known[:VARIANTS_SHOWN]
        shown = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(usual)}"
        hint = f"{what} after the '+' ({voice.id} itself is a voice); " + (
            f"{len(known)} variants, {shown} (talkmesh voices --help)" if known else f"{engine} voices have no variants"
        )
        return NotFound(field, voice_id, "voice", hint=hint)
    close = close_voices(backends, voice_id)
    hints = [] if sep else [f"a voice id is <engine>:<name> ({', '.join(sorted(backends))})"]
    if sep and engine not in backends:
        hints.append(f"this TTS service has no {engine or '(empty)'} voices (engines: {', '.join(sorted(backends))})")
        if engine == "piper":
            hints.append("Piper voices are read from piper.voices_dir (services/tts/README.md)")
    if close:
        hints.append(f"voices of that language: {', '.join(close)}")
    return NotFound(field, voice_id, "voice", hint="; ".join(hints))


def resolve_job(
    config: TTSConfig, backends: Mapping[str, TTSBackend], cfg: tts_pb2.SynthesisConfig, context: Any
) -> SynthesisJob:
    """Checks a request's SynthesisConfig; errors name the field (``config.voice``, ...)."""
    if not backends:
        raise Unavailable("tts: engine not started yet")
    voice_id = cfg.voice or config.default_voice
    found = find_voice(backends, voice_id)
    if found is None:
        raise voice_not_found("config.voice", backends, voice_id)
    backend, voice = found
    rate, pitch, volume = check_voice_settings("config.settings", cfg.settings)
    settings = VoiceSettings(rate=rate, pitch=pitch, volume=volume)
    chunk_ms = cfg.chunk_ms or config.chunk_ms
    if not config.min_chunk_ms <= chunk_ms <= config.max_chunk_ms:
        raise InvalidArgument("config.chunk_ms", f"{chunk_ms} is outside {config.min_chunk_ms}..{config.max_chunk_ms}")
    rid = cfg.request_id
    if not rid:
        md = dict((k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str))
        rid = md.get(REQUEST_ID_KEY) or uuid.uuid4().hex
    # a wish, not a contract: clamped to chunk_ms..the service's max_chunk_ms, so a gateway's setting
    # never fails requests on a TTS service configured with shorter chunks
    max_chunk_ms = min(max(cfg.max_chunk_ms, chunk_ms), config.max_chunk_ms) if cfg.max_chunk_ms else 0
    chunk_samples = max(1, voice.sample_rate * chunk_ms // 1000)
    max_chunk_samples = max(chunk_samples, voice.sample_rate * max_chunk_ms // 1000) if max_chunk_ms else 0
    if cfg.text_format not in types_pb2.TextFormat.values():
        raise InvalidArgument("config.text_format", f"unknown text format {cfg.text_format}")
    markdown = cfg.text_format == types_pb2.TEXT_FORMAT_MARKDOWN
    warning = voice_warning(voice_id, voice)
    if warning:
        log.info("tts: %s", warning)
    return SynthesisJob(rid, backend, voice, settings, chunk_samples, max_chunk_samples, markdown, warning)
