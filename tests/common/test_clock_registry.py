"""The one clock and the service registry."""

from __future__ import annotations

from fractions import Fraction

import pytest

from talkmesh.common import registry
from talkmesh.common.clock import MediaClock, fps_fraction, frame_start_sample, frames_for_samples, request_fps
from talkmesh.common.errors import InvalidArgument


def test_fps_fraction_is_exact() -> None:
    assert fps_fraction(25.0) == 25
    assert fps_fraction(12.5) == Fraction(25, 2)
    assert fps_fraction(30000 / 1001) == Fraction(30000, 1001)
    for bad in (0, -1, float("nan"), float("inf"), 1e-400):
        with pytest.raises(ValueError):
            fps_fraction(bad)


def test_a_requests_frame_rate_is_checked_in_one_place() -> None:
    assert request_fps(0) == 25
    assert request_fps(29.97) == Fraction(2997, 100)
    assert request_fps(60) == 60
    for bad in (-1, 0.5, 60.5, 120, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument) as err:
            request_fps(bad, "render.fps")
        assert err.value.field == "render.fps"


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001), Fraction(24)])
@pytest.mark.parametrize("sr", [16000, 22050, 44100, 48000])
def test_frames_partition_the_samples_exactly(fps: Fraction, sr: int) -> None:
    clock = MediaClock(fps, sr)
    total = 0
    for i in range(3000):
        n = clock.samples_in(i)
        assert n in (sr * fps.denominator // fps.numerator, sr * fps.denominator // fps.numerator + 1)
        assert clock.frame_of(clock.start(i)) == i
        assert clock.frame_of(clock.start(i + 1) - 1) == i
        total += n
    assert total == clock.start(3000)  # no sample lost or doubled over 2 minutes
    assert frames_for_samples(clock.start(3000), sr, fps) == 3000
    assert frames_for_samples(clock.start(3000) + 1, sr, fps) == 3001
    assert frame_start_sample(3000, sr, fps) == clock.start(3000)


def test_registry_is_consistent() -> None:
    names = registry.NAMES
    assert names[0] == "gateway" and len(set(names)) == len(names)
    ports = [registry.spec(n).port for n in names]
    metrics = [registry.spec(n).metrics_port for n in names]
    assert len(set(ports + metrics)) == 2 * len(names)
    for s in registry.SERVICES:
        assert s.env_prefix == "TALKMESH_" + s.name.upper()
        for full in s.grpc_service_names():
            assert full.startswith("talkmesh.")
        assert all(c in names for c in s.calls)
    order = [s.name for s in registry.start_order()]
    for s in registry.SERVICES:
        for c in s.calls:
            assert order.index(c) < order.index(s.name)
    with pytest.raises(KeyError, match="known"):
        registry.spec("nope")


def test_port_base_moves_the_whole_block() -> None:
    base = 61000
    used = set()
    for s in registry.SERVICES:
        grpc_port, metrics_port = s.ports(base)
        assert base <= grpc_port < base + registry.PORT_SPAN
        assert base <= metrics_port < base + registry.PORT_SPAN
        used |= {grpc_port, metrics_port}
    assert len(used) == 2 * len(registry.SERVICES)
    assert registry.spec("renderer").ports(None) == (
        registry.spec("renderer").port,
        registry.spec("renderer").metrics_port,
    )


def test_registry_names_every_grpc_service_each_service_registers():
    """The registry's gRPC service names are exactly the services whose handlers each service adds
    to its server, and the names its ``register`` reports (health, reflection)."""
    import importlib

    from talkmesh.common.inprocess import HandlerRecorder
    from talkmesh.common.telemetry import Telemetry

    for s in registry.SERVICES:
        if not s.protos:
            continue
        main = importlib.import_module(s.main_module)
        service = main.create_service(main.load_config(None, env={}), Telemetry(s.name))
        recorder = HandlerRecorder()
        names = service.register(recorder)
        served = {method.rsplit("/", 1)[0] for method in recorder.handlers}
        served |= {generic.service_name() for generic in recorder.generic}
        assert served == set(s.grpc_service_names()), s.name
        assert sorted(names) == sorted(s.grpc_service_names()), s.name


def test_every_services_config_follows_talkmesh_port_base_unless_told_otherwise(tmp_path) -> None:
    """`TALKMESH_PORT_BASE=B talkmesh serve X` (or `config X`) agrees with `talkmesh up` on B."""
    import importlib

    from talkmesh.common.config import ConfigError
    from talkmesh.common.registry import SERVICES, default_target

    base = 42900
    for s in SERVICES:
        main = importlib.import_module(s.main_module)
        cfg = main.load_config(None, env={"TALKMESH_PORT_BASE": str(base)})
        assert (cfg.server.port, cfg.server.metrics_port) == s.ports(base), s.name
        for callee in s.calls:
            assert getattr(cfg, callee).target == default_target(callee, base=base), (s.name, callee)
        plain = main.load_config(None, env={})
        assert (plain.server.port, plain.server.metrics_port) == s.ports(None), s.name
    gateway = importlib.import_module("services.gateway.main")
    yaml = tmp_path / "g.yaml"
    yaml.write_text("server:\n  port: 43000\n")
    env = {"TALKMESH_PORT_BASE": str(base), "TALKMESH_GATEWAY__SERVER__METRICS_PORT": "43001"}
    cfg = gateway.load_config(str(yaml), env=env)  # a file and the service's own variables win
    assert (cfg.server.port, cfg.server.metrics_port, cfg.tts.target) == (43000, 43001, f"127.0.0.1:{base + 1}")
    with pytest.raises(ConfigError, match="TALKMESH_PORT_BASE"):
        gateway.load_config(None, env={"TALKMESH_PORT_BASE": "65530"})
