"""Subprocess spawning through the loop, in one process: ``asyncio.create_subprocess_exec``.

Like the micro-benchmarks, each runs in a fresh process pinned to the first CPU (the children
inherit the pinning), once as a warm-up and once for real, on the contestant loop.  Spawns are
sequential: the next child is started when the previous one was waited for.  Besides spawns/s
the loop process's own CPU time per spawn is reported (all its threads, e.g. asyncio's child
watcher threads; the children's own CPU time is not in it).  A loop without ``subprocess_exec``
is reported as "unsupported".
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable

from . import micro
from .micro import WrongResult
from .registry import Metric, Workload

_perf = time.perf_counter


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found on PATH")
    return found


async def bench_spawn_true(loop: asyncio.AbstractEventLoop, duration: float) -> tuple[int, float]:
    """Spawns/s of ``await asyncio.create_subprocess_exec("true")`` + ``await proc.wait()``, one
    child at a time (the child's stdio inherited); checks every exit status is 0."""
    program = _program("true")
    count = 0
    start = _perf()
    deadline = start + duration
    while True:
        proc = await asyncio.create_subprocess_exec(program)
        status = await proc.wait()
        if status != 0:
            raise WrongResult(f"true exited with {status}")
        count += 1
        if _perf() >= deadline:
            return count, _perf() - start


async def bench_spawn_pipe(loop: asyncio.AbstractEventLoop, duration: float) -> tuple[int, float]:
    """Spawns/s of ``asyncio.create_subprocess_exec("echo", token, stdout=PIPE)`` +
    ``await proc.communicate()``, one child at a time; checks every child's output (a different
    token each time) and exit status."""
    program = _program("echo")
    pipe = asyncio.subprocess.PIPE
    count = 0
    start = _perf()
    deadline = start + duration
    while True:
        token = f"ferroloop-{count}"
        proc = await asyncio.create_subprocess_exec(program, token, stdout=pipe)
        out, _ = await proc.communicate()
        if out != f"{token}\n".encode() or proc.returncode != 0:
            raise WrongResult(f"echo {token} gave {out[:80]!r}, exit status {proc.returncode}")
        count += 1
        if _perf() >= deadline:
            return count, _perf() - start


Bench = Callable[[asyncio.AbstractEventLoop, float], Awaitable[tuple[int, float]]]

#: name -> (benchmark, title, unit of the rate); looked up by ``micro.child_measure``.
BENCHES: dict[str, tuple[Bench, str, str]] = {
    "spawn_true": (bench_spawn_true, "subprocess spawn (true)", "spawns/s"),
    "spawn_pipe": (bench_spawn_pipe, "subprocess spawn + stdout pipe", "spawns/s"),
}


def _workload(name: str) -> Workload:
    bench, title, unit = BENCHES[name]
    return Workload(
        name=name,
        family="spawn",
        title=title,
        description=" ".join((bench.__doc__ or "").split()),
        metrics=(
            Metric("rate", unit, unit, "higher", "rate"),
            Metric("cpu_us", "loop process CPU/spawn", "µs", "lower", "us"),
        ),
        measure=micro.measurer(name, module="spawn", seconds=(0.3, 1.0)),
    )


WORKLOADS: list[Workload] = [_workload(name) for name in BENCHES]
