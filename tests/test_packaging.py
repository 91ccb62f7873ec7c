"""The client-only distribution (clients/python) carries the client and the public API, nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling", reason="the dev extra installs hatchling (make install-dev)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(ROOT / "clients" / "python")],
        check=True,
    )  # fmt: skip
    (wheel,) = out.glob("talkmesh_client-*.whl")
    return wheel


def test_the_client_wheel_has_no_server_code_tools_benchmark_or_internal_protos(client_wheel: Path) -> None:
    names = zipfile.ZipFile(client_wheel).namelist()
    files = {n for n in names if not n.startswith("talkmesh_client-")}
    assert "talkmesh/client.py" in files
    assert {"talkmesh/v1/gateway_pb2.py", "talkmesh/v1/live_pb2.py", "talkmesh/v1/types_pb2.py"} <= files
    assert not [n for n in files if n.startswith(("services/", "tools/", "talkmesh/bench"))]
    internal = ("tts_pb2", "renderer_pb2", "encoder_pb2", "audio_features_pb2", "common_pb2")
    assert not [n for n in files if any(i in n for i in internal)], "internal stage protos stay out"
    assert not [n for n in files if not n.startswith("talkmesh/")]
    requires = zipfile.ZipFile(client_wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    deps = [ln.split(":", 1)[1].strip() for ln in requires.splitlines() if ln.startswith("Requires-Dist:")]
    assert sorted(d.split(">")[0].split("=")[0] for d in deps) == [
        "cryptography", "googleapis-common-protos", "grpcio", "opentelemetry-api", "protobuf",
    ]  # fmt: skip


def test_the_client_imports_from_the_wheel_alone(client_wheel: Path, tmp_path: Path) -> None:
    """Imported from the unpacked wheel (first on the path), the client loads no server-side module
    and none of the services' heavy dependencies."""
    zipfile.ZipFile(client_wheel).extractall(tmp_path)
    code = (
        "import sys, talkmesh.client as c\n"
        f"assert c.__file__.startswith({str(tmp_path)!r}), c.__file__\n"
        "c.TalkmeshClient('127.0.0.1:1')\n"
        "heavy = {'numpy', 'prometheus_client', 'onnxruntime', 'cv2', 'av', 'torch', 'soxr', 'services',\n"
        "         'talkmesh.common.server', 'talkmesh.common.telemetry', 'opentelemetry.sdk'}\n"
        "loaded = sorted(m for m in heavy if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    env_path = str(tmp_path)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env={"PYTHONPATH": env_path})


def test_the_client_from_the_wheel_alone_speaks_tls_with_a_private_ca_and_its_own_certificate(
    client_wheel: Path, tmp_path: Path
) -> None:
    """A private CA and mutual TLS (a client certificate) work from the wheel alone, including the
    re-read of rotated files: the channel for them is the wheel's, not the server package's."""
    from talkmesh.devcerts import make_dev_pki

    pki = tmp_path / "pki"
    make_dev_pki(pki, ["gateway", "client"])
    wheel = tmp_path / "wheel"
    zipfile.ZipFile(client_wheel).extractall(wheel)
    code = (
        "import asyncio, os, sys\n"
        "from talkmesh.client import TalkmeshClient\n"
        "from talkmesh.common.channel import ClientTLS\n"
        "async def main():\n"
        f"    pki = {str(pki)!r}\n"
        "    tls = ClientTLS(ca_file=f'{pki}/ca.crt', cert_file=f'{pki}/client/tls.crt',\n"
        "                    key_file=f'{pki}/client/tls.key')\n"
        "    client = TalkmeshClient('127.0.0.1:1', tls=tls)\n"
        "    channel = client.channel\n"
        "    os.utime(tls.cert_file, ns=(1, 1))  # 'rotated': the channel checks the pair and reloads\n"
        "    channel.check_seconds = 0\n"
        "    channel.current()\n"
        "    assert channel.generation == 1, channel.generation\n"
        "    await client.close()\n"
        "asyncio.run(main())\n"
        f"assert sys.modules['talkmesh.common.client_tls'].__file__.startswith({str(wheel)!r})\n"
        "assert 'talkmesh.common.tls' not in sys.modules and 'talkmesh.common.config' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=wheel, env={"PYTHONPATH": str(wheel)})
