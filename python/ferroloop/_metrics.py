"""``loop.metrics()``: what the loop has been doing, as one immutable snapshot.

The Rust core keeps the counters (``src/metrics.rs``) at a cost of a few instructions per
iteration; this module turns its figures into a typed object. Every field is documented in
``docs/metrics.md``. Node.js offers the same through ``performance.eventLoopUtilization()``
and ``perf_hooks.monitorEventLoopDelay()``; asyncio has no counterpart.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class SlowCallback:
    """One of the slowest callbacks (or iterations) since the last reset."""

    #: Seconds. In debug mode, the callback's own run; otherwise the busy time of the
    #: iteration it ran in (which includes the poll and timer bookkeeping, microseconds).
    duration: float
    #: ``loop.time()`` when it ended.
    at: float
    #: Callbacks that shared ``duration``: 1 when the time is this callback's alone; more
    #: when one iteration ran several and none was timed on its own (outside debug mode):
    #: then ``description`` is None (run with ``loop.set_debug(True)`` to name them).
    callbacks: int
    #: What ran: the task (for a task step), the callback's name and definition, a
    #: transport's read or write turn, or a native ``sock_*`` operation.
    description: str | None
    #: ``file:line`` where the callback was scheduled (debug mode only, from the handle's
    #: ``_source_traceback``), else None.
    source: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LoopMetrics:
    """A snapshot of an event loop's counters, returned by ``loop.metrics()``.

    Counters and times are cumulative since the loop was created and never reset: compare
    two snapshots (``utilization(since=prev)``, or subtract) for an interval. The timer-lag
    histogram and ``slowest`` cover the time since ``reset_time``: the loop's creation, or
    the last ``loop.metrics(reset=True)``. Times are in seconds; ``time`` and the other
    instants are ``loop.time()`` values.
    """

    #: ``loop.time()`` when the snapshot was taken.
    time: float
    #: Loop iterations (one poll for I/O, the due timers, one batch of callbacks).
    iterations: int
    #: Callbacks run: handles (``call_soon``, timers, readers and writers; cancelled ones
    #: are skipped and not counted), and the turns of ferroloop's own transports and
    #: native ``sock_*`` operations (one turn reads, or writes, and calls the protocol).
    callbacks: int
    #: Readiness reports from the poller (one per fd per poll; wake-ups from other threads
    #: are not counted).
    io_events: int
    #: Timers that fired (cancelled ones are not counted).
    timers_fired: int
    #: Timers scheduled and not cancelled that have not fired yet.
    timers_pending: int
    #: Callbacks waiting in the ready queue at the snapshot.
    ready: int
    #: Seconds the loop ran (inside ``run_forever``/``run_until_complete``) outside the
    #: poller's waits: callbacks, I/O dispatch, timer bookkeeping.
    busy_time: float
    #: Seconds the loop waited in the poller for I/O or timers (with the few microseconds
    #: of bookkeeping just before each wait).
    idle_time: float
    #: Timer lags recorded since ``reset_time``. A timer's lag is how late the loop moved
    #: it to the ready queue after its deadline (after the loop's previous look for due
    #: timers, for a timer scheduled with a deadline already past). Its callback starts
    #: after the callbacks queued before it in that iteration.
    lag_count: int
    #: Sum of those lags (seconds): ``lag_sum / lag_count`` is the mean lag.
    lag_sum: float
    #: Median lag: an upper bound at most 12.5 % above the true value (log buckets).
    lag_p50: float
    #: 99th-percentile lag, as ``lag_p50``.
    lag_p99: float
    #: Largest lag, exact.
    lag_max: float
    #: The histogram's non-empty buckets, as ``(upper_edge_seconds, count)`` in increasing
    #: order; a bucket counts the lags below its edge and at or above the previous one's
    #: (eight buckets per power of two from 1 µs; the last edge may be ``inf``).
    lag_buckets: tuple[tuple[float, int], ...]
    #: Callbacks known to have run for ``slow_callback_duration`` or longer: in debug mode
    #: every such callback (each is also logged, as asyncio does); otherwise those that ran
    #: alone in a slow iteration (see ``slow_iterations``).
    slow_callbacks: int
    #: Iterations whose busy time reached ``loop.slow_callback_duration``: the loop was
    #: unresponsive that long, whether one callback or many took the time.
    slow_iterations: int
    #: The five slowest callbacks or iterations since ``reset_time``, slowest first.
    slowest: tuple[SlowCallback, ...]
    #: ferroloop transports whose socket or pipe is open (TCP, Unix, UDP, pipes, the
    #: sockets under TLS and subprocess pipes).
    open_transports: int
    #: File descriptors registered with the poller: readers and writers, transports, and
    #: sockets with native ``sock_*`` operations.
    registered_fds: int
    #: ``loop.time()`` from which the lag figures and ``slowest`` count.
    reset_time: float

    @classmethod
    def _from_core(cls, raw: dict[str, Any]) -> LoopMetrics:
        raw["slowest"] = tuple(SlowCallback(*entry) for entry in raw["slowest"])
        raw["lag_buckets"] = tuple((edge, count) for edge, count in raw["lag_buckets"])
        return cls(**raw)

    def utilization(self, since: LoopMetrics | None = None) -> float:
        """The share of time the loop was busy, between 0 and 1: since ``since`` (an
        earlier snapshot of the same loop), or over the loop's life. Node.js's
        ``eventLoopUtilization(prev)``. 0.0 when no time passed (or the loop never ran)."""
        busy, idle = self.busy_time, self.idle_time
        if since is not None:
            busy -= since.busy_time
            idle -= since.idle_time
        total = busy + idle
        if total <= 0.0 or math.isnan(total):
            return 0.0
        return min(max(busy / total, 0.0), 1.0)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain values (``slowest`` as a list of dicts), for logging or
        JSON (``lag_buckets``' last edge may be ``inf``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["slowest"] = [entry.as_dict() for entry in self.slowest]
        out["lag_buckets"] = [list(bucket) for bucket in self.lag_buckets]
        return out
