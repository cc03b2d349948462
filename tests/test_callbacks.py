"""call_soon, Handle, iteration semantics and the loop's run/stop/close life cycle."""

import asyncio
import contextvars
import gc
import sys
import weakref

import pytest

var = contextvars.ContextVar("var", default="unset")


def test_call_soon_runs_callbacks_in_fifo_order(loop):
    order = []
    for i in range(100):
        loop.call_soon(order.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == list(range(100))


def test_call_soon_passes_positional_args(loop):
    received = []

    def callback(*args):
        received.append(args)

    loop.call_soon(callback)
    loop.call_soon(callback, 1, "two", None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert received == [(), (1, "two", None)]


def test_call_soon_rejects_keyword_arguments_for_the_callback(loop):
    with pytest.raises(TypeError):
        loop.call_soon(print, end="")


def test_handles_are_asyncio_handle_instances(loop):
    handles = [loop.call_soon(print), loop.call_soon_threadsafe(print)]
    timers = [loop.call_later(10, print), loop.call_at(loop.time() + 10, print)]
    for handle in handles + timers:
        assert isinstance(handle, asyncio.Handle)
        handle.cancel()
    for timer in timers:
        assert isinstance(timer, asyncio.TimerHandle)


def test_handles_support_weak_references(loop):
    for handle in (loop.call_soon(print), loop.call_later(10, print)):
        ref = weakref.ref(handle)
        assert ref() is handle
        handle.cancel()


def test_new_handle_is_not_cancelled(loop):
    handle = loop.call_soon(print)
    assert not handle.cancelled()
    handle.cancel()


def test_callback_scheduled_by_a_callback_runs_in_the_next_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "nested")

    loop.call_soon(first)
    loop.call_soon(loop.stop)
    loop.run_forever()
    # stop() ends the loop after the current iteration: "nested" became ready
    # during that iteration, so it must not have run yet.
    assert order == ["first"]

    loop.stop()
    loop.run_forever()
    assert order == ["first", "nested"]


def test_self_rescheduling_callback_runs_once_per_iteration(loop):
    runs = []

    def spin():
        runs.append(1)
        loop.call_soon(spin)

    loop.call_soon(spin)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(runs) == 1

    loop.stop()
    loop.run_forever()
    assert len(runs) == 2


def test_callbacks_queued_after_stop_in_the_same_iteration_still_run(loop):
    order = []
    loop.call_soon(order.append, "before")
    loop.call_soon(loop.stop)
    loop.call_soon(order.append, "after")
    loop.run_forever()
    assert order == ["before", "after"]


def test_stop_before_run_forever_runs_exactly_one_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "second")

    loop.call_soon(first)
    loop.stop()
    loop.run_forever()
    assert order == ["first"]
    assert not loop.is_running()


def test_stop_before_run_forever_with_nothing_ready_returns(loop):
    loop.stop()
    loop.run_forever()  # must not block
    assert not loop.is_running()


def test_cancelled_handle_does_not_run(loop):
    called = []
    handle = loop.call_soon(called.append, "x")
    handle.cancel()
    assert handle.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert called == []


def test_handle_cancelled_by_an_earlier_callback_of_the_same_iteration_does_not_run(loop):
    called = []
    loop.call_soon(lambda: victim.cancel())
    victim = loop.call_soon(called.append, "victim")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert called == []
    assert victim.cancelled()


def test_cancel_is_idempotent_and_harmless_after_the_callback_ran(loop):
    called = []
    handle = loop.call_soon(called.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert called == [1]
    handle.cancel()
    handle.cancel()
    assert handle.cancelled()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Handle.get_context() is new in 3.12")
def test_handle_get_context(loop):
    ctx = contextvars.copy_context()
    assert loop.call_soon(print, context=ctx).get_context() is ctx
    implicit = loop.call_soon(print).get_context()
    assert isinstance(implicit, contextvars.Context)
    assert implicit is not ctx


def test_callback_runs_in_a_copy_of_the_context_taken_at_call_time(loop):
    seen = []

    def callback():
        seen.append(var.get())
        var.set("changed by callback")

    token = var.set("at call time")
    try:
        loop.call_soon(callback)
        var.set("after call")
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == ["at call time"]
        assert var.get() == "after call"
    finally:
        var.reset(token)


def test_callback_runs_in_the_explicit_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    seen = []

    def callback():
        seen.append(var.get())
        var.set("written by callback")

    loop.call_soon(callback, context=ctx)
    loop.call_soon(callback, context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in ctx", "written by callback"]
    assert ctx[var] == "written by callback"
    assert var.get() == "unset"


class _Node:
    """A weakly referenceable object to build reference cycles from."""


def _context_of(handle):
    return handle.get_context() if hasattr(handle, "get_context") else handle._context


def _run_once(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_a_handle_still_referenced_after_running_keeps_its_identity_and_context(loop):
    # ferroloop reuses handles that nothing refers to once they ran; a handle somebody
    # holds must stay what it was.
    token = var.set("first")
    try:
        first = loop.call_soon(len, ())
        _run_once(loop)
        var.set("second")
        later = [loop.call_soon(len, ()) for _ in range(10)]
        assert all(h is not first for h in later)
        assert _context_of(first)[var] == "first"
        assert all(_context_of(h)[var] == "second" for h in later)
        _run_once(loop)
    finally:
        var.reset(token)


def test_a_weakly_referenced_handle_dies_after_running(loop):
    ran = []
    ref = weakref.ref(loop.call_soon(ran.append, 1))
    _run_once(loop)
    gc.collect()
    assert ran == [1]
    assert ref() is None
    handles = [loop.call_soon(ran.append, 2) for _ in range(10)]
    assert all(ref() is None for _ in handles)
    _run_once(loop)
    assert ran == [1] + [2] * 10


def test_new_handles_are_fresh_after_dropped_ones_ran_or_were_cancelled(loop):
    ran = []
    loop.call_soon(ran.append, "cancelled").cancel()
    for i in range(5):
        loop.call_soon(ran.append, i)
    _run_once(loop)
    token = var.set("now")
    try:
        handles = [loop.call_soon(ran.append, i) for i in range(5, 50)]
    finally:
        var.reset(token)
    assert not any(h.cancelled() for h in handles)
    assert all(_context_of(h)[var] == "now" for h in handles)
    _run_once(loop)
    assert ran == list(range(50))


def test_cycle_through_a_handles_copied_context_is_collected(loop):
    # The callback stores, in the context the loop copied for it, an object that refers
    # back to that context: a cycle that only the garbage collector can free once the
    # handle is gone. (ferroloop hides such copies from the collector while a handle owns
    # them, and must hand them back before letting go.)
    refs = []

    def callback():
        node = _Node()
        node.ctx = contextvars.copy_context()  # a copy that shares the mapping ...
        var.set(node)  # ... and the handle's own context now refers to node
        node.ctx = None
        refs.append(weakref.ref(node))

    handles = [loop.call_soon(callback) for _ in range(3)]
    contexts = [_context_of(h) for h in handles]
    loop.call_soon(loop.stop)
    loop.run_forever()
    for ctx, ref in zip(contexts, refs, strict=True):
        node = ref()
        assert ctx[var] is node
        node.ctx = ctx  # the cycle: context -> mapping -> node -> context
    del handles, contexts, ctx, node
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    assert var.get() == "unset"


def test_running_loop_is_visible_to_asyncio_inside_callbacks(loop):
    seen = []

    def callback():
        seen.append(asyncio.get_running_loop())
        seen.append(asyncio.get_event_loop())
        seen.append(asyncio._get_running_loop())

    loop.call_soon(callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [loop, loop, loop]
    assert asyncio._get_running_loop() is None


def test_is_running_and_is_closed(loop):
    states = []
    assert not loop.is_running()
    assert not loop.is_closed()
    loop.call_soon(lambda: states.append(loop.is_running()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert states == [True]
    assert not loop.is_running()
    loop.close()
    assert loop.is_closed()
    assert not loop.is_running()


def test_close_twice_is_harmless(loop):
    loop.close()
    loop.close()
    assert loop.is_closed()


def test_closed_loop_refuses_to_run(loop):
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_until_complete(coro)
    coro.close()


def test_closed_loop_refuses_new_callbacks(loop):
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon_threadsafe(print)


def skip_asyncio_run_forever_bug(loop_kind):
    # gh-130145: in 3.13.0-3.13.2, a run_forever() refused because a loop is running resets
    # the running loop's state (so the outer run never stops): fixed in 3.13.3.
    if loop_kind == "asyncio" and (3, 13) <= sys.version_info < (3, 13, 3):
        pytest.skip("asyncio 3.13.0-3.13.2 breaks the running loop here (gh-130145)")


def test_run_forever_while_running_raises(loop, loop_kind):
    skip_asyncio_run_forever_bug(loop_kind)
    errors = []

    def nested_run_forever():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))

    def nested_run_until_complete():
        coro = asyncio.sleep(0)
        try:
            loop.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            coro.close()

    loop.call_soon(nested_run_forever)
    loop.call_soon(nested_run_until_complete)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert errors == ["This event loop is already running"] * 2
    assert not loop.is_running()


def test_running_while_another_loop_runs_in_this_thread_raises(loop, loop_kind, new_loop):
    skip_asyncio_run_forever_bug(loop_kind)
    other = new_loop()
    stdlib_other = asyncio.new_event_loop()
    errors = []

    def try_run(target):
        try:
            target.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.call_soon(try_run, other)
    loop.call_soon(try_run, stdlib_other)
    loop.call_soon(loop.stop)
    try:
        loop.run_forever()
    finally:
        stdlib_other.close()
    assert errors == ["Cannot run the event loop while another loop is running"] * 2
    assert not other.is_running()


def test_loop_cannot_run_inside_a_running_stdlib_loop(loop):
    """The running-loop registry is shared with asyncio in both directions."""
    outer = asyncio.new_event_loop()
    errors = []

    def try_run():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))

    outer.call_soon(try_run)
    outer.call_soon(outer.stop)
    try:
        outer.run_forever()
    finally:
        outer.close()
    assert errors == ["Cannot run the event loop while another loop is running"]


def test_close_while_running_raises(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.call_soon(try_close)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()


def test_loop_can_be_run_again_after_stop(loop):
    for expected in range(3):
        assert loop.run_until_complete(asyncio.sleep(0, expected)) == expected
    assert not loop.is_running()


def test_unclosed_loop_warns_when_garbage_collected(loop_factory):
    lp = loop_factory()
    lp.run_until_complete(asyncio.sleep(0))
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del lp
        gc.collect()


class Callback:
    """A callable whose lifetime a test can watch through a weak reference."""

    def __call__(self, *args):
        pass


def test_cancel_releases_the_callback_and_its_args(loop):
    callback, arg = Callback(), Callback()
    refs = [weakref.ref(callback), weakref.ref(arg)]
    handles = [loop.call_soon(callback, arg), loop.call_later(10, callback, arg)]
    del callback, arg
    for handle in handles:
        handle.cancel()
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_close_releases_pending_callbacks(loop):
    callback = Callback()
    ref = weakref.ref(callback)
    loop.call_soon(callback)
    loop.call_later(10, callback)
    loop.call_soon_threadsafe(callback)
    del callback
    loop.close()
    gc.collect()
    assert ref() is None
