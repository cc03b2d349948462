"""ferroloop's public API: Loop, new_event_loop, EventLoopPolicy, install(), run().

These tests are ferroloop-only by nature (marked ``ferroloop_only``); they are
skipped when ferroloop cannot be imported.
"""

import asyncio
import sys

import pytest

ferroloop = pytest.importorskip("ferroloop", reason="ferroloop is not importable")

pytestmark = pytest.mark.ferroloop_only


async def running_loop():
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


def test_loop_is_an_abstract_event_loop_subclass():
    assert issubclass(ferroloop.Loop, asyncio.AbstractEventLoop)


def test_new_event_loop_returns_a_fresh_loop():
    first = ferroloop.new_event_loop()
    second = ferroloop.new_event_loop()
    try:
        assert isinstance(first, ferroloop.Loop)
        assert first is not second
        assert not first.is_running() and not first.is_closed()
    finally:
        first.close()
        second.close()


def test_loop_instances_accept_attributes():
    loop = ferroloop.new_event_loop()
    try:
        loop.some_attribute = "value"
        assert loop.some_attribute == "value"
        del loop.some_attribute
        assert not hasattr(loop, "some_attribute")
    finally:
        loop.close()


def test_loop_class_can_be_subclassed():
    class MyLoop(ferroloop.Loop):
        def extra(self):
            return "extra"

    loop = MyLoop()
    try:
        assert loop.extra() == "extra"
        assert loop.run_until_complete(running_loop()) is loop
    finally:
        loop.close()


def test_event_loop_policy():
    policy = ferroloop.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()


def test_install_makes_asyncio_use_ferroloop():
    # tests/conftest.py restores the previous policy after each test.
    ferroloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()
    assert isinstance(asyncio.run(running_loop()), ferroloop.Loop)


def test_run():
    async def main(x):
        loop = await running_loop()
        return x, loop, loop.get_debug()

    value, loop, debug = ferroloop.run(main(42))
    assert value == 42
    assert isinstance(loop, ferroloop.Loop)
    assert loop.is_closed()
    assert asyncio._get_running_loop() is None

    _, _, debug = ferroloop.run(main(0), debug=True)
    assert debug is True


def test_run_propagates_exceptions_and_cancels_leftover_tasks():
    cancelled = []
    leftovers = []

    async def leftover():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        leftovers.append(asyncio.ensure_future(leftover()))
        await asyncio.sleep(0)
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        ferroloop.run(main())
    assert cancelled == [True]
    assert leftovers[0].cancelled()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_asyncio_runner_with_ferroloop_factory():
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        first = runner.run(running_loop())
        second = runner.run(running_loop())
        assert first is second is runner.get_loop()
        assert isinstance(first, ferroloop.Loop)
    assert first.is_closed()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is new in 3.12")
def test_asyncio_run_with_loop_factory():
    loop = asyncio.run(running_loop(), loop_factory=ferroloop.new_event_loop)
    assert isinstance(loop, ferroloop.Loop)
    assert loop.is_closed()


def test_a_subclass_overriding_call_soon_is_called_by_futures():
    # The loop keeps a bound call_soon for asyncio's C futures and tasks to find; a subclass
    # that overrides call_soon must still be the one they call.
    calls = []

    class Counting(ferroloop.Loop):
        def call_soon(self, callback, *args, context=None):
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    async def main():
        fut = asyncio.get_running_loop().create_future()
        seen = []
        fut.add_done_callback(seen.append)
        fut.set_result(1)
        await asyncio.sleep(0)
        return fut, seen

    loop = Counting()
    try:
        fut, seen = loop.run_until_complete(main())
        assert seen == [fut]
        assert seen.append in calls  # the future scheduled its callback through the override
    finally:
        loop.close()


def test_call_soon_is_the_same_bound_method_until_close():
    loop = ferroloop.new_event_loop()
    first = loop.call_soon
    assert loop.call_soon is first
    handle = first(lambda: None)
    assert isinstance(handle, asyncio.Handle)
    loop.close()
    assert "call_soon" not in vars(loop)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(lambda: None)


def test_a_closed_loop_is_freed_without_the_garbage_collector():
    # The loop's own caches (a bound call_soon, the keyword arguments of the futures and
    # tasks it makes) refer back to it; close() lets go of them.
    import gc
    import weakref

    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_task(asyncio.sleep(0))
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 1)
        return await fut

    loop = ferroloop.new_event_loop()
    assert loop.run_until_complete(main()) == 1
    loop.close()
    ref = weakref.ref(loop)
    gc.disable()
    try:
        del loop
        assert ref() is None
    finally:
        gc.enable()
