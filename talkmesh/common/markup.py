"""What Markdown says aloud (``TEXT_FORMAT_MARKDOWN``): chat text as LLMs write it.

eSpeak and Piper read every character: "**Note:**" is "asterisk asterisk Note colon asterisk
asterisk", a link reads its address letter by letter, an emoji its name. With the Markdown format
the markup is dropped and its words kept:

* emphasis and strike-through (``**bold**``, ``*it*``, ``_it_``, ``~~old~~``; ``*`` also inside a
  word, as CommonMark reads it and as CJK text uses it, but ``snake_case`` and ``2 * 3`` stay), and
  a line of only such marks (an emphasis never closed),
  inline code's backticks (the code inside is left alone), code fence lines with their language
  tag;
* at the start of a line: headings' ``#`` (and a heading's ``===`` underline), block quotes'
  ``>``, list bullets (``-``, ``*``, ``+``; a numbered item keeps its number) and a task's box
  (``- [x]``), horizontal rules, table rules; a table row says its cells as phrases;
* HTML tags of text, where they are tags beyond doubt (``<b>bold</b>``, ``<br/>``, a tag with
  quoted attributes; only names of text formatting, so ``List<String>``, ``a<b`` and "a <b> c"
  stay);
* a link or an image says its text (``[the docs](https://...)`` is "the docs"), an address its
  host (``https://www.example.com/a?b`` is "example.com");
* HTML entities (``&amp;``, ``&#8212;``) are decoded and emoji skipped; a backslash escape
  (``\\*``) is the character itself.

The code inside a fenced block is read as text, line by line. The filter runs before the text is
split into clauses, so a link or a code span with a comma in it stays whole: on a whole text at
once (``speakable_markdown``), on a stream as it comes (``MarkdownStream``, which releases up to a
break and holds back what is not whole yet: an open link or code span, a fence or table line, a
line's marks before its first word), and both say the same.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

#: A stream's text held back for an open construct (an unclosed link or code span) at most this long.
HOLD_CHARS = 400
#: Why a Markdown text with only markup is refused (its field is the text's).
ONLY_MARKUP = "must not be empty (as Markdown it has nothing to say: only markup)"

_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
#: HTML that chat text uses for formatting; a tag of another name is left as written.
_HTML_NAMES = (
    "a|abbr|b|big|blockquote|br|center|cite|code|del|details|div|em|font|h[1-6]|hr|i|img|ins|kbd|li|mark|"
    "ol|p|pre|q|s|small|span|strike|strong|sub|summary|sup|table|tbody|td|th|thead|tr|tt|u|ul"
)
_ATTRS = r"""(?:\s+[\w:-]+\s*=\s*(?:"[^"<>\n]*"|'[^'<>\n]*'))"""
# Only what is a tag beyond doubt: a line break or rule (``<br>``, ``<hr/>``), a tag with quoted
# attributes, an opening tag right before a word (``<b>bold``, or another tag), a closing one right
# after it (``bold</b>``, ``Note:</b>``). "a <b> c", "Use the <table> element", "j <i and i > 0" stay as written.
_HTML_TAG = re.compile(
    rf"<(?:br|hr)\s*/?>|</?(?:{_HTML_NAMES}){_ATTRS}+\s*/?>"
    rf"""|<(?:{_HTML_NAMES})>(?=[\w<"'(\[])|(?<=[\w>.,;:!?)"'\]])</(?:{_HTML_NAMES})>""",
    re.IGNORECASE,
)
# A tag with attributes not closed yet (a stream holds it: its spaces are breaks).
_HTML_OPEN = re.compile(
    rf"""</?(?:{_HTML_NAMES}){_ATTRS}*(?:\s+[\w:-]+\s*=\s*(?:"[^"<>\n]*|'[^'<>\n]*)?)?\s*\Z""", re.IGNORECASE
)
_LINK = re.compile(r"!?\[([^\]\n]*)\]\(([^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+\"[^\"\n]*\")?\)")
_AUTOLINK = re.compile(r"<((?:https?|ftp)://[^>\s]+|mailto:([^>\s]+))>")
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"]|\bwww\.[\w-]+(?:\.[\w-]+)+\b")
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>~|])")
_PAIRED = (
    # around words (the markers not inside a word: "a*b and c*d", "2*3*4" stay) ...
    re.compile(r"(?<![\w*])(\*{1,3})(?=\S)(.+?)(?<=\S)\1(?![\w*])"),
    # ... or inside a word written without spaces, next to a letter that is not ASCII (CJK)
    re.compile(r"(?:(?<=[^\x00-\x7f])|(?<![\w*]))(\*{1,3})([^\s*]+?)\1(?:(?=[^\x00-\x7f])|(?![\w*]))"),
    re.compile(r"(?<!\w)(_{1,3})(?=\S)(.+?)(?<=\S)\1(?!\w)"),
    re.compile(r"(~~)(?=\S)(.+?)(?<=\S)\1"),
)
_LONE = re.compile(r"(?<![\w*_~])(?:\*{1,3}|_{1,3}|~~)(?=[^\s*_~])|(?<=[^\s*_~])(?:\*{1,3}|_{1,3}|~~)(?![\w*_~])")
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u2775\u2794-\u27bf\u2b00-\u2bff\u2300-\u23ff\ufe0f\u20e3\U000e0020-\U000e007f]"
)
_SPACES = re.compile(r"[ \t]{2,}")
_CODE_MARK = re.compile("\ue000(\\d+)\ue001")
_PRIVATE_MARKS = re.compile("[\ue000\ue001]")  # (the code marks above: never taken from the input)


def _line_rules(start: str) -> tuple[re.Pattern[str], ...]:
    """The rules for what starts a line (``start``: where a line may start in the text given)."""
    end = r"[ \t]*(?=\n|\Z)"
    return (
        re.compile(rf"{start}[ \t]*(?:`{{3,}}|~{{3,}})[^`\n]*(?=\n|\Z)"),  # a code fence, with its language tag
        re.compile(rf"{start}[ \t]*\|?[ \t]*:?-{{3,}}:?[ \t]*(?:\|[ \t]*:?-{{3,}}:?[ \t]*)*\|?{end}"),  # table rule
        re.compile(rf"{start}[ \t]*(?:[-*_][ \t]*){{3,}}{end}"),  # horizontal rule
        re.compile(rf"{start}[ \t]*={{2,}}{end}"),  # a heading's underline
        # a line of only emphasis or code marks (``**``, a lone backtick: never closed); within a
        # line they stay (``2 ** 8``)
        re.compile(rf"{start}[ \t]*(?:(?:\*{{2,}}|_{{2,}}|~{{2,}}|`+)[ \t]*)+{end}"),
        # heading, quote, bullet (and a task's box)
        re.compile(rf"{start}[ \t]*(?:#{{1,6}}[ \t]+|>[ \t]?|[-*+][ \t]+(?:\[[ xX]\][ \t]+)?)+"),
    )


_AT_LINE_START = _line_rules(r"(?:(?<=\n)|\A)")
_MID_LINE = _line_rules(r"(?<=\n)")
_TABLE_ROW = {
    True: re.compile(r"(?:(?<=\n)|\A)[ \t]*\|([^\n]*)\|[ \t]*(?=\n|\Z)"),
    False: re.compile(r"(?<=\n)[ \t]*\|([^\n]*)\|[ \t]*(?=\n|\Z)"),
}


def _host(url: str) -> str:
    """What an address says: its host, without ``www.`` ("" for one without a host)."""
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    return host.removeprefix("www.")


def speakable_markdown(text: str, *, line_start: bool = True) -> str:
    """``text`` of Markdown as the words to say (see the module's docstring). ``line_start``:
    whether ``text`` starts a line (a stream's later piece may start mid-line)."""
    codes: list[str] = []

    def keep(literal: str) -> str:
        codes.append(literal)
        return f"\ue000{len(codes) - 1}\ue001"

    text = _PRIVATE_MARKS.sub("", text)
    fence, *line_rules = _AT_LINE_START if line_start else _MID_LINE
    text = fence.sub("", text)
    text = _CODE_SPAN.sub(lambda m: keep(m[2]), text)  # code is said as written: no rule below touches it
    text = _ESCAPED.sub(lambda m: keep(m[1]), text)  # \* is a star, not emphasis
    text = _LINK.sub(lambda m: m[1] or _host(m[2]), text)
    text = _AUTOLINK.sub(lambda m: m[2] or _host(m[1]), text)
    text = _URL.sub(lambda m: _host(m[0]), text)
    text = _HTML_TAG.sub(lambda m: " " if m[0][1:3].lower() in ("br", "hr") else "", text)
    for rule in line_rules:
        text = rule.sub("", text)
    text = _TABLE_ROW[line_start].sub(lambda m: ", ".join(c.strip() for c in m[1].split("|") if c.strip()), text)
    for paired in _PAIRED:
        text = paired.sub(r"\2", text)
    text = _LONE.sub("", text)
    text = _ENTITY.sub(lambda m: html.unescape(m[0]), text)
    text = _EMOJI.sub("", text)
    text = _CODE_MARK.sub(lambda m: codes[int(m[1])], text)
    return _SPACES.sub(" ", text)


#: Where a stream's text may be released up to (after it): white space, and CJK punctuation
#: (CJK text has no spaces between words).
_BREAKS = " \t\n\u3002\uff01\uff1f\uff0c\uff1b\uff1a\u3001"
_LINE_PREFIX = re.compile(r"[ \t]*(?:(?:#{1,6}|>|[-*+])[ \t]*)*")
_FENCE_LINE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})[^`\n]*$", re.MULTILINE)


def _open_at(text: str) -> int | None:
    """Where something that is not whole yet starts in ``text``: a line that so far is only its
    marks (``  - ``, ``> ``: whether the line has started decides how they read), a code fence
    line, a heading's underline or a table row before its line ends, a code span, a link, an image
    or an HTML tag not yet closed."""
    opens = []
    line = text.rfind("\n") + 1
    last = text[line:]
    if (last and _LINE_PREFIX.fullmatch(last)) or last.lstrip(" \t").startswith(("|", "```", "~~~", "==")):
        opens.append(line)
    # code spans and fences masked (same length): a [ or ` inside closed code opens nothing
    masked = _FENCE_LINE.sub(lambda m: " " * len(m[0]), text)
    masked = _CODE_SPAN.sub(lambda m: " " * len(m[0]), masked)
    tick = masked.find("`")
    if tick >= 0:
        opens.append(tick)
    tag = _HTML_OPEN.search(masked[masked.rfind("<") :]) if "<" in masked else None
    if tag is not None:
        opens.append(masked.rfind("<"))
    bracket = masked.rfind("[")
    if bracket >= 0:
        rest = masked[bracket:]
        close = rest.find("](")
        if "]" not in rest or (close >= 0 and ")" not in rest[close:]):
            opens.append(bracket - 1 if bracket and masked[bracket - 1] == "!" else bracket)
    return min(opens) if opens else None


class MarkdownStream:
    """Streamed Markdown (an LLM's tokens) as speakable text, released for the clause splitter as
    soon as it is whole: up to the last break (white space, CJK punctuation), and nothing of a link,
    code span, fence or table line before it is closed, nor a line's marks before its first word.
    At most ``HOLD_CHARS`` are held for an open construct; beyond, the text goes as it is."""

    def __init__(self) -> None:
        self.pending = ""
        self._line_start = True
        self._after_space = False  # the last text released ended with a space

    def push(self, text: str) -> str:
        self.pending += text
        end = self._last_break()
        if len(self.pending) > HOLD_CHARS:
            return self._release(end or len(self.pending))
        open_at = _open_at(self.pending[:end])
        return self._release(end if open_at is None else min(end, open_at))

    def release(self, *, whole: bool = True) -> str:
        """What is held: all of it (``whole``: the stream ended), else up to the last break, or
        all when it has none (its text has waited long enough: CJK without punctuation)."""
        return self._release(len(self.pending) if whole else self._last_break() or len(self.pending))

    def _last_break(self) -> int:
        return max(self.pending.rfind(c) for c in _BREAKS) + 1

    def _release(self, end: int) -> str:
        out, self.pending = self.pending[:end], self.pending[end:]
        if not out:
            return ""
        said = speakable_markdown(out, line_start=self._line_start)
        self._line_start = out.endswith("\n")
        if self._after_space:  # (the whole text's spaces are one: "a " + " b" is "a b")
            said = said.lstrip(" \t")
        if said:
            self._after_space = said.endswith((" ", "\t"))
        return said
