"""`talkmesh bench`: time to first fragment, real-time factor and concurrency, mesh vs in-process.

One module per job:

- ``workload``: the texts and the knobs (backend, size, requests, concurrency levels);
- ``speakers``: how one request is spoken (gRPC to a gateway, or the stages in this process);
- ``series``: latency series, single stream and concurrency sweep over a speaker;
- ``metrics``: the services' /metrics (``prometheus_client.parser``) and per-process CPU time;
- ``components``: each service's own micro-benchmark;
- ``targets``: the performance goals a run is checked against;
- ``results``: the typed results, ``report``: markdown, JSON and plot;
- one module per mode (``speak`` is the default; ``components`` only runs the micro-benchmarks).

A new mode is a module with ``add_arguments(parser)`` and ``run(args) -> int`` added to ``MODES``:
it becomes ``talkmesh bench <mode> ...``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass

from talkmesh.bench import components_mode, gateway_cost, live, neural, overload, soak, speak, tls, web


@dataclass(frozen=True)
class BenchMode:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: Run by a bare ``talkmesh bench [options]``.
DEFAULT = BenchMode(
    "speak", "Speak through the mesh vs in-process, then the micro-benchmarks", speak.add_arguments, speak.run
)
#: ``talkmesh bench <name> [options]``.
MODES: tuple[BenchMode, ...] = (
    BenchMode(
        "live",
        "live sessions: interrupts, turn latency, clock drift, idle vs speaking cost",
        live.add_arguments,
        live.run,
    ),
    BenchMode(
        "tls",
        "TTFF with mutual TLS on every hop and API keys vs plaintext (two meshes, interleaved)",
        tls.add_arguments,
        tls.run,
    ),
    BenchMode(
        "web",
        "the page in headless Chromium: speak to first painted frame, interrupt to idle, live-edge distance",
        web.add_arguments,
        web.run,
    ),
    BenchMode(
        "soak",
        "constant concurrency for N minutes: RSS per service, errors, TTFF drift",
        soak.add_arguments,
        soak.run,
    ),
    BenchMode(
        "overload",
        "refusals at capacity: time to RESOURCE_EXHAUSTED (p50/p95 of N calls), upstream work started, readiness",
        overload.add_arguments,
        overload.run,
    ),
    BenchMode(
        "gateway",
        "the messages the gateway relays per frame of a Speak, and its CPU per frame in the mesh",
        gateway_cost.add_arguments,
        gateway_cost.run,
    ),
    BenchMode(
        "musetalk",
        "one Speak through the mesh with MuseTalk on your model files: first fragment, frames/s, precompute",
        neural.add_arguments,
        neural.run,
    ),
    BenchMode(
        "components",
        "only each service's micro-benchmark, in this process (no mesh)",
        components_mode.add_arguments,
        components_mode.run,
    ),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The default mode's options on ``p``; every other mode as a subcommand."""
    DEFAULT.add_arguments(p)
    sub = p.add_subparsers(dest="bench_mode", metavar="MODE", help="other measurements (default: the mesh)")
    for mode in MODES:
        mode.add_arguments(sub.add_parser(mode.name, help=mode.help, description=mode.help))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    name = getattr(args, "bench_mode", None)
    mode = next((m for m in MODES if m.name == name), DEFAULT)
    return mode.run(args)
