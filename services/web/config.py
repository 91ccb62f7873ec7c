"""Web edge configuration: these dataclasses are the defaults (`talkmesh config web`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from services.web.tokens import read_secrets
from talkmesh.common.clock import MAX_AUDIO_MESSAGE_SECONDS, MAX_CALLER_RATE
from talkmesh.common.config import ConfigError, Endpoint, ServerConfig
from talkmesh.common.registry import WEB_MAX_SPEAKS, WEB_OTHER_CALLS, default_target


def normal_origin(origin: str) -> str:
    """``scheme://host[:port]`` of a URL-like origin, lower case; "" when it is not one (a path,
    a query, no host, another scheme than http/https)."""
    try:
        parts = urlsplit(origin.strip().rstrip("/"))
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        return ""
    if parts.username or parts.password:
        return ""
    if (parts.scheme, port) in (("http", 80), ("https", 443)):
        port = None  # as browsers send it: "https://a.example", never "https://a.example:443"
    netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]" if port is None else f"[{parts.hostname}]:{port}"
    return f"{parts.scheme}://{netloc}".lower()


#: The smallest web.max_ws_message_bytes: the largest audio message a browser may send (the
#: gateway's MAX_AUDIO_MESSAGE_SECONDS at MAX_CALLER_RATE, s16le, base64 in JSON) with room for its
#: JSON, rounded up to 64 KiB (131072 bytes).
MIN_WS_MESSAGE_BYTES = -(-(2 * MAX_CALLER_RATE * MAX_AUDIO_MESSAGE_SECONDS * 4 // 3 + 1024) // 65536) * 65536


@dataclass(frozen=True)
class WebSettings:
    """The browser-facing side."""

    # Directory of the page (index.html, app.js, style.css); "" serves the packaged page.
    static_dir: str = ""
    # Largest WebSocket message accepted from a browser (at least MIN_WS_MESSAGE_BYTES: an audio
    # chunk is at most 1 s of 48 kHz s16le; a text piece at most the gateway's max_text_chars).
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
    # Origins (scheme://host[:port]) other than the edge's own that may use the API from a browser:
    # open the live WebSocket, POST/DELETE, and read the answers (CORS). The page's own origin (the
    # request's Host) is always allowed; a request without Origin (curl, a server) is not a
    # browser's and is allowed. Env: TALKMESH_WEB__WEB__ALLOWED_ORIGINS=https://a.example,https://b.example
    allowed_origins: tuple[str, ...] = ()
    # Whether browsers may upload (POST /v1/avatars) and delete (DELETE /v1/avatars/{id}) avatars.
    # Avatars made through the edge belong to the edge's gateway key: every visitor sees and can
    # delete them (docs/WEB.md "Security"). false: 403 PERMISSION_DENIED, the page's drop zone fails.
    allow_uploads: bool = True
    # POST /v1/speak answers being sent at once (each holds a gateway stream); more get 429
    # RESOURCE_EXHAUSTED with Retry-After. With server.max_concurrent_streams (live sessions) it is
    # what the edge asks of the gateway at most: keep the sum within what the gateway admits
    # (docs/WEB.md "Sizing"; the start-up line says the sum).
    max_concurrent_speaks: int = WEB_MAX_SPEAKS
    # Of those, at most this many per client: per token identity (`sub`, else the token) and per
    # client address (see max_sessions_per_ip for which). 0: no per-client share.
    max_speaks_per_client: int = 2
    # POST /v1/avatars uploads in flight at once (each holds a gateway stream until its file has
    # arrived, up to the renderer's avatars.upload_timeout_seconds): the gateway calls docs/WEB.md
    # "Sizing" keeps for lists and uploads. More get 429 RESOURCE_EXHAUSTED with Retry-After.
    max_concurrent_uploads: int = WEB_OTHER_CALLS
    # Of those, at most this many per client (the same client as max_speaks_per_client's: token
    # identity and client address). 0: no per-client share.
    max_uploads_per_client: int = 1
    # A whole-file MP4 answer is held until the end (for Content-Length and the summary headers)
    # up to this many bytes; a longer file is sent on as it arrives (docs/WEB.md, POST /v1/speak).
    speak_buffer_bytes: int = 8 * 1024 * 1024
    # Access tokens (docs/WEB.md "Access tokens"): a file of HMAC secrets, one per line ("" = no
    # tokens: anyone who reaches the edge may use it). When set, every /v1/ request and WebSocket
    # needs a JWT signed with one of them (HS256), minted by your site's backend or `talkmesh token`:
    # `Authorization: Bearer <token>`, or `?access_token=` on a WebSocket; the page takes it from
    # its URL's `#access_token=` or a postMessage of the page that frames it.
    token_secret_file: str = ""
    # A token valid for longer than this from now is refused (seconds).
    token_max_ttl_seconds: float = 24 * 3600.0
    # With access tokens only: live WebSockets (/v1/live and /v1/live/watch) open at once per token
    # subject (`sub`; a token without one counts as its own subject), so that one signed-in user
    # cannot hold all of server.max_concurrent_streams; more get RESOURCE_EXHAUSTED (close 1013).
    # Give each user a subject of their own (a shared "guest" subject shares the limit). 0: no limit.
    max_sessions_per_subject: int = 4
    # Live WebSockets open at once per client address, with or without tokens (one visitor with
    # several tokens or subjects); an IPv6 client counts by its /64. Not limited: a loopback address
    # (the machine's own user, or a proxy on it that is not in trusted_proxies) and a trusted proxy
    # itself (a request from it without X-Forwarded-For, or whose every hop is trusted or not an
    # address: nobody in particular, not all its visitors together). 0: no limit.
    max_sessions_per_ip: int = 4
    # TCP connections open at once per client address (a client opening connections it never
    # uses, slowloris); more are closed at once. trusted_proxies and loopback are exempt. 0: no limit.
    max_connections_per_ip: int = 32
    # Proxies in front of the edge (addresses or networks: "10.0.0.0/8", "127.0.0.1"). For a
    # connection from one of them the client's address is read from X-Forwarded-For (the last
    # address in it that is not a trusted proxy; `ip:port` and `[v6]:port` hops are read without the
    # port, `::ffff:a.b.c.d` as a.b.c.d); from anyone else the header is ignored (anyone can send
    # it). Empty: the connection's own address is the client's.
    trusted_proxies: tuple[str, ...] = ()
    # Seconds a connection may take to send a request's headers, from its opening or its previous
    # answer (then it is closed; an idle kept-alive connection too), and POST /v1/speak's body.
    read_timeout_seconds: float = 15.0
    # Content-Security-Policy frame-ancestors of the page: the sites that may frame it ("'self'",
    # "https://app.example.com"). Empty: any site may (docs/WEB.md "Embedding").
    frame_ancestors: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.max_ws_message_bytes < MIN_WS_MESSAGE_BYTES:
            raise ConfigError.at(
                "max_ws_message_bytes",
                f"must be at least {MIN_WS_MESSAGE_BYTES} (the largest audio message: "
                f"{MAX_AUDIO_MESSAGE_SECONDS:g} s of {MAX_CALLER_RATE // 1000} kHz audio)",
            )
        if self.heartbeat_seconds < 0:
            raise ConfigError.at("heartbeat_seconds", "must not be negative")
        if self.speak_timeout_seconds <= 0:
            raise ConfigError.at("speak_timeout_seconds", "must be positive")
        if self.max_speak_body_bytes < 1024:
            raise ConfigError.at("max_speak_body_bytes", "must be at least 1024")
        for origin in self.allowed_origins:
            if normal_origin(origin) != origin.rstrip("/").lower():
                raise ConfigError.at(
                    "allowed_origins",
                    f"{origin!r} is not an origin: scheme://host[:port], no path (e.g. https://app.example.com)",
                )
        if self.max_concurrent_speaks < 1:
            raise ConfigError.at("max_concurrent_speaks", "must be at least 1")
        if self.max_concurrent_uploads < 1:
            raise ConfigError.at("max_concurrent_uploads", "must be at least 1 (web.allow_uploads false: none)")
        if self.speak_buffer_bytes < 0:
            raise ConfigError.at("speak_buffer_bytes", "must not be negative")
        if self.token_max_ttl_seconds <= 0:
            raise ConfigError.at("token_max_ttl_seconds", "must be positive")
        limits = (
            "max_sessions_per_subject",
            "max_sessions_per_ip",
            "max_connections_per_ip",
            "max_speaks_per_client",
            "max_uploads_per_client",
        )
        for name in limits:
            if getattr(self, name) < 0:
                raise ConfigError.at(name, "must not be negative (0: no limit)")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy.strip(), strict=False)
            except ValueError:
                raise ConfigError.at(
                    "trusted_proxies", f"{proxy!r} is not an address or network (10.0.0.0/8, 127.0.0.1)"
                ) from None
        if self.read_timeout_seconds <= 0:
            raise ConfigError.at("read_timeout_seconds", "must be positive")
        for source in self.frame_ancestors:
            if not source or any(c in source for c in ";,\r\n\"") or " " in source.strip():
                raise ConfigError.at("frame_ancestors", f"{source!r} is not one CSP source ('self', https://a.example)")

    def proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` as networks."""
        return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in self.trusted_proxies)

    def origins(self) -> frozenset[str]:
        """``allowed_origins`` in the form browsers send (``normal_origin``: lower case, no trailing
        slash, no port of the scheme's own)."""
        return frozenset(normal_origin(o) for o in self.allowed_origins)

    def token_secrets(self) -> list[bytes]:
        """The secrets of ``token_secret_file`` ([] when none is set: no tokens asked for)."""
        if not self.token_secret_file:
            return []
        try:
            return read_secrets(self.token_secret_file)
        except ValueError as exc:
            raise ConfigError.at("token_secret_file", str(exc)) from None

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
    # 1013, "try again later"; 8 by default, which with web.max_concurrent_speaks fits in a gateway
    # replica: docs/WEB.md "Sizing"); dependency_check_seconds: how often /readyz's gateway check runs;
    # grace_seconds: how long open sessions may take after SIGTERM; stream_idle_seconds: a live
    # WebSocket must send its config within this time; max_message_bytes: the gRPC channel to the
    # gateway. The other keys are the gRPC services' and are not used here.
    server: ServerConfig = field(default_factory=lambda: ServerConfig.for_service("web"))
    # The gateway this edge talks to (default: a local mesh on the registry's ports).
    gateway: Endpoint = field(default_factory=lambda: Endpoint(default_target("gateway")))
    web: WebSettings = field(default_factory=WebSettings)
