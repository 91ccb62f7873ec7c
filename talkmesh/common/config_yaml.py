"""A config dataclass as commented YAML: what ``talkmesh config <service>`` prints.

The comments are the ones written above each field in the dataclass's source, so the printed
reference cannot disagree with the code; loading the output gives the same config back.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

_FIELD = re.compile(r"^(\s+)(\w+)\s*:")


@functools.cache
def field_comments(cls: type) -> dict[str, tuple[str, ...]]:
    """The comment lines written directly above each field of dataclass ``cls``."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, tuple[str, ...]] = {}
    pending: list[str] = []
    indent: str | None = None
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#:").strip())
            continue
        m = _FIELD.match(line)
        if m and m.group(2) in names and (indent is None or m.group(1) == indent):
            indent = m.group(1)
            if pending:
                out[m.group(2)] = tuple(pending)
        pending = []
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    elif isinstance(value, Enum):
        value = value.value
    elif isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _lines(config: Any, depth: int, comments: bool) -> list[str]:
    pad = "  " * depth
    notes = field_comments(type(config)) if comments else {}  # type: ignore[arg-type]
    out: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out.extend(f"{pad}# {note}".rstrip() for note in notes.get(f.name, ()))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.append(f"{pad}{f.name}:")
            out.extend(_lines(value, depth + 1, comments))
        else:
            out.append(f"{pad}{f.name}: {_scalar(value)}")
    return out


def config_to_yaml(config: Any, *, header: str = "", comments: bool = True) -> str:
    """``config`` (a dataclass instance) as YAML, with each field's source comment above it."""
    lines = [f"# {h}".rstrip() for h in header.splitlines()] if header else []
    lines.extend(_lines(config, 0, comments))
    return "\n".join(lines) + "\n"
