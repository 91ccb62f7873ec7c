"""Size presets and renderer backends: open strings in the protos, one list each in the registry.

Every place that accepts or documents them must agree with ``talkmesh.common.registry``: the
renderer's size computation and backend factory, the gateway's feature types per backend, and the
proto comments that list the valid values for clients.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.gateway.config import GatewayConfig
from services.gateway.pipeline import FEATURE_FOR_BACKEND
from services.renderer.backends import CLASSES, backend_class
from services.renderer.config import RendererConfig
from services.renderer.frames import output_size
from talkmesh.common.config import ConfigError
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.registry import RENDERER_FEATURES, SIZE_PRESETS, spec
from talkmesh.v1 import audio_features_pb2 as fpb

PROTOS = Path(__file__).resolve().parents[1] / "protos" / "talkmesh" / "v1"
RENDERER_BACKENDS = spec("renderer").backends


def test_every_backend_consumes_the_feature_the_registry_names_for_it():
    assert set(CLASSES) == set(RENDERER_BACKENDS)
    assert set(FEATURE_FOR_BACKEND) == set(RENDERER_BACKENDS)
    for name in RENDERER_BACKENDS:
        cls = backend_class(name)
        assert cls.name == name
        # what the gateway asks the feature stage for is what the backend consumes
        assert cls.feature_type == fpb.FeatureType.Value(RENDERER_FEATURES[name]), name
        assert FEATURE_FOR_BACKEND[name] == cls.feature_type, name
    with pytest.raises(ValueError, match="unknown renderer backend 'sadtalker'"):
        backend_class("sadtalker")


def test_config_validation_takes_the_backends_from_the_registry():
    for name in RENDERER_BACKENDS:
        RendererConfig(default_backend=name, backends=[name]).validate()
        GatewayConfig(default_renderer_backend=name).validate()
    with pytest.raises(ConfigError, match="backends"):
        RendererConfig(backends=["viseme", "sadtalker"]).validate()
    with pytest.raises(ConfigError, match="default_renderer_backend: 'sadtalker'"):
        GatewayConfig(default_renderer_backend="sadtalker").validate()


@pytest.mark.parametrize("native", [(512, 512), (1080, 1920), (641, 479)])
def test_every_preset_has_a_size_and_nothing_else_does(native):
    w, h = native
    sizes = {p: output_size(p, native) for p in SIZE_PRESETS}
    for preset, (out_w, out_h) in sizes.items():
        assert out_w > 0 and out_h > 0 and out_w % 2 == 0 and out_h % 2 == 0, preset
        # no preset distorts the face: the aspect ratio is kept up to the rounding to even pixels
        assert abs(out_w / out_h - w / h) < 4 / min(out_w, out_h), preset
    assert sizes["native"] == (w - w % 2, h - h % 2)
    assert max(sizes["512"]) == 512
    assert [sizes[p][1] for p in ("360p", "480p", "720p")] == [360, 480, 720]
    for other in ("", "1080p", "512p", "NATIVE", "360"):
        with pytest.raises(InvalidArgument, match=r"config\.size") as err:
            output_size(other, native)
        assert ", ".join(SIZE_PRESETS) in str(err.value)


def test_renderer_default_size_must_be_a_preset():
    for preset in SIZE_PRESETS:
        RendererConfig(default_size=preset).validate()
    with pytest.raises(ConfigError, match="default_size"):
        RendererConfig(default_size="1080p").validate()


def _comment_of(proto: str, message: str, field: str) -> str:
    """The leading comment of ``message.field`` in ``proto``."""
    text = (PROTOS / proto).read_text()
    body = re.search(rf"\nmessage {message} \{{\n(.*?)\n\}}", text, re.S)
    assert body, f"{proto}: no message {message}"
    lines = body.group(1).splitlines()
    at = next(i for i, line in enumerate(lines) if re.match(rf"\s*(repeated )?\S+ {field} = \d+;", line))
    comment = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip()[2:].strip())
    return " ".join(comment)


@pytest.mark.parametrize(
    ("proto", "message", "field", "values"),
    [
        ("gateway.proto", "OutputOptions", "size", SIZE_PRESETS),
        ("live.proto", "LiveConfig", "size", SIZE_PRESETS),
        ("renderer.proto", "RenderConfig", "size", SIZE_PRESETS),
        ("gateway.proto", "OutputOptions", "renderer_backend", RENDERER_BACKENDS),
        ("live.proto", "LiveConfig", "renderer_backend", RENDERER_BACKENDS),
        ("renderer.proto", "RenderConfig", "backend", RENDERER_BACKENDS),
        ("types.proto", "AvatarMeta", "backends", RENDERER_BACKENDS),
    ],
)
def test_the_protos_document_every_valid_value(proto, message, field, values):
    comment = _comment_of(proto, message, field)
    quoted = set(re.findall(r'"([^"]+)"', comment))
    missing = [v for v in values if v not in quoted]
    assert not missing, f'{proto} {message}.{field}: the comment does not list {missing}: "{comment}"'
