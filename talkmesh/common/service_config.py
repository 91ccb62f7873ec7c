"""Loading a service's config: its dataclass defaults, a user file, then env overrides.

The dataclasses are the only defaults (no packaged YAML layer that could disagree with them);
``talkmesh config <service>`` prints the result as YAML.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from talkmesh.common.config import build_config, read_yaml
from talkmesh.common.registry import spec

T = TypeVar("T")


def load_service_config(
    cls: type[T],
    service: str,
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """``cls``'s defaults, overlaid by the YAML at ``path``, ``TALKMESH_<SERVICE>__*`` and ``overrides``."""
    layers: list[Mapping[str, Any]] = [read_yaml(path)] if path is not None else []
    return build_config(cls, layers, spec(service).env_prefix, env, overrides)
