"""call_later / call_at: ordering, punctuality, cancellation and loop.time()."""

import asyncio
import contextvars
import random
import sys
import time

import pytest

var = contextvars.ContextVar("var", default="unset")


def test_timers_fire_in_deadline_order(loop):
    order = []
    now = loop.time()
    loop.call_at(now + 0.03, order.append, "c")
    loop.call_later(0.01, order.append, "a")
    loop.call_at(now + 0.02, order.append, "b")
    loop.call_at(now + 0.04, loop.stop)
    loop.run_forever()
    assert order == ["a", "b", "c"]


def test_many_timers_fire_in_nondecreasing_deadline_order(loop):
    rng = random.Random(1234)
    fired = []
    now = loop.time()
    deadlines = [now + rng.uniform(0, 0.05) for _ in range(500)]
    for when in deadlines:
        loop.call_at(when, fired.append, when)
    loop.call_at(now + 0.06, loop.stop)
    loop.run_forever()
    assert sorted(fired) == sorted(deadlines)
    assert fired == sorted(fired)


def test_equal_deadlines_keep_fifo_order(loop, loop_kind):
    if loop_kind == "asyncio":
        pytest.skip(
            "ferroloop guarantee beyond asyncio: stdlib's timer heap is not stable, "
            "so it runs timers with equal deadlines in arbitrary order"
        )
    order = []
    when = loop.time() + 0.01
    for i in range(200):
        loop.call_at(when, order.append, i)
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert order == list(range(200))


@pytest.mark.parametrize("delay", [0.001, 0.01, 0.05])
def test_timer_never_fires_early(loop, delay):
    observed = []
    start = time.monotonic()

    def callback():
        observed.append((loop.time(), handle.when(), time.monotonic() - start))
        loop.stop()

    handle = loop.call_later(delay, callback)
    loop.run_forever()
    [(now, when, elapsed)] = observed
    assert now >= when
    assert elapsed >= delay


def test_sleep_never_returns_early(loop):
    async def main():
        start = loop.time()
        await asyncio.sleep(0.05)
        return loop.time() - start

    assert loop.run_until_complete(main()) >= 0.05


def test_timer_handle_when(loop):
    when = loop.time() + 100
    handle = loop.call_at(when, print)
    assert handle.when() == when

    before = loop.time()
    later = loop.call_later(10, print)
    after = loop.time()
    assert before + 10 <= later.when() <= after + 10
    handle.cancel()
    later.cancel()


def test_cancelled_timer_does_not_fire(loop):
    fired = []
    handle = loop.call_later(0.01, fired.append, "cancelled")
    loop.call_later(0.02, fired.append, "kept")
    handle.cancel()
    assert handle.cancelled()
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert fired == ["kept"]


def test_due_timer_cancelled_by_an_earlier_callback_of_the_same_iteration(loop):
    fired = []
    timer = loop.call_at(loop.time() - 1, fired.append, "timer")
    loop.call_soon(timer.cancel)
    loop.stop()
    loop.run_forever()
    assert fired == []
    assert timer.cancelled()


def test_due_timers_run_after_callbacks_already_queued(loop):
    order = []
    loop.call_at(loop.time() - 1, order.append, "timer")
    loop.call_soon(order.append, "soon")
    loop.stop()
    loop.run_forever()
    assert order == ["soon", "timer"]


def test_timer_cancelled_from_another_timer_does_not_fire(loop):
    fired = []
    victim = loop.call_later(0.03, fired.append, "victim")
    loop.call_later(0.01, victim.cancel)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert fired == []


@pytest.mark.parametrize("delay", [0, -1, -1e9])
def test_zero_or_negative_delay_runs_in_the_next_iteration(loop, delay):
    fired = []
    handle = loop.call_later(delay, fired.append, delay)
    assert handle.when() <= loop.time()
    loop.stop()
    loop.run_forever()
    assert fired == [delay]


def test_far_timer_does_not_delay_stop(loop):
    handle = loop.call_later(3600, print)
    start = time.monotonic()
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert time.monotonic() - start < 1
    handle.cancel()


@pytest.mark.parametrize("delay", ["1", None, [], object()])
def test_call_later_with_non_numeric_delay_raises_type_error(loop, delay):
    with pytest.raises(TypeError):
        loop.call_later(delay, print)


def test_call_at_with_none_raises_type_error(loop, loop_kind):
    if loop_kind == "asyncio" and sys.version_info < (3, 11):
        pytest.skip("3.10's asyncio accepts None, and fails when the loop runs")
    with pytest.raises(TypeError):
        loop.call_at(None, print)


def test_timer_callback_gets_args(loop):
    received = []
    loop.call_later(0, received.append, ("a", 1))
    loop.call_at(loop.time(), received.append, ("b", 2))
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(received) == [("a", 1), ("b", 2)]


def test_loop_time_matches_time_monotonic(loop):
    before = time.monotonic()
    now = loop.time()
    after = time.monotonic()
    assert before - 0.001 <= now <= after + 0.001


def test_loop_time_is_current_inside_a_slow_callback(loop):
    readings = []

    def slow_callback():
        start = loop.time()
        time.sleep(0.05)  # the callback's own blocking work, not a wait for an event
        before = time.monotonic()
        now = loop.time()
        after = time.monotonic()
        readings.append((now - start, before, now, after))

    loop.call_soon(slow_callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    [(elapsed, before, now, after)] = readings
    assert elapsed >= 0.045
    assert before - 0.001 <= now <= after + 0.001


def test_loop_time_is_monotonic(loop):
    readings = [loop.time() for _ in range(10_000)]
    assert readings == sorted(readings)


@pytest.mark.parametrize("delay", [float("inf"), 1e300, 1e12])
def test_huge_delays_are_accepted_and_never_fire(loop, delay):
    fired = []
    handle = loop.call_later(delay, fired.append, delay)
    assert handle.when() >= delay
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert fired == []
    handle.cancel()


def test_many_cancelled_timers_do_not_fire(loop):
    fired = []
    handles = [loop.call_later(i / 100_000, fired.append, i) for i in range(2000)]
    for handle in handles[::2]:
        handle.cancel()
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert sorted(fired) == list(range(1, 2000, 2))


def test_timer_runs_in_the_context_copied_at_call_time(loop):
    seen = []
    token = var.set("at call_later")
    try:
        loop.call_later(0.001, lambda: seen.append(var.get()))
        var.set("later")
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
    finally:
        var.reset(token)
    assert seen == ["at call_later"]


def test_short_timers_are_not_badly_late(loop):
    lateness = []

    def fire(expected):
        lateness.append(loop.time() - expected)

    now = loop.time()
    for i in range(1, 51):
        loop.call_at(now + i / 1000, fire, now + i / 1000)
    loop.call_at(now + 0.06, loop.stop)
    loop.run_forever()
    assert len(lateness) == 50
    assert min(lateness) >= 0
    assert max(lateness) < 0.5


def test_loop_waiting_for_a_timer_does_not_busy_wait(loop):
    loop.call_later(0.2, loop.stop)
    cpu = time.process_time()
    loop.run_forever()
    cpu = time.process_time() - cpu
    assert cpu < 0.1, f"the loop used {cpu:.3f} s of CPU while waiting 0.2 s"


# -- a faked clock: loop.time replaced on the instance or overridden in a subclass ---------


def run_one_iteration(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_instance_time_override_schedules_and_fires_timers(loop):
    # Suites fake the clock (keep-alive, timeouts): call_later adds to self.time(), and a
    # timer is due once self.time() reaches its deadline, whatever the real clock says.
    fake = [1000.0]
    loop.time = lambda: fake[0]
    fired = []
    handle = loop.call_later(3600, fired.append, "timer")
    assert handle.when() == 4600.0
    run_one_iteration(loop)
    assert fired == []
    fake[0] = 4600.0
    run_one_iteration(loop)
    assert fired == ["timer"]
    # Back to the real clock once the override is gone.
    del loop.time
    handle = loop.call_later(10, fired.append, "late")
    assert abs(handle.when() - (time.monotonic() + 10)) < 1
    handle.cancel()


def test_faked_clock_wakes_sleep(loop):
    fake = [0.0]
    loop.time = lambda: fake[0]

    async def main():
        sleeper = asyncio.ensure_future(asyncio.sleep(300, "rested"))
        await asyncio.sleep(0)
        fake[0] = 300.0
        return await sleeper

    assert loop.run_until_complete(main()) == "rested"


def test_subclass_time_override_is_used_for_scheduling(loop_factory):
    fake = [50.0]
    lp = loop_factory()
    cls = type("FakeClockLoop", (type(lp),), {"time": lambda self: fake[0]})
    lp.close()
    lp = cls()
    try:
        fired = []
        assert lp.call_later(5, fired.append, 1).when() == 55.0
        fake[0] = 55.0
        run_one_iteration(lp)
        assert fired == [1]
    finally:
        lp.close()
