"""Workload registry and the common result types shared by every workload family.

A *workload family* is one module of this package (``micro``, ``sock_echo``, ...) that exposes a
module-level list ``WORKLOADS`` of :class:`Workload` objects.  Adding a family means writing such a
module and naming it in :data:`FAMILIES`; the runner, the report and the CLI need no change.

Each :class:`Workload` knows how to take *one* measurement of *one* contestant loop (normally by
starting fresh subprocesses) and returns a :class:`Measurement`.  The runner takes care of rounds,
interleaving, re-running disturbed measurements and aggregation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

#: Modules of ``ferroloop.bench`` that define workloads, in report order.
FAMILIES: tuple[str, ...] = (
    "micro",
    "spawn",
    "tcp_echo",
    "tls_echo",
    "sock_echo",
    "http_keepalive",
    "udp_echo",
)

#: The contestant that is no event loop: a plain Rust epoll server (``bench/floor_server``), the
#: floor under any loop's figure.  Only workloads that name it in :attr:`Workload.extras` run it.
FLOOR = "floor"
#: Contestants that are not event loops, so run only where a workload asks for them.
NON_LOOPS: tuple[str, ...] = (FLOOR,)

OK = "ok"
UNSUPPORTED = "unsupported"  # the loop lacks a feature the workload needs
ERROR = "error"  # the loop raised, produced wrong data, or its process crashed


@dataclass(frozen=True)
class Metric:
    """One figure a workload reports.

    ``better`` is ``"higher"`` or ``"lower"`` for figures that are compared between loops (a ratio
    to the baseline is shown), or ``None`` for informational figures.
    """

    key: str
    label: str
    unit: str
    better: str | None = "higher"
    #: "rate" (scaled with k/M), "us" (microseconds), "percent" (0..1 shown as %), "plain"
    kind: str = "rate"


@dataclass
class Settings:
    """Suite-wide knobs handed to every measurement."""

    quick: bool = False
    #: CPUs the benchmark may use; server/micro work goes to ``cpus[0]``, load generators to
    #: ``cpus[1]`` when there are two or more.
    cpus: tuple[int, ...] = ()
    #: Seconds after which a measurement's processes are killed and the cell marked as an error.
    timeout: float = 60.0
    #: Multiplies every workload's measuring time.
    time_scale: float = 1.0
    #: The fixed loop the load generators run on, whatever the contestant.
    client_loop: str = "asyncio"

    @property
    def server_cpu(self) -> int | None:
        return self.cpus[0] if self.cpus else None

    @property
    def client_cpu(self) -> int | None:
        return self.cpus[1] if len(self.cpus) > 1 else None


@dataclass
class Measurement:
    """The outcome of one measurement of one contestant.

    ``values`` maps :attr:`Metric.key` to a number.  ``disturbance`` is the CPU time that other
    work (other processes, the hypervisor) took on the benchmark's CPUs during the measured
    window, as a share of the window (0.25 = a quarter of one CPU); the runner measures again
    when it is high.
    """

    status: str = OK
    values: dict[str, float] = field(default_factory=dict)
    disturbance: float = 0.0
    detail: str = ""
    #: Flags such as ``"client_busy"`` that the report turns into footnote marks.
    flags: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "values": self.values,
            "disturbance": self.disturbance,
            "detail": self.detail,
            "flags": sorted(self.flags),
        }

    @classmethod
    def from_json(cls, data: dict) -> Measurement:
        return cls(
            status=data.get("status", ERROR),
            values={k: float(v) for k, v in data.get("values", {}).items()},
            disturbance=float(data.get("disturbance", 0.0)),
            detail=str(data.get("detail", "")),
            flags=frozenset(data.get("flags", ())),
        )


@dataclass(frozen=True)
class Workload:
    """A named benchmark.

    ``measure(contestant, settings)`` takes one measurement of one contestant loop.  ``quick``
    says whether the workload is part of ``--quick``; ``default`` whether it is part of a run
    without ``--only``.
    """

    name: str
    family: str
    title: str
    description: str
    metrics: tuple[Metric, ...]
    measure: Callable[[str, Settings], Measurement]
    default: bool = True
    quick: bool = True
    #: Non-loop contestants (:data:`NON_LOOPS`) this workload can also measure, e.g. the floor.
    extras: tuple[str, ...] = ()

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    def runs(self, contestant: str) -> bool:
        """Whether this workload measures ``contestant`` (every loop; non-loops on request)."""
        return contestant not in NON_LOOPS or contestant in self.extras


def all_workloads() -> list[Workload]:
    """Every registered workload, family by family in :data:`FAMILIES` order."""
    workloads: list[Workload] = []
    for family in FAMILIES:
        module = importlib.import_module(f"{__package__}.{family}")
        workloads.extend(module.WORKLOADS)
    names = [w.name for w in workloads]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise RuntimeError(f"duplicate workload names: {sorted(duplicates)}")
    return workloads


def select_workloads(only: list[str] | None, quick: bool) -> list[Workload]:
    """Workloads to run: those named in ``only`` (names or family names), else the defaults."""
    workloads = all_workloads()
    if not only:
        return [w for w in workloads if (w.quick if quick else w.default)]
    known = {w.name for w in workloads} | {w.family for w in workloads}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise KeyError(
            f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return [w for w in workloads if w.name in only or w.family in only]
