# ruff: noqa: RUF001, RUF002 - IPA symbols and CJK punctuation are meant literally
"""Phoneme (IPA, as eSpeak NG writes it) to viseme mapping.

The viseme set is ``talkmesh.v1.Viseme`` (protos/talkmesh/v1/common.proto). A phoneme maps by its
first sound after stress and length marks are removed; diphthongs take the shape of their onset
(the mouth then moves with the next phoneme event). The table, in IPA:

=========  ==================================================  ==================================
viseme     phonemes                                            mouth
=========  ==================================================  ==================================
REST       pause ("" or "_"), unknown symbols                  closed, relaxed
CLOSED     p b m ɱ                                             lips pressed together
OPEN       a æ ɑ ɐ ʌ ɒ ɶ ä                                     jaw open
SPREAD     i ɪ e ɛ ɨ y ʏ ø œ j ç                               lips spread
ROUNDED    o ɔ u ʊ ɵ ɤ ɯ w ʍ ɥ                                 lips rounded / protruded
FV         f v ʋ ɸ β                                           lower lip to upper teeth
TH         θ ð                                                 tongue between the teeth
SZ         s z ʦ ʣ ɕ ʑ                                         teeth nearly closed
L          l ɫ ɬ ɮ ʎ ʟ ɭ                                       tongue tip up, mouth slightly open
SH         ʃ ʒ tʃ dʒ ʧ ʤ ʂ ʐ                                   lips protruded
KG         k g ɡ ŋ x ɣ q ɢ χ ʁ c ɟ ɲ                           back of the tongue, jaw mid open
TD         t d n ɾ ɳ ʈ ɖ                                       tongue at the ridge, slight opening
R          r ɹ ɻ ɚ ɝ ʀ                                         slightly rounded
MID        ə ɜ ᵻ ɘ h ɦ ʔ                                       neutral, half open
=========  ==================================================  ==================================
"""

from __future__ import annotations

from talkmesh.v1 import common_pb2

V = common_pb2

_MARKS = "ˈˌːˑ̩̯͡‿ʲʷ̃-'\""

_SINGLE: dict[str, int] = {}
for _chars, _viseme in (
    ("pbmɱ", V.VISEME_CLOSED),
    ("aæɑɐʌɒɶä", V.VISEME_OPEN),
    ("iɪeɛɨyʏøœjç", V.VISEME_SPREAD),
    ("oɔuʊɵɤɯwʍɥ", V.VISEME_ROUNDED),
    ("fvʋɸβ", V.VISEME_FV),
    ("θð", V.VISEME_TH),
    ("szʦʣɕʑ", V.VISEME_SZ),
    ("lɫɬɮʎʟɭ", V.VISEME_L),
    ("ʃʒʧʤʂʐ", V.VISEME_SH),
    ("kgɡŋxɣqɢχʁcɟɲ", V.VISEME_KG),
    ("tdnɾɳʈɖ", V.VISEME_TD),
    ("rɹɻɚɝʀ", V.VISEME_R),
    ("əɜᵻɘhɦʔ", V.VISEME_MID),
):
    for _c in _chars:
        _SINGLE[_c] = _viseme

# Affricates are written as two letters; they look like their release.
_PAIRS = {"tʃ": V.VISEME_SH, "dʒ": V.VISEME_SH, "ts": V.VISEME_SZ, "dz": V.VISEME_SZ}


def strip_marks(phoneme: str) -> str:
    return "".join(c for c in phoneme if c not in _MARKS)


def viseme_for(phoneme: str) -> int:
    """The ``talkmesh.v1.Viseme`` value for one eSpeak IPA phoneme ("" or "_" is a pause)."""
    p = strip_marks(phoneme)
    if not p or p.startswith("_"):
        return V.VISEME_REST
    pair = _PAIRS.get(p[:2])
    if pair is not None:
        return pair
    return _SINGLE.get(p[0], V.VISEME_REST)
