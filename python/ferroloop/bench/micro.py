"""Micro-benchmarks of the loop's own mechanics, each run inside one process.

Every benchmark is a coroutine ``bench(loop, duration) -> (operations, seconds)`` that keeps the
loop busy for about ``duration`` seconds and counts what it did.  The work is split in batches and
the clock is read once per batch, so the time check costs little next to the work.  A measurement
runs the benchmark once as a warm-up and once for real, in a fresh process pinned to one CPU.

The Python code around the loop calls (counters, a ``for`` loop) is the same for every contestant,
so differences between loops come from the loop: scheduling, dispatch, timers, futures, tasks.
"""

from __future__ import annotations

import asyncio
import importlib
import resource
import time
from collections.abc import Callable, Coroutine
from typing import Any

from . import contestants, procstat, subproc
from .registry import ERROR, OK, UNSUPPORTED, Measurement, Metric, Settings, Workload

Bench = Callable[[asyncio.AbstractEventLoop, float], Coroutine[Any, Any, tuple[int, float]]]

_perf = time.perf_counter


class WrongResult(AssertionError):
    """The loop ran a benchmark incorrectly (a callback lost, a wrong value delivered)."""


async def bench_call_soon(loop: asyncio.AbstractEventLoop, duration: float) -> tuple[int, float]:
    """``call_soon`` callbacks/s: a callback schedules a batch of 1000 trivial callbacks (a
    C-level ``list.append``) with ``loop.call_soon`` and then itself again, so each batch is one
    loop iteration's ready queue.  Counts the callbacks run (scheduling + dispatch cost); checks
    that every one of them ran before the next batch."""
    batch_size = 1000
    done = loop.create_future()
    call_soon = loop.call_soon
    ran: list[None] = []
    record = ran.append
    due = total = 0

    def batch() -> None:
        nonlocal due, total
        if len(ran) != due:
            done.set_exception(WrongResult(f"{len(ran)} of {due} callbacks ran"))
            return
        ran.clear()
        if _perf() >= deadline:
            done.set_result(None)
            return
        for _ in range(batch_size):
            call_soon(record, None)
        due = batch_size
        total += batch_size
        call_soon(batch)

    start = _perf()
    deadline = start + duration
    call_soon(batch)
    await done
    return total, _perf() - start


async def bench_call_later(loop: asyncio.AbstractEventLoop, duration: float) -> tuple[int, float]:
    """``call_later``/``call_at`` timers/s: each batch arms 500 timers that fire and 500 timeouts
    (due in an hour) that are cancelled one batch later, like guards around I/O that completes.
    The firing timers' deadlines are spread over the past millisecond in a scrambled order, so the
    loop must order them but never sleeps.  Counts timers fired plus timers cancelled."""
    fire_count, cancel_count = 500, 500
    offsets = [-((i * 7919) % fire_count) * 2e-6 for i in range(fire_count)]
    done = loop.create_future()
    call_at, call_soon = loop.call_at, loop.call_soon
    pending: list[asyncio.TimerHandle] = []
    remaining = 0
    handled = 0

    def fire() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            call_soon(batch)

    def batch() -> None:
        nonlocal remaining, handled
        for handle in pending:
            handle.cancel()
        handled += len(pending)
        pending.clear()
        if _perf() >= deadline:
            done.set_result(None)
            return
        now = loop.time()
        for offset in offsets:
            call_at(now + offset, fire)
        remaining = fire_count
        handled += fire_count
        for i in range(cancel_count):
            pending.append(call_at(now + 3600.0 + i * 1e-3, cancelled_fired))

    def cancelled_fired() -> None:
        done.set_exception(WrongResult("a cancelled timer fired"))

    start = _perf()
    deadline = start + duration
    call_soon(batch)
    await done
    return handled, _perf() - start


async def _nothing() -> None:
    pass


async def bench_tasks(loop: asyncio.AbstractEventLoop, duration: float) -> tuple[int, float]:
    """``create_task`` + ``gather`` tasks/s: batches of 100 trivial coroutines wrapped with
    ``loop.create_task`` and awaited with ``asyncio.gather``.  Counts tasks completed."""
    batch_size = 100
    create_task = loop.create_task
    gather = asyncio.gather
    count = 0
    start = _perf()
    deadline = start + duration
    while True:
        await gather(*[create_task(_nothing()) for _ in range(batch_size)])
        count += batch_size
        if _perf() >= deadline:
            return count, _perf() - start


async def bench_future_pingpong(
    loop: asyncio.AbstractEventLoop, duration: float
) -> tuple[int, float]:
    """Future ping-pong round trips/s between two tasks: each side awaits a future from
    ``loop.create_future()`` that the other side resolves.  A round trip is two future
    completions and two task wake-ups."""
    ping = loop.create_future()
    pong: asyncio.Future[int] = loop.create_future()

    async def ponger() -> None:
        nonlocal ping
        while True:
            value = await ping
            if value is None:
                return
            ping = loop.create_future()
            pong.set_result(value)

    partner = loop.create_task(ponger())
    count = 0
    start = _perf()
    deadline = start + duration
    while True:
        for i in range(1, 257):
            pong = loop.create_future()
            ping.set_result(i)
            if await pong != i:
                raise WrongResult(f"sent {i}, got {pong.result()} back")
        count += 256
        if _perf() >= deadline:
            break
    elapsed = _perf() - start
    ping.set_result(None)
    await partner
    return count, elapsed


async def bench_queue_pingpong(
    loop: asyncio.AbstractEventLoop, duration: float
) -> tuple[int, float]:
    """``asyncio.Queue`` ping-pong round trips/s: one task puts an item on a queue and awaits the
    reply on a second queue; a partner task echoes items from the first queue to the second."""
    requests: asyncio.Queue[int | None] = asyncio.Queue()
    replies: asyncio.Queue[int] = asyncio.Queue()

    async def echo() -> None:
        while True:
            item = await requests.get()
            if item is None:
                return
            replies.put_nowait(item)

    partner = loop.create_task(echo())
    count = 0
    start = _perf()
    deadline = start + duration
    while True:
        for i in range(256):
            requests.put_nowait(i)
            if await replies.get() != i:
                raise WrongResult(f"queue reordered or lost item {i}")
        count += 256
        if _perf() >= deadline:
            break
    elapsed = _perf() - start
    requests.put_nowait(None)
    await partner
    return count, elapsed


async def bench_sleep0(loop: asyncio.AbstractEventLoop, duration: float) -> tuple[int, float]:
    """``asyncio.sleep(0)`` yields/s: 10 tasks that each yield to the loop in a tight loop, so
    every loop iteration resumes 10 tasks.  Counts yields (task steps)."""
    sleep = asyncio.sleep

    async def yielder() -> int:
        n = 0
        while _perf() < deadline:
            for _ in range(64):
                await sleep(0)
            n += 64
        return n

    start = _perf()
    deadline = start + duration
    counts = await asyncio.gather(*[loop.create_task(yielder()) for _ in range(10)])
    return sum(counts), _perf() - start


#: name -> (benchmark, title, unit of the rate)
BENCHES: dict[str, tuple[Bench, str, str]] = {
    "call_soon": (bench_call_soon, "call_soon", "callbacks/s"),
    "call_later": (bench_call_later, "call_later timers (50 % cancelled)", "timers/s"),
    "tasks": (bench_tasks, "create_task + gather", "tasks/s"),
    "future_pingpong": (bench_future_pingpong, "future ping-pong", "round trips/s"),
    "queue_pingpong": (bench_queue_pingpong, "asyncio.Queue ping-pong", "round trips/s"),
    "sleep0": (bench_sleep0, "sleep(0) yields", "yields/s"),
}


def run_in_process(
    name: str, loop: asyncio.AbstractEventLoop, duration: float, warmup: float = 0.0
) -> Measurement:
    """Warm up and measure benchmark ``name`` on ``loop`` in the calling process."""
    return run_bench(BENCHES[name][0], loop, duration, warmup)


def _children_cpu_ns() -> int:
    """CPU time of this process's reaped children (e.g. spawned subprocesses), in ns."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((usage.ru_utime + usage.ru_stime) * 1e9)


def run_bench(
    bench: Bench, loop: asyncio.AbstractEventLoop, duration: float, warmup: float = 0.0
) -> Measurement:
    """Warm up and measure ``bench`` on ``loop`` in the calling process.

    Besides the rate, records this process's CPU time per operation (``cpu_us``) and the CPU
    time of the children it reaped meanwhile (``children_us``, per operation), which is not
    counted as interference.
    """
    try:
        if warmup > 0:
            contestants.run(loop, bench(loop, warmup))
        cpus = procstat.allowed_cpus()
        busy_before = procstat.cpu_busy_ns(cpus)
        children_before = _children_cpu_ns()
        before = procstat.snapshot()
        ops, seconds = contestants.run(loop, bench(loop, duration))
        usage = procstat.snapshot() - before
        children = _children_cpu_ns() - children_before
        others = procstat.cpu_busy_ns(cpus) - busy_before - usage.cpu_ns - children
    except Exception as exc:
        status = UNSUPPORTED if contestants.is_unsupported(exc, loop) else ERROR
        return Measurement(status, detail=contestants.describe_exception(exc))
    if ops <= 0 or seconds <= 0:
        return Measurement(ERROR, detail="no operations completed")
    return Measurement(
        OK,
        values={
            "rate": ops / seconds,
            "cpu_us": usage.cpu_ns / ops / 1000,
            "children_us": children / ops / 1000,
            "ops": float(ops),
            "seconds": seconds,
            "delayed": usage.delayed,
        },
        disturbance=max(0.0, others / usage.wall_ns) if usage.wall_ns else 0.0,
    )


def child_measure(
    name: str,
    contestant: str,
    duration: float,
    warmup: float,
    cpu: int | None,
    module: str = "micro",
) -> dict:
    """Child-process side of an in-process measurement (see ``_child.py``): benchmark ``name``
    of ``ferroloop.bench.<module>.BENCHES``."""
    procstat.pin_to_cpu(cpu)
    benches = importlib.import_module(f"{__package__}.{module}").BENCHES
    loop = contestants.new_loop(contestant)
    try:
        return run_bench(benches[name][0], loop, duration, warmup).to_json()
    finally:
        contestants.close(loop)


def measurer(
    name: str, module: str = "micro", seconds: tuple[float, float] = (0.25, 0.6)
) -> Callable[[str, Settings], Measurement]:
    """``measure(contestant, settings)`` of an in-process benchmark: a fresh process pinned to
    the first CPU runs it for ``seconds`` (quick, normal) after a quarter as long of warm-up."""

    def measure(contestant: str, settings: Settings) -> Measurement:
        duration = seconds[0 if settings.quick else 1] * settings.time_scale
        kwargs = {
            "name": name,
            "contestant": contestant,
            "duration": duration,
            "warmup": duration / 4,
            "cpu": settings.server_cpu,
            "module": module,
        }
        try:
            result = subproc.run_child("micro", "child_measure", kwargs, settings.timeout)
        except subproc.ChildFailed as exc:
            return Measurement(ERROR, detail=str(exc))
        return Measurement.from_json(result)

    return measure


def _workload(name: str) -> Workload:
    bench, title, unit = BENCHES[name]
    return Workload(
        name=name,
        family="micro",
        title=title,
        description=" ".join((bench.__doc__ or "").split()),
        metrics=(Metric("rate", unit, unit, "higher", "rate"),),
        measure=measurer(name),
    )


WORKLOADS: list[Workload] = [_workload(name) for name in BENCHES]
