"""Web edge configuration: these dataclasses are the defaults (`talkmesh config web`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from talkmesh.common.config import ConfigError, Endpoint, ServerConfig
from talkmesh.common.registry import default_target


@dataclass(frozen=True)
class WebSettings:
    """The browser-facing side."""

    # Directory of the page (index.html, app.js, style.css); "" serves the packaged page.
    static_dir: str = ""
    # Largest WebSocket message accepted from a browser (an audio chunk is at most 1 s of 48 kHz
    # s16le, 96000 bytes; a text piece at most the gateway's max_text_chars).
    max_ws_message_bytes: int = 256 * 1024
    # WebSocket ping interval in seconds (detects browsers that vanished; 0 = off).
    heartbeat_seconds: float = 20.0
    # Deadline of one POST /v1/speak (the whole MP4), in seconds.
    speak_timeout_seconds: float = 300.0
    # Largest POST /v1/speak body (JSON with the text), in bytes.
    max_speak_body_bytes: int = 64 * 1024
    # File holding the API key this edge sends to the gateway (a gateway with API keys needs one;
    # every browser's call goes out with it, see docs/WEB.md "Security"). `talkmesh up --api-keys`
    # makes one for the edge; "" sends none.
    gateway_api_key_file: str = ""

    def validate(self) -> None:
        if self.max_ws_message_bytes < 128 * 1024:
            raise ConfigError.at("max_ws_message_bytes", "must be at least 131072 (one second of 48 kHz audio)")
        if self.heartbeat_seconds < 0:
            raise ConfigError.at("heartbeat_seconds", "must not be negative")
        if self.speak_timeout_seconds <= 0:
            raise ConfigError.at("speak_timeout_seconds", "must be positive")
        if self.max_speak_body_bytes < 1024:
            raise ConfigError.at("max_speak_body_bytes", "must be at least 1024")

    def gateway_api_key(self) -> str:
        """The key of ``gateway_api_key_file`` ("" when none is set)."""
        if not self.gateway_api_key_file:
            return ""
        try:
            key = Path(self.gateway_api_key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError.at("gateway_api_key_file", str(exc)) from None
        if not key:
            raise ConfigError.at("gateway_api_key_file", f"{self.gateway_api_key_file} is empty")
        return key


@dataclass(frozen=True)
class WebConfig:
    # host/port: the HTTP listener (default 8080); metrics_port: Prometheus /metrics (also served on
    # the main port); max_concurrent_streams: live WebSocket sessions at once (more get close code
    # 1013, "try again later"); dependency_check_seconds: how often /readyz's gateway check runs;
    # grace_seconds: how long open sessions may take after SIGTERM; stream_idle_seconds: a live
    # WebSocket must send its config within this time; max_message_bytes: the gRPC channel to the
    # gateway. The other keys are the gRPC services' and are not used here.
    server: ServerConfig = field(default_factory=lambda: ServerConfig.for_service("web"))
    # The gateway this edge talks to (default: a local mesh on the registry's ports).
    gateway: Endpoint = field(default_factory=lambda: Endpoint(default_target("gateway")))
    web: WebSettings = field(default_factory=WebSettings)
