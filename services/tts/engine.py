"""eSpeak NG driven through ctypes: synchronous synthesis with phoneme events, on one worker thread.

eSpeak NG keeps all of its state in the library's globals, so one ``EspeakEngine`` owns one loaded
copy of the library and talks to it from exactly one dedicated thread: every call (initialise,
select a voice, synthesize, phonemize) is a job on a single-worker executor, so concurrent requests
are queued in FIFO order and the event loop never blocks. Synthesis jobs are one clause each, so
concurrent requests interleave clause by clause.

The engine loads a private copy of the shared library (copied to a temporary file, then opened):
two engines in one process (two services in a test, a benchmark beside a server) then never share
eSpeak's global state, and a stopped engine does not leave a half-terminated library behind for the
next one.

Synthesis uses ``AUDIO_OUTPUT_SYNCHRONOUS`` with a synth callback: eSpeak hands over audio in small
buffers as it generates it, together with the events that fall inside each buffer. With
``espeakINITIALIZE_PHONEME_EVENTS`` (and ``..._PHONEME_IPA``) each phoneme arrives as an event
whose ``sample`` field is its exact start, counted in samples from the start of the synth call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.tts.backends.base import PcmBlock, PhonemeEvent
from services.tts.bcp47 import is_locale_subtag, strip_extensions

log = logging.getLogger(__name__)

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_INIT_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PHONEMES_IPA = 0x02

# eSpeak's own ranges for the parameters (words per minute, percent, 0..100).
RATE_DEFAULT_WPM = 175
RATE_MIN_WPM = 80
RATE_MAX_WPM = 450
PITCH_DEFAULT = 50
VOLUME_DEFAULT = 100


class EspeakError(RuntimeError):
    """eSpeak NG refused a call (failed initialisation, internal error)."""


class EspeakVoiceError(EspeakError):
    """eSpeak NG has no usable voice by that name."""


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union {int number; const char *name; char string[8];}
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # priority byte + NUL-terminated name, repeated, then 0
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class EspeakVoice:
    """A voice file: its display name, main language, file identifier and every language it speaks."""

    name: str
    language: str
    identifier: str
    languages: tuple[str, ...] = ()


#: Language tags eSpeak has no voice for that name one it has (keys as ``voice_key`` spells them):
#: Chinese in either script is Mandarin (eSpeak's cmn reads simplified and traditional characters),
#: Hong Kong Chinese is Cantonese, and the withdrawn ISO 639 codes for Hebrew and Indonesian.
LANGUAGE_ALIASES: dict[str, str] = {
    "zh": "cmn",
    "zh-cn": "cmn",
    "zh-sg": "cmn",
    "zh-tw": "cmn",
    "zh-hans": "cmn",
    "zh-hant": "cmn",
    "zh-hk": "yue",
    "zh-mo": "yue",
    "zh-yue": "yue",
    "iw": "he",
    "in": "id",
}


def voice_key(spelling: str) -> str:
    """How a voice name is compared: ``en_GB``, ``en-GB`` and ``en-gb`` are the same voice."""
    return spelling.strip().lower().replace("_", "-")


def primary_language(spelling: str) -> str:
    """The language a voice name or tag starts with, as eSpeak names it: ``en-GB`` -> en,
    ``zh-Hant-TW`` -> cmn, ``iw`` -> he, ``gmw/en`` (a file identifier) -> en."""
    language = voice_key(spelling).rsplit("/", 1)[-1].split("-", 1)[0]
    return LANGUAGE_ALIASES.get(language, language)


@dataclass(frozen=True)
class EspeakParams:
    """Voice and prosody of one synth call, in eSpeak's own units."""

    voice: str = "en-us"
    rate_wpm: int = RATE_DEFAULT_WPM
    pitch: int = PITCH_DEFAULT
    volume: int = VOLUME_DEFAULT


@dataclass
class _Sink:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    cancel: threading.Event
    total: int = 0
    errors: list[BaseException] = field(default_factory=list)


_DONE = object()


def _parse_languages(ptr: int | None) -> list[tuple[int, str]]:
    """A voice's (priority, language) pairs; a lower priority is a better voice for the language."""
    out: list[tuple[int, str]] = []
    if not ptr:
        return out
    pos = ptr
    while True:
        priority = ctypes.c_ubyte.from_address(pos).value
        if priority == 0:
            break
        name = ctypes.string_at(pos + 1)
        out.append((priority, name.decode("utf-8", "replace")))
        pos += 1 + len(name) + 1
    return out


class EspeakEngine:
    """One private eSpeak NG instance, driven from one worker thread."""

    def __init__(self, library_path: str = "", data_path: str = "", buffer_ms: int = 20) -> None:
        self._library_path = library_path
        self._data_path = data_path
        self._buffer_ms = buffer_ms
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lib: Any = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._callback = _SynthCallback(self._on_audio)  # kept referenced for the library's lifetime
        self._sink: _Sink | None = None
        self._params: EspeakParams | None = None
        self._data_dir = data_path
        self._by_key: dict[str, EspeakVoice] = {}
        self.sample_rate = 0
        self.voices: list[EspeakVoice] = []
        self.variants: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._init)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._terminate)
        executor.shutdown(wait=False)

    def _init(self) -> None:
        lib_path, data_path = self._library_path, self._data_path
        if not lib_path or not data_path:
            import espeakng_loader

            lib_path = lib_path or espeakng_loader.get_library_path()
            data_path = data_path or espeakng_loader.get_data_path()
        self._tmpdir = tempfile.TemporaryDirectory(prefix="talkmesh-espeak-")
        private = Path(self._tmpdir.name) / Path(lib_path).name
        shutil.copyfile(lib_path, private)
        lib = ctypes.CDLL(os.fspath(private))
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Terminate.restype = ctypes.c_int
        options = _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, self._buffer_ms, data_path.encode(), options)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}) with data path {data_path}")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        self._data_dir = data_path
        self.sample_rate = rate
        self.voices = self._list_voices()
        self.variants = self._list_variants()

    def _terminate(self) -> None:
        if self._lib is not None:
            self._lib.espeak_Terminate()
            self._lib = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()  # the library stays mapped; only the file name goes
            self._tmpdir = None

    def _list_variants(self) -> dict[str, str]:
        """eSpeak's voice variants (``voices/!v``: f1-f5 female, m1-m8 male, whisper, ...) by their
        name in lower case: a voice name ``en-us+f3`` speaks en-us with variant f3."""
        folder = Path(self._data_dir) / "voices" / "!v"
        try:
            names = [p.name for p in folder.iterdir() if p.is_file() and " " not in p.name]
        except OSError:
            return {}
        return {n.lower(): n for n in sorted(names)}

    def variant(self, name: str) -> str | None:
        """The variant file ``name`` names (any case), or None."""
        return self.variants.get(name.strip().lower())

    def _list_voices(self) -> list[EspeakVoice]:
        """One voice per main language, leaving out voices whose dictionary the data lacks.

        Voices are selected by their file identifier (``gmw/en`` for en-gb): eSpeak's
        ``SetVoiceByName`` does not find a voice by the language it is listed under.
        """
        arr = self._lib.espeak_ListVoices(None)
        voices: dict[str, EspeakVoice] = {}
        # every language a voice speaks, with eSpeak's priority for it (``language fr 8`` in fr-BE)
        ranked: list[tuple[int, str, str]] = []  # (priority, language key, main language)
        i = 0
        while arr[i]:
            v = arr[i].contents
            pairs = _parse_languages(v.languages)
            langs = [lang for _, lang in pairs]
            i += 1
            if not langs:
                continue
            ident = (v.identifier or b"").decode("utf-8", "replace")
            if not self._has_dictionary(ident, langs[0]):
                log.info("eSpeak voice %s (%s) left out: its dictionary is not installed", langs[0], ident)
                continue
            name = (v.name or b"").decode("utf-8", "replace")
            if langs[0] not in voices:
                voices[langs[0]] = EspeakVoice(name, langs[0], ident, tuple(langs))
                ranked.extend((priority, voice_key(lang), langs[0]) for priority, lang in pairs)
        listed = sorted(voices.values(), key=lambda v: v.language)
        self._by_key = {}
        for voice in listed:  # main languages first: a voice's own language is always that voice
            self._by_key.setdefault(voice_key(voice.language), voice)
        # then the other languages each voice speaks, to the voice eSpeak prefers for it (its lowest
        # priority; ties by main language): "fr" -> fr-fr, not fr-be (8); "en" -> en-gb (2) as
        # ``espeak-ng -v en``, not en-us (3) or en-029 (10); "pt" -> pt, "zh" -> cmn, not yue (8)
        for _, key, language in sorted(ranked):
            self._by_key.setdefault(key, voices[language])
        for voice in listed:
            for spelling in (voice.identifier, voice.identifier.rsplit("/", 1)[-1], voice.name):
                self._by_key.setdefault(voice_key(spelling), voice)
        return listed

    def _has_dictionary(self, identifier: str, language: str) -> bool:
        """Whether ``<dict>_dict`` exists: the voice file's ``dictionary`` or its language's base name."""
        data = Path(self._data_dir)
        dictionary = language.split("-", 1)[0]
        for folder in ("lang", "voices"):
            try:
                text = (data / folder / identifier).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "dictionary":
                    dictionary = parts[1]
            break
        return (data / f"{dictionary}_dict").is_file()

    def resolve(self, spelling: str) -> EspeakVoice | None:
        """The listed voice ``spelling`` names (language, any case, ``_`` or ``-``; or file identifier).

        A language tag eSpeak has no voice for is looked up as RFC 4647 "lookup" does: its extension
        and private-use tail dropped (``en-US-x-lesson`` -> en-US), then its last subtag until a voice
        is found (``es-ES`` -> es, ``zh-Hant-TW`` -> zh-Hant), each step also through
        ``LANGUAGE_ALIASES`` (``zh-TW`` -> cmn, ``zh-HK`` -> yue, ``iw`` -> he). Only registered
        regions, scripts and variants are dropped: ``no-such-voice`` or ``fr-female`` is no voice.
        """
        key = voice_key(spelling)
        found = self._lookup(key)
        if found is not None or "/" in key:
            return found
        subtags = strip_extensions(key.split("-"))
        while subtags:
            found = self._lookup("-".join(subtags))
            if found is not None:
                return found
            if len(subtags) < 2 or not is_locale_subtag(subtags[-1]):
                return None
            subtags.pop()
        return None

    def _lookup(self, key: str) -> EspeakVoice | None:
        return self._by_key.get(key) or self._by_key.get(LANGUAGE_ALIASES.get(key, ""))

    def _require(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None or self._lib is None:
            raise EspeakError("the eSpeak engine is not started")
        return self._executor

    # -- worker-thread side ----------------------------------------------------------------------
    def _apply(self, params: EspeakParams) -> None:
        if params == self._params:
            return
        if self._params is None or params.voice != self._params.voice:
            name, _, variant = params.voice.partition("+")  # "en-us+f3": a voice and a variant
            voice = self.resolve(name)
            variant_file = self.variant(variant) if variant else ""
            selector = f"{voice.identifier}+{variant_file}" if voice is not None and variant_file else ""
            if voice is not None and not variant:
                selector = voice.identifier
            if not selector or self._lib.espeak_SetVoiceByName(selector.encode()) != 0:
                self._params = None
                raise EspeakVoiceError(f"eSpeak has no voice {params.voice!r}")
        self._lib.espeak_SetParameter(_PARAM_RATE, params.rate_wpm, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, params.pitch, 0)
        self._lib.espeak_SetParameter(_PARAM_VOLUME, params.volume, 0)
        self._params = params

    def _on_audio(self, wav: Any, n: int, events: Any) -> int:
        sink = self._sink
        if sink is None:
            return 1
        if sink.cancel.is_set():
            return 1  # abort the synth call
        phonemes = []
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                phonemes.append(PhonemeEvent(int(ev.sample), ev.id.decode("utf-8", "replace")))
            i += 1
        if n > 0:
            samples = np.ctypeslib.as_array(wav, (n,)).copy()
            # A phoneme event can report the sample just past the buffer it came with.
            sink.loop.call_soon_threadsafe(sink.queue.put_nowait, PcmBlock(samples, tuple(phonemes)))
            sink.total += n
        elif phonemes:
            sink.loop.call_soon_threadsafe(sink.queue.put_nowait, PcmBlock(np.zeros(0, np.int16), tuple(phonemes)))
        return 0

    def _synth_job(self, text: str, params: EspeakParams, sink: _Sink) -> None:
        try:
            self._apply(params)
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data, len(data))
            self._sink = sink
            try:
                rc = self._lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            finally:
                self._sink = None
            if rc != 0 and not sink.cancel.is_set():
                raise EspeakError(f"espeak_Synth failed with code {rc}")
        except BaseException as exc:  # handed to the awaiting coroutine
            sink.loop.call_soon_threadsafe(sink.queue.put_nowait, exc)
        finally:
            sink.loop.call_soon_threadsafe(sink.queue.put_nowait, _DONE)

    def _phonemize_job(self, text: str, voice: str) -> list[str]:
        self._apply(
            EspeakParams(voice=voice)
            if self._params is None
            else EspeakParams(voice, self._params.rate_wpm, self._params.pitch, self._params.volume)
        )
        encoded = text.encode("utf-8")
        data = ctypes.c_char_p(encoded)
        ptr = ctypes.pointer(data)
        clauses: list[str] = []
        # Drained until eSpeak sets the pointer to NULL, not merely to an empty string: after the
        # input's last character eSpeak may still hold a clause (what follows sentence-final
        # punctuation, "Hi! 🎉"), which would otherwise start the next call's output, another
        # request's. Every call takes at least one clause, so the bound only guards the library.
        for _ in range(len(encoded) + 2):
            if data.value is None:
                break
            out = self._lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, _PHONEMES_IPA)
            if out:
                clauses.append(out.decode("utf-8", "replace"))
        else:
            raise EspeakError(f"espeak_TextToPhonemes did not finish a text of {len(encoded)} bytes")
        return clauses

    # -- event-loop side -------------------------------------------------------------------------
    async def synthesize(self, text: str, params: EspeakParams) -> AsyncGenerator[PcmBlock, None]:
        """Streams one synth call's audio as eSpeak produces it (positions from its start)."""
        executor = self._require()
        loop = asyncio.get_running_loop()
        # Not bounded on purpose: eSpeak's one thread serves every stream, so a slow reader must not
        # hold it; what one call queues is bounded by its text (one clause, at most max_text_chars).
        sink = _Sink(loop=loop, queue=asyncio.Queue(), cancel=threading.Event())
        fut = loop.run_in_executor(executor, self._synth_job, text, params, sink)
        try:
            while True:
                item = await sink.queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Stops a synth call whose consumer went away; the queue item is dropped with the sink.
            sink.cancel.set()
            if not fut.done():
                fut.add_done_callback(lambda f: f.exception())

    async def phonemize(self, text: str, voice: str) -> list[str]:
        """IPA phonemes of ``text``, one string per clause as eSpeak splits it (punctuation dropped)."""
        executor = self._require()
        return await asyncio.get_running_loop().run_in_executor(executor, self._phonemize_job, text, voice)
