"""``loop.metrics()``: each figure against a workload whose counts are known.

asyncio has no metrics, so most tests are ferroloop-only. Timing assertions are one-sided
inequalities that a busy machine cannot break: a callback that sleeps 0.2 s takes at least
0.2 s, however loaded the machine; a loop waiting in the poller is idle however late it
wakes up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import pathlib
import re
import socket
import threading
import time

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "metrics.md"

ferroloop_only = pytest.mark.ferroloop_only


def require_ferroloop():
    return pytest.importorskip("ferroloop", reason="ferroloop is not importable")


@pytest.fixture
def floop():
    """A ferroloop loop, closed at teardown."""
    lp = require_ferroloop().new_event_loop()
    yield lp
    lp.close()


def run_callbacks(loop, first):
    """Runs ``loop`` from ``first`` (a callback) until a callback calls ``loop.stop()``."""
    loop.call_soon(first)
    loop.run_forever()


def noop():
    pass


@ferroloop_only
def test_a_new_loop_reports_zeros_and_a_typed_snapshot(floop):
    ferroloop = require_ferroloop()
    m = floop.metrics()
    assert isinstance(m, ferroloop.LoopMetrics)
    counts = (m.iterations, m.callbacks, m.io_events, m.timers_fired, m.timers_pending)
    assert counts == (0, 0, 0, 0, 0)
    assert (m.busy_time, m.idle_time, m.utilization()) == (0.0, 0.0, 0.0)
    assert (m.lag_count, m.lag_max, m.lag_buckets, m.slowest) == (0, 0.0, (), ())
    assert (m.open_transports, m.registered_fds, m.ready) == (0, 0, 0)
    assert m.reset_time <= m.time <= floop.time()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.callbacks = 1
    d = m.as_dict()
    assert set(d) == {f.name for f in dataclasses.fields(m)}
    assert d["slowest"] == [] and d["lag_buckets"] == []


@ferroloop_only
def test_callbacks_and_iterations_are_counted_exactly(floop):
    n = 100

    def first():
        for _ in range(n):
            floop.call_soon(noop)
        for _ in range(3):
            floop.call_soon(noop).cancel()  # cancelled: not run, not counted
        floop.call_soon(last)

    def last():
        floop.call_soon(noop)  # left in the queue: the loop stops first
        floop.call_soon(noop)
        floop.stop()

    before = floop.metrics()
    run_callbacks(floop, first)
    after = floop.metrics()
    assert after.callbacks - before.callbacks == 1 + n + 1  # first, the noops, last
    assert after.iterations - before.iterations == 2
    assert after.ready == 2
    assert after.timers_fired == 0 and after.lag_count == 0


@ferroloop_only
def test_timers_fired_pending_and_lag_are_counted(floop):
    fired = []
    handles = [floop.call_later(0.001 * i, fired.append, i) for i in range(20)]
    for h in handles[::4]:
        h.cancel()
    assert floop.metrics().timers_pending == 15
    floop.call_later(0.05, floop.stop)
    floop.run_forever()
    m = floop.metrics()
    assert len(fired) == 15
    assert m.timers_fired == 16  # and the one that stopped the loop
    assert m.timers_pending == 0
    assert m.lag_count == 16
    assert 0.0 <= m.lag_p50 <= m.lag_p99 <= m.lag_max
    assert m.lag_sum >= m.lag_max
    assert sum(count for _, count in m.lag_buckets) == 16
    edges = [edge for edge, _ in m.lag_buckets]
    assert edges == sorted(edges) and len(set(edges)) == len(edges)
    assert edges[-1] > m.lag_max * (1 - 1e-9)  # the largest lag is below the last edge


@ferroloop_only
def test_a_timer_made_late_by_a_busy_callback_shows_in_the_lag(floop):
    def first():
        floop.call_later(0.01, floop.stop)
        floop.call_soon(time.sleep, 0.2)  # the loop is stuck for 0.2 s: 0.19 s late

    run_callbacks(floop, first)
    m = floop.metrics(reset=True)
    assert m.lag_count == 1
    assert m.lag_max >= 0.18
    assert m.lag_p99 == m.lag_max  # one sample: every percentile is it (clamped to max)
    assert m.lag_p50 == m.lag_max
    # The reset empties the lag figures and the slowest; the counters go on.
    after = floop.metrics()
    assert (after.lag_count, after.lag_max, after.lag_buckets, after.slowest) == (0, 0.0, (), ())
    assert after.reset_time >= m.time
    assert after.timers_fired == m.timers_fired and after.callbacks == m.callbacks


@ferroloop_only
def test_a_timer_scheduled_in_the_past_is_not_late_by_how_far_past(floop):
    def first():
        floop.call_at(floop.time() - 100.0, floop.stop)

    run_callbacks(floop, first)
    m = floop.metrics()
    assert m.lag_count == 1
    assert m.lag_max < 50.0  # late by the time the loop took to look, not by 100 s


@ferroloop_only
def test_timer_lag_on_a_replaced_clock_is_measured_on_that_clock(floop):
    fake = [1000.0]
    floop.time = lambda: fake[0]

    def first():
        floop.call_later(5.0, floop.stop)  # due at fake time 1005
        fake[0] += 7.0  # the fake clock jumps: the timer is 2 s late on it

    run_callbacks(floop, first)
    m = floop.metrics()
    assert m.lag_count == 1
    assert 1.9 <= m.lag_max <= 2.1
    assert m.time == pytest.approx(time.monotonic(), abs=60)  # the real clock's


@ferroloop_only
def test_a_slow_callback_alone_in_its_iteration_is_named(floop):
    floop.slow_callback_duration = 0.1

    def slow_callback():
        time.sleep(0.15)
        floop.call_soon(floop.stop)

    run_callbacks(floop, slow_callback)
    m = floop.metrics()
    assert m.slow_callbacks >= 1 and m.slow_iterations >= 1
    named = [s for s in m.slowest if s.description and "slow_callback" in s.description]
    assert len(named) == 1, m.slowest
    entry = named[0]
    assert entry.callbacks == 1 and entry.duration >= 0.15 and entry.source is None
    assert "test_metrics.py" in entry.description  # where it is defined
    assert entry.at <= m.time


@ferroloop_only
def test_a_slow_iteration_of_several_callbacks_names_none(floop):
    floop.slow_callback_duration = 0.1

    def first():
        floop.call_soon(time.sleep, 0.06)
        floop.call_soon(time.sleep, 0.06)
        floop.call_soon(floop.stop)

    run_callbacks(floop, first)
    m = floop.metrics()
    assert m.slow_iterations >= 1
    shared = [s for s in m.slowest if s.callbacks == 3]
    assert len(shared) == 1, m.slowest
    assert shared[0].description is None and shared[0].duration >= 0.12


@ferroloop_only
def test_debug_mode_names_each_slow_callback_with_its_source_line(floop):
    floop.set_debug(True)
    floop.slow_callback_duration = 0.1

    def slow_callback():
        time.sleep(0.15)

    def first():
        floop.call_soon(noop)
        floop.call_soon(slow_callback)  # scheduled here: the source line
        floop.call_soon(floop.stop)

    line = inspect.getsourcelines(first)[1] + 2
    run_callbacks(floop, first)
    m = floop.metrics()
    assert m.slow_callbacks >= 1
    named = [s for s in m.slowest if s.description and "slow_callback" in s.description]
    assert len(named) == 1, m.slowest
    assert named[0].callbacks == 1 and named[0].duration >= 0.15
    assert named[0].source.endswith(f"test_metrics.py:{line}")
    # Its iteration is not listed a second time.
    assert not [s for s in m.slowest if s.callbacks > 1], m.slowest


class _SlowReader(asyncio.Protocol):
    def __init__(self, done):
        self.done = done

    def data_received(self, data):
        time.sleep(0.15)
        self.done.set_result(data)


@ferroloop_only
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_a_slow_transport_read_is_named(floop, debug, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    floop.set_debug(debug)
    floop.slow_callback_duration = 0.1
    a, b = socket.socketpair()
    with a, b:
        done = floop.create_future()
        transport, _ = floop.run_until_complete(
            floop.create_connection(lambda: _SlowReader(done), sock=a)
        )
        try:
            floop.run_until_complete(asyncio.sleep(0))
            assert floop.metrics().ready == 0
            b.send(b"x")  # the loop's next iteration runs only the transport's read
            assert floop.run_until_complete(done) == b"x"
        finally:
            transport.close()
            floop.run_until_complete(asyncio.sleep(0))
    m = floop.metrics()
    named = [s for s in m.slowest if s.description and "_SlowReader" in s.description]
    assert len(named) == 1, m.slowest
    assert named[0].description.startswith("reading <StreamTransport")
    assert named[0].callbacks == 1 and named[0].duration >= 0.15
    logged = [r.getMessage() for r in caplog.records if "_SlowReader" in r.getMessage()]
    assert len(logged) == (1 if debug else 0), logged


def test_a_slow_transport_read_is_logged_in_debug_mode(loop, caplog):
    # asyncio logs its transports' slow `_read_ready` handles; ferroloop its transports' turns.
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.1

    async def main():
        done = loop.create_future()
        server = await loop.create_server(lambda: _SlowReader(done), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await asyncio.wait_for(done, 10)
        writer.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    slow = [m for m in messages if m.startswith("Executing") and " took " in m]
    assert len(slow) == 1, messages


@ferroloop_only
def test_utilization_is_low_while_waiting_and_high_while_busy(floop):
    async def main():
        start = floop.metrics()
        await asyncio.sleep(0.3)  # idle in the poller, however late it wakes up
        waited = floop.metrics()
        busy_from = floop.metrics()
        time.sleep(0.2)  # busy: the loop runs this coroutine
        await asyncio.sleep(0)
        busy = floop.metrics()
        return start, waited, busy_from, busy

    start, waited, busy_from, busy = floop.run_until_complete(main())
    assert waited.idle_time - start.idle_time >= 0.25
    assert waited.utilization(since=start) < 0.5
    # No wait between these two: every moment was busy (the snapshot counts the
    # iteration in progress).
    assert busy.busy_time - busy_from.busy_time >= 0.2
    assert busy.utilization(since=busy_from) > 0.9
    life = floop.metrics()
    assert 0.0 < life.utilization() < 1.0
    assert life.busy_time + life.idle_time >= 0.5


@ferroloop_only
def test_time_outside_the_loop_is_neither_busy_nor_idle(floop):
    floop.run_until_complete(asyncio.sleep(0))
    before = floop.metrics()
    time.sleep(0.2)  # the loop is not running
    floop.run_until_complete(asyncio.sleep(0))
    after = floop.metrics()
    assert (after.busy_time + after.idle_time) - (before.busy_time + before.idle_time) < 0.15


@ferroloop_only
def test_another_thread_sees_the_wait_in_progress_as_idle(floop):
    seen = []

    def reader():
        first = floop.metrics()
        time.sleep(0.2)
        seen.append((first, floop.metrics()))

    async def main():
        thread = threading.Thread(target=reader)
        thread.start()
        while not seen:
            await asyncio.sleep(0.05)
        thread.join()

    floop.run_until_complete(main())
    first, second = seen[0]
    assert second.idle_time - first.idle_time > second.busy_time - first.busy_time
    assert second.idle_time - first.idle_time >= 0.1


@ferroloop_only
def test_io_events_transports_and_registered_fds(floop):
    rounds = 10

    async def main():
        async def echo(reader, writer):
            while data := await reader.read(100):
                writer.write(data)
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        listening = floop.metrics()
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0)
        connected = floop.metrics()
        for i in range(rounds):
            writer.write(b"%d" % i)
            assert await reader.read(100) == b"%d" % i
        echoed = floop.metrics()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        return listening, connected, echoed

    listening, connected, echoed = floop.run_until_complete(main())
    assert (listening.open_transports, listening.registered_fds) == (0, 1)  # the listener
    assert (connected.open_transports, connected.registered_fds) == (2, 3)
    # Each request and each reply needs a readiness report to be read.
    assert echoed.io_events - connected.io_events >= 2 * rounds
    done = floop.metrics()
    assert (done.open_transports, done.registered_fds) == (0, 0)


@ferroloop_only
def test_readers_count_as_registered_fds(floop):
    a, b = socket.socketpair()
    with a, b:
        floop.add_reader(a, noop)
        floop.add_writer(b, noop)
        floop.add_reader(b, noop)
        assert floop.metrics().registered_fds == 2
        floop.remove_reader(a)
        assert floop.metrics().registered_fds == 1
        floop.remove_reader(b)
        floop.remove_writer(b)
        assert floop.metrics().registered_fds == 0


@ferroloop_only
def test_a_closed_loop_still_answers(floop):
    floop.run_until_complete(asyncio.sleep(0))
    floop.close()
    m = floop.metrics()
    assert m.iterations >= 1 and m.timers_pending == 0 and m.ready == 0


def _docs_function(name):
    """The Python block of docs/metrics.md that defines ``name``, executed."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (code,) = [b for b in blocks if f"def {name}(" in b]
    namespace = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace[name]


@ferroloop_only
def test_the_prometheus_example_in_the_docs_renders_a_snapshot(floop):
    prometheus_text = _docs_function("prometheus_text")

    def first():
        floop.call_later(0.002, noop)
        floop.call_later(0.01, floop.stop)
        floop.call_soon(time.sleep, 0.03)

    run_callbacks(floop, first)
    m = floop.metrics()
    text = prometheus_text(m, 'loop="main"')
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) ferroloop_\w+ .+", line), line
            continue
        name, value = line.rsplit(" ", 1)
        assert re.fullmatch(r'ferroloop_\w+\{loop="main"(,le="[^"]+")?\}', name), line
        samples[name] = float(value)
    assert samples['ferroloop_callbacks_total{loop="main"}'] == m.callbacks
    assert samples['ferroloop_busy_seconds_total{loop="main"}'] == m.busy_time
    buckets = [v for k, v in samples.items() if k.startswith("ferroloop_timer_lag_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == m.lag_count == 2
    assert samples['ferroloop_timer_lag_seconds_bucket{loop="main",le="0.001"}'] < 2  # 20 ms late
    assert samples['ferroloop_timer_lag_seconds_count{loop="main"}'] == 2
    assert math.isclose(samples['ferroloop_timer_lag_seconds_sum{loop="main"}'], m.lag_sum)


@ferroloop_only
def test_the_benchmark_loops_can_read_metrics_periodically(monkeypatch):
    require_ferroloop()
    from ferroloop.bench import contestants

    monkeypatch.setenv(contestants.METRICS_ENV, "0.02")
    loop = contestants.new_loop("ferroloop")
    try:
        loop.run_until_complete(asyncio.sleep(0.2))
        assert loop.metrics().timers_fired >= 2  # the reader's own timer, re-armed
    finally:
        loop.close()
    monkeypatch.delenv(contestants.METRICS_ENV)
    loop = contestants.new_loop("ferroloop")
    try:
        assert loop.metrics().timers_pending == 0
    finally:
        loop.close()
