# ruff: noqa: RUF001, RUF002 - CJK punctuation and full-width forms are meant literally
"""Text checks and splitting into clauses (the unit of synthesis and of streaming).

A clause ends at sentence punctuation (. ! ? … and their CJK forms, the Arabic-script question
mark and Urdu full stop, the Devanagari dandas), at clause punctuation (, ; : and the CJK and
Arabic commas, the Arabic semicolon), or at a line break, and is confirmed by the whitespace that
follows: in streamed input "3." may still become "3.5", so a trailing mark waits for the next
character (or the end of the text). A numbered item's number ("1. First" at a line's start)
stays with its item.
Common abbreviations ("Dr.", "e.g.") and single-letter initials do not end a sentence. A run
longer than ``max_chars`` without punctuation is cut at its last space.

Streamed text (``SynthesizeStream``: an LLM writing as it goes) may have no punctuation at all, so
two more rules bound how long the first words wait to be spoken:

* **word count**: the stream's first run without a clause boundary is spoken once it holds
  ``max_words`` complete words (a word is complete when whitespace follows it), cut after that
  word, unless the mark that ends it is already in hand (a long sentence that arrived whole is one
  clause). Only the first clause: once speech is under way, text written while it plays waits for
  its punctuation (or the time rule), as each cut is heard as a pause in the middle of a sentence;
* **waiting time**: text that has waited ``max_wait_seconds`` since it arrived unspoken is spoken
  at once: every complete word, or up to the last letter of a script written without spaces (CJK,
  Thai). A word cut by the stream ("wor" of "world") waits for its rest or the stream's end, so it
  is never spoken as two words. The service applies it (``flush_waiting``) when no new piece
  arrives in time and less than ``max_wait_seconds`` of the speech already made is left to play.

So speech starts at most ``max_wait_seconds`` after the first words arrive (plus the time to the
next space when the text stops mid-word), whatever the text looks like. Whole texts
(``Synthesize``) use punctuation and ``max_chars`` only.
"""

from __future__ import annotations

import re
import unicodedata

# (and the Arabic-script question mark and Urdu full stop, the Devanagari danda and double danda;
# the Arabic comma and semicolon)
SENTENCE_END = frozenset(".!?…。！？؟۔।॥")
CLAUSE_END = frozenset(",;:，；：、،؛")
_CLOSERS = frozenset("\"')]}»”’")
_ABBREVIATIONS = frozenset("mr mrs ms dr prof sr jr st vs etc e.g i.e cf approx no fig inc ltd co mt ft".split())
_WORD_BEFORE = re.compile(r"([\w.]+)$")


_WIDE_FORMS = re.compile("[\u3000\uff01-\uffef]+")
#: letters of scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, CJK
#: ideographs, full-width forms): where streamed text may be cut without cutting a word
_SPACELESS = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
)


def normalize(text: str) -> str:
    """The text eSpeak and Piper are given: Unicode NFC, and full-width/half-width forms made plain.

    NFC composes decomposed accents (macOS file names, PDF text: "e" + U+0301), which eSpeak would
    otherwise read by name ("circumflex"). NFKC is applied only to the ideographic space and the
    Halfwidth and Fullwidth Forms block (U+FF01..U+FFEF: "Ｈｅｌｌｏ" -> "Hello", half-width katakana
    -> katakana), which eSpeak reads as code points; NFKC on the whole text would also change
    characters whose form carries meaning (superscripts, ligatures, compatibility ideographs).
    """
    text = unicodedata.normalize("NFC", text)
    if _WIDE_FORMS.search(text):
        text = unicodedata.normalize("NFC", _WIDE_FORMS.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text))
    return text


def final_punctuation(segment: str) -> str:
    """The clause's closing punctuation mark (quotes and brackets skipped), or ""."""
    s = segment.rstrip().rstrip("".join(_CLOSERS))
    return s[-1] if s and (s[-1] in SENTENCE_END or s[-1] in CLAUSE_END) else ""


def is_sentence_end(segment: str) -> bool:
    return final_punctuation(segment) in SENTENCE_END and bool(final_punctuation(segment))


class ClauseSplitter:
    """Incremental splitter: ``push`` text as it arrives, get complete clauses back; ``flush`` at end.

    ``max_words`` > 0 also ends a clause after that many complete words without punctuation.
    """

    def __init__(self, max_chars: int = 300, max_words: int = 0) -> None:
        self.max_chars = max_chars
        self.max_words = max_words
        self._buf = ""
        #: the text waiting starts a line (the text's start, or after a line break): where a
        #: numbered item's "1." is its number, not a sentence
        self._line_start = True
        #: a clause has been given out: the word rule (for the first words only) is over
        self._spoken = False

    @property
    def pending(self) -> bool:
        """Whether text is waiting to be spoken."""
        return bool(self._buf.strip())

    def push(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._find_boundary(self._buf)
            if cut is None:
                break
            rest = self._buf[cut:]
            gap = rest[: len(rest) - len(rest.lstrip())]  # the white space between the two
            self._line_start = self._buf[cut - 1 : cut] == "\n" or "\n" in gap
            seg, self._buf = self._buf[:cut].strip(), rest.lstrip()
            if seg:
                out.append(seg)
                self._spoken = True
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        out: list[str] = []
        while len(rest) > self.max_chars:
            cut = self._long_cut(rest)
            out.append(rest[:cut].strip())
            rest = rest[cut:].strip()
        if rest:
            out.append(rest)
        return [s for s in out if s]

    def flush_waiting(self) -> list[str]:
        """Speaks text that waited too long: up to its last space, or its last letter of a script
        written without spaces; a word still being written (no space after it) waits."""
        text = self._buf.lstrip()
        cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"), 0)
        for m in _SPACELESS.finditer(text, cut):
            cut = m.end()
        seg, self._buf = text[:cut].strip(), text[cut:]
        if seg:
            self._line_start = False
            self._spoken = True
        out = [seg] if seg else []
        return out

    def _find_boundary(self, buf: str) -> int | None:
        """Index just past the clause's last character, if a confirmed boundary exists.

        The word rule cuts only where no punctuation is in hand: a sentence that arrived whole
        is one clause, whatever its length up to ``max_chars``; a mark at the very end of the
        buffer (waiting for the next character to confirm it) holds the cut too.
        """
        n = len(buf)
        words = 0
        word_cut: int | None = None
        for i, ch in enumerate(buf):
            if i >= self.max_chars:
                return word_cut if word_cut is not None else self._long_cut(buf)
            if ch == "\n":
                return i + 1
            if ch.isspace():
                if i > 0 and not buf[i - 1].isspace():
                    words += 1
                    if words == self.max_words and not self._spoken:
                        word_cut = i
                continue
            if ch not in SENTENCE_END and ch not in CLAUSE_END:
                continue
            j = i + 1
            while j < n and (buf[j] in _CLOSERS or buf[j] in SENTENCE_END):
                j += 1
            if j >= n:
                return None  # not confirmed yet: the next character decides
            if not buf[j].isspace() and ch not in "。！？，；：、":
                continue  # "3.5", "a,b", "e.g"
            if ch == "." and (self._is_abbreviation(buf[:i]) or (self._line_start and buf[:i].strip().isdigit())):
                continue  # "Dr.", "e.g."; a numbered item's "1." (at a line's start) stays with its item
            return j
        return word_cut

    def _long_cut(self, buf: str) -> int:
        space = buf.rfind(" ", 0, self.max_chars)
        return space if space > 0 else self.max_chars

    @staticmethod
    def _is_abbreviation(before: str) -> bool:
        m = _WORD_BEFORE.search(before)
        if not m:
            return False
        word = m.group(1).lower()
        if len(word) == 1 and word.isalpha() and before[-1].isupper():
            return True  # an initial: "J. Smith"
        return word in _ABBREVIATIONS


def split_clauses(text: str, max_chars: int = 300) -> list[str]:
    splitter = ClauseSplitter(max_chars)
    return splitter.push(text) + splitter.flush()
