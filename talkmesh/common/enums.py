"""How a protobuf enum value is named to people and in metric labels: its value name without the
enum's prefix, in lower case (``StopReason.STOP_REASON_SESSION_ENDED`` is "session_ended"). The
protos follow buf's ENUM_VALUE_PREFIX rule, so the prefix is the enum's own name in UPPER_SNAKE."""

from __future__ import annotations

import re
from typing import Any


def short_name(enum: Any, value: int) -> str:
    """``value`` of ``enum`` (a generated enum wrapper, e.g. ``live_pb2.StopReason``) as a label;
    ValueError for a number the enum does not have (a newer peer's value, say)."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"
    return str(enum.Name(value)).removeprefix(prefix).lower()


def choices(enum: Any) -> dict[str, int]:
    """Every value of ``enum`` but its UNSPECIFIED one (0), by short name, in number order: what
    a command line or a config key offers ("fmp4", "mpegts", "mp4" of Container)."""
    return {short_name(enum, value): value for value in sorted(enum.values()) if value}
