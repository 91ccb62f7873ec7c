"""Typed configuration: frozen dataclasses loaded from YAML, overridden by environment variables.

A service's config is a dataclass tree. ``load_config(MyConfig, path, env_prefix="TALKMESH_TTS")``
reads the YAML file (optional), then applies environment variables of the form
``TALKMESH_TTS__SERVER__PORT=50052`` (double underscore separates nesting levels), converts every
value to the field's declared type and runs each dataclass's ``validate()`` method if it has one.
Unknown keys are errors: a typo in a config file must not be silently ignored.

The dataclasses are the only source of defaults (a service's ports come from
``talkmesh.common.registry`` through ``ServerConfig.for_service``). Validators name keys relative
to their own dataclass (``ConfigError.at("frame_skip", ...)``); the loader adds the section's path
and what set the key, so the user reads the full key and where to fix it (``musetalk.frame_skip:
must be at least 1 (set by TALKMESH_RENDERER__MUSETALK__FRAME_SKIP)``, ``... (in renderer.yaml)``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from talkmesh.common.channel import DEFAULT_MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES, ClientTLS
from talkmesh.common.registry import DEFAULT_MAX_STREAMS

T = TypeVar("T")

__all__ = ["ClientTLS", "ConfigError", "Endpoint", "ServerConfig", "ServerTLS", "load_config"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key by its full path."""

    def __init__(self, message: str, *, key: str = "", reason: str = "", origin: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.reason = reason
        #: where the key was set ("set by TALKMESH_...", "in FILE"; "" unknown), once looked up (``placed``)
        self.origin = origin

    @classmethod
    def at(cls, key: str, reason: str) -> ConfigError:
        """``key: reason``; ``key`` is relative to the dataclass whose ``validate`` raises it."""
        return cls(f"{key}: {reason}", key=key, reason=reason)

    def under(self, section: str) -> ConfigError:
        """The same error seen from the parent config: ``section.key: reason``."""
        if not section:
            return self
        if self.key:
            key = f"{section}.{self.key}"
            note = f" ({self.origin})" if self.origin else ""
            return ConfigError(f"{key}: {self.reason}{note}", key=key, reason=self.reason, origin=self.origin)
        return ConfigError(f"{section}: {self}", key=section, reason=str(self))

    def placed(self, origins: Mapping[str, str]) -> ConfigError:
        """The same error saying where its key was set, from ``origins`` (full key -> "set by
        TALKMESH_...", "in FILE"; a list item's is its list's): ``batch.max_size: must be at least
        1 (set by TALKMESH_RENDERER__BATCH__MAX_SIZE)``. Looked up once, for the full key."""
        if self.origin is not None or not self.key:
            return self
        where = origins.get(re.sub(r"\[\d+\]", "", self.key), "")
        message = f"{self} ({where})" if where else str(self)
        return ConfigError(message, key=self.key, reason=self.reason, origin=where)


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """TLS on a server's ports (``server.tls``); off while ``cert_file`` is empty.

    The files are read again when they change (checked by modification time at each new
    connection), so a renewed certificate (cert-manager, a rotated Secret) is served without a
    restart; connections already open keep the certificate they started with.
    """

    # PEM certificate chain and private key this server presents.
    cert_file: str = ""
    key_file: str = ""
    # PEM CA bundle that client certificates must chain to (mutual TLS); "" = no client certificates.
    client_ca_file: str = ""
    # With client_ca_file: refuse clients without a certificate (false: verify one if presented).
    require_client_cert: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def validate(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError.at("key_file" if self.cert_file else "cert_file", "cert_file and key_file go together")
        if self.client_ca_file and not self.cert_file:
            raise ConfigError.at("client_ca_file", "needs cert_file and key_file (mutual TLS is TLS first)")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings every gRPC service has."""

    host: str = "127.0.0.1"
    port: int = 0
    # Prometheus /metrics port; -1 disables the endpoint, 0 picks a free port.
    metrics_port: int = -1
    # Explicit gRPC message size limit, both directions (bytes).
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Streams accepted at once before RESOURCE_EXHAUSTED (application-level admission control).
    max_concurrent_streams: int = DEFAULT_MAX_STREAMS
    # Unary calls (ListVoices, ListAvatars, GetAvatar, DeleteAvatar) accepted at once: a limit of
    # their own, so that full media streams do not refuse these small calls (and they cannot take
    # the streams' room).
    max_concurrent_unary: int = 64
    # Seconds streams in flight may take to finish after SIGTERM.
    grace_seconds: float = 20.0
    log_level: str = "INFO"
    log_json: bool = False
    # Close client connections after this many seconds (0 = never) so that clients using
    # round robin over a headless Service re-resolve DNS and find new replicas. Streams in flight
    # are not cut: the grace period after the age is unlimited.
    max_connection_age_seconds: float = 0.0
    # A client stream that sends nothing for this long (including before its first message)
    # fails with DEADLINE_EXCEEDED, so a forgotten stream cannot hold a slot (0 = never).
    stream_idle_seconds: float = 120.0
    # A client that reads nothing of a response stream for this long fails with DEADLINE_EXCEEDED
    # (flow control would otherwise hold the stream, and its slot, until the call's deadline).
    write_timeout_seconds: float = 60.0
    # Seconds between health checks of the stages this service calls (0 = off): a stage that does
    # not answer twice makes this service NOT_SERVING and refuse new streams with UNAVAILABLE.
    dependency_check_seconds: float = 1.0
    # Also listen on this Unix domain socket (empty = off): co-located services (the encoder
    # pulling frames from the renderer in one pod) talk over it instead of TCP.
    unix_socket: str = ""
    # TLS on the gRPC port and the Unix socket (off by default; see docs/SECURITY.md).
    tls: ServerTLS = dataclasses.field(default_factory=ServerTLS)
    # A stage behind a gateway with API keys: refuse every call (but health and reflection) that
    # carries no principal (the x-talkmesh-principal metadata the gateway sends) with
    # UNAUTHENTICATED. Set by `talkmesh up --api-keys` and the Kubernetes mtls component. Anyone
    # who reaches the port can write that metadata: only mutual TLS (server.tls.client_ca_file)
    # makes it trustworthy (docs/SECURITY.md). Ignored by the gateway (its auth.* decides).
    require_principal: bool = False
    # The standard gRPC health service ("" readiness, "liveness"); probes and the gateway's
    # dependency checks use it: turn off only where nothing probes over gRPC.
    health: bool = True
    # gRPC server reflection (grpcurl without the protos).
    reflection: bool = True

    @property
    def idle_timeout(self) -> float | None:
        return self.stream_idle_seconds or None

    @classmethod
    def for_service(cls, name: str, **changes: Any) -> ServerConfig:
        """Defaults of service ``name``: its ports and stream limit from the registry, plus ``changes``."""
        from talkmesh.common.registry import spec

        s = spec(name)
        changes.setdefault("max_concurrent_streams", s.max_streams)
        return cls(port=s.port, metrics_port=s.metrics_port, **changes)

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError.at("port", f"{self.port} is not a TCP port")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError.at("metrics_port", f"{self.metrics_port} is not a TCP port or -1")
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            raise ConfigError.at("max_message_bytes", f"must be at least {MIN_MESSAGE_BYTES}")
        if self.max_concurrent_streams < 1:
            raise ConfigError.at("max_concurrent_streams", "must be at least 1")
        if self.max_concurrent_unary < 1:
            raise ConfigError.at("max_concurrent_unary", "must be at least 1")
        if self.max_connection_age_seconds < 0:
            raise ConfigError.at("max_connection_age_seconds", "must not be negative")
        if self.grace_seconds < 0:
            raise ConfigError.at("grace_seconds", "must not be negative")
        if self.stream_idle_seconds < 0:
            raise ConfigError.at("stream_idle_seconds", "must not be negative")
        if self.write_timeout_seconds <= 0:
            raise ConfigError.at("write_timeout_seconds", "must be positive")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a downstream service listens."""

    target: str = "127.0.0.1:0"
    # Per-call deadline in seconds for unary calls; streams get the caller's deadline.
    timeout_seconds: float = 10.0
    # TLS (and mutual TLS) to this endpoint; off by default.
    tls: ClientTLS = dataclasses.field(default_factory=ClientTLS)


def _coerce(value: Any, tp: Any, key: str, base: Any = None, origins: Mapping[str, str] | None = None) -> Any:
    """``value`` as type ``tp``; a mapping for a section is laid over ``base`` (the section's
    default in its parent) when that is an instance of the section's class. ``origins``: where
    each key (dotted) was set, for errors (``build_config``)."""
    try:
        return _convert(value, tp, key, base, origins)
    except ConfigError as exc:
        raise exc.placed(origins or {}) from exc.__cause__


def _convert(value: Any, tp: Any, key: str, base: Any, origins: Mapping[str, str] | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, base, origins)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError.at(key, f"expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key, base if isinstance(base, tp) else None, origins)
    if origin in (list, tuple):
        (item_tp, *_rest) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError.at(key, "expected a list")
        items = [_coerce(v, item_tp, f"{key}[{i}]", None, origins) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError.at(key, "expected a mapping")
        key_tp, item_tp = typing.get_args(tp) or (str, Any)
        return {
            _coerce(k, key_tp, key, None, origins): _coerce(v, item_tp, f"{key}.{k}", None, origins)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError.at(key, f"expected a boolean, got {value!r}")
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError.at(key, f"expected {tp.__name__}, got {value!r}") from exc
    if tp is Path:
        return Path(os.path.expanduser(str(value)))
    return value


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (a fresh one from its factory); None when it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(
    cls: type[T],
    data: Mapping[str, Any],
    prefix: str = "",
    base: T | None = None,
    origins: Mapping[str, str] | None = None,
) -> T:
    """``cls`` from ``data``; what ``data`` leaves out is ``base``'s (else the class's default).

    A section keeps what its parent made it by default (``GatewayConfig.server`` is
    ``ServerConfig.for_service("gateway")``: the gateway's port and stream limit): setting one key
    of it in a file or the environment changes that key only."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        # a key of an earlier release says where it went (a config class's MOVED_KEYS)
        moved: Mapping[str, str] = getattr(cls, "MOVED_KEYS", {})
        where_now = "".join(f"; {k} is now {moved[k]}" for k in sorted(unknown) if k in moved)
        keys = ", ".join(_unknown_key(k, prefix, fields, moved, origins or {}) for k in sorted(unknown))
        raise ConfigError(f"{prefix + ': ' if prefix else ''}unknown key(s) {keys}{where_now}")
    kwargs = {} if base is None else {n: getattr(base, n) for n, f in fields.items() if f.init}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        section = None
        if isinstance(value, Mapping):  # a section: over its default in this object
            section = getattr(base, name) if base is not None else _default(fields[name])
        kwargs[name] = _coerce(value, hints[name], key, section, origins)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc
    _validate(obj, prefix, origins)
    return obj


def _unknown_key(
    key: str, prefix: str, fields: Collection[str], moved: Mapping[str, str], origins: Mapping[str, str]
) -> str:
    """An unknown key as the error names it: where it was set (the variable, the file), the key it
    may be a typo of."""
    notes = []
    where = origins.get(f"{prefix}.{key}" if prefix else key)
    if where:
        notes.append(where)
    close = difflib.get_close_matches(key, list(fields), n=1)
    if close and key not in moved:
        notes.append(f"did you mean {close[0]}?")
    return f"{key} ({'; '.join(notes)})" if notes else key


def unknown_keys(cls: type, data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The keys of ``data`` (dotted, sections' too) that config class ``cls`` does not have."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    out: list[str] = []
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            out.append(key)
            continue
        tp = hints[name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and args:
            tp = args[0]
        if isinstance(value, Mapping) and dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out += unknown_keys(tp, value, key)
    return sorted(out)


def _validate(obj: Any, prefix: str, origins: Mapping[str, str] | None = None) -> None:
    """``obj.validate()`` if it has one; its error named from the config's root (``prefix``), with
    where its key was set when ``origins`` knows."""
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as exc:
            raise exc.under(prefix).placed(origins or {}) from None


def _env_overrides(env: Mapping[str, str], prefix: str, origins: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``<prefix>__A__B=value`` variables as a tree (``{"a": {"b": value}}``); ``origins`` gets
    each key's variable (``"a.b": "set by <prefix>__A__B"``; a section keeps an origin it has)."""
    tree: dict[str, Any] = {}
    head = prefix.upper() + "__"
    for name, value in env.items():
        if not name.startswith(head):
            continue
        path = [p.lower() for p in name[len(head) :].split("__") if p]
        node = tree
        for i, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if origins is not None:
                origins.setdefault(".".join(path[: i + 1]), f"set by {name}")
        if path:
            node[path[-1]] = value
            if origins is not None:
                origins[".".join(path)] = f"set by {name}"
    return tree


#: ``TALKMESH_<NAME>__...``: the form of a config override (a single-underscore TALKMESH_PORT_BASE,
#: TALKMESH_TARGET, ... is not one)
_OVERRIDE = re.compile(r"^TALKMESH_([A-Z0-9_]+?)__")


def stray_overrides(env: Mapping[str, str] | None = None) -> list[str]:
    """One warning line per ``TALKMESH_<X>__...`` variable whose ``X`` is no service: no config
    reads it (a misspelt ``TALKMESH_RENDRER__BACKENDS``), with the closest service's."""
    from talkmesh.common.registry import NAMES, spec

    served = tuple(f"{spec(n).env_prefix}__" for n in NAMES)
    out = []
    for name in sorted(os.environ if env is None else env):
        m = _OVERRIDE.match(name)
        if m is None or name.startswith(served):
            continue
        [closest] = difflib.get_close_matches(m.group(1).lower(), list(NAMES), n=1, cutoff=0.0) or [NAMES[0]]
        fixed = f"{spec(closest).env_prefix}__{name[m.end():]}"
        out.append(f"{name} is ignored: {m.group(1)} is not a service; did you mean {fixed}?")
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    *,
    env_prefix: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Builds ``cls`` from the YAML at ``path`` (if any), env overrides, then explicit overrides."""
    return build_config(cls, [read_yaml(path)] if path is not None else [], env_prefix, env, overrides)


class YamlFile(dict[str, Any]):
    """A config file's top-level mapping that knows its file: a layer of ``build_config`` whose
    keys' errors say ``(in FILE)``."""

    def __init__(self, data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
        super().__init__(data)
        self.path = str(path)


def read_yaml(path: str | os.PathLike[str]) -> YamlFile:
    """A YAML file's top-level mapping, or ConfigError naming the file and what is wrong."""
    p = Path(path)
    try:
        with p.open() as f:  # (a stream: PyYAML's marks name the file, not "<unicode string>")
            loaded = yaml.safe_load(f) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return YamlFile(loaded, p)


def _keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every key of ``tree`` dotted, sections' and theirs."""
    out = []
    for name, value in tree.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        out.append(key)
        if isinstance(value, Mapping):
            out += _keys(value, key)
    return out


def build_config(
    cls: type[T],
    layers: list[Mapping[str, Any]],
    env_prefix: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Merges ``layers`` (later wins), then env overrides, then ``overrides``; builds and validates.
    An error names where its key was set: the variable (``set by TALKMESH_...``) or the file of a
    ``YamlFile`` layer (``in FILE``)."""
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        data = _merge(data, layer)
        for key in _keys(layer):
            if isinstance(layer, YamlFile):
                origins[key] = f"in {layer.path}"
            else:
                origins.pop(key, None)
    if env_prefix:
        data = _merge(data, _env_overrides(os.environ if env is None else env, env_prefix, origins))
    if overrides:
        data = _merge(data, overrides)
        for key in _keys(overrides):
            origins.pop(key, None)
    return _build(cls, data, origins=origins)


def validate_tree(obj: Any, prefix: str = "") -> None:
    """Runs ``validate()`` of ``obj`` and of every config section in it, sections first (as
    ``load_config`` does while it builds them); errors name the key from ``obj``."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_tree(value, f"{prefix}.{f.name}" if prefix else f.name)
    _validate(obj, prefix)


def replace(obj: T, **changes: Any) -> T:
    """dataclasses.replace that re-validates, the sections given too (a section built in code,
    ``replace(cfg, piper=PiperConfig(fade_ms=99))``, is checked as a loaded one is)."""
    new = dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    validate_tree(new)
    return new
