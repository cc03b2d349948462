"""The floor: a plain Rust epoll server with no Python at all (``benchmarks/floor``).

One thread, nonblocking sockets, one reused buffer, each reply written at once: what it spends
per request is about what the kernel's loopback path costs, so a loop's figure next to it shows
how much room is left.  It is an extra contestant column, ``floor``, of the workloads that list it
in :attr:`~.registry.Workload.extras` (Protocol echo, HTTP keep-alive, UDP echo), driven by the
same load generators as the loops.

It is built on demand, once per run, with ``cargo build --release --manifest-path
benchmarks/floor/Cargo.toml`` (its own workspace; target dir ``benchmarks/floor/target``).  It
exists only in a source checkout; elsewhere, or without cargo, the column is "unavailable".
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .contestants import Availability
from .registry import FLOOR

#: benchmarks/floor of the source checkout this package lives in (python/ferroloop/bench/..).
PROJECT = Path(__file__).resolve().parents[3] / "benchmarks" / "floor"
BINARY = PROJECT / "target" / "release" / "ferroloop-floor"

_built: Path | None = None


def build(timeout: float = 600.0) -> Availability:
    """Build the floor server (cargo is a no-op when it is up to date)."""
    global _built
    manifest = PROJECT / "Cargo.toml"
    if not manifest.is_file():
        return Availability(FLOOR, False, detail=f"no {manifest} (not a source checkout)")
    cargo = shutil.which("cargo")
    if cargo is None:
        return Availability(FLOOR, False, detail="cargo not found (needed to build the floor)")
    try:
        done = subprocess.run(
            [cargo, "build", "--release", "--quiet", "--manifest-path", str(manifest)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Availability(FLOOR, False, detail=f"cargo build failed: {exc}")
    if done.returncode != 0 or not BINARY.is_file():
        tail = " ".join(done.stderr.split())[-400:]
        return Availability(FLOOR, False, detail=f"cargo build failed: {tail}")
    _built = BINARY
    return Availability(FLOOR, True, version=_version(cargo))


def _version(cargo: str) -> str:
    rustc = Path(cargo).with_name("rustc")
    try:
        text = subprocess.run(
            [str(rustc) if rustc.exists() else "rustc", "--version"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        text = []
    compiler = f"rustc {text[1]}" if len(text) > 1 else "rustc"
    return f"plain epoll, no Python ({compiler})"


def command(mode: str, cpu: int | None) -> list[str]:
    """The argv of the floor server in ``mode`` ("echo", "http" or "udp") pinned to ``cpu``."""
    binary = _built or BINARY
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is not built (floor.build() first)")
    argv = [str(binary), mode]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    return argv
