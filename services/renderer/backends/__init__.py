"""Renderer backends by name. Imports are lazy: a backend's dependencies load only when it is used."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from talkmesh.common.registry import spec

if TYPE_CHECKING:
    from services.renderer.backends.base import RenderBackend
    from services.renderer.config import RendererConfig
    from talkmesh.common.telemetry import Telemetry

#: Module and class of each backend; the names are the registry's renderer backends
#: (``talkmesh.common.registry.spec("renderer").backends``; a test checks that they agree).
CLASSES: dict[str, tuple[str, str]] = {
    "viseme": ("services.renderer.backends.viseme", "VisemeBackend"),
    "wav2lip": ("services.renderer.backends.wav2lip", "Wav2LipBackend"),
    "musetalk": ("services.renderer.backends.musetalk", "MuseTalkBackend"),
}


def not_loaded(name: str, loaded: Iterable[str]) -> str:
    """Why backend ``name`` cannot be used here, and, for a known one, which setting loads it."""
    names = list(loaded)
    why = f"backend {name!r} is not loaded (loaded: {', '.join(names)})"
    if name in CLASSES:
        variable = spec("renderer").env_name("backends")
        why += f"; the renderer loads the ones its backends setting lists ({variable}={','.join([*names, name])})"
    return why


def backend_class(name: str) -> type[RenderBackend]:
    """The class of backend ``name`` (importing its module); ValueError for an unknown name."""
    try:
        module, cls = CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown renderer backend {name!r}") from None
    return cast("type[RenderBackend]", getattr(importlib.import_module(module), cls))


def create_backend(name: str, config: RendererConfig, telemetry: Telemetry) -> RenderBackend:
    """Builds the backend ``name`` (constructor signature: ``Backend(config, telemetry)``)."""
    return backend_class(name)(config, telemetry)  # type: ignore[call-arg]
