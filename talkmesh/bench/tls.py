"""`talkmesh bench tls`: what TLS on every hop and API keys cost, TTFF p50 against plaintext.

Two meshes of five processes run side by side: one plaintext without keys, one as the Kubernetes
mtls component sets it up (mutual TLS on every internal hop with ``talkmesh certs`` certificates,
TLS on the gateway's port, an API key checked on every call). The same short requests go to both,
interleaved one by one (plain, secure, plain, ...) so that the machine's load drifts alike for both;
each client keeps its connection (as real clients do), so the TLS handshakes are paid once per
connection and what is measured is the per-request cost (encryption, the key check).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from talkmesh.bench.report import git_revision, machine
from talkmesh.bench.speakers import consume
from talkmesh.bench.workload import TEXTS, Workload

API_KEY = "tm_bench-key"


@dataclass
class TlsReport:
    command: str
    git: str
    date: str
    machine: str
    requests: int
    plain_ms: list[float] = field(default_factory=list)
    secure_ms: list[float] = field(default_factory=list)

    @staticmethod
    def pct(values: list[float], q: float) -> float:
        s = sorted(values)
        return s[min(len(s) - 1, round(q * (len(s) - 1)))]

    def markdown(self) -> str:
        p50p, p50s = statistics.median(self.plain_ms), statistics.median(self.secure_ms)
        rows = [
            ("plaintext, no keys", self.plain_ms),
            ("mutual TLS on every hop + TLS at the gateway + API key", self.secure_ms),
        ]
        lines = [
            "## Security overhead",
            "",
            f"`{self.command}` — {self.date}, git {self.git}; {self.machine}.",
            "",
            f"{self.requests} one-sentence requests to each mesh, interleaved (plain, secure, ...), one at a time, "
            "each client on its own kept-alive connection.",
            "",
            "| mesh | TTFF p50 (ms) | p95 (ms) | min (ms) |",
            "|---|---|---|---|",
        ]
        for name, v in rows:
            lines.append(f"| {name} | {statistics.median(v):.0f} | {self.pct(v, 0.95):.0f} | {min(v):.0f} |")
        lines += ["", f"TTFF p50 with TLS and API keys: {100 * (p50s / p50p - 1):+.1f} % against plaintext.", ""]
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=30, help="requests to each mesh (interleaved)")
    p.add_argument("--size", default="512", help="output size preset")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file to append the results to ('' = none)")


async def bench(args: argparse.Namespace) -> TlsReport:
    from services.gateway.auth import hash_key
    from talkmesh.client import TalkmeshClient
    from talkmesh.common.channel import ClientTLS
    from talkmesh.common.registry import NAMES, spec
    from talkmesh.devcerts import make_dev_pki, mesh_tls_env, principal_required_env
    from talkmesh.launcher import Mesh

    m = machine()
    report = TlsReport(
        command="talkmesh bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        git=git_revision(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{m.cpu}, {m.cores} cores, {m.memory}, Python {m.python}",
        requests=args.requests,
    )
    work = Workload(size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        make_dev_pki(pki, NAMES)
        keys = Path(tmp) / "api-keys.yaml"
        keys.write_text(f"keys:\n  - name: bench\n    sha256: {hash_key(API_KEY)}\n")
        secure_env = mesh_tls_env(pki)
        secure_env[f"{spec('gateway').env_prefix}__AUTH__API_KEYS_FILE"] = str(keys)
        secure_env.update(principal_required_env())
        logs = Path(tmp) / "logs"
        async with (
            Mesh(log_dir=logs / "plain") as plain,
            Mesh(env=secure_env, log_dir=logs / "secure") as secure,
            TalkmeshClient(plain.gateway, api_key="") as pc,
            TalkmeshClient(secure.gateway, tls=ClientTLS(ca_file=str(pki / "ca.crt")), api_key=API_KEY) as sc,
        ):
            for i in range(3):  # warm-up, not counted
                for c in (pc, sc):
                    await consume(c.speak(work.request(TEXTS[i], i)), time.perf_counter())
            for i in range(args.requests):
                request = work.request(TEXTS[i % len(TEXTS)], i)
                order = ((pc, report.plain_ms), (sc, report.secure_ms))
                for c, out in order if i % 2 == 0 else order[::-1]:
                    result = await consume(c.speak(request), time.perf_counter())
                    out.append(result.ttff * 1000)
                print(f"  {i + 1}/{args.requests}: plain {report.plain_ms[-1]:.0f} ms, "
                      f"secure {report.secure_ms[-1]:.0f} ms", flush=True)  # fmt: skip
    return report


def run(args: argparse.Namespace) -> int:
    report = asyncio.run(bench(args))
    text = report.markdown()
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write("\n" + text)
    return 0
