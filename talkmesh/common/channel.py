"""Client channels with explicit message limits, keepalive and trace/request-id propagation."""

from __future__ import annotations

import json

import grpc

from talkmesh.common.interceptors import client_interceptors

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *, large_window: bool = False, bdp_probe: bool = True
) -> list[tuple[str, object]]:
    """Options for channels and servers.

    ``large_window``: the HTTP/2 stream window starts large enough for two whole messages, so a
    raw video frame is not held up by window updates (the default 64 KiB initial window costs round
    trips on every 400 KB frame until BDP probing grows it); for whoever *receives* frames.
    ``bdp_probe=False`` keeps the window at its initial size, so a fast producer (TTS) is held back
    by flow control instead of running arbitrarily far ahead of its reader.
    """
    # round_robin spreads streams over every address a headless Service resolves to ("dns:///...").
    service_config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 1),
    ]
    if large_window:
        options.append(("grpc.http2.lookahead_bytes", 2 * max_message_bytes))
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
) -> grpc.aio.Channel:
    """A channel whose calls carry the trace context and request id (``interceptors=False``: the
    caller passes ``outgoing_metadata()`` itself, see services/gateway/downstream.py for why)."""
    return grpc.aio.insecure_channel(
        target,
        options=channel_options(max_message_bytes, large_window=large_window, bdp_probe=bdp_probe),
        interceptors=client_interceptors() if interceptors else None,
    )
