"""Running the suite: rounds interleaved across contestants, re-runs, and aggregation.

For each workload, round ``r`` measures every contestant once, in an order rotated by ``r``
(A B C, B C A, C A B, ...), so slow drifts of the machine hit every contestant alike.  A
measurement during which other work took more than :attr:`Plan.disturbed` of a CPU on the
benchmark's CPUs is taken again (up to :attr:`Plan.attempts` times; the least disturbed is kept).

A contestant's figure is the median over rounds; its ratio is the median over rounds of
``contestant / baseline`` within the same round, which cancels most of the machine's drift.  Both
use only the undisturbed rounds (pairs of rounds) when there are any; when fewer than half of a
cell's rounds were undisturbed, make-up rounds of all contestants are added (at most half as many
again).
"""

from __future__ import annotations

import datetime
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .contestants import Availability
from .registry import ERROR, UNSUPPORTED, Measurement, Metric, Settings, Workload


@dataclass
class Plan:
    """What to run and how."""

    workloads: list[Workload]
    contestants: list[Availability]
    baseline: str | None
    rounds: int
    settings: Settings
    #: Share of a CPU other work may take during the window before a measurement is re-taken.
    disturbed: float = 0.05
    #: Attempts per measurement when disturbed.
    attempts: int = 3
    #: Commit of the ferroloop source tree benchmarked, when it is a git checkout.
    ferroloop_revision: str | None = None
    started: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
    )

    @property
    def runnable(self) -> list[str]:
        return [c.name for c in self.contestants if c.available]


@dataclass
class Round:
    """One kept measurement of one (workload, contestant) in one round."""

    index: int
    measurement: Measurement
    attempts: int = 1


@dataclass
class Results:
    """Everything a run produced, keyed by (workload name, contestant name)."""

    plan: Plan
    rounds: dict[tuple[str, str], list[Round]] = field(default_factory=dict)
    seconds: float = 0.0
    #: Things the reader must know about the whole run (shown under Notes).
    warnings: list[str] = field(default_factory=list)

    def of(self, workload: str, contestant: str) -> list[Round]:
        return self.rounds.get((workload, contestant), [])

    def failure(self, workload: str, contestant: str) -> Measurement | None:
        """The first unsupported/error measurement of a cell, if any."""
        for kept in self.of(workload, contestant):
            if not kept.measurement.ok:
                return kept.measurement
        return None

    def _clean(self, measurement: Measurement) -> bool:
        return measurement.ok and measurement.disturbance <= self.plan.disturbed

    def clean_rounds(self, workload: str, contestant: str) -> int:
        """How many rounds of a cell were measured undisturbed."""
        return sum(self._clean(r.measurement) for r in self.of(workload, contestant))

    def median(self, workload: str, contestant: str, metric: Metric) -> float | None:
        """Median over the undisturbed rounds (over all rounds if every one was disturbed)."""
        ok = [r.measurement for r in self.of(workload, contestant) if r.measurement.ok]
        used = [m for m in ok if self._clean(m)] or ok
        values = [m.values[metric.key] for m in used if metric.key in m.values]
        return statistics.median(values) if values else None

    def _pairs(self, workload: str, contestant: str) -> list[tuple[Measurement, Measurement]]:
        """(contestant, baseline) measurements of the same rounds: both undisturbed if any."""
        base = self.plan.baseline
        baseline = {r.index: r.measurement for r in self.of(workload, base or "")}
        pairs = [
            (r.measurement, baseline[r.index])
            for r in self.of(workload, contestant)
            if r.index in baseline and r.measurement.ok and baseline[r.index].ok
        ]
        return [p for p in pairs if self._clean(p[0]) and self._clean(p[1])] or pairs

    def ratio(self, workload: str, contestant: str, metric: Metric) -> float | None:
        """Median over rounds of contestant/baseline measured in the same round."""
        if self.plan.baseline is None or metric.better is None:
            return None
        ratios = [
            mine.values[metric.key] / theirs.values[metric.key]
            for mine, theirs in self._pairs(workload, contestant)
            if theirs.values.get(metric.key) and metric.key in mine.values
        ]
        return statistics.median(ratios) if ratios else None

    def flagged(self, workload: str, contestant: str, flag: str) -> int:
        """In how many kept rounds measurement flag ``flag`` was set."""
        return sum(flag in r.measurement.flags for r in self.of(workload, contestant))

    def disturbed(self, workload: str, contestant: str) -> bool:
        """Whether a cell's figures had to use disturbed rounds (none or no pair was clean)."""
        if not self.clean_rounds(workload, contestant):
            return True
        pairs = self._pairs(workload, contestant)
        if contestant == self.plan.baseline or not pairs:
            return False
        return not any(self._clean(a) and self._clean(b) for a, b in pairs)

    def needs_more(self, workload: Workload) -> bool:
        """Whether some working cell of ``workload`` has too few undisturbed rounds."""
        want = (self.plan.rounds + 1) // 2
        return any(
            self.failure(workload.name, c) is None and self.clean_rounds(workload.name, c) < want
            for c in self.plan.runnable
            if workload.runs(c)
        )


def format_value(value: float, metric: Metric) -> str:
    if metric.kind == "rate":
        for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
            if abs(value) >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.3g}"
    if metric.kind == "us":
        return f"{value:.3g} µs"
    if metric.kind == "percent":
        return f"{value * 100:.0f} %"
    return f"{value:.3g}"


def describe(measurement: Measurement, workload: Workload) -> str:
    """One-line summary of a measurement for the progress log."""
    if not measurement.ok:
        return f"{measurement.status.upper()}: {measurement.detail}"
    parts = []
    for metric in workload.metrics:
        if metric.key in measurement.values:
            text = format_value(measurement.values[metric.key], metric)
            parts.append(
                f"{text} {metric.unit}" if metric.kind == "rate" else f"{metric.label} {text}"
            )
    if "client_busy" in measurement.values:
        parts.append(f"client {measurement.values['client_busy'] * 100:.0f} % busy")
    if measurement.disturbance >= 0.005:
        parts.append(f"others {measurement.disturbance * 100:.0f} %")
    return ", ".join(parts)


def run(
    plan: Plan,
    log: Callable[[str], None] | None = None,
    on_measurement: Callable[[Results], None] | None = None,
) -> Results:
    """Run every workload of ``plan`` for every runnable contestant, ``plan.rounds`` times.

    ``on_measurement(results)`` is called after every kept measurement with the results so far
    (e.g. to save them, so a run that dies keeps its work)."""
    if log is None:

        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

    results = Results(plan)
    names = plan.runnable
    total = plan.rounds * sum(w.runs(c) for w in plan.workloads for c in names)
    done = 0
    started = time.perf_counter()
    width = max((len(w.name) for w in plan.workloads), default=8)
    cwidth = max((len(n) for n in names), default=8)
    for workload in plan.workloads:
        index = 0
        # The planned rounds, then make-up rounds (at most half as many again) while too few
        # rounds of some cell were measured undisturbed.
        while index < plan.rounds or (
            index < plan.rounds + (plan.rounds + 1) // 2 and results.needs_more(workload)
        ):
            makeup = index >= plan.rounds
            if makeup:
                log(f"{workload.name}: too few undisturbed rounds, adding a round")
            shift = index % len(names) if names else 0
            for contestant in names[shift:] + names[:shift]:
                if not workload.runs(contestant):
                    continue  # e.g. the floor, which has no such server
                done += not makeup
                kept = results.rounds.setdefault((workload.name, contestant), [])
                if any(k.measurement.status in (UNSUPPORTED, ERROR) for k in kept):
                    continue  # failed in an earlier round: don't insist
                counter = "extra" if makeup else f"{done:{len(str(total))}}/{total}"
                prefix = (
                    f"[{counter}] {workload.name:<{width}} "
                    f"round {index + 1}/{plan.rounds} {contestant:<{cwidth}}"
                )
                measurement, attempts = _measure(plan, workload, contestant, prefix, log)
                kept.append(Round(index, measurement, attempts))
                results.seconds = time.perf_counter() - started
                if on_measurement is not None:
                    on_measurement(results)  # before the line: once it shows, it is saved
                log(f"{prefix} {describe(measurement, workload)}")
            index += 1
    results.seconds = time.perf_counter() - started
    return results


def _measure(
    plan: Plan, workload: Workload, contestant: str, prefix: str, log: Callable[[str], None]
) -> tuple[Measurement, int]:
    best: Measurement | None = None
    for attempt in range(1, plan.attempts + 1):
        try:
            measurement = workload.measure(contestant, plan.settings)
        except Exception as exc:
            measurement = Measurement(ERROR, detail=f"harness: {type(exc).__name__}: {exc}")
        if not measurement.ok:
            return measurement, attempt
        if best is None or measurement.disturbance < best.disturbance:
            best = measurement
        if measurement.disturbance <= plan.disturbed:
            break
        if attempt < plan.attempts:
            log(
                f"{prefix} disturbed (other work took {measurement.disturbance * 100:.0f} % "
                f"of a CPU), measuring again"
            )
            time.sleep(attempt)  # give a burst of other work a moment to pass
    assert best is not None
    return best, attempt
