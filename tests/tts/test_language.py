# ruff: noqa: RUF001 - full-width and CJK text is meant literally
"""Text in many languages and encodings: normalization, voice lookup by language tag, refusals."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.tts.engine import primary_language
from services.tts.scripts import reads
from services.tts.text import normalize
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.names import check_text, has_speech
from talkmesh.common.propagation import WARNING_KEY
from talkmesh.v1 import tts_pb2
from tests.tts.conftest import pcm_of, visemes_of


async def _say(stub: Any, text: str, voice: str = "") -> tuple[int, list[int]]:
    """Samples and viseme ids of ``text``, spoken whole."""
    request = tts_pb2.SynthesizeRequest(text=text, config={"voice": voice})
    chunks = [c async for c in stub.Synthesize(request)]
    return pcm_of(chunks).size, [v.viseme for v in visemes_of(chunks)]


async def _say_streamed(stub: Any, pieces: list[str], voice: str = "") -> tuple[int, list[int]]:
    async def requests() -> AsyncIterator[tts_pb2.TextPiece]:
        yield tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(voice=voice))
        for piece in pieces:
            yield tts_pb2.TextPiece(text=piece)

    chunks = [c async for c in stub.SynthesizeStream(requests())]
    return pcm_of(chunks).size, [v.viseme for v in visemes_of(chunks)]


def _same_speech(a: tuple[int, list[int]], b: tuple[int, list[int]]) -> None:
    """Same visemes, same length within 1% (eSpeak's audio varies by a few samples per call)."""
    assert a[1] == b[1]
    assert abs(a[0] - b[0]) < b[0] / 100


# -- normalization -----------------------------------------------------------------------------
def test_normalize_composes_and_narrows_only_the_wide_forms() -> None:
    assert normalize("cafe\u0301") == "café"
    assert normalize("Ｈｅｌｌｏ\u3000ｗｏｒｌｄ！１２３") == "Hello world!123"
    assert normalize("ｶﾞｷﾞ") == "ガギ"  # half-width katakana with their voicing mark
    # other compatibility characters keep their form (all of NFKC would change them)
    assert normalize("x² ﬁ ① ㍻") == "x² ﬁ ① ㍻"


@pytest.mark.parametrize(
    ("voice", "text"),
    [("espeak:vi", "Tiếng Việt có dấu."), ("espeak:fr-fr", "Un café à côté."), ("", "Crème brûlée, naïve.")],
)
async def test_decomposed_accents_are_spoken_as_composed(tts: Any, voice: str, text: str) -> None:
    stub, _, _ = tts
    decomposed = unicodedata.normalize("NFD", text)
    assert decomposed != text
    composed = await _say(stub, text, voice)
    _same_speech(await _say(stub, decomposed, voice), composed)
    # streamed, with a combining mark in a piece of its own
    cut = next(i for i, ch in enumerate(decomposed) if unicodedata.combining(ch))
    _same_speech(await _say_streamed(stub, [decomposed[:cut], decomposed[cut:]], voice), composed)


async def test_full_width_latin_is_spoken_as_latin(tts: Any) -> None:
    stub, _, _ = tts
    plain = await _say(stub, "Hello world! 2026.")
    _same_speech(await _say(stub, "Ｈｅｌｌｏ\u3000ｗｏｒｌｄ！\u3000２０２６．"), plain)
    assert plain[0] < 3 * 22050  # not "letter F F 2 8" (11.8 s before)


# -- voices by language tag --------------------------------------------------------------------
async def _listed(stub: Any, voice: str) -> list[str]:
    return [v.id for v in (await stub.ListVoices(tts_pb2.ListVoicesRequest(voice=voice))).voices]


@pytest.mark.parametrize(
    ("tag", "voice"),
    [
        ("fr", "espeak:fr-fr"),  # not fr-be ("septante, nonante")
        ("en", "espeak:en-gb"),  # eSpeak's own choice (espeak-ng -v en), not en-029 (Caribbean)
        ("de", "espeak:de"),
        ("pt", "espeak:pt"),  # European
        ("pt-br", "espeak:pt-br"),
        ("pt-pt", "espeak:pt"),
        ("es", "espeak:es"),
        ("zh", "espeak:cmn"),  # Mandarin, not Cantonese
        ("en-us", "espeak:en-us"),  # the documented default keeps its name
    ],
)
async def test_a_bare_language_is_its_primary_voice(tts: Any, tag: str, voice: str) -> None:
    stub, _, _ = tts
    assert await _listed(stub, f"espeak:{tag}") == [voice]
    assert await _listed(stub, f"espeak:{tag.upper()}") == [voice]


@pytest.mark.parametrize(
    ("tag", "voice"),
    [
        ("es-ES", "espeak:es"),
        ("de-DE", "espeak:de"),
        ("fr-CA", "espeak:fr-fr"),
        ("ja-JP", "espeak:ja"),
        ("ko-KR", "espeak:ko"),
        ("zh-CN", "espeak:cmn"),
        ("zh-TW", "espeak:cmn"),  # eSpeak's Mandarin reads traditional characters too
        ("zh-Hans", "espeak:cmn"),
        ("zh-Hant", "espeak:cmn"),
        ("zh-Hant-TW", "espeak:cmn"),
        ("zh_TW", "espeak:cmn"),
        ("zh-HK", "espeak:yue"),
        ("zh-yue", "espeak:yue"),
        ("he-IL", "espeak:he"),
        ("iw", "espeak:he"),
        ("iw-IL", "espeak:he"),
        ("ar-SA", "espeak:ar"),
        ("in", "espeak:id"),
        ("en-US-x-lesson", "espeak:en-us"),
        ("en-GB-oxendict", "espeak:en-gb"),
        ("es-MX", "espeak:es-419"),
        ("pt-BR", "espeak:pt-br"),
        ("sv-SE", "espeak:sv"),
        ("it-IT", "espeak:it"),
        ("de-Latn-DE-1996-u-co-phonebk", "espeak:de"),
    ],
)
async def test_locale_tags_fall_back_to_their_language(tts: Any, tag: str, voice: str) -> None:
    stub, _, _ = tts
    assert await _listed(stub, f"espeak:{tag}") == [voice]


async def test_a_locale_tag_speaks_as_its_voice(tts: Any) -> None:
    stub, _, _ = tts
    _same_speech(await _say(stub, "Hola, ¿qué tal?", "espeak:es-ES"), await _say(stub, "Hola, ¿qué tal?", "espeak:es"))


@pytest.mark.parametrize(
    "voice",
    [
        "espeak:xx-YY",
        "espeak:gmw/xx",
        "espeak:fo",
        # typos and made-up names are no locale of a language they happen to start with
        "espeak:no-such-voice",  # not Norwegian
        "espeak:my-voice",  # not Burmese
        "espeak:it-is-bogus",  # IS is a region (Iceland), "bogus" no variant
        "espeak:hi-there",
        "espeak:sv-voice",
        "espeak:en-foo",
        "espeak:fr-female",
        "espeak:en-us-x",  # a private-use singleton with nothing after it
    ],
)
async def test_unknown_voices_are_still_not_found(tts: Any, voice: str) -> None:
    stub, _, _ = tts
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _say(stub, "Hello.", voice)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    details = exc.value.details()
    assert details == f"config.voice: voice {voice!r} not found" or details.startswith(
        f"config.voice: voice {voice!r} not found; voices of that language: "
    )


async def test_not_found_suggests_voices_of_the_same_language(tts: Any) -> None:
    stub, _, _ = tts
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _say(stub, "Bonjour.", "piper:fr_FR-siwis-medium")  # no Piper voices configured
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert exc.value.details() == (
        "config.voice: voice 'piper:fr_FR-siwis-medium' not found; "
        "this TTS service has no piper voices (engines: espeak); "
        "Piper voices are read from piper.voices_dir (services/tts/README.md); "
        "voices of that language: espeak:fr-be, espeak:fr-ch, espeak:fr-fr"
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _say(stub, "你好。", "espeak:sit/zh")
    assert exc.value.details().endswith("; voices of that language: espeak:cmn, espeak:cmn-latn-pinyin")
    # a bare name, as `talkmesh voices` shows in its language column: the missing engine is named
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _say(stub, "Bonjour.", "fr-fr")
    assert exc.value.details() == (
        "config.voice: voice 'fr-fr' not found; a voice id is <engine>:<name> (espeak); "
        "voices of that language: espeak:fr-be, espeak:fr-ch, espeak:fr-fr"
    )


async def test_list_voices_not_found_suggests_voices_of_the_same_language(tts: Any) -> None:
    """Live sessions check a voice through ListVoices: its NOT_FOUND has Synthesize's hint."""
    stub, _, _ = tts
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _listed(stub, "espeak:fr-female")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert exc.value.details() == (
        "voice: voice 'espeak:fr-female' not found; voices of that language: espeak:fr-be, espeak:fr-ch, espeak:fr-fr"
    )


def test_primary_language_is_one_rule_for_tags_identifiers_and_aliases() -> None:
    assert [primary_language(t) for t in ("en-GB", "zh_Hant_TW", "iw", "gmw/en", "cmn-latn-pinyin")] == [
        "en",
        "cmn",
        "he",
        "en",
        "cmn",
    ]


# -- text with nothing to say ------------------------------------------------------------------
NOTHING_TO_SAY = ["\u200b\u200b", "。。。！？、，", ".", "...", "!", " - “” \u2060 "]


@pytest.mark.parametrize("text", NOTHING_TO_SAY)
def test_has_speech_is_false_for_punctuation_and_invisible_characters(text: str) -> None:
    assert not has_speech(text)
    with pytest.raises(InvalidArgument) as exc:
        check_text("text", text, 100)
    assert exc.value.field == "text"
    assert exc.value.message.startswith("text: must not be empty")


@pytest.mark.parametrize("text", ["a", "3", "🎉", "$", "50 %", "&", "。你好", "…Hi"])
def test_has_speech_is_true_for_words_digits_and_symbols(text: str) -> None:
    assert has_speech(text)
    assert check_text("text", text, 100) == text


@pytest.mark.parametrize("text", NOTHING_TO_SAY)
async def test_text_with_nothing_to_say_is_refused_like_empty_text(tts: Any, text: str) -> None:
    stub, _, _ = tts
    for say in (lambda: _say(stub, text), lambda: _say_streamed(stub, [text[:1], text[1:]])):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await say()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.value.details().startswith("text: must not be empty")


async def test_punctuation_around_words_is_still_spoken(tts: Any) -> None:
    stub, _, _ = tts
    assert (await _say(stub, "...Hi!"))[0] > 4000
    assert (await _say_streamed(stub, ["...", " ", "Hi", "!"]))[0] > 4000


# -- text in a script the voice reads letter by letter -----------------------------------------
async def _say_warned(stub: Any, text: str, voice: str = "") -> tuple[int, str]:
    """Samples of ``text`` spoken whole, and the warning in the trailing metadata ("" without)."""
    call = stub.Synthesize(tts_pb2.SynthesizeRequest(text=text, config={"voice": voice}))
    chunks = [c async for c in call]
    return pcm_of(chunks).size, dict(await call.trailing_metadata()).get(WARNING_KEY, "")


@pytest.mark.parametrize(
    ("text", "voice", "script", "advice"),
    [
        ("今天天气很好。", "", "Han", "espeak:cmn"),
        ("今日天気予報。", "espeak:ja", "Han", "kana"),  # eSpeak's ja says "Chinese letter" for kanji
        ("こんにちは、元気ですか。", "espeak:en-us", "Kana", "espeak:ja"),
        ("مرحبا بالعالم", "", "Arabic", "espeak:ar"),
        ("สวัสดีครับ", "", "Thai", "espeak:th"),
        ("Καλημέρα κόσμε", "espeak:en-gb", "Greek", "espeak:el"),
        ("שלום עולם", "", "Hebrew", "espeak:he"),
        ("Привет, мир!", "espeak:fr-fr", "Cyrillic", "espeak:ru"),
    ],
)
async def test_text_the_voice_would_spell_out_is_refused(
    tts: Any, text: str, voice: str, script: str, advice: str
) -> None:
    stub, _, _ = tts
    for say in (lambda: _say(stub, text, voice), lambda: _say_streamed(stub, [text], voice)):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await say()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = exc.value.details()
        assert details.startswith("config.voice: ") and f" {script} script" in details and advice in details


async def test_everyday_japanese_is_refused_with_plain_advice(tts: Any) -> None:
    """Everyday Japanese is mostly kanji, which eSpeak's ja reads as "Chinese letter": the refusal
    says so plainly and asks for kana; it sends nobody to a Piper voice (phonemized by eSpeak too)."""
    stub, _, _ = tts
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _say(stub, "私は日本人です", "espeak:ja")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details() == (
        "config.voice: 4 of the text's 7 letters are Han script, which espeak:ja reads letter by letter, "
        "by name; eSpeak's Japanese voice reads kana only (each kanji is read as \"Chinese letter\"): "
        "write the text in kana (hiragana or katakana); a Piper voice does not help, "
        "as Piper voices are phonemized by eSpeak too"
    )
    await _say(stub, "わたしはにほんじんです", "espeak:ja")  # the same in kana is spoken


@pytest.mark.parametrize(
    ("text", "voice"),
    [
        ("今天天气很好。", "espeak:zh-CN"),
        ("我喜欢 Python 和 TypeScript。", "espeak:cmn"),  # English inside Chinese
        ("今天天气很好。", "espeak:yue"),
        ("こんにちは、げんきですか。", "espeak:ja"),
        ("Καλημέρα κόσμε", "espeak:fr-fr"),  # eSpeak switches to Greek by itself
        ("Καλημέρα κόσμε", "espeak:el"),
        ("안녕하세요", ""),  # and to Korean
        ("Привет, мир!", "espeak:uk"),
        ("Hello world.", "espeak:cmn"),  # Latin is read by every voice (in English)
    ],
)
async def test_text_the_voice_reads_is_spoken_without_warning(tts: Any, text: str, voice: str) -> None:
    stub, _, _ = tts
    samples, warning = await _say_warned(stub, text, voice)
    assert samples > 4000
    assert warning == ""


@pytest.mark.parametrize(
    ("text", "voice", "script"),
    [
        ("I flew from 北京 to 上海 last week.", "", "Han"),  # 4 of 22 letters
        ("今日はいい天気ですね。", "espeak:ja", "Han"),  # the report's: 4 kanji among 6 kana
    ],
)
async def test_some_letters_the_voice_spells_out_are_spoken_with_a_warning(
    tts: Any, text: str, voice: str, script: str
) -> None:
    stub, _, _ = tts
    samples, warning = await _say_warned(stub, text, voice)
    assert samples > 4000
    assert "4 of the text's" in warning and f"{script} script" in warning


async def test_a_stream_is_refused_by_its_first_words_and_only_warned_later(tts: Any) -> None:
    stub, _, _ = tts
    with pytest.raises(grpc.aio.AioRpcError) as exc:  # refused before any audio
        await _say_streamed(stub, ["今天天气很好。", " Hello there."])
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    samples, _ = await _say_streamed(stub, ["Hello there. ", "今天天气很好。"])  # mixed: spoken
    assert samples > 4000


def test_the_script_table_matches_what_espeak_reads() -> None:
    assert not reads("en-us", "Han") and reads("zh-TW", "Han") and reads("cmn", "Han")
    assert not reads("ja", "Han") and reads("ja", "Kana")
    assert reads("fr-fr", "Greek") and not reads("en-gb", "Greek")
    assert reads("en-us", "Latin") and reads("ru", "Cyrillic") and not reads("de", "Cyrillic")


async def test_a_control_character_in_a_streamed_piece_is_placed_in_the_whole_text(tts: Any) -> None:
    """An LLM's ANSI colour code in its third piece: the position counts from the stream's start
    (where the caller can find it), not from the start of the piece."""
    stub, _, _ = tts
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _say_streamed(stub, ["Hello there. ", "And more. ", "oops\x1b[0m ", "end."])
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details() == "text: contains the control character U+001B at position 27"


async def test_a_voice_tail_that_names_no_voice_is_spoken_with_a_warning(tts: Any) -> None:
    """`espeak:en-US-x-female` was spoken by the male en-us voice without a word (a user trial):
    the private-use tail names no voice; the warning says which voice spoke and how eSpeak's
    variants are named. A region or script dropped (`es-ES` -> es) is as documented: no warning."""
    stub, _, _ = tts
    size, warning = await _say_warned(stub, "Hello there.", "espeak:en-US-x-female")
    assert size > 4000
    assert warning == (
        "voice 'espeak:en-US-x-female' is spoken as espeak:en-us: 'x-female' names no voice "
        "(eSpeak's variants come after a '+', e.g. espeak:en-us+f3 is female)"
    ), warning
    call = stub.SynthesizeStream(
        iter(
            [
                tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(voice="espeak:en-US-x-female")),
                tts_pb2.TextPiece(text="Hello there.", end_of_stream=True),
            ]
        )
    )
    assert pcm_of([c async for c in call]).size > 4000
    assert dict(await call.trailing_metadata()).get(WARNING_KEY, "") == warning
    # listed voices whose names have a private-use tail of their own are themselves (a tutor's trial:
    # en-gb-x-rp, Received Pronunciation, was "spoken as espeak:en-gb-x-rp: 'x-rp' names no voice")
    for voice in ("espeak:es-ES", "espeak:en-us", "espeak:en_GB", "espeak:en-us+f3", "espeak:en-gb-x-rp",
                  "espeak:en-GB-x-RP", "espeak:vi-vn-x-south", "espeak:chr-US-Qaaa-x-west"):
        assert (await _say_warned(stub, "Hola.", voice))[1] == "", voice
