"""Default data directories: one helper, honouring XDG_CACHE_HOME, used by every cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.renderer.avatars import AvatarStore
from services.renderer.config import AvatarConfig
from talkmesh.common.onnx import ExecutionConfig, trt_cache_dir
from talkmesh.common.paths import cache_dir


def test_cache_dir_is_under_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("avatars") == tmp_path / "xdg" / "talkmesh" / "avatars"
    assert trt_cache_dir(ExecutionConfig()) == tmp_path / "xdg" / "talkmesh" / "trt"
    store = AvatarStore(AvatarConfig(face_models="haar"), {})
    assert store.root == tmp_path / "xdg" / "talkmesh" / "avatars" and store.root.is_dir()
    # a configured directory wins
    assert trt_cache_dir(ExecutionConfig(trt_cache_dir=str(tmp_path / "trt"))) == tmp_path / "trt"


@pytest.mark.parametrize("value", [None, "", "relative/cache"])
def test_cache_dir_falls_back_to_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None) -> None:
    """Unset, empty or relative XDG_CACHE_HOME: ~/.cache (the XDG spec ignores relative values)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert cache_dir("trt") == tmp_path / ".cache" / "talkmesh" / "trt"
    assert cache_dir() == tmp_path / ".cache" / "talkmesh"
