"""The services of a talkmesh mesh: the one place that names them, their ports and prefixes.

The launcher (`talkmesh up`, the demo), the CLI, the benchmark, the tests and the Kubernetes
config checks all derive what they need from ``SERVICES``; nothing else spells out a port, an
environment prefix or the list of services. The gRPC service names come from the generated
descriptors, so a renamed proto service cannot drift from what health checks and docs use.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Ports of a default mesh; ``ports(base)`` moves a whole mesh (`talkmesh up --port-base`).
DEFAULT_PORT_BASE = 50051
DEFAULT_METRICS_BASE = 9101
#: With ``--port-base B`` a mesh occupies B .. B + PORT_SPAN - 1: service ports B + index,
#: metrics ports B + METRICS_OFFSET + index.
METRICS_OFFSET = 10
PORT_SPAN = 20
#: Default port of the HTTP service (the browser edge, ``web``) in a default mesh; a moved mesh
#: (``ports(base)``) puts it in the block like the others.
DEFAULT_HTTP_PORT = 8080
#: Streams one replica admits at once unless its ``ServiceSpec.max_streams`` says otherwise (and
#: ``server.max_concurrent_streams``' default outside a mesh).
DEFAULT_MAX_STREAMS = 64

#: Streams a gateway replica admits at once (its ``max_streams``, below).
GATEWAY_MAX_STREAMS = 16
#: The web edge is a client of the gateway: every live WebSocket (``/v1/live``, ``/v1/live/watch``)
#: holds one gateway call, every ``POST /v1/speak`` answer one, and its lists, uploads and deletes
#: one each while they run. A default edge fits in a default gateway replica:
#: ``WEB_MAX_SPEAKS`` answers + its live sessions (``max_streams`` of "web") + ``WEB_OTHER_CALLS``
#: lists and uploads + ``WEB_GATEWAY_SPARE`` calls of other clients = ``GATEWAY_MAX_STREAMS``
#: (docs/WEB.md "Sizing"; tests/deploy/test_stream_limits.py checks the sum).
WEB_MAX_SPEAKS = 4
WEB_OTHER_CALLS = 2
WEB_GATEWAY_SPARE = 2
WEB_MAX_SESSIONS = GATEWAY_MAX_STREAMS - WEB_MAX_SPEAKS - WEB_OTHER_CALLS - WEB_GATEWAY_SPARE
#: Calls in flight the web edge's own API key may have (``talkmesh up --api-keys`` writes it): all the
#: edge makes, no more (a default gateway keeps ``WEB_GATEWAY_SPARE`` for its other clients).
WEB_KEY_CONCURRENT_STREAMS = WEB_MAX_SESSIONS + WEB_MAX_SPEAKS + WEB_OTHER_CALLS

#: Environment variable with the port block of the local mesh: ``talkmesh up``'s default
#: ``--port-base``, and the block whose gateway the clients dial when no target is given.
PORT_BASE_ENV = "TALKMESH_PORT_BASE"


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the mesh."""

    name: str
    #: position in the mesh's port block (gateway 0, tts 1, ...)
    index: int
    #: (generated module, service name) of each gRPC service it serves
    protos: tuple[tuple[str, str], ...]
    #: backend names the service can be configured with (config validation, the CLI's help, docs;
    #: TTS: the engines a voice id's prefix names)
    backends: tuple[str, ...] = ()
    #: services it calls (start order: dependencies first)
    calls: tuple[str, ...] = ()
    #: what its main port speaks: "grpc" (health over gRPC), or "http" (the browser edge: HTTP and
    #: WebSocket, health at /healthz and /readyz; it has no protos)
    protocol: str = "grpc"
    #: streams one replica admits at once (``server.max_concurrent_streams``' default); more get
    #: RESOURCE_EXHAUSTED. See the rules above ``HPA_TARGET_FRACTION``.
    max_streams: int = DEFAULT_MAX_STREAMS
    #: moves raw video frames (renderer out, encoder in): its process keeps freed frame-sized
    #: buffers in the heap (``talkmesh/common/memory.py``)
    raw_frames: bool = False

    @property
    def package(self) -> str:
        """Python package of the service (``services.<name>``)."""
        return f"services.{self.name}"

    @property
    def main_module(self) -> str:
        """Module with ``load_config(path, env)`` and ``create_service(config, telemetry)``."""
        return f"services.{self.name}.main"

    @property
    def env_prefix(self) -> str:
        """Environment override prefix: ``TALKMESH_<NAME>__<SECTION>__<KEY>``."""
        return f"TALKMESH_{self.name.upper()}"

    def env_name(self, key: str) -> str:
        """The variable that overrides config key ``key`` (``live.sample_rate``:
        ``TALKMESH_GATEWAY__LIVE__SAMPLE_RATE``), as ``talkmesh.common.config`` reads it."""
        return f"{self.env_prefix}__{key.replace('.', '__').upper()}"

    @property
    def k8s_name(self) -> str:
        """Name of its Kubernetes Deployment/Service/ConfigMap (DNS-safe)."""
        return self.name.replace("_", "-")

    @property
    def port(self) -> int:
        """Default main port (gRPC; HTTP for the web edge)."""
        return DEFAULT_HTTP_PORT if self.protocol == "http" else DEFAULT_PORT_BASE + self.index

    @property
    def metrics_port(self) -> int:
        """Default Prometheus /metrics port."""
        return DEFAULT_METRICS_BASE + self.index

    def ports(self, base: int | None = None) -> tuple[int, int]:
        """(main port, metrics port) in a mesh whose block starts at ``base`` (None: defaults)."""
        if base is None:
            return self.port, self.metrics_port
        return base + self.index, base + METRICS_OFFSET + self.index

    def grpc_service_names(self) -> tuple[str, ...]:
        """Full gRPC service names, read from the generated descriptors."""
        names = []
        for module, service in self.protos:
            descriptor = importlib.import_module(module).DESCRIPTOR
            names.append(descriptor.services_by_name[service].full_name)
        return tuple(names)


#: The renderer backends, each with the audio feature it consumes: the ``talkmesh.v1.FeatureType``
#: the gateway asks audio_features for, and the backend class's ``feature_type`` (a test checks
#: both). Names, not the enum: the client wheel ships this module without the stage protos.
RENDERER_FEATURES: dict[str, str] = {
    "viseme": "FEATURE_TYPE_ACTIVITY",
    "wav2lip": "FEATURE_TYPE_WAV2LIP_MEL",
    "musetalk": "FEATURE_TYPE_WHISPER_EMBEDDING",
}
#: The renderer backend a request that names none gets (the renderer's and the gateway's default;
#: the embedded one, which needs no model files).
DEFAULT_RENDERER_BACKEND = "viseme"

SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "gateway",
        0,
        (("talkmesh.v1.gateway_pb2", "Gateway"), ("talkmesh.v1.live_pb2", "Live")),
        calls=("tts", "audio_features", "renderer", "encoder"),
        max_streams=GATEWAY_MAX_STREAMS,
    ),
    ServiceSpec("tts", 1, (("talkmesh.v1.tts_pb2", "TTS"),), backends=("espeak", "piper")),
    ServiceSpec(
        "audio_features",
        2,
        (("talkmesh.v1.audio_features_pb2", "AudioFeatures"),),
        backends=("onnx",),
    ),
    ServiceSpec(
        "renderer",
        3,
        (("talkmesh.v1.renderer_pb2", "Renderer"),),
        backends=tuple(RENDERER_FEATURES),
        max_streams=32,
        raw_frames=True,
    ),
    ServiceSpec(
        "encoder",
        4,
        (("talkmesh.v1.encoder_pb2", "Encoder"),),
        backends=("x264", "nvenc"),
        calls=("renderer",),
        max_streams=16,
        raw_frames=True,
    ),
    # The browser edge: a page and an HTTP + WebSocket API over the gateway's gRPC API.
    # Its limit is its live WebSockets, sized to fit in a gateway replica (WEB_MAX_SESSIONS above).
    ServiceSpec("web", 5, (), calls=("gateway",), protocol="http", max_streams=WEB_MAX_SESSIONS),
)

NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
#: The services that speak gRPC (the pipeline: the gateway and its four stages).
GRPC_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES if s.protocol == "grpc")

#: Stream limits are consistent when (checked by tests/deploy/test_stream_limits.py):
#: - a web edge's gateway calls fit in a gateway replica (WEB_MAX_SESSIONS above; the edge is the
#:   gateway's client, not its stage);
#: - a replica of each stage admits at least as many streams as a gateway replica (every Speak
#:   takes one stream of each stage, and the renderer also serves the encoder's pull): the gateway
#:   is where overload is refused, before any work starts;
#: - every HorizontalPodAutoscaler's target of talkmesh_streams_active per pod is at most
#:   ``HPA_TARGET_FRACTION`` of the smallest limit of the services in the pod, so replicas are added
#:   well before any of them refuses streams.
HPA_TARGET_FRACTION = 0.5

#: The renderer's output size presets (``RenderConfig.size``; ``OutputOptions.size`` and
#: ``LiveConfig.size`` in the public API): "native" keeps the avatar's size, "360p", "480p" and
#: "720p" set the height, "512" the longer side (``services/renderer/frames.py`` computes them).
#: The protos keep sizes as open strings: a new preset is added here and in frames.py, and a test
#: checks that both agree. The renderer backends are ``spec("renderer").backends``.
SIZE_PRESETS: tuple[str, ...] = ("native", "360p", "480p", "512", "720p")


def spec(name: str) -> ServiceSpec:
    """The service called ``name``; KeyError naming the known services otherwise."""
    for s in SERVICES:
        if s.name == name:
            return s
    raise KeyError(f"unknown service {name!r} (known: {', '.join(NAMES)})")


def check_port_base(base: int, what: str = "--port-base") -> int:
    """``base`` when a whole port block fits there; ValueError naming ``what`` otherwise."""
    if not 1024 <= base <= 65535 - PORT_SPAN:
        raise ValueError(f"{what}: {base} is outside 1024..{65535 - PORT_SPAN}")
    return base


def port_base_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """``$TALKMESH_PORT_BASE`` (in ``env``, else the process's environment) as a number; None when
    unset (the default ports). ``talkmesh up``, the clients and every service's config read it here.

    ValueError when it is not a number, or no port block fits there."""
    text = (os.environ if env is None else env).get(PORT_BASE_ENV, "").strip()
    if not text:
        return None
    try:
        base = int(text)
    except ValueError:
        raise ValueError(f"${PORT_BASE_ENV}: {text!r} is not a port number") from None
    return check_port_base(base, f"${PORT_BASE_ENV}")


def start_order() -> tuple[ServiceSpec, ...]:
    """Services ordered so that each starts after the services it calls."""
    done: list[ServiceSpec] = []
    pending = list(SERVICES)
    while pending:
        ready = [s for s in pending if all(c in {d.name for d in done} for c in s.calls)]
        if not ready:
            raise RuntimeError("service registry: calls form a cycle")
        done.extend(ready)
        pending = [s for s in pending if s not in ready]
    return tuple(done)


def default_target(name: str, host: str = "127.0.0.1", base: int | None = None) -> str:
    """``host:port`` of service ``name`` in a default mesh, or in the mesh moved to ``base``."""
    return f"{host}:{spec(name).ports(base)[0]}"
