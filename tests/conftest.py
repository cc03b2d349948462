"""Shared fixtures for ferroloop's own test suite.

Every test that asks for ``loop`` (or ``new_loop``) runs twice: once on
ferroloop and once on the standard library's asyncio loop, which is the
reference behaviour.  A test that fails on the ``asyncio`` param is a broken
test; one that fails only on ``ferroloop`` is a ferroloop bug.

Each such test (and each test marked ``ferroloop_only``) gets a time limit,
TEST_TIMEOUT.  The ``loop`` fixture records every call to the loop's exception
handler and fails the test at teardown if there was any, unless the test asked
for the ``expect_exception_handler`` fixture (which returns the recorded
contexts).
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import signal
import socket
import sys
import threading

import pytest

try:
    import ferroloop
except Exception as exc:  # any import failure means: skip the ferroloop params
    ferroloop = None
    FERROLOOP_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    FERROLOOP_IMPORT_ERROR = None

LOOP_KINDS = ("ferroloop", "asyncio")

# Per-test time limit, in seconds (the FERROLOOP_TEST_TIMEOUT environment
# variable overrides it).  SIGALRM raises TestTimeout in the main thread; it
# derives from SystemExit so that an event loop propagates it out of a
# callback or a task instead of handing it to the exception handler.
TEST_TIMEOUT = float(os.environ.get("FERROLOOP_TEST_TIMEOUT", "20"))
# Last resort if the main thread never runs Python code again (for example a
# loop stuck in native code that ignores signals): dump every thread's stack
# and end the process.
HARD_TIMEOUT = TEST_TIMEOUT + 20


class TestTimeout(SystemExit):
    """Raised in the main thread when a test exceeds TEST_TIMEOUT seconds."""

    __test__ = False  # not a test class, despite its name


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "ferroloop_only: the test exercises ferroloop's own API and has no asyncio "
        "counterpart; it is skipped when ferroloop cannot be imported",
    )
    # A run started in the background of a non-interactive shell (`make test &`, nohup, some
    # CI runners) inherits SIGINT ignored, and an ignored signal stays ignored across exec:
    # the child processes the tests interrupt with SIGINT (Ctrl+C) would never see it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config):
    if FERROLOOP_IMPORT_ERROR is None:
        return f"ferroloop: {ferroloop.__file__}"
    return f"ferroloop: NOT importable ({FERROLOOP_IMPORT_ERROR}); its params are skipped"


def require_ferroloop():
    """Skip the current test if ferroloop cannot be imported; return the module."""
    if ferroloop is None:
        pytest.skip(f"ferroloop is not importable: {FERROLOOP_IMPORT_ERROR}")
    return ferroloop


def loop_factory_for(kind):
    if kind == "ferroloop":
        return require_ferroloop().new_event_loop
    return asyncio.new_event_loop


def _is_loop_test(request):
    """True for this suite's tests: those using the loop fixtures or marked ferroloop_only.

    Other tests under tests/ (the conformance ratchet, the benchmark smoke tests)
    have their own time budgets and are left alone.
    """
    return "loop_kind" in request.fixturenames or bool(
        request.node.get_closest_marker("ferroloop_only")
    )


@pytest.fixture(autouse=True)
def _time_limit(request):
    """Fail a loop test (setup and teardown included) that runs for too long."""
    if not _is_loop_test(request):
        yield
        return

    def on_alarm(signum, frame):
        raise TestTimeout(f"test exceeded its time limit of {TEST_TIMEOUT:g} s")

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    faulthandler.dump_traceback_later(HARD_TIMEOUT, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if in_main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _restore_asyncio_global_state():
    """Undo changes a test makes to the event loop policy and asyncgen hooks.

    The policy is saved as asyncio holds it (None until first needed), read and written
    directly: the public functions are deprecated from Python 3.14 and would warn.
    """
    events = asyncio.events
    has_policy = hasattr(events, "_event_loop_policy")
    policy = events._event_loop_policy if has_policy else None
    hooks = sys.get_asyncgen_hooks()
    try:
        yield
    finally:
        if has_policy:
            events._event_loop_policy = policy
        sys.set_asyncgen_hooks(*hooks)


@pytest.fixture
def pair():
    """A connected pair of non-blocking Unix sockets, closed afterwards."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request):
    """'ferroloop' or 'asyncio'; the ferroloop param is skipped if it is not importable."""
    if request.param == "ferroloop":
        require_ferroloop()
    return request.param


@pytest.fixture
def loop_factory(loop_kind):
    """The current kind's new_event_loop function (loops it makes are not tracked)."""
    return loop_factory_for(loop_kind)


@pytest.fixture
def new_loop(loop_factory):
    """Factory of fresh loops of the current kind, all closed at teardown.

    Unlike ``loop``, these loops keep their default exception handler.
    """
    factory = loop_factory
    created = []

    def make():
        created.append(factory())
        return created[-1]

    yield make
    for lp in created:
        if not lp.is_closed() and not lp.is_running():
            lp.close()


class _HandlerRecorder:
    def __init__(self):
        self.calls = []
        self.expected = False

    def __call__(self, loop, context):
        self.calls.append(context)


@pytest.fixture
def _handler_recorder():
    return _HandlerRecorder()


@pytest.fixture
def loop(new_loop, _handler_recorder):
    """A fresh loop whose exception handler must not be called unexpectedly."""
    lp = new_loop()
    lp.set_exception_handler(_handler_recorder)
    yield lp
    if not lp.is_closed() and not lp.is_running():
        lp.close()
    # Let "Task was destroyed but it is pending" and similar reports happen now.
    gc.collect()
    if _handler_recorder.calls and not _handler_recorder.expected:
        details = "\n".join(_format_context(ctx) for ctx in _handler_recorder.calls)
        pytest.fail(
            f"loop exception handler was called unexpectedly "
            f"{len(_handler_recorder.calls)} time(s):\n{details}",
            pytrace=False,
        )


@pytest.fixture
def expect_exception_handler(loop, _handler_recorder):
    """Declare that the test expects exception handler calls; returns the recorded contexts."""
    _handler_recorder.expected = True
    return _handler_recorder.calls


def _format_context(context):
    parts = [f"  message={context.get('message')!r}"]
    for key in sorted(context):
        if key != "message":
            parts.append(f"    {key}={context[key]!r}")
    return "\n".join(parts)
