"""Whether a voice can read the text's script, or would spell it out letter by letter.

eSpeak NG reads letters of a script its voice's language does not know by their names: Chinese
with an English voice is "Chinese letter" once per character, Hebrew "Hebrew shin, Hebrew lamed".
For most scripts it switches language by itself instead (Latin, Hangul, Devanagari, Georgian...:
every voice reads them), so only the scripts below are checked. The table was measured with the
eSpeak NG 1.52 of espeakng-loader, by phonemizing a word of each script with every listed voice.

A text whose letters are MOST of them in a script the voice reads by name is refused (the speech
would be useless): INVALID_ARGUMENT naming ``config.voice``, with a voice that reads the script. A
text where some are (English with a Chinese name in it) is spoken, with a warning.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

from services.tts.engine import primary_language, voice_key
from talkmesh.common.errors import InvalidArgument

log = logging.getLogger(__name__)

#: script -> the languages (primary subtags) whose voices read it.
SCRIPT_READERS: dict[str, frozenset[str]] = {
    "Han": frozenset({"cmn", "yue"}),  # not ja: eSpeak's Japanese reads kana only
    "Kana": frozenset({"ja"}),
    "Thai": frozenset({"th"}),
    "Hebrew": frozenset({"he"}),
    "Arabic": frozenset({"ar", "fa", "sd", "ur", "ug"}),
    "Cyrillic": frozenset(
        "ru uk be bg mk sr ba cv kk ky tt nog uz hr bs lfn ka lv ltg".split()  # ka, lv, ltg switch to ru
    ),
}
#: Greek is read by every voice (eSpeak switches to Greek) except these, which spell it by name.
GREEK_BY_NAME = frozenset({"en", "vi", "lt"})

#: A voice that reads the script, for the refusal.
SCRIPT_VOICE = {
    "Han": "espeak:cmn",
    "Kana": "espeak:ja",
    "Thai": "espeak:th",
    "Hebrew": "espeak:he",
    "Arabic": "espeak:ar",
    "Cyrillic": "espeak:ru",
    "Greek": "espeak:el",
}

_NAME_SCRIPT = {
    "CJK": "Han",
    "HIRAGANA": "Kana",
    "KATAKANA": "Kana",
    "KATAKANA-HIRAGANA": "Kana",
    "HALFWIDTH": "",  # half-width katakana are made full-width first (text.normalize)
    "THAI": "Thai",
    "HEBREW": "Hebrew",
    "ARABIC": "Arabic",
    "CYRILLIC": "Cyrillic",
    "GREEK": "Greek",
}


def script_of(ch: str) -> str:
    """The checked script of a letter ("Han", "Kana", ...), or "" (another script, or not a letter)."""
    if not unicodedata.category(ch).startswith("L"):
        return ""
    return _NAME_SCRIPT.get(unicodedata.name(ch, "").split(" ", 1)[0], "")


def reads(language: str, script: str) -> bool:
    """Whether a voice of ``language`` (a tag: "en-us", "zh_CN") reads ``script`` as text."""
    lang = primary_language(language)
    if script == "Greek":
        return lang not in GREEK_BY_NAME
    readers = SCRIPT_READERS.get(script)
    return readers is None or lang in readers


@dataclass(frozen=True)
class ScriptCheck:
    letters: int  # letters in the text
    unread: dict[str, int]  # script -> letters of it the voice reads by name

    @property
    def unread_letters(self) -> int:
        return sum(self.unread.values())

    @property
    def useless(self) -> bool:
        """Most of the text's letters would be read by name."""
        return self.unread_letters * 2 > self.letters


def check_scripts(text: str, language: str) -> ScriptCheck:
    letters = 0
    unread: dict[str, int] = {}
    for ch in text:
        if not unicodedata.category(ch).startswith("L"):
            continue
        letters += 1
        script = script_of(ch)
        if script and not reads(language, script):
            unread[script] = unread.get(script, 0) + 1
    return ScriptCheck(letters, unread)


def _advice(script: str, text: str, language: str) -> str:
    japanese = voice_key(language).startswith("ja") or any(script_of(ch) == "Kana" for ch in text)
    if script == "Han" and japanese:
        # no other voice helps: Piper voices are phonemized by this same eSpeak (see services/tts/README.md)
        return (
            "eSpeak's Japanese voice reads kana only (each kanji is read as \"Chinese letter\"): "
            "write the text in kana (hiragana or katakana); a Piper voice does not help, "
            "as Piper voices are phonemized by eSpeak too"
        )
    return f"use a voice that reads it, e.g. {SCRIPT_VOICE[script]}"


def check_voice_reads(text: str, voice_id: str, language: str, *, refuse: bool = True, unit: str = "text") -> str:
    """Refuses ``text`` when most of its letters would be read by name (INVALID_ARGUMENT naming
    ``config.voice``; only when ``refuse``); otherwise a warning when some would be, or ""."""
    found = check_scripts(text, language)
    if not found.unread:
        return ""
    script = max(found.unread, key=lambda s: found.unread[s])
    what = (
        f"{found.unread_letters} of the {unit}'s {found.letters} letters are {script} script, "
        f"which {voice_id} reads letter by letter, by name"
    )
    advice = _advice(script, text, language)
    if refuse and found.useless:
        raise InvalidArgument("config.voice", f"{what}; {advice}")
    warning = f"{what} ({advice})"
    log.warning("tts: %s", warning)
    return warning
