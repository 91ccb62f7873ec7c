"""The TTS service's life: start the eSpeak engine and the configured backends, warm up, stop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import grpc

from services.tts.backends.base import TTSBackend, VoiceSettings
from services.tts.backends.espeak import EspeakBackend
from services.tts.config import TTSConfig
from services.tts.engine import EspeakEngine
from services.tts.metrics import Stage
from services.tts.request import find_voice
from services.tts.server import TTSServicer
from talkmesh.common.config import ConfigError
from talkmesh.common.registry import spec
from talkmesh.common.server import Service
from talkmesh.common.telemetry import Series, Telemetry
from talkmesh.v1 import tts_pb2_grpc

log = logging.getLogger(__name__)

WARMUP_TEXT = "Ready."


class TTSService(Service):
    name = "tts"

    def __init__(self, config: TTSConfig, telemetry: Telemetry) -> None:
        super().__init__(telemetry)
        self.config = config
        self.servicer = TTSServicer(config, telemetry)
        self.engine: EspeakEngine | None = None

    @property
    def backends(self) -> dict[str, TTSBackend]:
        return self.servicer.backends

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        tts_pb2_grpc.add_TTSServicer_to_server(self.servicer, server)
        return spec("tts").grpc_service_names()

    def known_series(self) -> Sequence[Series]:
        m = self.telemetry.metrics
        return [Series(m.stage_duration, Stage), Series(m.time_to_first_audio), Series(m.realtime_factor)]

    async def start(self) -> None:
        cfg = self.config
        engine = EspeakEngine(cfg.espeak.library_path, cfg.espeak.data_path, cfg.espeak.buffer_ms)
        await engine.start()
        self.engine = engine
        backends: dict[str, TTSBackend] = {"espeak": EspeakBackend(engine)}
        if cfg.piper.voices_dir:
            from services.tts.backends.piper import PiperBackend

            telemetry = self.telemetry
            backends["piper"] = PiperBackend(
                engine, cfg.piper, cfg.execution,
                on_session=lambda s: telemetry.set_backend("execution_provider", f"piper/{s.provider}"),
            )  # fmt: skip
        for backend in backends.values():
            await backend.start()
            self.telemetry.set_backend("tts_engine", backend.engine)
        found = find_voice(backends, cfg.default_voice)
        if found is None:
            raise ConfigError.at("default_voice", f"{cfg.default_voice!r} is not an available voice")
        default, voice = found
        # Warm-up: the first synthesis loads the voice's dictionaries.
        async with contextlib.aclosing(default.synthesize(WARMUP_TEXT, voice, VoiceSettings())) as blocks:
            async for _ in blocks:
                pass
        self.servicer.backends = backends
        log.info("tts ready: %d voices, default %s", sum(len(b.voices()) for b in backends.values()), cfg.default_voice)

    async def stop(self) -> None:
        backends, self.servicer.backends = self.servicer.backends, {}
        for backend in backends.values():
            await backend.close()
        if self.engine is not None:
            await self.engine.close()
            self.engine = None
