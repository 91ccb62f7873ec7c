# ruff: noqa: RUF001
from __future__ import annotations

import pytest

from services.tts.visemes import viseme_for
from talkmesh.v1 import common_pb2 as V


@pytest.mark.parametrize(
    ("phoneme", "viseme"),
    [
        ("p", V.VISEME_CLOSED),
        ("b", V.VISEME_CLOSED),
        ("m", V.VISEME_CLOSED),
        ("ˈaɪ", V.VISEME_OPEN),
        ("ˈæ", V.VISEME_OPEN),
        ("ˈiː", V.VISEME_SPREAD),
        ("ɛ", V.VISEME_SPREAD),
        ("ˈoʊ", V.VISEME_ROUNDED),
        ("uː", V.VISEME_ROUNDED),
        ("w", V.VISEME_ROUNDED),
        ("f", V.VISEME_FV),
        ("v", V.VISEME_FV),
        ("θ", V.VISEME_TH),
        ("ð", V.VISEME_TH),
        ("s", V.VISEME_SZ),
        ("z", V.VISEME_SZ),
        ("l", V.VISEME_L),
        ("ʃ", V.VISEME_SH),
        ("tʃ", V.VISEME_SH),
        ("dʒ", V.VISEME_SH),
        ("k", V.VISEME_KG),
        ("ŋ", V.VISEME_KG),
        ("t", V.VISEME_TD),
        ("n", V.VISEME_TD),
        ("ɹ", V.VISEME_R),
        ("ə", V.VISEME_MID),
        ("", V.VISEME_REST),
        ("_:", V.VISEME_REST),
        ("☃", V.VISEME_REST),
    ],
)
def test_mapping(phoneme: str, viseme: int) -> None:
    assert viseme_for(phoneme) == viseme
