"""Renderer backends by name. Imports are lazy: a backend's dependencies load only when it is used."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.renderer.backends.base import RenderBackend
    from services.renderer.config import RendererConfig
    from talkmesh.common.telemetry import Telemetry


def create_backend(name: str, config: RendererConfig, telemetry: Telemetry) -> RenderBackend:
    """Builds the backend ``name`` (constructor signature: ``Backend(config, telemetry)``)."""
    if name == "viseme":
        from services.renderer.backends.viseme import VisemeBackend

        return VisemeBackend(config, telemetry)
    if name == "wav2lip":
        from services.renderer.backends.wav2lip import Wav2LipBackend

        return Wav2LipBackend(config, telemetry)
    if name == "musetalk":
        from services.renderer.backends.musetalk import MuseTalkBackend

        return MuseTalkBackend(config, telemetry)
    raise ValueError(f"unknown renderer backend {name!r}")
