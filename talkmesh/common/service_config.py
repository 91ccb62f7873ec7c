"""Loading a service's config: its packaged config.yaml defaults, a user file, then env overrides."""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

from talkmesh.common.config import ConfigError, _build, _env_overrides, _merge

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
    data: dict[str, Any] = {}
    res = importlib.resources.files(package).joinpath("config.yaml")
    if res.is_file():
        data = yaml.safe_load(res.read_text()) or {}
    if path is not None:
        try:
            with open(path) as fh:
                user = yaml.safe_load(fh) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(user, Mapping):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        data = _merge(data, user)
    data = _merge(data, _env_overrides(os.environ if env is None else env, env_prefix))
    if overrides:
        data = _merge(data, overrides)
    return _build(cls, data)
