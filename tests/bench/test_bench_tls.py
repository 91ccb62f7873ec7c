"""`talkmesh bench tls`: the report of the security overhead (the run itself: BENCHMARKS.md)."""

from __future__ import annotations

import argparse

from talkmesh.bench import MODES
from talkmesh.bench.tls import TlsReport
from talkmesh.devcerts import mesh_tls_env


def test_report_compares_p50s():
    r = TlsReport("talkmesh bench tls", "abc", "today", "2 cores", 4, [100, 200, 300, 400], [110, 210, 330, 420])
    text = r.markdown()
    assert text.startswith("## Security overhead")
    assert "| plaintext, no keys | 250 | 400 | 100 |" in text
    assert "| 270 | 420 | 110 |" in text
    assert "+8.0 % against plaintext" in text


def test_mode_is_registered():
    (mode,) = [m for m in MODES if m.name == "tls"]
    p = argparse.ArgumentParser()
    mode.add_arguments(p)
    assert p.parse_args([]).requests >= 30


def test_mesh_env_is_mutual_tls_inside_and_tls_at_the_gateway(tmp_path):
    env = mesh_tls_env(tmp_path)
    assert "TALKMESH_GATEWAY__SERVER__TLS__CERT_FILE" in env
    assert "TALKMESH_GATEWAY__SERVER__TLS__CLIENT_CA_FILE" not in env
    for s in ("TTS", "AUDIO_FEATURES", "RENDERER", "ENCODER"):
        assert env[f"TALKMESH_{s}__SERVER__TLS__CLIENT_CA_FILE"].endswith("ca.crt")
    assert env["TALKMESH_ENCODER__RENDERER__TLS__SERVER_NAME"] == "renderer"
    assert env["TALKMESH_GATEWAY__AUDIO_FEATURES__TLS__SERVER_NAME"] == "audio-features"
