"""What a clause of Markdown says aloud (``TEXT_FORMAT_MARKDOWN``): chat text as LLMs write it.

eSpeak and Piper read every character: "**Note:**" is "asterisk asterisk Note colon asterisk
asterisk", a link reads its address letter by letter, an emoji its name. With the Markdown format
the markup is dropped and its words kept:

* emphasis and strike-through markers (``*``, ``_``, ``~~`` around words; ``snake_case`` and
  ``2 * 3`` are left alone), inline code's backticks, code fences and their language tag;
* headings' ``#``, block quotes' ``>``, list bullets (``-``, ``*``, ``+``; a numbered item keeps
  its number), horizontal rules, table rules and cell bars (a cell ends a phrase);
* a link or an image says its text (``[the docs](https://...)`` is "the docs"); a bare address or
  an ``<https://...>`` autolink is not read;
* HTML entities are decoded (``&amp;`` is "&"); emoji are skipped.

It runs per clause, after the text is split (a line break ends a clause, so each heading, item
and quote line is one), on what TTS is about to speak: the audio, its visemes and the samples
counted are those of the words said. Plain text (the default) is read as it is.
"""

from __future__ import annotations

import html
import re

_FENCE = re.compile(r"^\s*(```|~~~)[\w+-]*\s*$|(```|~~~)", re.MULTILINE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_AUTOLINK = re.compile(r"<(?:https?|mailto|ftp):[^>\s]*>")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+\.\S+")
_LINE_MARKS = re.compile(r"^\s*(?:#{1,6}\s+|>\s?|[-*+]\s+)+", re.MULTILINE)
_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$|^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"(?<![\w*_~])(?:\*{1,3}|_{1,3}|~~)(?=[^\s*_~])|(?<=[^\s*_~])(?:\*{1,3}|_{1,3}|~~)(?![\w*_~])")
_CODE = re.compile(r"`+")
_CELL = re.compile(r"\s*\|\s*")
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\ufe0f\u200d\u20e3\U000e0020-\U000e007f]"
)
_SPACES = re.compile(r"[ \t]{2,}")


def speakable_markdown(clause: str) -> str:
    """``clause`` of Markdown as the words to say (see the module's docstring)."""
    text = _FENCE.sub("", clause)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub("", text)
    text = _URL.sub("", text)
    text = _RULE.sub("", text)
    text = _LINE_MARKS.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _CODE.sub("", text)
    if "|" in text:  # a table row: each cell a phrase
        text = ", ".join(cell for cell in _CELL.split(text.strip().strip("|").strip()) if cell)
    text = html.unescape(text)
    text = _EMOJI.sub("", text)
    return _SPACES.sub(" ", text).strip()
