# ruff: noqa: RUF001 - CJK punctuation is meant literally
"""TEXT_FORMAT_MARKDOWN: an LLM's Markdown is said as its words, not its markup."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from services.tts.text import split_clauses
from talkmesh.common.markup import HOLD_CHARS, MarkdownStream, speakable_markdown
from talkmesh.v1 import tts_pb2, types_pb2
from tests.tts.conftest import pcm_of, visemes_of

MARKDOWN = types_pb2.TEXT_FORMAT_MARKDOWN


@pytest.mark.parametrize(
    ("markdown", "said"),
    [
        ("**Note:** this is *very* important.", "Note: this is very important."),
        ("# Heading one", "Heading one"),
        ("- first item", "first item"),
        ("* second item", "second item"),
        ("1. numbered", "1. numbered"),  # the number is said
        ("> quoted text", "quoted text"),
        ("Use `pip install` now.", "Use pip install now."),
        ("See [the docs](https://example.com/a_b) now.", "See the docs now."),
        ("See [the guide, part two](/docs/setup.md) first.", "See the guide, part two first."),
        ("![A chart, showing growth](chart.png) is below.", "A chart, showing growth is below."),
        ("Visit https://www.talkmesh.dev/docs?a=1 or <https://x.y> today.", "Visit talkmesh.dev or x.y today."),
        ("(see https://example.com)", "(see example.com)"),
        ("Write to <mailto:bob@example.com>.", "Write to bob@example.com."),
        ("~~old~~ new, __bold__ and _it_", "old new, bold and it"),
        ("***wow***", "wow"),
        ("| a | b |", "a, b"),
        ("|---|:---:|", ""),
        ("---", ""),
        ("```python", ""),
        ("Before\n```js\nlet x = 1\n```\nafter", "Before\n\nlet x = 1\n\nafter"),  # the code is read
        ("Tom &amp; Jerry &#8212; &not;", "Tom & Jerry \u2014 \u00ac"),
        ("Great job 🎉👍🏽!", "Great job !"),
        ("这是**非常重要**的事情", "这是非常重要的事情"),  # emphasis inside a word (CJK)
        ("`__init__` and `*args`", "__init__ and *args"),  # code is said as written
        # not markup: left as written
        ("snake_case and 2 * 3 = 6", "snake_case and 2 * 3 = 6"),
        ("C# and F#, C++, #hashtag, 10:30", "C# and F#, C++, #hashtag, 10:30"),
        ("this &not that", "this &not that"),  # an entity needs its semicolon
        ("Net change: - 5 points, when the load is: > 90%.", "Net change: - 5 points, when the load is: > 90%."),
        ("ls | grep foo", "ls | grep foo"),  # a table row starts and ends with a bar
        ("Multiply a*b and c*d, 2*3*4 = 24, $5*2.", "Multiply a*b and c*d, 2*3*4 = 24, $5*2."),
        ("\\*not emphasis\\*", "*not emphasis*"),  # escaped
        ("```npm install``` first", "npm install first"),  # inline code, not a fence
        ("x\ue0005\ue001 y", "x5 y"),  # the filter's own marks are not taken from the input
        ("Title\n=====\nbody", "Title\n\nbody"),  # a heading's underline
        ("- [x] done\n- [ ] todo\n* [X] also", "done\ntodo\nalso"),  # task boxes
        ("<b>bold</b>, <sup>2</sup> and<br/>next", "bold, 2 and next"),  # HTML of text
        ('<a href="https://x.y/a b">the link</a> <details><summary>More</summary>', "the link More"),
        ("List<String> and a<b, <unknown> stay", "List<String> and a<b, <unknown> stay"),
        # what only looks like a tag stays (a review's cases)
        *(
            (text, text)
            for text in (
                "Latency is usually <a second, and rarely > 2 seconds.",
                "Loop while j <i and i > 0.",
                "Use the <table> element, press <Del>, type <s> or a <b> c",
                "2 ** 8 = 256, a ~~ b, x == y, see [1] and - [1] ref",
            )
        ),
        ("**\n`\n~~ **", ""),  # lines of only marks (never closed) say nothing
        ("````md\ncode\n````\nafter", "code\n\nafter"),  # a longer fence
    ],
)
def test_markup_is_dropped_and_words_kept(markdown: str, said: str) -> None:
    assert speakable_markdown(markdown).strip() == said


def _request(text: str, text_format: int = 0) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(text_format=text_format), text=text)  # type: ignore[arg-type]


def _phonemes(chunks: list[Any]) -> list[str]:
    return [v.phoneme for v in visemes_of(chunks) if v.phoneme]


async def test_markdown_is_spoken_as_its_words_and_plain_text_as_written(tts: Any) -> None:
    """The Markdown reply says exactly its words written plainly (the same phonemes, about the
    same length: eSpeak's pauses vary by a few ms from call to call); the same text as plain text
    reads the markup (more phonemes, longer)."""
    stub, _, _ = tts
    markdown = "**Hello** there!\n\n- Pick the `blue` one.\n- See [the map, page 2](https://example.com/map) 🎉"
    words = "Hello there!\n\nPick the blue one.\nSee the map, page 2"
    assert list(split_clauses(speakable_markdown(markdown), 400)) == list(split_clauses(words, 400))
    as_markdown = [c async for c in stub.Synthesize(_request(markdown, MARKDOWN))]
    plainly = [c async for c in stub.Synthesize(_request(words))]
    as_written = [c async for c in stub.Synthesize(_request(markdown))]
    assert _phonemes(as_markdown) == _phonemes(plainly)
    assert abs(len(pcm_of(as_markdown)) - len(pcm_of(plainly))) < 22050 // 20
    assert len(_phonemes(as_written)) > len(_phonemes(plainly)) + 20, "plain text reads the markup"
    assert len(pcm_of(as_written)) > len(pcm_of(plainly)) + 22050 // 2


async def test_markdown_with_only_markup_is_refused_and_a_bad_format_names_the_field(tts: Any) -> None:
    stub, _, _ = tts
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Synthesize(_request("---\n***\n```", MARKDOWN)):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("text: must not be empty (as Markdown"), err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Synthesize(_request("Hi.", 7)):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("config.text_format"), err.value.details()
    ok = [c async for c in stub.Synthesize(_request("Still here.", MARKDOWN))]
    assert ok[-1].end_of_stream


STREAMED = [
    "**Sure!** Here are *two* options:\n- the `red, or blue` one,\n"
    "- see [the guide, part two](/docs/setup.md) now &amp; later.\n| a | b |\n这是**重要**的",
    "Here is code:\n```python\nprint(`x`)\n```\nDone.",
    "- a\n  - nested b\n> - item one\n> > nested quote\n # Title\nbody",
    "1. Install:\n   ```bash\n   pip install x\n   ```\n",
    "Loop while `i < n` holds, use ``a`b`` and `[x]`, see ![the chart](c.png) and [a [b] c](u).",
    "这是非常重要的事情。我们明天见！好的，谢谢。",
    "When x < 5, the loop stops; y in [0, 1) is fine. Multiply a*b, 2*3*4 = 24, \\*not emphasis\\*.",
    "Title\n=====\n- [x] done <b>bold</b> and <a href=\"https://x.y/a b\">the link</a>, List<String> a<b.\n"
    "````md\n```py\nx = 1\n```\n````\nend <br/>here",
    "Usually <a second, rarely > 2 s; j <i and i > 0; <b>bold</b> <i>it</i>, one <br> - two, Done<br>* [x] item\n**\n",
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("text", STREAMED)
def test_a_stream_releases_what_the_whole_text_says(text: str, size: int) -> None:
    """Piece by piece (any size), the released text is what the whole text says: a link or code
    span with a comma in it is held until it is closed, a fence or table line until its end, a
    line's marks until its first word (nested lists and quotes), then released whole."""
    stream = MarkdownStream()
    released = "".join(stream.push(text[i : i + size]) for i in range(0, len(text), size)) + stream.release()
    assert released == speakable_markdown(text)


def test_a_stream_releases_code_lines_and_cjk_sentences_as_they_come() -> None:
    """Nothing waits for the end: a code block's lines, and CJK text at its punctuation."""
    for text, before_the_end in (
        ("Code:\n```python\nprint(1)\nprint(2)\n```\nDone.", "Code:\n\nprint(1)\nprint(2)\n"),
        ("这是非常重要的事情。我们明天见！好的", "这是非常重要的事情。我们明天见！"),
    ):
        stream = MarkdownStream()
        assert "".join(stream.push(text[i : i + 3]) for i in range(0, len(text), 3)).startswith(before_the_end)


def test_a_stream_holds_an_open_construct_at_most_so_long() -> None:
    stream = MarkdownStream()
    assert stream.push("See [the guide, ") == "See "
    assert stream.push("part two](/docs") == ""  # still open
    assert stream.push(" " + "x " * HOLD_CHARS)  # a link that never closes is not held for ever
    assert stream.pending == ""


async def test_a_streamed_markdown_reply_is_spoken_as_its_words(tts: Any) -> None:
    """Split anywhere, as an LLM streams it: each clause is said as in the whole text."""
    stub, _, _ = tts
    reply = "**Sure!** Here are *two* options:\n- the `red` one,\n- see [the guide, part two](/docs) now."

    async def pieces(text: str, text_format: int) -> Any:
        yield tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(text_format=text_format))  # type: ignore[arg-type]
        for i in range(0, len(text), 3):
            yield tts_pb2.TextPiece(text=text[i : i + 3])
        yield tts_pb2.TextPiece(end_of_stream=True)

    streamed = [c async for c in stub.SynthesizeStream(pieces(reply, MARKDOWN))]
    whole = [c async for c in stub.Synthesize(_request(reply, MARKDOWN))]
    as_written = [c async for c in stub.SynthesizeStream(pieces(reply, 0))]
    assert _phonemes(streamed) == _phonemes(whole)
    assert len(_phonemes(as_written)) > len(_phonemes(streamed)) + 10
