"""Reading CPU usage and scheduling delay of processes from ``/proc`` (Linux).

``/proc/<pid>/task/<tid>/schedstat`` gives, per thread, the nanoseconds spent on a CPU and the
nanoseconds spent runnable but waiting for one (the *run delay*).  Summed over a process's threads
they are a precise CPU time (``/proc/<pid>/stat`` only has 10 ms ticks).  The run delay also
counts the latency of waking an idle CPU, large in virtual machines, so for processes that sleep
(servers) it is no measure of interference; :func:`cpu_busy_ns` is.  Where schedstat is missing
we fall back to ``/proc/<pid>/stat`` (CPU time) and report no run delay.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Snapshot:
    """CPU accounting of one process (all its threads) at one instant."""

    wall_ns: int
    cpu_ns: int
    delay_ns: int

    def __sub__(self, other: Snapshot) -> Usage:
        return Usage(
            wall_ns=self.wall_ns - other.wall_ns,
            cpu_ns=self.cpu_ns - other.cpu_ns,
            delay_ns=self.delay_ns - other.delay_ns,
        )


@dataclass(frozen=True)
class Usage:
    """CPU accounting of one process over a window."""

    wall_ns: int
    cpu_ns: int
    delay_ns: int

    @property
    def busy(self) -> float:
        """Share of the window spent on a CPU (1.0 = one core fully busy)."""
        return self.cpu_ns / self.wall_ns if self.wall_ns else 0.0

    @property
    def delayed(self) -> float:
        """Share of the window spent runnable but waiting for a CPU."""
        return self.delay_ns / self.wall_ns if self.wall_ns else 0.0


def _schedstat(pid: int | str) -> tuple[int, int] | None:
    cpu = delay = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                fields = f.read().split()
        except OSError:
            continue  # the thread exited meanwhile
        cpu += int(fields[0])
        delay += int(fields[1])
    return cpu, delay


def _stat_cpu_ns(pid: int | str) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may contain spaces; fields after it start past the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) * 1_000_000_000 // _CLK_TCK


def snapshot(pid: int | str = "self") -> Snapshot:
    """CPU time and run delay of process ``pid`` now.

    Summing the live threads' schedstat misses threads that exited in between (e.g. asyncio's
    child-watcher threads, one per subprocess), so for the calling process the CPU time is the
    process CPU clock instead (the same nanosecond accounting, dead threads included).
    """
    wall = time.perf_counter_ns()
    sched = _schedstat(pid)
    if pid == "self":
        return Snapshot(wall, time.process_time_ns(), sched[1] if sched else 0)
    if sched is not None and sched[0] > 0:
        return Snapshot(wall, sched[0], sched[1])
    try:
        return Snapshot(wall, _stat_cpu_ns(pid), 0)
    except OSError:
        if pid == "self":
            return Snapshot(wall, time.process_time_ns(), 0)
        raise


def cpu_busy_ns(cpus: tuple[int, ...] | None) -> int:
    """Time ``cpus`` (all CPUs if None) spent not idle, summed, from /proc/stat.

    Counts user, nice, system, irq, softirq and steal time, whoever it was spent on.  Taken over a
    window on CPUs a benchmark's processes are pinned to, minus those processes' own CPU time, it
    is the CPU time *other* work (or the hypervisor) took from them: interference.  /proc/stat
    counts in clock ticks (usually 10 ms), so use it over windows of a good fraction of a second.
    """
    total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *fields = line.split()
                if cpus is not None and int(name[3:]) not in cpus:
                    continue
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
                total += user + nice + system + irq + softirq + steal
    except (OSError, ValueError):
        return 0
    return total * 1_000_000_000 // _CLK_TCK


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def pin_to_cpu(cpu: int | None) -> None:
    """Restrict the calling process to ``cpu`` (no-op if None or unsupported)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
