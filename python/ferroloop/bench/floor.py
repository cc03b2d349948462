"""The floor: a plain Rust epoll server with no Python at all (``floor_server/``).

One thread, nonblocking sockets, one reused buffer, each reply written at once: what it spends
per request is about what the kernel's loopback path costs, so a loop's figure next to it shows
how much room is left.  It is an extra contestant column, ``floor``, of the workloads that list it
in :attr:`~.registry.Workload.extras` (Protocol echo, HTTP keep-alive, UDP echo), driven by the
same load generators as the loops.

Its source ships inside the package (``ferroloop/bench/floor_server``, a Cargo project of its own),
so the column works from any install: it is built on demand, once per run, with ``cargo build
--release`` into a cache directory outside the package (``$XDG_CACHE_HOME/ferroloop`` or
``~/.cache/ferroloop``; cargo makes it a no-op when it is up to date).  Without cargo the column
is "unavailable".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .contestants import Availability
from .registry import FLOOR

#: The floor server's Cargo project, shipped in the package.
PROJECT = Path(__file__).resolve().parent / "floor_server"

_built: Path | None = None


def target_dir() -> Path:
    """Where cargo builds the floor: a per-user cache, so the package directory stays
    read-only and a reinstall of the package during a run cannot remove the binary."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ferroloop" / "floor-target"


def build(timeout: float = 600.0) -> Availability:
    """Build the floor server (cargo is a no-op when it is up to date)."""
    global _built
    manifest = PROJECT / "Cargo.toml"
    if not manifest.is_file():
        return Availability(FLOOR, False, detail=f"no {manifest} (incomplete installation)")
    cargo = shutil.which("cargo")
    if cargo is None:
        return Availability(FLOOR, False, detail="cargo not found (needed to build the floor)")
    target = target_dir()
    try:
        done = subprocess.run(
            [cargo, "build", "--release", "--quiet", "--manifest-path", str(manifest)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "CARGO_TARGET_DIR": str(target)},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Availability(FLOOR, False, detail=f"cargo build failed: {exc}")
    binary = target / "release" / "ferroloop-floor"
    if done.returncode != 0 or not binary.is_file():
        tail = " ".join(done.stderr.split())[-400:]
        return Availability(FLOOR, False, detail=f"cargo build failed: {tail}")
    _built = binary
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
    binary = _built or target_dir() / "release" / "ferroloop-floor"
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is not built (floor.build() first)")
    argv = [str(binary), mode]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    return argv
