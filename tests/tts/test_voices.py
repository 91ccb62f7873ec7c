"""Every voice ListVoices names synthesizes; usual spellings find it; a broken voice is NOT_FOUND."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import numpy as np
import pytest

from services.tts.backends.base import PcmBlock, TTSBackend, VoiceInfo, VoiceSettings, VoiceUnavailable
from services.tts.server import TTSServicer
from talkmesh.common.channel import create_channel
from talkmesh.common.propagation import VOICE_KEY, WARNING_KEY
from talkmesh.common.server import Service
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import tts_pb2, tts_pb2_grpc
from tests.tts.conftest import default_config, pcm_of, serve_tts


async def speak(stub: Any, voice: str, text: str = "Hello, one two three.") -> np.ndarray:
    chunks = [c async for c in stub.Synthesize(tts_pb2.SynthesizeRequest(text=text, config={"voice": voice}))]
    return pcm_of(chunks)


async def test_every_listed_voice_synthesizes_audible_speech(tts: Any) -> None:
    stub, _, _ = tts
    voices = (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices
    ids = [v.id for v in voices]
    assert len(ids) > 100
    assert {"espeak:en-gb", "espeak:fr-fr", "espeak:en-us", "espeak:de"} <= set(ids)
    silent, not_itself = [], []
    for voice_id in ids:  # one at a time: the engine is one thread anyway
        call = stub.Synthesize(tts_pb2.SynthesizeRequest(text="Hello, one two three.", config={"voice": voice_id}))
        pcm = pcm_of([c async for c in call])
        if pcm.size < 4000 or int(np.abs(pcm.astype(np.int32)).max()) < 1000:
            silent.append(voice_id)
        trailers = dict(await call.trailing_metadata())
        if trailers.get(VOICE_KEY) != voice_id or "names no voice" in trailers.get(WARNING_KEY, ""):
            not_itself.append((voice_id, trailers.get(VOICE_KEY), trailers.get(WARNING_KEY)))
    assert silent == []
    assert not_itself == [], "a listed voice is spoken as itself, without a warning about its name"


@pytest.mark.parametrize("spelling", ["en-gb", "en_GB", "en-GB", "EN_gb"])
async def test_usual_spellings_find_the_voice(tts: Any, spelling: str) -> None:
    stub, _, _ = tts
    reference = await speak(stub, "espeak:en-gb")
    pcm = await speak(stub, f"espeak:{spelling}")
    np.testing.assert_array_equal(pcm, reference)
    # and it really is British English, not the default American voice
    assert not np.array_equal(pcm, await speak(stub, "espeak:en-us"))
    # ListVoices finds the spelling as a request does, under the voice's listed id
    listed = (await stub.ListVoices(tts_pb2.ListVoicesRequest(voice=f"espeak:{spelling}"))).voices
    assert [v.id for v in listed] == ["espeak:en-gb"]


@pytest.mark.parametrize(
    ("voice", "hint"),
    [
        ("espeak:fo", ""),
        ("espeak:nope", ""),
        ("nope", ""),
        (
            "piper:en-gb",
            "; this TTS service has no piper voices (engines: espeak); Piper voices are read from"
            " piper.voices_dir (services/tts/README.md); voices of that language: espeak:en-029, espeak:en-gb,"
            " espeak:en-gb-scotland",
        ),
        ("festival:en", "; this TTS service has no festival voices (engines: espeak); voices of that language:"),
    ],
)
async def test_list_voices_of_a_voice_it_cannot_speak_is_not_found(tts: Any, voice: str, hint: str) -> None:
    stub, _, _ = tts
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ListVoices(tts_pb2.ListVoicesRequest(voice=voice))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert exc.value.details().startswith(f"voice: voice {voice!r} not found{hint}")


async def test_french_and_cherokee_voices_speak(tts: Any) -> None:
    """fr-fr and chr-US-Qaaa-x-west failed with INTERNAL before (eSpeak knows them by file name)."""
    stub, _, _ = tts
    for voice in ("espeak:fr-fr", "espeak:fr_FR", "espeak:chr-US-Qaaa-x-west"):
        assert (await speak(stub, voice, "Bonjour.")).size > 4000


async def test_voices_without_their_dictionary_are_not_listed(tts: Any) -> None:
    """The wheel's data lacks some dictionaries (e.g. Faroese): such voices would speak silence."""
    stub, service, _ = tts
    engine = service.engine
    listed = {v.identifier for v in engine.voices}
    assert "gmq/fo" not in listed
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await speak(stub, "espeak:fo")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert exc.value.details().startswith("config.voice")


class _BrokenBackend(TTSBackend):
    """Lists a voice but cannot load it when asked to speak."""

    engine = "broken"

    async def start(self) -> None:
        self._voices["v"] = VoiceInfo("broken:v", "v", "xx", self.engine, 16000)

    async def synthesize(self, text: str, voice: VoiceInfo, settings: VoiceSettings) -> AsyncGenerator[PcmBlock, None]:
        raise VoiceUnavailable("cannot load v")
        yield  # pragma: no cover


class _BrokenService(Service):
    name = "tts"

    def __init__(self) -> None:
        super().__init__(Telemetry("tts"))
        self.servicer = TTSServicer(default_config(), self.telemetry)

    def register(self, server: grpc.aio.Server) -> list[str]:
        tts_pb2_grpc.add_TTSServicer_to_server(self.servicer, server)
        return ["talkmesh.v1.TTS"]

    async def start(self) -> None:
        backend = _BrokenBackend()
        await backend.start()
        self.servicer.backends = {"broken": backend}


async def test_a_voice_that_fails_to_load_is_not_found_never_internal() -> None:
    async with serve(_BrokenService()) as host:
        channel = create_channel(host.address)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await asyncio.wait_for(speak(tts_pb2_grpc.TTSStub(channel), "broken:v"), 30)
        finally:
            await channel.close()
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert exc.value.details().startswith("config.voice")


def _median_f0(pcm: np.ndarray, rate: int) -> float:
    """Median pitch (Hz) of the voiced 40 ms frames, by autocorrelation over 60-400 Hz."""
    x = pcm.astype(np.float64)
    n = int(0.04 * rate)
    loudest = np.abs(x).max()
    f0s = []
    for i in range(0, len(x) - n, n):
        frame = x[i : i + n] - x[i : i + n].mean()
        if np.abs(frame).max() < 0.3 * loudest:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        lo, hi = rate // 400, rate // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            f0s.append(rate / lag)
    assert len(f0s) > 5
    return float(np.median(f0s))


async def test_a_variant_after_a_plus_speaks_the_voice_in_another_register(tts: Any) -> None:
    """eSpeak's variants: ``espeak:en-us+f3`` is the American voice as a woman's (the listed voices
    are all male, ~100 Hz): a clearly higher pitch, the same language; any case; ListVoices answers
    it (a live session checks its voice there); an unknown variant is NOT_FOUND."""
    stub, _, _ = tts
    text = "Good morning, and welcome back to the lesson about the weather."
    male = await speak(stub, "espeak:en-us", text)
    female = await speak(stub, "espeak:en-us+f3", text)
    assert np.array_equal(female, await speak(stub, "espeak:EN_US+F3", text))
    rate = 22050
    assert _median_f0(female, rate) > 1.5 * _median_f0(male, rate)
    listed = (await stub.ListVoices(tts_pb2.ListVoicesRequest(voice="espeak:en-us+f3"))).voices
    assert [(v.id, v.language, v.sample_rate) for v in listed] == [("espeak:en-us+f3", "en-us", rate)]
    for bad in ("espeak:en-us+nope", "espeak:en-us+", "espeak:en-us+../../x"):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await speak(stub, bad, text)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND, bad


async def test_an_unknown_variant_is_named_with_the_variants_there_are(tts: Any) -> None:
    """`--voice espeak:en-us+nosuch` was NOT_FOUND listing the voices of the language, en-us among
    them: the voice was right, its variant was not (a new user's trial)."""
    stub, service, _ = tts
    count = len(service.engine.variants)
    for bad, what, shown in [
        ("espeak:en-us+nosuch", "unknown variant 'nosuch'", "e.g. f1, f2, f3, f4, f5, m1, m2, m3, whisper"),
        ("espeak:EN_US+nosuch", "unknown variant 'nosuch'", "e.g. f1, f2, f3, f4, f5, m1, m2, m3, whisper"),
        ("espeak:en-us+", "no variant", "e.g. f1, f2, f3, f4, f5, m1, m2, m3, whisper"),
        ("espeak:en-us+wisper", "unknown variant 'wisper'", "did you mean whisper"),  # a misspelt one
        ("espeak:en-us+andi", "unknown variant 'andi'", "did you mean Andy"),  # as eSpeak spells it
    ]:
        for call in (speak(stub, bad), stub.ListVoices(tts_pb2.ListVoicesRequest(voice=bad))):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await call
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND, bad
            details = exc.value.details()
            assert f"voice {bad!r} not found; {what} after the '+' (espeak:en-us itself is a voice); " in details
            assert f"{count} variants, {shown}" in details and "(talkmesh voices --help)" in details, details
            assert "voices of that language" not in details, details
            assert len(details) < 300, details
    # a voice that is no voice is still told of the voices of its language, variant or not
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await speak(stub, "espeak:en-xx-bogus+f3")
    assert "variant" not in exc.value.details()


async def test_a_variant_default_voice_is_listed_and_marked_default() -> None:
    """default_voice espeak:en-us+f3 is no listed voice: the listing adds it, after en-us, as the one
    default (the web page and live sessions pick the voice marked default)."""
    async with serve_tts(default_config(default_voice="espeak:EN-US+F3")) as (stub, _, _):
        listed = (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices
        ids = [v.id for v in listed]
        assert [v.id for v in listed if v.default] == ["espeak:en-us+f3"]
        assert ids.index("espeak:en-us+f3") == ids.index("espeak:en-us") + 1
        assert ids.count("espeak:en-us+f3") == 1
        one = (await stub.ListVoices(tts_pb2.ListVoicesRequest(voice="espeak:en-us+f3"))).voices
        assert [(v.id, v.default) for v in one] == [("espeak:en-us+f3", True)]
        plain = (await stub.ListVoices(tts_pb2.ListVoicesRequest(voice="espeak:en-us"))).voices
        assert [(v.id, v.default) for v in plain] == [("espeak:en-us", False)]
