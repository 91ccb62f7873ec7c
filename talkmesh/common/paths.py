"""Where talkmesh keeps its data on disk unless configured otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/talkmesh/<parts>``, or ``~/.cache/talkmesh/<parts>`` when XDG_CACHE_HOME is
    unset, empty or relative (the XDG base directory specification ignores relative values)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root.joinpath("talkmesh", *parts)
