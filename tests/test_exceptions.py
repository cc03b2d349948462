"""Exception handler plumbing, and KeyboardInterrupt/SystemExit/SIGINT propagation."""

import asyncio
import contextvars
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time

import pytest

FAR = 10


def raise_value_error():
    raise ValueError("boom")


def test_exception_in_callback_goes_to_the_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, context: calls.append((lp, context)))
    handle = loop.call_soon(raise_value_error)
    after = []
    loop.call_soon(after.append, "loop kept running")
    loop.call_soon(loop.stop)
    loop.run_forever()

    assert after == ["loop kept running"]
    [(handler_loop, context)] = calls
    assert handler_loop is loop
    assert context["message"].startswith("Exception in callback")
    assert "raise_value_error" in context["message"]
    assert isinstance(context["exception"], ValueError)
    assert str(context["exception"]) == "boom"
    assert context["handle"] is handle


@pytest.mark.parametrize("source", ["callback", "task"])
def test_custom_handler_runs_in_the_context_of_the_failed_handle_or_task(loop, source):
    # 3.12+ (gh-96704): a custom handler runs in the context of the task, future or handle
    # named in the context dict; 3.10 and 3.11 run it in the loop's own context.
    var = contextvars.ContextVar("var", default="loop")
    seen = []
    loop.set_exception_handler(lambda lp, context: seen.append(var.get()))

    def callback():
        var.set("failed")
        raise ValueError("boom")

    async def coro():
        callback()

    async def main():
        if source == "callback":
            loop.call_soon(callback)
        else:
            loop.create_task(coro())  # not kept: its exception is reported when it is freed
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    loop.run_until_complete(main())
    assert seen == ["failed" if sys.version_info >= (3, 12) else "loop"]


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_callback_arguments_in_the_message_and_repr_only_in_debug_mode_on_313(
    loop, expect_exception_handler, debug
):
    loop.set_debug(debug)

    def fails(secret):
        raise ValueError("boom")

    handle = loop.call_soon(fails, "s3cret")
    shown = debug or sys.version_info < (3, 13)
    assert ("'s3cret'" in repr(handle)) == shown
    loop.call_soon(loop.stop)
    loop.run_forever()
    [context] = expect_exception_handler
    assert ("fails('s3cret')" in context["message"]) == shown
    assert ("fails()" in context["message"]) != shown


def test_exception_in_timer_callback_reports_the_timer_handle(loop, expect_exception_handler):
    handle = loop.call_later(0, raise_value_error)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    [context] = expect_exception_handler
    assert context["handle"] is handle
    assert isinstance(context["exception"], ValueError)


def test_exception_in_reader_callback_goes_to_the_handler(loop, expect_exception_handler):
    r, w = socket.socketpair()
    try:
        r.setblocking(False)

        def on_readable():
            loop.remove_reader(r)
            loop.call_soon(loop.stop)
            raise_value_error()

        loop.add_reader(r, on_readable)
        w.send(b"x")
        fallback = loop.call_later(FAR, loop.stop)
        loop.run_forever()
        fallback.cancel()
    finally:
        r.close()
        w.close()
    [context] = expect_exception_handler
    assert isinstance(context["exception"], ValueError)
    assert context["message"].startswith("Exception in callback")


def test_get_exception_handler_defaults_to_none(new_loop):
    assert new_loop().get_exception_handler() is None


def test_set_and_get_exception_handler(loop):
    def handler(lp, context):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


@pytest.mark.parametrize("bad", [1, "handler", object()])
def test_non_callable_exception_handler_raises_type_error(loop, bad):
    with pytest.raises(TypeError):
        loop.set_exception_handler(bad)


def test_call_exception_handler_passes_the_context_through(loop, expect_exception_handler):
    context = {"message": "custom", "custom_key": 42}
    loop.call_exception_handler(context)
    assert expect_exception_handler == [context]


def test_default_handler_logs_to_the_asyncio_logger(new_loop, caplog):
    lp = new_loop()
    caplog.set_level(logging.ERROR, logger="asyncio")
    lp.call_soon(raise_value_error)
    lp.call_soon(lp.stop)
    lp.run_forever()
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    [record] = records
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("Exception in callback")
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


def test_default_exception_handler_can_be_called_directly(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop.default_exception_handler({"message": "hello from test", "exception": KeyError("k")})
    [record] = [r for r in caplog.records if r.name == "asyncio"]
    assert record.getMessage().startswith("hello from test")
    assert isinstance(record.exc_info[1], KeyError)


def test_default_handler_without_a_message(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop.default_exception_handler({"exception": KeyError("k")})
    [record] = [r for r in caplog.records if r.name == "asyncio"]
    assert record.getMessage().startswith("Unhandled exception in event loop")


def test_failing_custom_handler_falls_back_to_default_handler(loop, caplog):
    def bad_handler(lp, context):
        raise RuntimeError("handler failed")

    caplog.set_level(logging.ERROR, logger="asyncio")
    loop.set_exception_handler(bad_handler)
    loop.call_soon(raise_value_error)
    loop.call_soon(loop.stop)
    loop.run_forever()
    [record] = [r for r in caplog.records if r.name == "asyncio"]
    assert record.getMessage().startswith("Unhandled error in exception handler")
    assert isinstance(record.exc_info[1], RuntimeError)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_callback_propagates_out_of_run_forever(loop, exc_type):
    calls = []

    def raiser():
        calls.append("raiser")
        raise exc_type()

    loop.call_soon(raiser)
    loop.call_soon(calls.append, "next")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None

    # The loop is usable afterwards, and the remaining callback is neither
    # lost nor duplicated; the raising one is not run again.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["raiser", "next"]
    assert loop.run_until_complete(asyncio.sleep(0, "still works")) == "still works"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_callback_propagates_out_of_run_until_complete(loop, exc_type):
    def raiser():
        raise exc_type()

    async def main():
        loop.call_soon(raiser)
        await asyncio.sleep(FAR)

    task = loop.create_task(main())
    with pytest.raises(exc_type):
        loop.run_until_complete(task)
    assert not loop.is_running()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_coroutine_propagates_out_of_run_until_complete(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


@pytest.fixture
def default_sigint_handler():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_interrupts_an_idle_run_forever(loop, default_sigint_handler):
    def send_sigint():
        # Let the loop block in its poll on the far timer first.
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=send_sigint)
    fallback = loop.call_later(FAR, loop.stop)
    loop.call_soon(thread.start)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    finally:
        thread.join()
    assert time.monotonic() - start < FAR / 2
    assert not loop.is_running()
    fallback.cancel()
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


def test_sigint_interrupts_run_until_complete(loop, default_sigint_handler):
    async def main():
        loop.call_later(0.01, os.kill, os.getpid(), signal.SIGINT)
        await asyncio.sleep(FAR)

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(main())
    assert time.monotonic() - start < FAR / 2
    assert not loop.is_running()


@pytest.mark.parametrize("source", ["timer", "reader"])
def test_keyboard_interrupt_from_timer_or_reader_callback_propagates(loop, source):
    hooks = sys.get_asyncgen_hooks()

    def raiser():
        raise KeyboardInterrupt

    r, w = socket.socketpair()
    try:
        if source == "timer":
            loop.call_later(0.001, raiser)
        else:
            r.setblocking(False)
            loop.add_reader(r, raiser)
            w.send(b"x")
        fallback = loop.call_later(FAR, loop.stop)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        fallback.cancel()
        loop.remove_reader(r)
    finally:
        r.close()
        w.close()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    assert sys.get_asyncgen_hooks() == hooks
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
