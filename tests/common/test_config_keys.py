"""Every config error names the full key path, for every service's config tree."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Iterator
from typing import Any

import pytest

from talkmesh.common.config import ConfigError
from talkmesh.common.registry import NAMES, spec

#: Values that break a number's or a string's validator when it has one.
BAD_NUMBERS = (-(10**9), 10**9, 0)
BAD_STRING = "no-such-value"


def leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from leaves(tp, key + ".")  # type: ignore[arg-type]
        else:
            yield key, tp


def is_key_path(cls: type, path: str) -> bool:
    """Whether ``path`` (``a.b.c``) names a field of the config tree rooted at ``cls``."""
    node: Any = cls
    for part in path.split("."):
        if not (dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}):
            return False
        node = typing.get_type_hints(node)[part]
    return True


def env_for(service: str, key: str, value: object) -> dict[str, str]:
    """The variable ServiceSpec.env_name names for ``key`` (what the launcher and the hints spell),
    set to ``value``: each test below checks the service's config reads it."""
    return {spec(service).env_name(key): str(value)}


@pytest.mark.parametrize("service", NAMES)
def test_every_validator_error_starts_with_a_full_key_path(service: str) -> None:
    main = importlib.import_module(spec(service).main_module)
    cls = type(main.load_config(None, env={}))
    checked = 0
    for key, tp in leaves(cls):
        values: tuple[object, ...] = BAD_NUMBERS if tp in (int, float) else (BAD_STRING,) if tp is str else ()
        for value in values:
            try:
                main.load_config(None, env=env_for(service, key, value))
            except ConfigError as exc:
                named = str(exc).split(":", 1)[0]
                assert is_key_path(cls, named), f"{key}={value!r}: {exc}"
                checked += 1
    assert checked >= 3


@pytest.mark.parametrize(
    ("service", "key", "value", "message"),
    [
        ("renderer", "musetalk.frame_skip", 0, "musetalk.frame_skip: must be at least 1"),
        ("renderer", "wav2lip.frame_skip", 0, "wav2lip.frame_skip: must be at least 1"),
        ("renderer", "batch.max_size_gpu", 0, "batch.max_size_gpu: must be at least 1"),
        ("encoder", "video.x264.crf", 99, "video.x264.crf: must be within 0..51"),
        ("encoder", "video.nvenc.cq", 99, "video.nvenc.cq: must be within 0..51"),
        ("encoder", "limits.max_height", 1, "limits.max_height: must be at least 16"),
        ("tts", "cache.max_bytes", -1, "cache.max_bytes: must not be negative"),
        ("tts", "server.port", 70000, "server.port: 70000 is not a TCP port"),
        ("audio_features", "whisper_encoder.right_context_seconds", -1, "whisper_encoder.right_context_seconds:"),
        ("gateway", "server.max_concurrent_streams", 0, "server.max_concurrent_streams: must be at least 1"),
    ],
)
def test_nested_errors_name_the_whole_path(service: str, key: str, value: object, message: str) -> None:
    main = importlib.import_module(spec(service).main_module)
    with pytest.raises(ConfigError) as exc:
        main.load_config(None, env=env_for(service, key, value))
    assert str(exc.value).startswith(message)
