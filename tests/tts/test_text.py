# ruff: noqa: RUF001
from __future__ import annotations

import pytest

from services.tts.text import ClauseSplitter, final_punctuation, split_clauses
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.names import check_text


def test_splits_sentences_and_clauses_keeping_punctuation() -> None:
    assert split_clauses("Hello, Bob! Pam met Max. Done") == ["Hello,", "Bob!", "Pam met Max.", "Done"]


def test_does_not_split_numbers_abbreviations_or_initials() -> None:
    text = "Dr. Smith paid 3.50 dollars, e.g. to J. Doe. Next."
    assert split_clauses(text) == ["Dr. Smith paid 3.50 dollars,", "e.g. to J. Doe.", "Next."]


def test_line_breaks_and_cjk_punctuation_end_clauses() -> None:
    assert split_clauses("First line\nsecond line") == ["First line", "second line"]
    assert split_clauses("你好。再见！") == ["你好。", "再见！"]


def test_arabic_urdu_and_devanagari_punctuation_end_clauses() -> None:
    """A tutor's Hindi, Arabic and Urdu sentences came as one clause (one caption for the whole
    text, and speech that starts only once all of it is synthesized)."""
    assert split_clauses("यह किताब है। वह कलम है॥ मेरा नाम राम है।") == ["यह किताब है।", "वह कलम है॥", "मेरा नाम राम है।"]
    arabic = ["ما اسمك؟", "أين تسكن،", "يا صديقي؛", "هل عندك أخ؟"]
    assert split_clauses(" ".join(arabic)) == arabic
    assert split_clauses("آپ کیسے ہیں۔ میں ٹھیک ہوں۔") == ["آپ کیسے ہیں۔", "میں ٹھیک ہوں۔"]
    assert final_punctuation("ما اسمك؟") == "؟" and final_punctuation("أين تسكن،") == "،"


def test_a_numbered_items_number_is_not_a_clause_of_its_own() -> None:
    """An LLM's numbered list ("1. First"): the number was a caption of its own, said as a
    sentence ("one." ... "First"); it stays with its item."""
    assert split_clauses("1. First\n2. Second, then third.") == ["1. First", "2. Second,", "then third."]
    assert split_clauses("10. Tenth item. It is 42. Yes") == ["10. Tenth item.", "It is 42.", "Yes"]
    # only at the start of a line: a number that answers is a sentence of its own (a review)
    assert split_clauses("What is one plus one? 2. Next question.") == ["What is one plus one?", "2.", "Next question."]
    assert split_clauses("Count down: 3, 2, 1. Go!") == ["Count down:", "3,", "2,", "1.", "Go!"]


def test_long_run_is_cut_at_a_space() -> None:
    text = " ".join(["word"] * 30)  # 149 characters, no punctuation
    parts = split_clauses(text, max_chars=40)
    assert all(len(p) <= 40 for p in parts)
    assert " ".join(parts) == text


def test_incremental_splitter_waits_for_confirmation() -> None:
    s = ClauseSplitter()
    assert s.push("It costs 3.") == []  # "3." may become "3.5"
    assert s.push("5 euros. And") == ["It costs 3.5 euros."]
    assert s.push(" then") == []
    assert s.flush() == ["And then"]
    # Pieces cut anywhere give the same clauses as the whole text.
    texts = [
        "Well, that was fast! Wasn't it? Yes: very.",
        "Dr. Smith paid 3.50 dollars, e.g. to J. Doe. Next.",
        "1. First\n2. Second. Is it 2. Yes",
        "你好。再见！好的，谢谢。",
        "ما اسمك؟ أين تسكن، يا صديقي؛ هل عندك أخ؟",
        "यह किताब है। वह कलम है॥ ठीक है।",
    ]
    for text in texts:
        for cut in range(1, len(text)):
            s = ClauseSplitter()
            got = s.push(text[:cut]) + s.push(text[cut:]) + s.flush()
            assert got == split_clauses(text), (text, cut)


def test_final_punctuation() -> None:
    assert final_punctuation('He said "yes."') == "."
    assert final_punctuation("Hello,") == ","
    assert final_punctuation("Hello") == ""


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("x" * 11, "limit"),
        ("bell\x07", "U+0007"),
        ("nul\x00", "U+0000"),
        ("half \ud83d", "U+D83D"),
    ],
)
def test_check_text_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_text("text", text, 10)
    assert exc.value.field == "text"
    assert reason in exc.value.message


def test_check_text_accepts_tabs_newlines_and_unicode() -> None:
    assert check_text("text", "a\tb\nc é 😀", 100) == "a\tb\nc é 😀"
