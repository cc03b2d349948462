"""call_soon_threadsafe, the GIL while idle, executors and asyncio.to_thread."""

import asyncio
import concurrent.futures
import contextvars
import socket
import sys
import threading
import time

import pytest

var = contextvars.ContextVar("var", default="unset")

# The loop is given a fallback timer this far away: a test passing quickly
# proves the loop was woken by the event under test, not by the timer.
FAR = 10


def start_thread_when_loop_runs(loop, target):
    """Start target in a thread once the loop is running; return the thread."""
    thread = threading.Thread(target=target, daemon=True)
    loop.call_soon(thread.start)
    return thread


def test_call_soon_threadsafe_wakes_an_idle_loop_promptly(loop):
    woken = []

    def wake_from_thread():
        # Give the loop time to block in its poll on the far timer; what is
        # being measured is how quickly the call below wakes it up.
        time.sleep(0.05)
        sent = time.monotonic()
        loop.call_soon_threadsafe(lambda: (woken.append(time.monotonic() - sent), loop.stop()))

    fallback = loop.call_later(FAR, loop.stop)
    thread = start_thread_when_loop_runs(loop, wake_from_thread)
    start = time.monotonic()
    loop.run_forever()
    thread.join()
    fallback.cancel()
    assert len(woken) == 1, "the loop was not woken by call_soon_threadsafe"
    assert woken[0] < 0.5
    assert time.monotonic() - start < FAR / 2


def test_loop_with_nothing_scheduled_is_woken_by_call_soon_threadsafe(loop):
    woken = []

    def wake_from_thread():
        time.sleep(0.05)  # let the loop block in its poll, which has no timeout at all
        loop.call_soon_threadsafe(lambda: (woken.append(True), loop.stop()))

    thread = start_thread_when_loop_runs(loop, wake_from_thread)
    loop.run_forever()
    thread.join()
    assert woken == [True]


def test_call_soon_threadsafe_returns_a_handle_that_can_be_cancelled(loop):
    called = []
    handle = loop.call_soon_threadsafe(called.append, 1)
    handle.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert called == []


def test_call_soon_threadsafe_keeps_the_callers_context(loop):
    seen = []
    explicit = contextvars.copy_context()
    explicit.run(var.set, "explicit")

    def from_thread():
        var.set("thread")
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))
        loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=explicit)
        loop.call_soon_threadsafe(loop.stop)

    fallback = loop.call_later(FAR, loop.stop)
    thread = start_thread_when_loop_runs(loop, from_thread)
    loop.run_forever()
    thread.join()
    fallback.cancel()
    assert seen == ["thread", "explicit"]


def test_many_threads_deliver_every_call_exactly_once_in_per_thread_order(loop):
    n_threads, n_calls = 8, 500
    delivered = []
    barrier = threading.Barrier(n_threads)

    def on_call(tid, i):
        delivered.append((tid, i))
        if len(delivered) == n_threads * n_calls:
            loop.stop()

    def producer(tid):
        barrier.wait()
        for i in range(n_calls):
            loop.call_soon_threadsafe(on_call, tid, i)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    for thread in threads:
        thread.join()
    fallback.cancel()
    assert sorted(delivered) == [(t, i) for t in range(n_threads) for i in range(n_calls)]
    for t in range(n_threads):
        assert [i for tid, i in delivered if tid == t] == list(range(n_calls))


def test_gil_is_released_while_the_loop_waits(loop):
    """A Python thread does pure-Python work while the loop idles on a timer."""
    result = []

    def worker():
        total = 0
        for i in range(2_000_000):
            total += i
        loop.call_soon_threadsafe(lambda: (result.append(total), loop.stop()))

    fallback = loop.call_later(5, loop.stop)
    thread = start_thread_when_loop_runs(loop, worker)
    loop.run_forever()
    fallback.cancel()
    assert result == [sum(range(2_000_000))], "worker could not run while the loop was idle"
    thread.join()


def test_run_in_executor_default_executor(loop):
    async def main():
        return await loop.run_in_executor(None, lambda a, b: (a + b, threading.get_ident()), 2, 3)

    value, ident = loop.run_until_complete(main())
    assert value == 5
    assert ident != threading.get_ident()
    loop.run_until_complete(loop.shutdown_default_executor())


def test_default_executor_threads_are_named_like_asyncio(loop):
    # Suites assert asyncio's thread name prefix, "asyncio_<n>".
    name = loop.run_until_complete(
        loop.run_in_executor(None, lambda: threading.current_thread().name)
    )
    assert name.startswith("asyncio_"), name
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_returns_an_asyncio_future(loop):
    async def main():
        fut = loop.run_in_executor(None, int, "7")
        assert asyncio.isfuture(fut)
        return await fut

    assert loop.run_until_complete(main()) == 7
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_propagates_exceptions(loop):
    def fail():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(loop.run_in_executor(None, fail))
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_with_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="explicit") as pool:
        name = loop.run_until_complete(
            loop.run_in_executor(pool, lambda: threading.current_thread().name)
        )
    assert name.startswith("explicit")


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom-default")
    loop.set_default_executor(pool)
    name = loop.run_until_complete(
        loop.run_in_executor(None, lambda: threading.current_thread().name)
    )
    assert name.startswith("custom-default")
    loop.run_until_complete(loop.shutdown_default_executor())
    assert pool._shutdown


def test_set_default_executor_rejects_non_thread_pool_executors(loop):
    class NotAThreadPool(concurrent.futures.Executor):
        pass

    if sys.version_info < (3, 11):  # deprecated, still accepted
        with pytest.warns(DeprecationWarning, match="ThreadPoolExecutor"):
            loop.set_default_executor(NotAThreadPool())
        return
    with pytest.raises(TypeError):
        loop.set_default_executor(NotAThreadPool())


def test_shutdown_default_executor_waits_for_running_jobs(loop):
    release = threading.Event()
    order = []

    def job():
        release.wait(FAR)
        order.append("job finished")

    async def main():
        job_future = loop.run_in_executor(None, job)
        shutdown = asyncio.ensure_future(loop.shutdown_default_executor())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not shutdown.done()
        order.append("releasing")
        release.set()
        await shutdown
        order.append("shutdown done")
        await job_future

    loop.run_until_complete(main())
    assert order == ["releasing", "job finished", "shutdown done"]


def test_run_in_executor_after_shutdown_default_executor_raises(loop):
    loop.run_until_complete(loop.run_in_executor(None, int))
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="shutdown"):
        loop.run_in_executor(None, int)


def test_shutdown_default_executor_without_executor_is_a_no_op(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None


def test_to_thread_runs_in_another_thread_with_the_callers_context(loop):
    async def main():
        var.set("task value")
        return await asyncio.to_thread(lambda x: (x, var.get(), threading.get_ident()), 42)

    x, value, ident = loop.run_until_complete(main())
    assert (x, value) == (42, "task value")
    assert ident != threading.get_ident()
    loop.run_until_complete(loop.shutdown_default_executor())


def test_loop_runs_in_a_non_main_thread(loop):
    thread = threading.Thread(target=loop.run_forever)
    thread.start()

    async def work():
        await asyncio.sleep(0.01)
        addresses = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        return threading.get_ident(), asyncio.get_running_loop(), addresses[0][4]

    try:
        ident, running, address = asyncio.run_coroutine_threadsafe(work(), loop).result(FAR)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(FAR)
    assert not thread.is_alive()
    assert ident == thread.ident
    assert running is loop
    assert address == ("127.0.0.1", 80)
    loop.run_until_complete(loop.shutdown_default_executor())


# -- 3.14: call_soon_threadsafe's handle waits for a running callback (events._ThreadSafeHandle)

needs_threadsafe_handles = pytest.mark.skipif(
    not hasattr(asyncio.events, "_ThreadSafeHandle"),
    reason="asyncio's call_soon_threadsafe handles lock around the run from Python 3.14",
)


@needs_threadsafe_handles
@pytest.mark.parametrize("method", ["cancel", "cancelled"])
def test_threadsafe_handle_waits_for_its_running_callback_in_other_threads(loop, method):
    started = threading.Event()
    calling = threading.Event()
    finished = threading.Event()
    seen = {}

    def callback():
        started.set()
        calling.wait(FAR)
        # The other thread is (about to be) inside cancel()/cancelled(): it must not return
        # before this callback does. A short pause gives a wrong implementation the chance
        # to show it; a right one waits however long this takes.
        time.sleep(0.1)
        seen["returned_early"] = "returned" in seen
        finished.set()

    def other_thread():
        handle = loop.call_soon_threadsafe(callback)
        seen["class"] = isinstance(handle, asyncio.events._ThreadSafeHandle)
        started.wait(FAR)
        calling.set()
        seen["result"] = getattr(handle, method)()
        seen["returned"] = finished.is_set()
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=other_thread)
    thread.start()
    loop.run_forever()
    thread.join(FAR)
    assert seen["class"]
    assert seen["returned"] is True
    assert seen["returned_early"] is False
    if method == "cancelled":
        assert seen["result"] is False


@needs_threadsafe_handles
def test_threadsafe_handle_cancelled_by_its_own_callback_does_not_wait(loop):
    handles = concurrent.futures.Future()
    seen = []

    def callback():
        handle = handles.result(FAR)
        handle.cancel()  # on the thread running it: returns at once
        seen.append(handle.cancelled())
        loop.stop()

    handles.set_result(loop.call_soon_threadsafe(callback))
    loop.run_forever()
    assert seen == [True]
