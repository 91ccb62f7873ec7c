"""first_words: what a Speak text stream and a live text turn wait for before any stage opens."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.gateway import checks
from services.gateway.checks import first_words


async def _pieces(*pieces: str) -> AsyncIterator[str]:
    for piece in pieces:
        yield piece


@pytest.mark.parametrize(
    ("pieces", "markdown", "expected"),
    [
        (("...", " ", "Hi", " there"), False, ("... Hi", True)),
        (("...", "!"), False, ("...!", False)),
        (("```",), False, ("```", True)),  # plain text: a backtick is read ("grave accent")
        (("```", "py", "thon\n", "```\n"), True, ("```python\n```\n", False)),
        (("```", "py", "thon\n", "x = 1"), True, ("```python\nx = 1", True)),
        (("**", "Sure", "**"), True, ("**Sure", True)),  # (released by TTS when it is whole)
        (("- [ ] ", "👍"), True, ("- [ ] 👍", False)),
        (("**", "\n", "~~", "`", "\n", "Sure"), True, ("**\n~~`\nSure", True)),  # lines of marks say nothing
        (("**\n" * 100, "Hello world."), True, ("**\n" * 100 + "Hello world.", True)),  # words after 256
        (("👍" * 300, " Hello there."), True, ("👍" * 300 + " Hello there.", True)),
        (("[](https://", "example.com)"), True, ("[](https://", True)),  # an address says its host
    ],
)
async def test_the_first_words(pieces: tuple[str, ...], markdown: bool, expected: tuple[str, bool]) -> None:
    assert await first_words(_pieces(*pieces), markdown=markdown) == expected


async def test_markdown_without_words_is_not_filtered_again_at_every_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of one-mark pieces (a hostile client, or a runaway LLM) cost O(n log n) of the
    filter, not O(n²)."""
    calls: list[int] = []
    real = checks.speakable_markdown

    def counting(text: str) -> str:
        calls.append(len(text))
        return real(text)

    monkeypatch.setattr(checks, "speakable_markdown", counting)
    words, found = await first_words(_pieces(*(["`"] * 5000)), markdown=True)
    assert (len(words), found) == (5000, False)
    assert sum(calls) < 60_000, f"{len(calls)} filter calls over {sum(calls)} characters"
    assert len(calls) < checks.MARKDOWN_RECHECK_CHARS + 20
