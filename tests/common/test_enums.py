"""Enum values named for people and metric labels: the prefix derived from the enum's name."""

from __future__ import annotations

import pytest

from talkmesh.common.enums import short_name
from talkmesh.v1 import live_pb2 as lpb


def test_every_live_enum_value_loses_its_prefix() -> None:
    assert short_name(lpb.StopReason, lpb.STOP_REASON_SESSION_ENDED) == "session_ended"
    assert short_name(lpb.EndReason, lpb.END_REASON_IDLE_TIMEOUT) == "idle_timeout"
    for enum in lpb.DESCRIPTOR.enum_types_by_name.values():
        # an independent reading of the prefix: the words all of the enum's value names start with
        words = [v.name.split("_") for v in enum.values]
        shared = next(i for i, w in enumerate(zip(*words, strict=False)) if len(set(w)) > 1)
        prefix = "_".join(words[0][:shared]) + "_"
        for value in enum.values:
            assert short_name(getattr(lpb, enum.name), value.number) == value.name.removeprefix(prefix).lower()

def test_a_number_the_enum_lacks_is_refused() -> None:
    with pytest.raises(ValueError):
        short_name(lpb.StopReason, 999)


def test_choices_are_every_value_but_unspecified_in_number_order() -> None:
    from talkmesh.common.enums import choices
    from talkmesh.v1 import types_pb2

    assert choices(types_pb2.Container) == {"fmp4": 1, "mpegts": 2, "mp4": 3}
    assert choices(types_pb2.AudioCodec) == {"aac": 1, "opus": 2}
