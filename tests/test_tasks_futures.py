"""Futures and tasks on the loop, task factories, run_until_complete, timeouts, asyncgens."""

import asyncio
import contextvars
import gc
import sys

import pytest

var = contextvars.ContextVar("var", default="unset")


def test_create_future(loop):
    fut = loop.create_future()
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, "value")
    assert loop.run_until_complete(fut) == "value"


def test_future_done_callbacks_run_on_the_loop(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append((f.result(), asyncio.get_running_loop())))
    fut.set_result(1)
    assert seen == []  # done callbacks are scheduled, not called synchronously
    loop.run_until_complete(fut)
    loop.stop()
    loop.run_forever()
    assert seen == [(1, loop)]


def test_create_task(loop):
    async def main():
        assert asyncio.current_task() is task
        assert task in asyncio.all_tasks()
        return "done"

    task = loop.create_task(main())
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert task.get_name().startswith("Task-")
    assert loop.run_until_complete(task) == "done"


def test_create_task_name(loop):
    task = loop.create_task(asyncio.sleep(0), name="my task")
    assert task.get_name() == "my task"
    loop.run_until_complete(task)


def test_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "from ctx")
    if sys.version_info < (3, 11):  # create_task(context=) is new in 3.11
        coro = asyncio.sleep(0)
        with pytest.raises(TypeError, match="context"):
            loop.create_task(coro, context=ctx)
        coro.close()
        return

    async def main():
        value = var.get()
        var.set("written by task")
        return value

    assert loop.run_until_complete(loop.create_task(main(), context=ctx)) == "from ctx"
    assert ctx[var] == "written by task"
    assert var.get() == "unset"


def test_create_task_and_future_use_the_classes_asyncio_has_now(loop, monkeypatch):
    # asyncio's loop looks tasks.Task and futures.Future up at each call; CPython's own tests
    # (3.14's test_free_threading) swap in the pure-Python classes that way.
    class MyTask(asyncio.tasks._PyTask):
        pass

    class MyFuture(asyncio.futures._PyFuture):
        pass

    async def main():
        monkeypatch.setattr(asyncio.tasks, "Task", MyTask)
        monkeypatch.setattr(asyncio.futures, "Future", MyFuture)
        task = loop.create_task(asyncio.sleep(0, "done"))
        future = loop.create_future()
        future.set_result(await task)
        return task, future

    task, future = loop.run_until_complete(main())
    assert type(task) is MyTask and task.result() == "done"
    assert type(future) is MyFuture


def test_create_task_on_a_closed_loop_raises(loop):
    loop.close()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.create_task(coro)
    coro.close()


def test_task_factory(loop):
    created = []

    def factory(lp, coro, **kwargs):
        task = asyncio.Task(coro, loop=lp, **kwargs)
        created.append((lp, task, kwargs))
        return task

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    ctx = contextvars.copy_context()
    plain = loop.create_task(asyncio.sleep(0, "plain"), name="named")
    assert created[0][0] is loop
    # 3.14's create_task hands every keyword to the factory; earlier ones name the task after.
    assert created[0][2] == ({"name": "named"} if sys.version_info >= (3, 14) else {})
    assert plain.get_name() == "named"
    assert loop.run_until_complete(plain) == "plain"
    if sys.version_info >= (3, 11):  # create_task(context=) is new in 3.11
        with_ctx = loop.create_task(asyncio.sleep(0, "ctx"), context=ctx)
        assert [task for _, task, _ in created] == [plain, with_ctx]
        assert created[1][2] == {"context": ctx}
        assert loop.run_until_complete(with_ctx) == "ctx"

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_task_factory_is_used_by_run_until_complete_and_ensure_future(loop):
    created = []

    def factory(lp, coro, **kwargs):
        created.append(coro)
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)

    async def main():
        await asyncio.ensure_future(asyncio.sleep(0))
        return len(created)

    assert loop.run_until_complete(main()) == 2


@pytest.mark.parametrize("bad", [1, "factory", object()])
def test_invalid_task_factory_raises_type_error(loop, bad):
    with pytest.raises(TypeError):
        loop.set_task_factory(bad)


def test_run_until_complete_with_a_coroutine(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42


def test_run_until_complete_with_a_future(loop):
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "later")
    assert loop.run_until_complete(fut) == "later"


def test_run_until_complete_with_an_awaitable_object(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert loop.run_until_complete(Awaitable()) == "awaited"


@pytest.mark.parametrize("bad", [1, None, "coro", print])
def test_run_until_complete_with_a_non_awaitable_raises_type_error(loop, bad):
    with pytest.raises(TypeError):
        loop.run_until_complete(bad)


def test_run_until_complete_with_a_future_of_another_loop_raises_value_error(loop, new_loop):
    other_future = new_loop().create_future()
    with pytest.raises(ValueError):
        loop.run_until_complete(other_future)


def test_run_until_complete_raises_the_coroutines_exception(loop):
    async def main():
        await asyncio.sleep(0)
        raise LookupError("from coroutine")

    with pytest.raises(LookupError, match="from coroutine"):
        loop.run_until_complete(main())


def test_run_until_complete_stopped_before_the_future_completes(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        loop.run_until_complete(fut)
    assert not loop.is_running()


def test_run_until_complete_does_not_wait_for_other_callbacks(loop):
    pending = []
    fut = loop.create_future()
    fut.set_result(None)
    loop.call_later(3600, pending.append, "never")
    loop.run_until_complete(fut)
    assert pending == []


def test_gather_many_tasks(loop):
    async def worker(i):
        for _ in range(3):
            await asyncio.sleep(0)
        return i * i

    async def main():
        return await asyncio.gather(*(worker(i) for i in range(2000)))

    assert loop.run_until_complete(main()) == [i * i for i in range(2000)]


def test_gather_with_timers(loop):
    async def worker(i):
        await asyncio.sleep((i % 10) / 1000)
        return i

    async def main():
        return await asyncio.gather(*(worker(i) for i in range(500)))

    assert loop.run_until_complete(main()) == list(range(500))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_timeout_context_manager(loop):
    async def main():
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await asyncio.sleep(10)
        return loop.time() - start

    elapsed = loop.run_until_complete(main())
    assert 0.05 <= elapsed < 5


def test_wait_for(loop):
    async def slow():
        await asyncio.sleep(10)

    async def main():
        start = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.05)
        elapsed = loop.time() - start
        result = await asyncio.wait_for(asyncio.sleep(0.01, "in time"), 5)
        return elapsed, result

    elapsed, result = loop.run_until_complete(main())
    assert 0.05 <= elapsed < 5
    assert result == "in time"


def test_cancelling_a_task(loop):
    async def sleeper():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "cleaned up"

    async def main():
        task = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0)
        task.cancel()
        return await task

    assert loop.run_until_complete(main()) == "cleaned up"


def test_unretrieved_task_exception_is_reported_to_the_handler(loop, expect_exception_handler):
    async def fail():
        raise ZeroDivisionError

    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.wait([task]))
    del task
    gc.collect()
    [context] = expect_exception_handler
    assert context["message"] == "Task exception was never retrieved"
    assert isinstance(context["exception"], ZeroDivisionError)


def test_asyncgen_hooks_are_installed_while_running_and_restored(loop):
    before = sys.get_asyncgen_hooks()

    async def main():
        return sys.get_asyncgen_hooks()

    during = loop.run_until_complete(main())
    assert callable(during.firstiter)
    assert callable(during.finalizer)
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_finalizes_suspended_async_generators(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("finalized")

    gen = agen()

    async def main():
        assert await gen.__anext__() == 1

    loop.run_until_complete(main())
    assert events == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert events == ["finalized"]


def test_garbage_collected_async_generator_is_closed_by_the_loop(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)  # only possible when aclose() runs on the loop
            events.append("finalized")

    async def main():
        gen = agen()
        assert await gen.__anext__() == 1
        del gen
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)
        return list(events)

    assert loop.run_until_complete(main()) == ["finalized"]


def test_shutdown_asyncgens_reports_errors_to_the_handler(loop, expect_exception_handler):
    async def agen():
        try:
            yield 1
        finally:
            raise ValueError("during aclose")

    gen = agen()

    async def main():
        assert await gen.__anext__() == 1

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    [context] = expect_exception_handler
    assert "asynchronous generator" in context["message"]
    assert isinstance(context["exception"], ValueError)
    assert context["asyncgen"] is gen
