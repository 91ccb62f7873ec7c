"""Loading a service's config: its dataclass defaults, a user file, then env overrides.

The dataclasses are the only defaults (no packaged YAML layer that could disagree with them);
``talkmesh config <service>`` prints the result as YAML.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from talkmesh.common.config import ConfigError, build_config, read_yaml
from talkmesh.common.registry import default_target, port_base_from_env, spec

T = TypeVar("T")


def load_service_config(
    cls: type[T],
    service: str,
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """``cls``'s defaults, moved to ``$TALKMESH_PORT_BASE``'s port block when it is set, overlaid by
    the YAML at ``path``, ``TALKMESH_<SERVICE>__*`` and ``overrides``."""
    layers: list[Mapping[str, Any]] = [_port_block(service, env)]
    if path is not None:
        layers.append(read_yaml(path))
    return build_config(cls, layers, spec(service).env_prefix, env, overrides)


def _port_block(service: str, env: Mapping[str, str] | None) -> dict[str, Any]:
    """The service's ports and its callees' targets in the mesh moved to ``$TALKMESH_PORT_BASE``
    (as ``talkmesh up`` starts it), so ``talkmesh serve`` and ``talkmesh config`` agree with it."""
    try:
        base = port_base_from_env(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if base is None:
        return {}
    me = spec(service)
    port, metrics = me.ports(base)
    block: dict[str, Any] = {"server": {"port": port, "metrics_port": metrics}}
    for callee in me.calls:
        block[callee] = {"target": default_target(callee, base=base)}
    return block
