"""Loading a service's config: its packaged config.yaml defaults, a user file, then env overrides."""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

from talkmesh.common.config import build_config, read_yaml

T = TypeVar("T")


def load_service_config(
    cls: type[T],
    package: str,
    env_prefix: str,
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Defaults from ``package``'s config.yaml, overlaid by ``path``, env vars and ``overrides``."""
    layers: list[Mapping[str, Any]] = []
    res = importlib.resources.files(package).joinpath("config.yaml")
    if res.is_file():
        layers.append(yaml.safe_load(res.read_text()) or {})
    if path is not None:
        layers.append(read_yaml(path))
    return build_config(cls, layers, env_prefix, env, overrides)
