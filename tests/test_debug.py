"""Debug mode: flag, PYTHONASYNCIODEBUG, slow callbacks, thread checks, source tracebacks."""

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

NEW_LOOP_CODE = {
    "ferroloop": "import ferroloop; loop = ferroloop.new_event_loop()",
    "asyncio": "import asyncio; loop = asyncio.new_event_loop()",
}


def expected_default_debug():
    return sys.flags.dev_mode or (
        not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))
    )


def test_set_debug_and_get_debug(loop):
    assert loop.get_debug() == expected_default_debug()
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


@pytest.mark.parametrize(
    ("env_value", "extra_args", "expected"),
    [(None, [], "False"), ("1", [], "True"), (None, ["-X", "dev"], "True")],
    ids=["default", "debug-env-var", "dev-mode"],
)
def test_new_loops_follow_the_debug_environment(loop_kind, env_value, extra_args, expected):
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    if env_value is not None:
        env["PYTHONASYNCIODEBUG"] = env_value
    code = NEW_LOOP_CODE[loop_kind] + "; print(loop.get_debug()); loop.close()"
    proc = subprocess.run(
        [sys.executable, *extra_args, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_slow_callback_is_logged_in_debug_mode(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    assert loop.slow_callback_duration == 0.1
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    def slow_callback():
        time.sleep(0.05)  # simulated CPU-bound work: the subject of the test

    loop.call_soon(slow_callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(messages) == 1, messages
    assert messages[0].startswith("Executing")
    assert "slow_callback" in messages[0]
    assert "took" in messages[0] and "seconds" in messages[0]


def test_slow_task_step_is_logged_as_the_task(loop, caplog):
    # asyncio names the task, not the handle of its step (TaskStepMethWrapper).
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    async def slow_coroutine():
        time.sleep(0.05)  # simulated CPU-bound work: the subject of the test

    task = loop.create_task(slow_coroutine(), name="slowpoke")
    loop.run_until_complete(task)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(messages) == 1, messages
    assert messages[0].startswith("Executing <Task "), messages[0]
    assert "name='slowpoke'" in messages[0] and "slow_coroutine()" in messages[0]
    assert "Handle" not in messages[0] and "TaskStepMethWrapper" not in messages[0]


def test_slow_callback_is_not_logged_without_debug(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(False)
    loop.slow_callback_duration = 0.02
    loop.call_soon(time.sleep, 0.05)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_fast_callbacks_are_not_logged_in_debug_mode(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    for _ in range(10):
        loop.call_soon(int)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [r for r in caplog.records if r.name == "asyncio"] == []


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_non_threadsafe_call_from_another_thread_raises_in_debug_mode(loop, method):
    loop.set_debug(True)
    outcome = []
    args = {"call_soon": (print,), "call_later": (0, print), "call_at": (0, print)}[method]

    def from_thread():
        try:
            getattr(loop, method)(*args)
        except RuntimeError as exc:
            outcome.append(str(exc))
        else:
            outcome.append("no error")
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=from_thread)
    fallback = loop.call_later(10, loop.stop)
    loop.call_soon(thread.start)
    loop.run_forever()
    thread.join()
    fallback.cancel()
    assert outcome == [
        "Non-thread-safe operation invoked on an event loop other than the current one"
    ]


@pytest.mark.parametrize("bad", [1, "coroutine function"], ids=["not-callable", "coroutine"])
def test_call_soon_checks_its_callback_in_debug_mode(loop, bad):
    async def coroutine_function():
        pass

    callback = coroutine_function if bad == "coroutine function" else bad
    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.call_soon(callback)


def test_handles_have_a_source_traceback_in_debug_mode(loop):
    loop.set_debug(True)
    line = sys._getframe().f_lineno + 1
    handle = loop.call_soon(print)
    timer_line = sys._getframe().f_lineno + 1
    timer = loop.call_later(10, print)
    for h, expected_line in ((handle, line), (timer, timer_line)):
        frame = h._source_traceback[-1]
        assert frame.filename == __file__
        assert frame.lineno == expected_line
        assert frame.name == "test_handles_have_a_source_traceback_in_debug_mode"
    handle.cancel()
    timer.cancel()


def test_handles_have_no_source_traceback_without_debug(loop):
    loop.set_debug(False)
    handle = loop.call_soon(print)
    assert handle._source_traceback is None
    handle.cancel()


def test_debug_mode_passes_source_traceback_to_the_exception_handler(
    loop, expect_exception_handler
):
    loop.set_debug(True)

    def fail():
        raise ValueError

    loop.call_soon(fail)
    loop.call_soon(loop.stop)
    loop.run_forever()
    [context] = expect_exception_handler
    assert context["source_traceback"][-1].filename == __file__


def test_debug_mode_futures_record_their_creation(loop):
    loop.set_debug(True)
    fut = loop.create_future()
    task = loop.create_task(asyncio.sleep(0))
    for created in (fut, task):
        assert any(frame.filename == __file__ for frame in created._source_traceback)
    loop.run_until_complete(task)
