"""talkmesh.common.names.check_id: the one rule for ids and names in requests."""

from __future__ import annotations

import pytest

from talkmesh.common.errors import InvalidArgument
from talkmesh.common.names import MAX_ID_CHARS, check_id


@pytest.mark.parametrize("value", ["", "espeak:en-us", "gmw/en", ".hidden", "a\\b", "x" * MAX_ID_CHARS])
def test_check_id_passes_printable_values_unchanged(value: str) -> None:
    assert check_id("voice", value) == value


@pytest.mark.parametrize("value", ["x" * (MAX_ID_CHARS + 1), "a\nb", "a\u200bb"])
def test_check_id_refuses_long_or_unprintable_values_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_id("voice", value)
    assert str(exc.value).startswith("voice: ")
    assert value not in str(exc.value)  # the value is not echoed


def test_check_id_has_no_path_safe_mode_left() -> None:
    """No caller used ``path_safe`` (ids are checked, files are named by the stores): removed."""
    with pytest.raises(TypeError):
        check_id("voice", "a/b", path_safe=True)  # type: ignore[call-arg]
