"""Client channels with explicit message limits, keepalive and trace/request-id propagation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc

from talkmesh.common.propagation import client_interceptors

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: The smallest ``server.max_message_bytes``.
MIN_MESSAGE_BYTES = 64 * 1024
#: Room kept in a message for what goes beside a payload cut to fit it (its other fields, gRPC's
#: framing): a renderer's frame parts and an encoder's media chunks are at most
#: ``server.max_message_bytes - MESSAGE_HEADROOM_BYTES``.
MESSAGE_HEADROOM_BYTES = 64 * 1024

# Keepalive, one policy for both ends. Services ping the next stage every second (with or without
# calls) and give up after 1.5 s without an answer, so a hung stage (SIGSTOP, a dead node) fails the
# streams in flight within ~2.5 s (target: 5 s; tests/test_mesh_processes.py asserts it) and new
# calls fail fast instead of waiting for their deadline. A ping is answered by gRPC's own I/O
# threads, not the service's event loop, so a busy stage still answers within the timeout.
# Servers accept pings as often as every second and never count them as abuse; the clients'
# interval must never be shorter than what servers accept, or servers answer with GOAWAY
# "too_many_pings" (a test checks the two).
CLIENT_KEEPALIVE_MS = 1_000
CLIENT_KEEPALIVE_TIMEOUT_MS = 1_500
#: External clients (the Python client, the web edge) ping less often.
PUBLIC_CLIENT_KEEPALIVE_MS = 20_000
SERVER_MIN_PING_INTERVAL_MS = 1_000
SERVER_KEEPALIVE_MS = 10_000
SERVER_KEEPALIVE_TIMEOUT_MS = 5_000
# Reconnecting after a stage went away: gRPC's backoff grows from 1 s by x1.6 up to 120 s by
# default, so a stage back after a 6-minute outage was not tried again for up to ~50 s (an SRE's
# trial: the gateway refused calls as "not answering health checks" that long with a healthy
# renderer). Capped at a few seconds: a stage is found again within about this of its return.
MAX_RECONNECT_BACKOFF_MS = 3_000


#: Why a client certificate without its key (or a key without its certificate) is refused.
CERT_AND_KEY = "cert_file and key_file go together"


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """TLS on a client channel (``<endpoint>.tls`` in a service's config, the client's ``--tls``
    flags); on when ``enabled`` or any file is set. The files are read when the channel is made and
    again when they change (``talkmesh.common.client_tls.ReloadingChannel``)."""

    # TLS even without any file below (the server is verified against the system's roots).
    enabled: bool = False
    # PEM CA bundle the server's certificate must chain to ("" = the system's roots).
    ca_file: str = ""
    # This client's certificate chain and key (mutual TLS); "" = none.
    cert_file: str = ""
    key_file: str = ""
    # The name the server's certificate must carry when it differs from the target's host
    # (e.g. "renderer" when dialling a Unix socket or a pod IP).
    server_name: str = ""

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.ca_file or self.cert_file)

    def missing_half(self) -> str:
        """The field a client certificate lacks its other half in ("key_file" with only a
        cert_file, "cert_file" with only a key_file), or "". (The client wheel checks with it:
        it does not ship the config module.)"""
        if bool(self.cert_file) == bool(self.key_file):
            return ""
        return "key_file" if self.cert_file else "cert_file"

    def validate(self) -> None:
        if missing := self.missing_half():
            from talkmesh.common.config import ConfigError

            raise ConfigError.at(missing, CERT_AND_KEY)

    def credentials(self) -> grpc.ChannelCredentials:
        """The CA (or the system's roots) and the client certificate, read now."""

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def options(self) -> list[tuple[str, object]]:
        """Channel options TLS needs (the name the server's certificate must carry)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def server_keepalive_options() -> list[tuple[str, object]]:
    """What servers accept from clients and how they detect dead clients themselves."""
    return [
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.ping_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def client_keepalive_options(interval_ms: int = CLIENT_KEEPALIVE_MS) -> list[tuple[str, object]]:
    return [
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_timeout_ms", CLIENT_KEEPALIVE_TIMEOUT_MS),
        # newer gRPC cores time out any unanswered ping after this (default 60 s), keepalive too
        ("grpc.http2.ping_timeout_ms", CLIENT_KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def transport_options(max_message_bytes: int, *, large_window: bool = False) -> list[tuple[str, object]]:
    """Message limits (explicit, both directions) and the HTTP/2 window, for channels and servers.

    ``large_window``: the HTTP/2 stream window starts large enough for two whole messages, so a
    raw video frame is not held up by window updates (the default 64 KiB initial window costs round
    trips on every 400 KB frame until BDP probing grows it); for whoever *receives* frames. At least
    MIN_LOOKAHEAD_BYTES: servers keep it fixed (BDP probing off), so a small message limit must not
    make a far client's upload crawl (1 MiB messages: 2 MiB per round trip).
    """
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if large_window:
        options.append(("grpc.http2.lookahead_bytes", max(2 * max_message_bytes, MIN_LOOKAHEAD_BYTES)))
    return options


#: The smallest stream window of ``transport_options(large_window=True)``: the default message
#: limit's (2 x DEFAULT_MAX_MESSAGE_BYTES)
MIN_LOOKAHEAD_BYTES = 2 * DEFAULT_MAX_MESSAGE_BYTES


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    large_window: bool = False,
    bdp_probe: bool = True,
    keepalive_ms: int = CLIENT_KEEPALIVE_MS,
) -> list[tuple[str, object]]:
    """Options for client channels (``transport_options`` plus keepalive and load balancing).

    ``bdp_probe=False`` keeps the window at its initial size, so a fast producer (TTS) is held back
    by flow control instead of running arbitrarily far ahead of its reader.
    """
    # round_robin spreads streams over every address a headless Service resolves to ("dns:///...").
    service_config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    options = transport_options(max_message_bytes, large_window=large_window)
    options += client_keepalive_options(keepalive_ms)
    options += [("grpc.service_config", json.dumps(service_config)), ("grpc.enable_retries", 1)]
    # Each channel keeps its own connections. In gRPC's default global pool, channels with equal
    # options share a connection per address, and its reconnect backoff too: a new channel to a
    # server that has just (re)started on an address an older channel failed to reach would fail
    # at once with that channel's stale "connection refused" until the backoff (up to 2 min) ends.
    options.append(("grpc.use_local_subchannel_pool", 1))
    options.append(("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS))
    if not bdp_probe:
        options.append(("grpc.http2.bdp_probe", 0))
    return options


def create_channel(
    target: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    interceptors: bool = True,
    large_window: bool = False,
    bdp_probe: bool = True,
    keepalive_ms: int = CLIENT_KEEPALIVE_MS,
    tls: ClientTLS | None = None,
) -> grpc.aio.Channel:
    """A channel whose calls carry the trace context and request id (``interceptors=False``: the
    caller passes ``outgoing_metadata()`` itself, see services/gateway/downstream.py for why).

    ``tls`` (when ``tls.active``): a TLS channel verifying the server against ``tls.ca_file`` and
    presenting ``tls.cert_file`` (mutual TLS), made again when those files change
    (``talkmesh.common.client_tls.ReloadingChannel``): a renewed certificate needs no restart."""
    options = channel_options(
        max_message_bytes, large_window=large_window, bdp_probe=bdp_probe, keepalive_ms=keepalive_ms
    )
    chain = client_interceptors() if interceptors else None
    if tls is not None and tls.active:
        options += tls.options()
        if not (tls.ca_file or tls.cert_file):  # the system's roots only: nothing to reload
            return grpc.aio.secure_channel(target, tls.credentials(), options=options, interceptors=chain)
        from talkmesh.common.client_tls import ReloadingChannel  # (it imports this module)

        def make(credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
            return grpc.aio.secure_channel(target, credentials, options=options, interceptors=chain)

        return ReloadingChannel(tls, make)
    return grpc.aio.insecure_channel(target, options=options, interceptors=chain)
