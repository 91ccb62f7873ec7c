"""A real Prometheus server for tests: started on 127.0.0.1 with a scrape config for given targets.

    with PrometheusServer.start(tmp_path, {"gateway": ["127.0.0.1:9101"]}) as prom:
        prom.wait_for_scrapes("gateway", count=2)
        prom.query('sum(talkmesh_streams_active)')

Uses Debian's `prometheus` package (scripts/ci_system_deps.sh installs it); ``find_binary`` skips
the calling test with a clear message when neither the binary nor a way to install it exists.
The methods block: call them through ``asyncio.to_thread`` from async tests.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS_HINT = "install Debian's `prometheus` package (scripts/ci_system_deps.sh, as root)"


def find_binary(name: str) -> str:
    """Path of `prometheus` or `promtool`, or skip the test saying how to get it."""
    exe = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/usr/local/bin") / name) if p.is_file()), None
    )
    if exe is None:
        pytest.skip(f"{name} not found: {PROMETHEUS_HINT}")
    return exe


class PromQueryError(RuntimeError):
    """The HTTP API answered with status "error" (a PromQL parse or evaluation error)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        workdir: Path,
        targets: Mapping[str, Sequence[str]],
        *,
        labels: Mapping[str, Mapping[str, str]] | None = None,
        rule_files: Sequence[Path] = (),
        extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
        scrape_interval: str = "1s",
        startup_timeout: float = 60.0,
    ) -> Iterator[PrometheusServer]:
        """Runs Prometheus scraping ``targets`` (job name -> host:port list), stops it on exit.

        ``labels`` maps a job to labels attached to its targets (e.g. namespace and pod, as
        Kubernetes service discovery adds them). ``extra_scrape_configs``: whole jobs, added as given.
        """
        binary = find_binary("prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_interval": scrape_interval,
                    "scrape_timeout": scrape_interval,
                    "honor_labels": True,
                    "static_configs": [{"targets": list(addrs), "labels": dict((labels or {}).get(job, {}))}],
                }
                for job, addrs in targets.items()
            ]
            + [dict(job) for job in extra_scrape_configs],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = workdir / "prometheus.log"
        port = _free_port()
        with open(log, "wb") as log_fh:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        server = cls(process, f"http://127.0.0.1:{port}", log)
        try:
            server._wait_ready(startup_timeout)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -- HTTP API --------------------------------------------------------------------------------
    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error as JSON
            body = json.load(exc)
        if body.get("status") != "success":
            raise PromQueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.log.read_text()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at the current time; raises PromQueryError on a parse/evaluation error."""
        data = self._get("/api/v1/query", {"query": expr})
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return result  # type: ignore[no-any-return]

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets")["activeTargets"]  # type: ignore[no-any-return]

    def rules(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/rules")["groups"]  # type: ignore[no-any-return]

    def wait_for_scrapes(self, job: str, count: int = 1, timeout: float = 60.0) -> None:
        """Waits until every target of ``job`` has been scraped successfully ``count`` more times."""
        deadline = time.monotonic() + timeout
        seen: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            mine = [t for t in self.targets() if t["labels"].get("job") == job]
            for t in mine:
                if t["health"] == "up":
                    seen.setdefault(t["scrapeUrl"], set()).add(t["lastScrape"])
            if mine and all(len(seen.get(t["scrapeUrl"], ())) > count for t in mine):
                return
            time.sleep(0.2)
        raise TimeoutError(f"targets of job {job!r} not scraped {count} time(s): {self.targets()}")
