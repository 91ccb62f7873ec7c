"""The web edge's HTTP server: the page, the HTTP API, the live WebSocket, health and metrics.

Why aiohttp: one dependency that has everything this edge needs built in (HTTP/1.1 server,
WebSocket with ping/pong and message-size limits, streamed multipart parsing, static files) and
runs on the asyncio loop that grpc.aio already uses, so a WebSocket message becomes a gRPC write
with no thread hop. An ASGI stack would need a framework, a server (uvicorn) and a multipart
package for the same result.

Everything here is translation: browser requests become calls to the gateway's public gRPC API
(``talkmesh.v1.Gateway``, ``talkmesh.v1.Live``); there is no pipeline logic. Each request starts a
trace (or continues the browser's ``traceparent``), which goes on to the gateway in the call's
metadata (``talkmesh.common.propagation``).
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import ipaddress
import json
import logging
import math
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server

from services.web import tokens
from services.web.config import WebConfig, normal_origin
from services.web.errors import (
    HTTP_EXCEPTION_CODES,
    RESULT_KEY,
    HttpError,
    bad_value_field,
    boolean_misfit,
    error_response,
    from_rpc_error,
    proto_names,
    result_code,
)
from services.web.live import (
    CLOSE_BAD_INPUT,
    CLOSE_TRY_LATER,
    EdgeWebSocket,
    LiveBridge,
    Sender,
    final_status,
    watch_bridge,
)
from talkmesh.client import UPLOAD_CHUNK_BYTES, TalkmeshClient
from talkmesh.common.aio import cancel_and_wait, wait_event
from talkmesh.common.enums import choices
from talkmesh.common.errors import NotFound, ResourceExhausted, Unavailable
from talkmesh.common.faces import framing_note, small_face_hint
from talkmesh.common.files import WatchedFile
from talkmesh.common.health import DependencyWatch
from talkmesh.common.interceptors import OK, SERVER_FAULTS
from talkmesh.common.logs import request_id_var
from talkmesh.common.names import MAX_ID_CHARS, MAX_SESSION_ID_CHARS
from talkmesh.common.propagation import REQUEST_ID_KEY
from talkmesh.common.registry import spec
from talkmesh.common.server import BindError, check_port_free, run_until_signal
from talkmesh.common.telemetry import Rejection, Series, Telemetry
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import types_pb2 as api

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: how old the gateway's last word on the edge's API key may be when /readyz answers ready (seconds)
KEY_RECHECK_SECONDS = 60.0
#: Methods that change something: refused from an origin that is not allowed (CSRF).
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: WebSocket routes: refused before the upgrade from an origin that is not allowed.
WS_ROUTES = frozenset({"/v1/live", "/v1/live/watch"})
#: Routes outside the request metrics, spans and checks (probes, scrapes; and /static/...).
UNCOUNTED_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
#: Why the edge refuses a request before work starts (``talkmesh_rejections_total{reason}``).
REJECTIONS = (
    Rejection.OVERLOAD,
    Rejection.DRAINING,
    Rejection.PER_CLIENT,
    Rejection.PER_SUBJECT,
    Rejection.PER_IP,
    Rejection.CONNECTIONS_PER_IP,
)
#: Response headers a page of an allowed origin may read (CORS).
EXPOSE_HEADERS = (
    "X-Talkmesh-Stages, X-Talkmesh-Frames, X-Talkmesh-Audio-Seconds, X-Talkmesh-First-Fragment-Ms, "
    "X-Request-Id, traceparent, Retry-After"
)
#: Request headers a page of an allowed origin may send (CORS preflight).
ALLOW_HEADERS = "Authorization, Content-Type, traceparent, tracestate, X-Request-Id"
ALLOW_METHODS = "GET, POST, DELETE"
#: The CORS headers of the request's answer (set by the middleware).
CORS_KEY = web.RequestKey("cors", dict)
#: How long a browser may cache a preflight's answer (seconds).
PREFLIGHT_MAX_AGE = "600"
#: Refused origins logged (each once): a page of any site a visitor opens may try the edge, with
#: origins of its choosing; past these, one line says the rest go unlogged.
REFUSED_ORIGINS_LOGGED = 100
#: Retry-After of a POST /v1/speak refused because of max_concurrent_speaks (seconds).
SPEAK_RETRY_AFTER = 2.0


class Shares:
    """Requests of one kind this edge holds at once (``POST /v1/speak`` answers being sent, avatar
    uploads in flight), and each client's share of them: a request counts against every key of its
    client (its token's identity, its address: ``_client_keys``) while it runs. Over either limit,
    429 RESOURCE_EXHAUSTED naming the config key that set it."""

    def __init__(self, name: str, what: str, total_key: str, share_key: str, field: str = "") -> None:
        self.name = name  # the message's prefix ("speak", "file")
        self.what = what  # what is held, in the messages ("uploads in flight")
        self.total_key = total_key
        self.share_key = share_key
        self.field = field  # the request field the error names ("": none)
        self.held = 0
        self._by_client: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def hold(
        self, clients: list[str], total: int, share: int, rejected: Callable[[Rejection], None]
    ) -> Iterator[None]:
        """Holds one of ``total`` for ``clients`` (each at most ``share``; 0: no share) meanwhile;
        ``rejected(reason)`` counts a refusal ("overload", "per_client")."""
        if self.held >= total:
            rejected(Rejection.OVERLOAD)
            raise HttpError(
                429,
                "RESOURCE_EXHAUSTED",
                f"{self.name}: {self.held} {self.what} on this web edge (web.{self.total_key}); try again later",
                self.field,
                retry_after=SPEAK_RETRY_AFTER,
            )
        if share and any(self._by_client[c] >= share for c in clients):
            rejected(Rejection.PER_CLIENT)
            raise HttpError(
                429,
                "RESOURCE_EXHAUSTED",
                f"{self.name}: you have {share} {self.what} on this web edge, its limit per user "
                f"(web.{self.share_key}); try again when one has ended",
                self.field,
                retry_after=SPEAK_RETRY_AFTER,
            )
        self.held += 1
        self._by_client.update(clients)
        try:
            yield
        finally:
            self.held -= 1
            self._by_client.subtract(clients)
            self._by_client += collections.Counter()  # (drops the counts at 0)
#: What an access token must allow for each API route (services.web.tokens.SCOPES); the lists
#: (GET /v1/voices, GET /v1/avatars) need a valid token of any scope.
ROUTE_SCOPES = {
    ("POST", "/v1/speak"): "speak",
    ("GET", "/v1/live"): "live",
    ("GET", "/v1/live/watch"): "watch",
    ("POST", "/v1/avatars"): "avatars",
    ("DELETE", "/v1/avatars/{avatar_id}"): "avatars",
}
#: The query parameter of a WebSocket's access token (browsers cannot set its headers).
TOKEN_QUERY = "access_token"
#: A WebSocket subprotocol carrying the access token (``access_token.<JWT>``): how the page sends
#: it, out of the URL (which proxies log and Chromium prints when a handshake fails).
TOKEN_PROTOCOL = "access_token."
#: The subprotocol the edge answers a handshake that offered one (the token's is never echoed).
WS_PROTOCOL = "talkmesh"
#: Who a request's access token speaks for (``tokens.Access.owner``: the hash of its whole ``sub``,
#: or the token itself when it has none).
SUBJECT_KEY = web.RequestKey("subject", str)
#: The sessions a request's token lets it watch whoever opened them (its ``sessions`` claim).
WATCHABLE_KEY = web.RequestKey("watchable", frozenset)
#: A live session's socket, whose outcome (RESULT_KEY) counts even when aiohttp cancels its handler
#: (the connection closed).
SOCKET_KEY = web.RequestKey("socket", web.WebSocketResponse)
#: The longest side of any picture (a JPEG's or PNG's header holds at most 65535).
MAX_IMAGE_SIDE = 65535
#: Whom the per-address limits count a request against (``limit_key`` of its ``client_address``:
#: X-Forwarded-For from a trusted proxy); "" for nobody in particular (loopback, a trusted proxy).
CLIENT_KEY = web.RequestKey("client", str)


class HttpErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, with a malformed request (its parser's 4xx: a scanner, a broken
    client) as one INFO line naming the problem instead of an ERROR with a traceback each (a log
    flood anyone could cause, and noise for whoever is on call). Everything else as it was."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            problem = next((line.strip() for line in str(exc.message).splitlines() if line.strip()), "")
            self.info("%s: %s %s", str(msg) % args, exc.code, problem.rstrip(":"))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


#: What every answer says of the server (aiohttp's default names Python's and its own versions).
SERVER_HEADER = "talkmesh"
#: The page's Content-Security-Policy (its own scripts and styles only, no inline ones; the video
#: plays a MediaSource's blob: URL; the WebSockets go to the page's own host), without
#: frame-ancestors and connect-src (added per request: web.frame_ancestors, the host).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; base-uri 'none'; form-action 'none'"
)
#: A Host header that can go into the CSP as it is (no spaces, quotes or ';').
_SAFE_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
#: The final status of a watch whose web edge shuts down while the session goes on elsewhere.
WATCH_DRAINED = final_status(
    Unavailable("session: this web edge is shutting down; the session goes on: watch it again")
)
#: The upload form's ``framing`` values (AvatarMeta.framing's short names).
FRAMINGS = choices(api.Framing)
#: RegisterAvatar's fields -> the multipart form's.
FORM_FIELDS = {
    "data": "file",
    "meta.filename": "file",
    "meta.name": "name",
    "meta.face_index": "face_index",
    "meta.face_point": "face_point",
    "meta.framing": "framing",
    "meta.backends": "backends",
}


#: The names a browser uses for an edge that listens on loopback.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def not_a_websocket(path: str) -> str:
    """The answer to a plain GET of a WebSocket route (docs/WEB.md quotes it)."""
    return (
        f'Upgrade: this is a WebSocket endpoint: open it with new WebSocket("wss://<edge>{path}") '
        "(ws:// for http://); a plain GET gets this answer once its origin and access token are accepted"
    )


def _host_port(host: str, default_port: str = "") -> tuple[str, str]:
    """(name, port) of a ``Host`` header or an origin's netloc (``name[:port]``, ``[v6][:port]``),
    lower case; ``default_port`` when it names none."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal
        name, _, rest = host[1:].partition("]")
        return name, rest.lstrip(":") or default_port
    name, _, port = host.partition(":")
    return name, port or default_port


def _host_name(host: str) -> str:
    return _host_port(host)[0]


def _is_loopback(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` (normalised, ``scheme://host[:port]``) names the request's ``Host``
    header (``host[:port]``; the port defaults to the origin scheme's)."""
    scheme, _, netloc = origin.partition("://")
    default = "443" if scheme == "https" else "80"
    return bool(host) and _host_port(netloc, default) == _host_port(host, default)


def _websocket_token(request: web.Request) -> str:
    """A WebSocket handshake's token: a ``access_token.<JWT>`` subprotocol offered next to
    ``talkmesh`` (in the first Sec-WebSocket-Protocol header, the one the handshake answers
    from: a browser fails a handshake whose offer gets no protocol back), or the query's."""
    first = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    offered = [p.strip() for h in request.headers.getall("Sec-WebSocket-Protocol", []) for p in h.split(",")]
    for protocol in offered:
        if protocol.startswith(TOKEN_PROTOCOL):
            if WS_PROTOCOL not in first:
                raise HttpError(
                    400,
                    "INVALID_ARGUMENT",
                    f"Sec-WebSocket-Protocol: offer {WS_PROTOCOL!r} with {TOKEN_PROTOCOL}<token>, in one header",
                    "Sec-WebSocket-Protocol",
                )
            return protocol[len(TOKEN_PROTOCOL) :]
    return request.query.get(TOKEN_QUERY, "")


class _SlowReader(Exception):
    """A client that took nothing of an answer for ``server.write_timeout_seconds``."""


class _NoTokens(logging.Filter):
    """Hides access tokens in what aiohttp logs of a handshake (it logs the protocols offered)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if TOKEN_PROTOCOL in text:
            record.msg, record.args = _TOKEN_TEXT.sub(f"{TOKEN_PROTOCOL}<hidden>", text), None
        return True


_TOKEN_TEXT = re.compile(re.escape(TOKEN_PROTOCOL) + r"[\w.-]+")
_NO_TOKENS = _NoTokens()  # (one instance: adding it again is a no-op)


def _counted(route: str) -> bool:
    """Whether requests of ``route`` (a resource's canonical path) are counted, timed and traced."""
    return route not in UNCOUNTED_ROUTES and not route.startswith("/static")


def _stage(route: str) -> str:
    """``talkmesh_stage_duration_seconds{stage}`` of a route's requests."""
    return f"http {route}"


async def _late_field(reader: Any) -> str:
    """The name of the form's part after the file ("": none): its headers only are read (its body,
    of any size, is not; the avatar exists already, so nothing here may fail the answer)."""
    try:
        part = await reader.next()
    except Exception:  # a broken tail after a complete file: the answer stands
        return ""
    return (getattr(part, "name", "") or "?") if part is not None else ""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IP | None:
    """The address of a peer or of an X-Forwarded-For hop: ``a.b.c.d``, ``a.b.c.d:port``, an IPv6
    address, ``[v6]`` or ``[v6]:port``; an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, a
    dual-stack socket's) as the IPv4 one. None: not an address (a name, ``unknown``, ``_hidden``)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # a.b.c.d:port
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(peer: str, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """Who a request comes from: the connection's address (``peer``), or, when that is a trusted
    proxy, the last address of ``X-Forwarded-For`` that is not one (each proxy appends the address
    it got the request from: what comes before is the client's word, and anyone can send it).
    A hop that is not an address stops the proxies' word there: the answer is then the proxy
    (``limit_key``: nobody in particular). Addresses come without a port, IPv4-mapped ones as IPv4."""
    ip = _ip(peer)
    if ip is None:
        return peer
    if not trusted or not any(ip in n for n in trusted):
        return str(ip)
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        hop_ip = _ip(hop)
        if hop_ip is None:  # not an address (a name, "unknown"): the proxy's word stops here
            return str(ip)
        if not any(hop_ip in n for n in trusted):
            return str(hop_ip)
    return str(ip)


def limit_key(address: str, trusted: tuple[Network, ...]) -> str:
    """Whom the per-address limits (web.max_sessions_per_ip, max_speaks_per_client,
    max_concurrent_uploads, max_connections_per_ip) count a client address against: "" for nobody
    in particular (not an address, loopback: the machine's own user or a proxy on it; a trusted
    proxy: a request that did not say whom it carries, which all its visitors would share), an
    IPv6 client by its /64 (one host has a whole /64 to pick addresses from)."""
    ip = _ip(address)
    if ip is None or ip.is_loopback or any(ip in n for n in trusted):
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _to_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)  # type: ignore[no-any-return]


class WebHost:
    """Hosts the web edge (same interface as ``talkmesh.common.server.ServiceHost``)."""

    name = "web"

    def __init__(self, config: WebConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        self.port = 0
        self.metrics_port = -1
        self.client: TalkmeshClient | None = None
        self.gateway_ready = False
        #: the gateway's refusal of the edge's API key ("": accepted, or not known to be refused)
        self.key_refused = ""
        self._key_checked = -math.inf  # when the last answer about the key came
        self._key_asked = -math.inf  # when the last question ended (with an answer or not)
        self._key_lock = asyncio.Lock()
        self.draining = False
        self.sessions: set[asyncio.Task[Any]] = set()
        self.bridges: set[LiveBridge] = set()
        #: the open /v1/live/watch sockets (their senders) and the session each watches
        self.watchers: dict[Sender, str] = {}
        #: the ids of the live sessions open on this edge (a drain ends them; not those of others)
        self._own_sessions: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._metrics_server: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._gateway_watch: DependencyWatch | None = None
        self._stopped = asyncio.Event()
        self._requests = telemetry.metrics.streams_total
        self._active = telemetry.metrics.streams_active.labels(self.name)
        # talkmesh_ready: what /readyz would answer now, without asking the gateway again
        telemetry.metrics.ready.labels(self.name).set_function(lambda: float(self.ready))
        self._origins = config.web.origins()
        # the secrets of web.token_secret_file (None: no access tokens asked for), read again when
        # the file changes: a rotation needs no restart
        self._token_secrets: WatchedFile[list[bytes]] | None = None
        if config.web.token_secret_file:
            self._token_secrets = WatchedFile(
                config.web.token_secret_file,
                lambda _: config.web.token_secrets(),
                check_seconds=tokens.TOKEN_SECRETS_CHECK_SECONDS,
                what="web.token_secret_file",
            )
            logging.getLogger("aiohttp.websocket").addFilter(_NO_TOKENS)
        self._subject_sessions: collections.Counter[str] = collections.Counter()  # open live sockets
        self._ip_sessions: collections.Counter[str] = collections.Counter()  # (per client address)
        self._connections: collections.Counter[str] = collections.Counter()  # open TCP connections per address
        #: who opened each live session of this edge (session id -> SUBJECT_KEY): only they may Watch it
        self._session_owners: dict[str, str] = {}
        self._proxies = config.web.proxies()
        self._refused_origins: set[str] = set()  # the origins logged as refused (each once)
        # On a loopback address, only requests that name the edge by a loopback name (or a host of
        # web.allowed_origins) are served: a page whose own name was made to resolve to 127.0.0.1
        # (DNS rebinding) is then not "the edge's own origin". Behind a proxy (0.0.0.0) no check.
        self._own_hosts: frozenset[str] | None = (
            LOOPBACK_NAMES | {_host_name(o.partition("://")[2]) for o in self._origins}
            if _is_loopback(config.server.host)
            else None
        )
        self.speaks = Shares("speak", "answers being sent", "max_concurrent_speaks", "max_speaks_per_client")
        self.uploads = Shares("file", "uploads in flight", "max_concurrent_uploads", "max_uploads_per_client", "file")

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.config.server.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    @property
    def ready(self) -> bool:
        """Serving, not draining, the gateway ready and the edge's API key not refused: /readyz's 200
        from what is known (/readyz itself asks the gateway again while it is not ready)."""
        return self._runner is not None and not self.draining and self.gateway_ready and not self.key_refused

    def app(self) -> web.Application:
        cfg = self.config.web
        app = web.Application(middlewares=[self._middleware], client_max_size=cfg.max_speak_body_bytes)
        app.on_response_prepare.append(self._secure_headers)
        static = Path(cfg.static_dir) if cfg.static_dir else STATIC
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics),
                web.get("/v1/voices", self._voices),
                web.get("/v1/avatars", self._avatars),
                web.post("/v1/avatars", self._register_avatar),
                web.delete("/v1/avatars/{avatar_id}", self._delete_avatar),
                web.post("/v1/speak", self._speak),
                web.get("/v1/live", self._live),
                web.get("/v1/live/watch", self._watch_live),
                web.static("/static", static),
            ]
        )
        self._static = static
        return app

    async def start(self) -> int:
        cfg = self.config.server
        if cfg.port:
            check_port_free(self.name, "HTTP", cfg.host, cfg.port)
        if cfg.metrics_port > 0:
            check_port_free(self.name, "metrics", cfg.host, cfg.metrics_port)
        gateway = self.config.gateway
        self.client = TalkmeshClient(
            gateway.target,
            max_message_bytes=cfg.max_message_bytes,
            # the edge's own settings, not the $TALKMESH_TLS* / $TALKMESH_API_KEY of a CLI user
            tls=gateway.tls,
            api_key=self.config.web.gateway_api_key(),
        )
        # handler_cancellation: a browser that goes away cancels its handler, and so its gateway
        # call (a whole-MP4 /v1/speak writes nothing before the end, so it would not notice)
        # keepalive_timeout: aiohttp (3.14) has no header timeout of its own, but closes a connection
        # that has not sent a whole request this long after it opened (or after its last answer)
        app = self.app()
        # before /metrics serves: the first scrape sees every series known in advance, at 0
        self.telemetry.init_series(self.known_series(app))
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
            handler_cancellation=True,
            keepalive_timeout=self.config.web.read_timeout_seconds,
            logger=HttpErrorLog(logging.getLogger("aiohttp.server")),
        )
        await self._runner.setup()
        self._count_connections(self._runner.server)
        site = web.TCPSite(self._runner, cfg.host, cfg.port)
        try:
            await site.start()
        except OSError as exc:
            await self._abort()
            raise BindError(f"{self.name}: cannot listen on {cfg.host}:{cfg.port} (HTTP): {exc}") from None
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        if cfg.metrics_port >= 0:
            try:
                httpd, _ = start_http_server(cfg.metrics_port, addr=cfg.host, registry=self.telemetry.metrics.registry)
            except OSError as exc:
                await self._abort()
                raise BindError(
                    f"{self.name}: cannot listen on {cfg.host}:{cfg.metrics_port} (metrics): {exc}"
                ) from None
            self._metrics_server = httpd
            self.metrics_port = httpd.server_port
        # The gateway's readiness (service ""), as the other services watch their stages
        # (talkmesh.common.health): not ready at its first miss, ready again at its first answer.
        self._gateway_watch = DependencyWatch(
            {"gateway": self.client.channel},
            self._gateway_changed,
            interval=cfg.dependency_check_seconds,
            timeout=max(0.5, cfg.dependency_check_seconds),
            failures=1,
            service="",
            refuses=False,
            log_changes=False,  # _gateway_changed logs each change, naming the gateway's address
        )
        if await self._check_gateway():
            await self._check_key()
        if cfg.dependency_check_seconds > 0:
            self._watch = asyncio.create_task(self._gateway_watch.run(), name="web-gateway-watch")
        log.info(
            "web serving on %s (metrics port %s), gateway %s%s%s",
            self.url,
            self.metrics_port,
            self.config.gateway.target,
            f"; access tokens required ({len(self._token_secrets.value)} secret(s))" if self._token_secrets else "",
            # (browsers send http://localhost:3000 and http://127.0.0.1:3000 as two origins)
            f"; allowed origins: its own{''.join(', ' + o for o in self.config.web.allowed_origins) or ' only'} "
            "(web.allowed_origins)",
        )
        self._log_gateway_budget()
        return self.port

    def _log_gateway_budget(self) -> None:
        """What this edge may ask of the gateway at once, against what a gateway replica admits by
        default (the edge cannot read the gateway's config: docs/WEB.md "Sizing")."""
        sessions, speaks = self.config.server.max_concurrent_streams, self.config.web.max_concurrent_speaks
        gateway = spec("gateway").max_streams
        if sessions + speaks > gateway:
            log.warning(
                "web: up to %d live sessions (server.max_concurrent_streams) + %d speaks (web.max_concurrent_speaks) "
                "= %d gateway calls, over the %d a gateway replica admits by default: size the gateway's "
                "server.max_concurrent_streams (and the edge key's concurrent_streams) for them, or other "
                "visitors' calls fail with RESOURCE_EXHAUSTED (docs/WEB.md \"Sizing\")",
                sessions,
                speaks,
                sessions + speaks,
                gateway,
            )
        else:
            log.info(
                "web: up to %d live sessions + %d speaks = %d gateway calls (a default gateway replica admits %d)",
                sessions,
                speaks,
                sessions + speaks,
                gateway,
            )

    def _count_connections(self, server: Any) -> None:
        """``web.max_connections_per_ip``: a connection over its address's share is closed at once
        (trusted proxies are exempt: they carry many clients; loopback too, as for the other
        per-address limits: a proxy on the same host that is not in trusted_proxies)."""
        limit = self.config.web.max_connections_per_ip
        if not limit or server is None:
            return
        made, lost = server.connection_made, server.connection_lost
        addresses: dict[Any, str] = {}

        def connection_made(handler: Any, transport: Any) -> None:
            made(handler, transport)
            peer = transport.get_extra_info("peername")
            address = limit_key(str(peer[0]), self._proxies) if isinstance(peer, tuple) and peer else ""
            if not address:
                return
            if self._connections[address] >= limit:
                self._rejected(Rejection.CONNECTIONS_PER_IP)
                log.info("web: a connection over web.max_connections_per_ip (%d) closed", limit)
                transport.abort()
                return
            self._connections[address] += 1
            addresses[handler] = address

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            address = addresses.pop(handler, None)
            if address is not None:
                self._connections[address] -= 1
                if self._connections[address] <= 0:
                    del self._connections[address]
            lost(handler, exc)

        server.connection_made, server.connection_lost = connection_made, connection_lost

    async def _abort(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def _check_gateway(self) -> bool:
        """Asks the gateway's readiness now (at start, and from /readyz while it is not ready)."""
        assert self._gateway_watch is not None
        self.gateway_ready = not await self._gateway_watch.check_once()  # (the watch reports changes only)
        return self.gateway_ready

    async def _gateway_changed(self, down: list[str]) -> None:
        self.gateway_ready = not down
        if down:
            log.warning("gateway %s is not ready (not answering health checks)", self.config.gateway.target)
        else:
            log.info("gateway %s is ready", self.config.gateway.target)
            await self._check_key()

    async def _check_key(self, max_age: float = 0.0) -> bool:
        """Asks the gateway whether it accepts the edge's API key (``web.gateway_api_key_file``), with a
        call it authenticates (ListVoices): a wrong or missing key would fail every browser action
        with 401 while health checks, which need no key, pass. Asked again only when the last
        answer is older than ``max_age`` seconds; concurrent callers share one question. True if
        the key is not refused."""
        waiting_since = time.monotonic()
        async with self._key_lock:
            # a question that ended while this caller waited for the lock is its answer too, even
            # one that learnt nothing (the next probe asks again, not every waiter in turn)
            if self._key_asked < waiting_since and waiting_since - self._key_checked >= max_age:
                answered = await self._ask_key()
                self._key_asked = time.monotonic()
                if answered:
                    self._key_checked = self._key_asked
        return not self.key_refused

    async def _ask_key(self) -> bool:
        """Asks; False when the answer says nothing about the key (asked again next time)."""
        assert self.client is not None
        try:
            await self.client.list_voices(timeout=max(1.0, self.config.server.dependency_check_seconds))
            refused = ""
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return False  # a stage down, a timeout: nothing learnt about the key
            refused = f"{exc.code().name}: {exc.details()}"
        if refused and refused != self.key_refused:
            log.error(
                "gateway %s refuses the web edge's API key (web.gateway_api_key_file): %s; /readyz answers 503",
                self.config.gateway.target,
                refused,
            )
        elif self.key_refused and not refused:
            log.info("gateway %s accepts the web edge's API key again", self.config.gateway.target)
        self.key_refused = refused
        return True

    async def stop(self, grace: float | None = None) -> None:
        """Not ready, stop accepting; live sessions get ``grace`` seconds, then are closed."""
        if self._runner is None or self._stopped.is_set():
            return
        grace = self.config.server.grace_seconds if grace is None else grace
        self.draining = True
        await cancel_and_wait(self._watch)
        # Live sessions end as if the browser half-closed: started turns play, then status OK (their
        # session_ending saying END_REASON_DRAINING, also to their watchers). A watch of a session
        # this edge did not open (a backend's, another replica's) would not end by itself: it ends
        # now, "watch again".
        # (a session its page had half-closed already ends as the page's: its watchers are told so
        # too; decided for the page and its watchers at once, before any await)
        bridges = list(self.bridges)
        half_closed = {b.session_id for b in bridges if b.browser_half_closed}
        for bridge in bridges:
            bridge.out.draining = not bridge.browser_half_closed
        for out, watched in self.watchers.items():
            out.draining = watched in self._own_sessions and watched not in half_closed
        await asyncio.gather(*(b.half_close() for b in bridges), return_exceptions=True)
        await asyncio.gather(
            *(
                out.final(WATCH_DRAINED, CLOSE_TRY_LATER, outcome="CANCELLED")  # (planned: no server fault)
                for out, watched in list(self.watchers.items())
                if watched not in self._own_sessions
            ),
            return_exceptions=True,
        )
        if self.sessions:
            done = asyncio.Event()
            pending = set(self.sessions)

            def gone(task: asyncio.Task[Any]) -> None:
                pending.discard(task)
                if not pending:
                    done.set()

            for task in pending:
                task.add_done_callback(gone)
            await wait_event(done, grace)
        await self._runner.cleanup()  # closes the remaining WebSockets (1001 going away)
        self._runner = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.client is not None:
            await self.client.close()
        self._stopped.set()

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    async def run_until_signal(self) -> None:
        """Starts, then serves until SIGTERM/SIGINT, then drains (for `talkmesh serve web`)."""
        await run_until_signal(self, self.name, json_line=self.config.server.log_json)

    # -- every request: trace, request id, metrics, errors ----------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
        if not _counted(route):
            return await handler(request)
        rid = request.headers.get(REQUEST_ID_KEY, "")[:MAX_ID_CHARS] or secrets.token_hex(8)  # (an id's longest)
        request[CLIENT_KEY] = limit_key(
            client_address(request.remote or "", request.headers.getall("X-Forwarded-For", []), self._proxies),
            self._proxies,
        )
        token = request_id_var.set(rid)
        parent = propagate.extract(dict(request.headers))
        start = time.perf_counter()
        code = "INTERNAL"  # (an exception that escapes)
        try:
            with self.telemetry.tracer.start_as_current_span(
                f"web {request.method} {route}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": request.method, "http.route": route, "talkmesh.service": "web"},
                record_exception=False,  # (recorded below, but for a browser that left)
                set_status_on_exception=False,
            ) as span:
                response: web.StreamResponse
                status = 0
                try:
                    try:
                        if self._own_hosts is not None and _host_name(request.host) not in self._own_hosts:
                            raise HttpError(
                                403,
                                "PERMISSION_DENIED",
                                f"host: {request.host[:100]!r} is not a name of this web edge (it listens on "
                                "loopback: localhost, 127.0.0.1, [::1], or the hosts of web.allowed_origins)",
                                "host",
                            )
                        origin, allowed = self._origin_of(request)
                        request[CORS_KEY] = self._cors_headers(origin, allowed)
                        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                            response = self._preflight(request, origin, allowed)
                        elif not allowed and (request.method in UNSAFE_METHODS or route in WS_ROUTES):
                            self._log_refused_origin(origin)
                            raise HttpError(
                                403,
                                "PERMISSION_DENIED",
                                f"origin: {origin or 'a cross-site request'} may not use this web edge "
                                "(its own origin and web.allowed_origins may)",
                                "origin",
                            )
                        else:
                            self._authorize(request, route, span)
                            response = await handler(request)
                    except HttpError as exc:
                        response = exc.response()
                    except grpc.aio.AioRpcError as exc:
                        response = from_rpc_error(exc).response()
                    except web.HTTPException as exc:  # aiohttp's own: unknown path, body too large, ...
                        name, field = HTTP_EXCEPTION_CODES.get(exc.status, ("INVALID_ARGUMENT", ""))
                        name = name if exc.status < 500 else "INTERNAL"
                        response = error_response(exc.status, name, exc.reason, field)
                    code, status = result_code(response), response.status
                    span.set_attribute("http.response.status_code", status)
                    if not response.prepared:
                        self._decorate(request, response)
                    return response
                except (asyncio.CancelledError, ConnectionError):  # the browser went away
                    socket = request.get(SOCKET_KEY)
                    code = socket.get(RESULT_KEY, "CANCELLED") if socket is not None else "CANCELLED"
                    span.set_attribute("talkmesh.cancelled", code == "CANCELLED")
                    raise
                except Exception as exc:
                    span.record_exception(exc)
                    raise
                finally:
                    # an error of the edge's span: the server's fault (HTTP's 5xx, a stream or session
                    # that ended with one), never a browser's mistake or its leaving
                    span.set_attribute("talkmesh.status_code_name", code)
                    if code in SERVER_FAULTS or status >= 500:
                        span.set_status(Status(StatusCode.ERROR, code))
        finally:
            request_id_var.reset(token)
            self._requests.labels(self.name, f"{request.method} {route}", code).inc()
            self.telemetry.observe_stage(_stage(route), time.perf_counter() - start)

    def known_series(self, app: web.Application) -> list[Series]:
        """The edge's series known before its first request (``Telemetry.init_series``): each
        route's requests answered OK and its stage, and its refusals."""
        m = self.telemetry.metrics
        routes = {
            (r.method, r.resource.canonical)
            for r in app.router.routes()
            if r.resource is not None and _counted(r.resource.canonical) and r.method != "HEAD"
        }
        return [
            Series(m.streams_total, sorted(f"{method} {route}" for method, route in routes), (OK,)),
            Series(m.stage_duration, sorted({_stage(route) for _, route in routes})),
            Series(m.rejections_total, REJECTIONS),
        ]

    def _rejected(self, reason: Rejection) -> None:
        """A refusal before any work, counted as the gRPC services count theirs
        (``talkmesh_rejections_total``; "overload" is what TalkmeshRejectingStreams alerts on)."""
        self.telemetry.metrics.rejections_total.labels(self.name, reason).inc()

    def _authorize(self, request: web.Request, route: str, span: Any) -> None:
        """With ``web.token_secret_file`` set, an API request needs an access token that allows
        its route (services.web.tokens): 401 UNAUTHENTICATED without a good one, 403
        PERMISSION_DENIED when its scope leaves the route out. The token's subject goes on the
        request's span (``enduser.id``)."""
        if self._token_secrets is None or not route.startswith("/v1/"):
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":  # none, or a proxy's own (Basic): not ours
            token = _websocket_token(request) if route in WS_ROUTES else ""
        token = token.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="talkmesh"'}
        if not token:
            where = (
                f"the subprotocols {WS_PROTOCOL} and {TOKEN_PROTOCOL}<token>, or ?{TOKEN_QUERY}="
                if route in WS_ROUTES
                else "an Authorization: Bearer header"
            )
            raise HttpError(
                401,
                "UNAUTHENTICATED",
                f"access_token: this web edge needs an access token ({where}; docs/WEB.md \"Access tokens\")",
                "access_token",
                headers=challenge,
            )
        try:
            access = tokens.check(
                token, self._token_secrets.get(), max_ttl_seconds=self.config.web.token_max_ttl_seconds
            )
        except tokens.TokenError as exc:
            raise HttpError(
                401,
                "UNAUTHENTICATED",
                f"access_token: not accepted: {exc}",
                "access_token",
                headers={"WWW-Authenticate": 'Bearer realm="talkmesh", error="invalid_token"'},
            ) from None
        if access.subject:
            span.set_attribute("enduser.id", access.subject)
        # (by the hash of the whole sub: the span's is cut to 128 characters, and two users sharing
        # those would have shared their limits and watched each other's sessions; a token without a
        # subject is counted by its identity, the same for each of its spellings: its jti, or its
        # payload's hash; no token is kept in memory)
        request[SUBJECT_KEY] = access.owner
        request[WATCHABLE_KEY] = access.sessions
        scope = ROUTE_SCOPES.get(("GET" if request.method == "HEAD" else request.method, route))
        if scope is not None and not access.allows(scope):
            raise HttpError(
                403,
                "PERMISSION_DENIED",
                f"access_token: this token does not allow {scope} (its scope: "
                f"{' '.join(sorted(access.scopes)) or 'none of this edge'})",
                "access_token",
            )

    async def _secure_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """On every answer (on_response_prepare): no software versions, no content sniffing, and the
        page's Content-Security-Policy."""
        headers = response.headers
        headers["Server"] = SERVER_HEADER
        headers.setdefault("X-Content-Type-Options", "nosniff")
        host = request.host if _SAFE_HOST.fullmatch(request.host or "") else ""
        connect = "connect-src 'self'" + (f" ws://{host} wss://{host}" if host else "")
        ancestors = self.config.web.frame_ancestors
        policy = f"{CSP}; {connect}" + (f"; frame-ancestors {' '.join(ancestors)}" if ancestors else "")
        headers.setdefault("Content-Security-Policy", policy)

    def _decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        """The request id, the trace and the CORS headers, on a response not yet sent."""
        response.headers[REQUEST_ID_KEY] = request_id_var.get() or ""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if "traceparent" in carrier:
            response.headers["traceparent"] = carrier["traceparent"]
        cors = request.get(CORS_KEY) or {}
        for key, value in cors.items():
            response.headers.setdefault(key, value)
        response.headers.add("Vary", "Origin")

    # -- origins: WebSocket hijacking, CSRF, CORS -------------------------------------------------
    def _origin_of(self, request: web.Request) -> tuple[str, bool]:
        """(the browser's origin, whether it may use the API). No ``Origin`` header: not a browser's
        cross-site request (curl, a server; browsers send one with every WebSocket, POST and
        DELETE), unless ``Sec-Fetch-Site`` says it is one."""
        raw = request.headers.get("Origin")
        if raw is None:
            return "", request.headers.get("Sec-Fetch-Site", "").lower() not in ("cross-site", "same-site")
        origin = normal_origin(raw)
        if not origin:  # "null" (a sandboxed frame, a file: page) or not an origin at all
            return raw[:200], False
        return origin, origin in self._origins or same_origin(origin, request.host)

    def _cors_headers(self, origin: str, allowed: bool) -> dict[str, str]:
        """The CORS headers of an answer to ``origin``: only for an origin of ``web.allowed_origins``
        (the page's own needs none)."""
        if not (origin and allowed and origin in self._origins):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": EXPOSE_HEADERS}

    def _log_refused_origin(self, origin: str) -> None:
        """Once per origin (at most REFUSED_ORIGINS_LOGGED of them): the browser shows a refused
        WebSocket only as close 1006, and another site's script cannot read a 403 without CORS, so
        the edge's log is where the developer of a page learns what to list."""
        if origin in self._refused_origins or len(self._refused_origins) > REFUSED_ORIGINS_LOGGED:
            return
        self._refused_origins.add(origin)
        if len(self._refused_origins) > REFUSED_ORIGINS_LOGGED:
            log.warning(
                "web: more origins refused (not in web.allowed_origins) are not logged; %d were, once each",
                REFUSED_ORIGINS_LOGGED,
            )
            return
        log.warning(
            "web: refused a browser page of origin %r (403 PERMISSION_DENIED, field origin): not this edge's own "
            "origin nor in web.allowed_origins; if it is your site's, list it there exactly "
            "(TALKMESH_WEB__WEB__ALLOWED_ORIGINS; logged once per origin)",
            origin or "(none: Sec-Fetch-Site says cross-site)",
        )

    def _preflight(self, request: web.Request, origin: str, allowed: bool) -> web.Response:
        if not request.get(CORS_KEY):
            if not allowed:  # (an allowed origin of its own needs no CORS: nothing to list)
                self._log_refused_origin(origin)
            raise HttpError(
                403,
                "PERMISSION_DENIED",
                f"origin: {origin or 'this origin'} is not in web.allowed_origins (no CORS)",
                "origin",
            )
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            },
        )

    # -- page, health, metrics --------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self._static / "index.html", headers={"Cache-Control": "no-cache"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not self.gateway_ready and not await self._check_gateway():
            # (the gateway's address is in the log, not in this public answer)
            return web.json_response({"status": "gateway unavailable"}, status=503)
        # while refused, asked at each probe (a fixed key makes the pod ready); else once a
        # minute (a key revoked from the gateway's keys file makes it unready)
        if not await self._check_key(0.0 if self.key_refused else KEY_RECHECK_SECONDS):
            return web.json_response({"status": "the gateway refuses the edge's API key"}, status=503)
        return web.json_response({"status": "ready"})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.telemetry.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- HTTP API -----------------------------------------------------------------------------------
    def _client(self) -> TalkmeshClient:
        if self.client is None or self.draining:
            raise HttpError(503, "UNAVAILABLE", "the web edge is shutting down")
        return self.client

    async def _voices(self, request: web.Request) -> web.Response:
        voices = await self._client().list_voices()
        return web.json_response({"voices": [_to_dict(v) for v in voices]})

    async def _avatars(self, request: web.Request) -> web.Response:
        avatars = await self._client().list_avatars()
        return web.json_response({"avatars": [_to_dict(a) for a in avatars]})

    async def _register_avatar(self, request: web.Request) -> web.Response:
        """Multipart form: optional fields ``name``, ``face_index`` or ``face_point`` ("x,y" in the
        picture's pixels), ``framing`` ("auto", the default, "as_is" or "head_and_shoulders": AvatarMeta.framing),
        ``backends`` (comma-separated), then the ``file``; another field is
        refused (it would be dropped). The bytes stream on to the gateway as they arrive; the renderer applies
        its limits (size, format) and its errors come back with the field they name."""
        client = self._client()
        self._check_uploads("file")
        # An upload holds a gateway stream until its file has arrived: a client that trickles its
        # bodies would hold all of the gateway's (web.max_concurrent_uploads, max_uploads_per_client).
        cfg = self.config.web
        with self.uploads.hold(
            self._client_keys(request), cfg.max_concurrent_uploads, cfg.max_uploads_per_client, self._rejected
        ):
            return await self._upload(request, client)

    async def _upload(self, request: web.Request, client: TalkmeshClient) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise HttpError(400, "INVALID_ARGUMENT", "send multipart/form-data with a 'file' part", "file")
        reader = await request.multipart()
        meta = api.AvatarMeta()
        # The fields before the file are read and checked here, before the gRPC call: an exception
        # raised in the call's request iterator only cancels the call (gRPC logs it at debug), and
        # that cancellation would leave this handler without a response (the connection dropped).
        file_part: Any = None
        parts = 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > 16:
                raise HttpError(400, "INVALID_ARGUMENT", "too many form fields", "form")
            name = getattr(part, "name", "") or ""
            if name == "file":
                file_part = part
                break
            if name not in FORM_FIELDS.values():  # refused unread (it may be a whole file)
                raise HttpError(
                    400,
                    "INVALID_ARGUMENT",
                    f"{name[:64]}: not a field of this form ({', '.join(dict.fromkeys(FORM_FIELDS.values()))})",
                    name[:64] or "form",
                )
            try:  # (at most 1 KiB of a field is read: a character cut at its end is dropped)
                chunk = bytes(await part.read_chunk(1024))  # type: ignore[union-attr]
                value = codecs.getincrementaldecoder("utf-8")().decode(chunk, final=False)
            except UnicodeDecodeError:
                raise HttpError(400, "INVALID_ARGUMENT", f"{name}: not UTF-8 text", name) from None
            if name == "name":
                meta.name = value
            elif name == "face_index":
                try:
                    meta.face_index = int(value or 0)
                except ValueError:
                    raise HttpError(400, "INVALID_ARGUMENT", "face_index: must be an integer", "face_index") from None
            elif name == "face_point":
                try:
                    x, y = (float(v) for v in value.split(","))
                except ValueError:
                    raise HttpError(
                        400, "INVALID_ARGUMENT", "face_point: must be x,y (pixels of the picture)", "face_point"
                    ) from None
                if not (0 <= x <= MAX_IMAGE_SIDE and 0 <= y <= MAX_IMAGE_SIDE):  # (NaN fails too)
                    raise HttpError(
                        400, "INVALID_ARGUMENT", f"face_point: x and y must be within 0..{MAX_IMAGE_SIDE}", "face_point"
                    )
                meta.face_point.x, meta.face_point.y = x, y
            elif name == "framing":
                if value not in FRAMINGS:
                    raise HttpError(
                        400, "INVALID_ARGUMENT", f"framing: must be one of {', '.join(FRAMINGS)}", "framing"
                    )
                meta.framing = FRAMINGS[value]  # type: ignore[assignment]
            elif name == "backends":
                meta.backends.extend(b.strip() for b in value.split(",") if b.strip())
        if file_part is None:
            raise HttpError(400, "INVALID_ARGUMENT", "file: the form has no 'file' part", "file")
        meta.filename = getattr(file_part, "filename", "") or "upload"
        read_error: BaseException | None = None

        async def upload() -> AsyncIterator[api.AvatarUpload]:
            nonlocal read_error
            yield api.AvatarUpload(meta=meta)
            try:
                while block := await file_part.read_chunk(UPLOAD_CHUNK_BYTES):  # (as the client sends a file)
                    yield api.AvatarUpload(data=block)
            except Exception as exc:  # the browser's body broke off: the call is cancelled
                read_error = exc
                raise

        info: api.AvatarInfo | None = None
        call = client.stub.RegisterAvatarWithProgress(upload(), metadata=client.metadata())
        try:
            async for msg in call:
                if msg.WhichOneof("kind") == "avatar":
                    info = msg.avatar
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if read_error is None or (task is not None and task.cancelling()):
                raise
            log.info("avatar upload: the request body failed: %r", read_error)
            raise HttpError(400, "INVALID_ARGUMENT", "file: the upload broke off before its end", "file") from None
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            # The gRPC fields of the upload, named as the form's fields.
            err.field = FORM_FIELDS.get(err.field, err.field)
            raise err from None
        if info is None:
            raise HttpError(502, "INTERNAL", "the gateway ended the upload without the avatar")
        answer: dict[str, Any] = {"avatar": _to_dict(info)}
        warnings = []
        late = await _late_field(reader)
        if late:  # the avatar was made without it: say so rather than drop it silently
            warnings.append(f"{late}: a form field after 'file' is not read (send the fields first)")
        # (as `talkmesh avatar add` says it)
        again = ""  # (framing that kept the whole picture is not offered again)
        if meta.framing == api.FRAMING_AS_IS:
            again = (
                "or upload it again with “Head and shoulders when the face is small” "
                "(framing=auto: the server crops it)"
            )
        small = small_face_hint(info, "upload that", again)
        if small:
            warnings.append(small)
        if warnings:
            answer["warnings"] = warnings
        framed = framing_note(info)
        if framed:  # (not a warning: what the server did, which the page says)
            answer["notes"] = [framed]
        return web.json_response(answer, status=201)

    def _check_uploads(self, field: str) -> None:
        if not self.config.web.allow_uploads:
            raise HttpError(
                403,
                "PERMISSION_DENIED",
                f"{field}: this web edge does not take avatar changes (web.allow_uploads)",
                field,
            )

    async def _delete_avatar(self, request: web.Request) -> web.Response:
        """``DeleteAvatar`` with the edge's key: any avatar uploaded through this edge (they all
        belong to its key), not the default one. By its id the whole avatar goes; by one of its
        names, that name only (the avatar goes with its last), as `talkmesh avatar rm` does."""
        client = self._client()
        self._check_uploads("avatar_id")
        given = request.match_info["avatar_id"]
        avatar_id, name = await client.find_avatar(given)  # (a name of several avatars: 400 FAILED_PRECONDITION)
        if not await client.delete_avatar(avatar_id, name):
            raise HttpError(404, "NOT_FOUND", f"avatar_id: avatar {given!r} not found", "avatar_id")
        return web.json_response({"avatar_id": avatar_id, "name": name, "deleted": True})

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        """JSON body with the fields of ``SpeakRequest`` (text, avatar_id, voice, voice_settings,
        output...). By default the whole utterance as one seekable MP4 (``+faststart``); with
        ``output.container`` ``CONTAINER_FMP4`` (or ``CONTAINER_MPEGTS``) the stream as it is encoded.
        The edge holds at most ``web.speak_buffer_bytes`` of it (docs/WEB.md)."""
        client = self._client()
        if request.content_type != "application/json":
            raise HttpError(
                415, "INVALID_ARGUMENT", "Content-Type: send the body as application/json", "Content-Type"
            )
        try:
            async with asyncio.timeout(self.config.web.read_timeout_seconds):
                raw = await request.read()
        except TimeoutError:
            raise HttpError(
                408, "DEADLINE_EXCEEDED", "body: not sent in time (web.read_timeout_seconds)", "body"
            ) from None
        try:
            body = json.loads(raw)
        except RecursionError:  # ([[[[... thousands deep: Python's parser gives up)
            why = "body: not JSON this edge reads: too deeply nested"
            raise HttpError(400, "INVALID_ARGUMENT", why, "body") from None
        except ValueError:
            raise HttpError(400, "INVALID_ARGUMENT", "body: not JSON", "body") from None
        if not isinstance(body, dict):
            raise HttpError(400, "INVALID_ARGUMENT", "body: expected a JSON object", "body")
        req = gpb.SpeakRequest()
        try:
            if misfit := boolean_misfit(body, gpb.SpeakRequest.DESCRIPTOR):
                field, why = misfit
                raise HttpError(400, "INVALID_ARGUMENT", f"{field}: {why}", field)
            json_format.ParseDict(body, req)
        except RecursionError:
            raise HttpError(400, "INVALID_ARGUMENT", "body: too deeply nested", "body") from None
        except json_format.ParseError as exc:
            field = bad_value_field(str(exc)) or "body"  # a bad enum or number names its field
            raise HttpError(400, "INVALID_ARGUMENT", f"{field}: {proto_names(str(exc))}", field) from None
        if req.output.container == api.CONTAINER_UNSPECIFIED:
            req.output.container = api.CONTAINER_MP4  # type: ignore[assignment]
        # each client's share of them: per token identity, and per address
        cfg = self.config.web
        with self.speaks.hold(
            self._client_keys(request), cfg.max_concurrent_speaks, cfg.max_speaks_per_client, self._rejected
        ):
            call: Any = None
            try:
                call = client.stub.Speak(req, timeout=cfg.speak_timeout_seconds, metadata=client.metadata())
                return await self._relay_speak(request, call, whole=req.output.container == api.CONTAINER_MP4)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None  # the gateway names the JSON body's fields
            finally:
                if call is not None:
                    call.cancel()

    def _client_keys(self, request: web.Request) -> list[str]:
        """Whom a request counts against, for the per-client shares: its token's subject (or
        identity), and its client address (``limit_key``: not loopback, not a trusted proxy, an IPv6
        one by its /64)."""
        keys = []
        if subject := request.get(SUBJECT_KEY, ""):
            keys.append(subject)
        if address := request.get(CLIENT_KEY, ""):
            keys.append(f"ip:{address}")
        return keys

    async def _write(self, request: web.Request, resp: web.StreamResponse, data: bytes) -> None:
        """``resp.write`` for a client that reads: one that takes nothing of the answer for
        ``server.write_timeout_seconds`` is a slow reader holding a speak slot; it is cut off."""
        try:
            async with asyncio.timeout(self.config.server.write_timeout_seconds):
                await resp.write(data)
        except TimeoutError:
            log.info(
                "speak: the client read nothing for %.0f s (server.write_timeout_seconds); answer cut off",
                self.config.server.write_timeout_seconds,
            )
            if request.transport is not None:
                request.transport.abort()
            raise _SlowReader from None

    async def _relay_speak(self, request: web.Request, call: Any, *, whole: bool) -> web.StreamResponse:
        """Speak's chunks to the browser. A whole MP4 up to ``speak_buffer_bytes`` is answered at the
        end with its length and the summary's headers; a longer one, and a stream (fMP4, MPEG-TS),
        go out as they come (chunked), from the first fragment after the init segment on, with the
        headers known then."""
        start = time.perf_counter()
        limit = self.config.web.speak_buffer_bytes
        held: list[bytes] = []
        held_bytes = 0
        mime = ""
        frames = 0
        first_ms: float | None = None
        summary: gpb.SpeakSummary | None = None
        resp: web.StreamResponse | None = None
        try:
            async for chunk in call:
                kind = chunk.WhichOneof("kind")
                if kind == "summary":
                    summary = chunk.summary
                    continue
                if kind != "media":
                    continue
                media = chunk.media
                mime = mime or media.mime_type
                frames = max(frames, media.frames_encoded)
                if not media.data:
                    continue
                if first_ms is None and not media.init_segment:
                    first_ms = (time.perf_counter() - start) * 1000
                if resp is not None:
                    await self._write(request, resp, media.data)
                    continue
                held.append(media.data)
                held_bytes += len(media.data)
                if (whole and held_bytes > limit) or (not whole and first_ms is not None):
                    headers = {"X-Talkmesh-First-Fragment-Ms": f"{first_ms or 0.0:.1f}"}
                    if whole:  # the whole file is encoded before its first chunk comes
                        headers["X-Talkmesh-Frames"] = str(frames)
                    resp = await self._open_speak(request, mime, headers, None, codecs=not whole)
                    for block in held:
                        await self._write(request, resp, block)
                    held, held_bytes = [], 0
        except ConnectionError:  # the browser went away: the call is cancelled (_speak)
            if resp is None:
                raise
            resp[RESULT_KEY] = "CANCELLED"
            return resp
        except _SlowReader:
            assert resp is not None
            resp[RESULT_KEY] = "DEADLINE_EXCEEDED"
            return resp
        except grpc.aio.AioRpcError as exc:
            if resp is None:
                raise
            resp[RESULT_KEY] = exc.code().name
            # The status line is gone: the body breaks off (no final chunk), which the browser's
            # fetch reports as a network error.
            log.info("speak: the gateway's stream failed after the answer started", exc_info=True)
            if request.transport is not None:
                request.transport.close()
            return resp
        if resp is not None:
            await resp.write_eof()
            return resp
        # Everything is here: answered with its length and the summary's headers.
        summary = summary or gpb.SpeakSummary()
        headers = {
            "X-Talkmesh-Frames": str(summary.frames or frames),
            "X-Talkmesh-Audio-Seconds": f"{summary.audio_seconds:.3f}",
            # The gateway's per-stage timings (SpeakSummary.stages), for the page's timings panel.
            "X-Talkmesh-Stages": ", ".join(
                f"{st.service}.{st.stage}={st.seconds * 1000:.1f}ms" for st in summary.stages
            ),
            "X-Talkmesh-First-Fragment-Ms": f"{summary.time_to_first_fragment_seconds * 1000:.1f}",
        }
        answer = web.StreamResponse()
        try:
            answer = await self._open_speak(request, mime, headers, sum(len(b) for b in held))
            for block in held:
                await self._write(request, answer, block)
            await answer.write_eof()
        except ConnectionError:  # the browser went away at the last moment: nothing more to do
            log.info("speak: the browser left before the answer was written")
            answer[RESULT_KEY] = "CANCELLED"
        except _SlowReader:
            answer[RESULT_KEY] = "DEADLINE_EXCEEDED"
        return answer

    async def _open_speak(
        self, request: web.Request, mime: str, headers: dict[str, str], length: int | None, *, codecs: bool = False
    ) -> web.StreamResponse:
        """``codecs``: a stream keeps the codecs in its Content-Type (``video/mp4; codecs="avc1...,
        mp4a.40.2"``: what a page's ``addSourceBuffer`` needs, and it varies with the size); a whole
        file is plain ``video/mp4``."""
        content_type = (mime if codecs else mime.split(";")[0]).strip() or "video/mp4"
        resp = web.StreamResponse(headers={"Content-Type": content_type, **headers})
        if length is None:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = length
        self._decorate(request, resp)
        await resp.prepare(request)
        return resp

    # -- live sessions ------------------------------------------------------------------------------
    async def _live(self, request: web.Request) -> web.StreamResponse:
        return await self._session(request, watch=False)

    async def _watch_live(self, request: web.Request) -> web.StreamResponse:
        return await self._session(request, watch=True)

    async def _session(self, request: web.Request, *, watch: bool) -> web.StreamResponse:
        cfg = self.config.web
        if request.headers.get("Upgrade", "").strip().lower() != "websocket":
            # A plain GET (aiohttp would say only "Bad Request"). It comes after the origin and
            # token checks: a page whose handshake was refused (close 1006, no reason) asks so.
            raise HttpError(400, "INVALID_ARGUMENT", not_a_websocket(request.path), "Upgrade")
        ws = EdgeWebSocket(
            heartbeat=cfg.heartbeat_seconds or None,
            max_msg_size=cfg.max_ws_message_bytes,
            compress=False,
            protocols=(WS_PROTOCOL,),  # (chosen when offered: a page that sends its token so)
        )
        await ws.prepare(request)
        request[SOCKET_KEY] = ws
        task = asyncio.current_task()
        assert task is not None
        subject = request.get(SUBJECT_KEY, "")
        per_subject = cfg.max_sessions_per_subject
        crowded = bool(subject and per_subject and self._subject_sessions[subject] >= per_subject)
        address = request.get(CLIENT_KEY, "")
        per_ip = cfg.max_sessions_per_ip if address else 0
        crowded_ip = bool(per_ip and self._ip_sessions[address] >= per_ip)
        if (
            self.draining
            or crowded
            or crowded_ip
            or len(self.sessions) >= self.config.server.max_concurrent_streams
        ):
            if self.draining:
                reason, why = Rejection.DRAINING, "session: this web edge is shutting down; try again later"
            elif crowded:
                reason, why = Rejection.PER_SUBJECT, (
                    f"session: you have {self._subject_sessions[subject]} live sessions open on this web edge, "
                    "its limit per user (web.max_sessions_per_subject); close one first"
                )
            elif crowded_ip:
                reason, why = Rejection.PER_IP, (
                    f"session: {self._ip_sessions[address]} live sessions are open from your address on this web "
                    "edge, its limit per address (web.max_sessions_per_ip); close one first"
                )
            else:
                reason, why = Rejection.OVERLOAD, (
                    f"session: this web edge has {len(self.sessions)} live sessions, its limit "
                    "(server.max_concurrent_streams); try again later"
                )
            self._rejected(reason)
            # The documented end of a session: the final status, then the close (1013).
            await Sender(ws).final(final_status(ResourceExhausted(why)), CLOSE_TRY_LATER)
            return ws
        self.sessions.add(task)
        self._active.inc()
        if subject:
            self._subject_sessions[subject] += 1
        if per_ip:
            self._ip_sessions[address] += 1
        opened: list[str] = []  # the session id this socket's session got

        def started(session_id: str) -> None:
            self._own_sessions.add(session_id)
            opened.append(session_id)
            if subject and session_id:  # (with tokens: its owner; without, anyone may watch)
                self._session_owners[session_id] = subject

        try:
            client = self._client()
            if watch:
                session_id = request.query.get("session_id", "")
                if self._token_secrets is not None and 0 < len(session_id) <= MAX_SESSION_ID_CHARS:
                    granted = session_id in request.get(WATCHABLE_KEY, frozenset())  # (by the backend)
                    if self._session_owners.get(session_id) != subject and not granted:
                        # another user's session, one of another edge, or none: the gateway's own
                        # answer to an unknown id, so that an id is not confirmed
                        status = final_status(NotFound("session_id", session_id, "live session"))
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await Sender(ws).final(status, CLOSE_BAD_INPUT)
                        return ws
                out = Sender(ws)
                self.watchers[out] = session_id
                try:
                    await watch_bridge(client, out, session_id)
                finally:
                    self.watchers.pop(out, None)
            else:
                timing = request.query.get("timing") == "1"  # debug: relay timestamps (docs/WEB.md)
                bridge = LiveBridge(client, ws, cfg, self.config.server.stream_idle_seconds, timing, started)
                self.bridges.add(bridge)
                try:
                    await bridge.run()
                finally:
                    self.bridges.discard(bridge)
        finally:
            self._active.dec()
            self.sessions.discard(task)
            for session_id in opened:
                self._session_owners.pop(session_id, None)
                self._own_sessions.discard(session_id)
            if subject:
                self._subject_sessions[subject] -= 1
                if self._subject_sessions[subject] <= 0:
                    del self._subject_sessions[subject]
            if per_ip:
                self._ip_sessions[address] -= 1
                if self._ip_sessions[address] <= 0:
                    del self._ip_sessions[address]
        return ws
