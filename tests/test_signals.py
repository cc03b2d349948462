"""add_signal_handler / remove_signal_handler (Unix signals delivered with os.kill)."""

import asyncio
import contextvars
import os
import signal
import threading
import time

import pytest

FAR = 10

var = contextvars.ContextVar("var", default="unset")


@pytest.fixture(autouse=True)
def _restore_signal_state():
    """Put SIGUSR1/SIGUSR2 dispositions and the wakeup fd back as they were."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(wakeup_fd)


def test_signal_handler_is_called_on_the_loop_with_its_args(loop):
    calls = []

    def handler(*args):
        calls.append((args, asyncio.get_running_loop()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "a", 1)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == [(("a", 1), loop)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


def test_signal_from_another_thread_wakes_an_idle_loop(loop):
    calls = []

    def send():
        time.sleep(0.05)  # let the loop block in its poll on the far timer
        os.kill(os.getpid(), signal.SIGUSR1)

    thread = threading.Thread(target=send)
    loop.add_signal_handler(signal.SIGUSR1, lambda: (calls.append("handled"), loop.stop()))
    fallback = loop.call_later(FAR, loop.stop)
    loop.call_soon(thread.start)
    start = time.monotonic()
    loop.run_forever()
    thread.join()
    fallback.cancel()
    assert calls == ["handled"]
    assert time.monotonic() - start < FAR / 2


def test_signal_handler_runs_once_per_delivery(loop):
    calls = []

    def handler():
        calls.append(1)
        if len(calls) < 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == [1, 1, 1]


def test_replacing_a_signal_handler(loop):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, "old")
    loop.add_signal_handler(signal.SIGUSR1, lambda: (calls.append("new"), loop.stop()))
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == ["new"]


def test_remove_signal_handler_returns_whether_one_was_removed(loop):
    assert loop.remove_signal_handler(signal.SIGUSR2) is False
    loop.add_signal_handler(signal.SIGUSR2, print)
    assert signal.getsignal(signal.SIGUSR2) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert loop.remove_signal_handler(signal.SIGUSR2) is True
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR2) is False


def test_removing_the_sigint_handler_restores_default_int_handler(loop):
    saved = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, print)
        assert loop.remove_signal_handler(signal.SIGINT) is True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved)


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


@pytest.mark.parametrize("sig", [0, -1, 1000, signal.NSIG])
def test_invalid_signal_number_raises_value_error(loop, sig):
    with pytest.raises(ValueError):
        loop.add_signal_handler(sig, print)
    with pytest.raises(ValueError):
        loop.remove_signal_handler(sig)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_uncatchable_signal_raises_runtime_error(loop, sig):
    with pytest.raises(RuntimeError, match="cannot be caught"):
        loop.add_signal_handler(sig, print)


@pytest.mark.parametrize("sig", ["SIGUSR1", 10.0, None])
def test_non_int_signal_raises_type_error(loop, sig):
    with pytest.raises(TypeError):
        loop.add_signal_handler(sig, print)


def test_coroutine_function_or_coroutine_handler_raises_type_error(loop):
    async def handler():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, handler)
    coro = handler()
    try:
        with pytest.raises(TypeError):
            loop.add_signal_handler(signal.SIGUSR1, coro)
    finally:
        coro.close()
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_add_signal_handler_on_a_closed_loop_raises(loop):
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, print)


def test_add_signal_handler_outside_the_main_thread_raises_runtime_error(loop):
    outcome = []

    def from_thread():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError:
            outcome.append("RuntimeError")
        else:
            outcome.append("accepted")

    thread = threading.Thread(target=from_thread)
    thread.start()
    thread.join()
    assert outcome == ["RuntimeError"]
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signal_handler_runs_in_the_context_copied_at_add_time(loop):
    seen = []
    token = var.set("at add_signal_handler")
    try:
        loop.add_signal_handler(signal.SIGUSR1, lambda: (seen.append(var.get()), loop.stop()))
        var.set("later")
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        fallback = loop.call_later(FAR, loop.stop)
        loop.run_forever()
        fallback.cancel()
    finally:
        var.reset(token)
    assert seen == ["at add_signal_handler"]


def test_signal_received_while_not_running_is_handled_at_the_next_run(loop):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: (calls.append("handled"), loop.stop()))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert calls == []
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == ["handled"]


def test_sigint_handler_replaces_keyboard_interrupt(loop):
    saved = signal.getsignal(signal.SIGINT)
    calls = []
    try:
        loop.add_signal_handler(signal.SIGINT, lambda: (calls.append("SIGINT"), loop.stop()))
        loop.call_soon(os.kill, os.getpid(), signal.SIGINT)
        fallback = loop.call_later(FAR, loop.stop)
        loop.run_forever()  # must not raise KeyboardInterrupt
        fallback.cancel()
        assert loop.remove_signal_handler(signal.SIGINT) is True
    finally:
        signal.signal(signal.SIGINT, saved)
    assert calls == ["SIGINT"]


def test_exception_in_signal_handler_goes_to_the_exception_handler(loop, expect_exception_handler):
    def handler():
        loop.stop()
        raise ValueError("in signal handler")

    loop.add_signal_handler(signal.SIGUSR1, handler)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    [context] = expect_exception_handler
    assert isinstance(context["exception"], ValueError)
    assert context["message"].startswith("Exception in callback")
