"""Child bootstrap of the conformance runner: runs one CPython test_asyncio module.

This script is started by ``run.py``, once per test module (and again to resume a module after a
hung or crashed test). It is not meant to be run by hand, although it can be::

    python tests/conformance/_child.py --loop ferroloop --module test_locks \
        --events /tmp/ev.jsonl --fault-file /tmp/fault.txt

What it does, in order:

1. With ``--loop ferroloop`` (or ``uvloop``, used only to cross-check the runner itself), install
   an event-loop policy that builds loops of that implementation, make it the *default* policy
   class too, and route the suite's own per-class loop hooks to it (see ``install_loop`` and
   ``route_module_hooks``). With ``--loop asyncio`` the loop hooks stay untouched: the stock loop is
   the reference.
2. In every mode, replace the suite's shared cleanup ``utils.TestCase.close_loop``: stdlib loops
   keep its original code, any other loop gets the public ``shutdown_default_executor()`` instead
   of the private ``_default_executor`` it reads (see ``route_close_loop``). Likewise, test_tasks'
   ``GatherTestsBase._run_loop`` stops reading the private ``loop._ready`` (see
   ``route_gather_run_loop``).
3. Load the module, drop the tests listed in ``--skip-file`` (not applicable, or already run by
   an earlier attempt) and, given ``--only-file`` (a ratchet retry), those not listed there. Run
   the rest with a ``unittest.TestResult`` that streams one JSON object per line to
   ``--events``: ``plan`` (all test ids of the module), ``start`` before each test, ``result``
   after it, ``fixture`` for class/module fixture errors, and ``done`` at the end. The parent
   reads that file while we run, so it knows which test is in progress if we hang or die.

Each event is written with a single ``os.write`` on an ``O_APPEND`` descriptor, so it reaches the
kernel at once and survives a crash of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import asyncio.unix_events
import faulthandler
import json
import os
import re
import sys
import time
import traceback
import unittest

SUITE_PACKAGE = "test.test_asyncio"

# Python 3.14 deprecates the event-loop policy system (3.16 removes it): the public names warn,
# and the default policy class is unix_events' private ``_DefaultEventLoopPolicy``, which
# ``asyncio.run`` and the package's deprecated ``DefaultEventLoopPolicy`` both look up. The
# runner uses the private, silent names there, as asyncio itself does.
POLICIES_DEPRECATED = sys.version_info >= (3, 14)

# The suite's per-class loop hooks, by module: each concrete TestCase class in these modules builds
# its loop by calling this method (e.g. ``asyncio.SelectorEventLoop(selectors.EpollSelector())``).
# Only these are routed: other modules have hooks of the same names that deliberately build a
# stdlib loop (test_runners' ``new_loop`` builds a mocked ``BaseEventLoop``), and those tests are
# listed as not applicable instead.
HOOKS_BY_MODULE = {
    "test_events": "create_event_loop",
    "test_sock_lowlevel": "create_event_loop",
    "test_sendfile": "create_event_loop",
    "test_server": "new_loop",
    "test_buffered_proto": "new_loop",
    "test_sslproto": "new_loop",
    "test_ssl": "new_loop",
}

# Fixtures that build a stdlib loop which the *applicable* tests of their class never use as the
# loop under test; the tracer ignores loops built directly by them. BaseEventLoopTests.setUp builds
# a mocked ``BaseEventLoop`` as ``self.loop``; not_applicable.txt lists the 37 tests that use it
# (not_applicable-3.13.txt the 2 that 3.13 adds), and the 4 others build their own loop with
# ``asyncio.new_event_loop()`` / ``new_test_loop()``. The exemption hides a new test of the class
# that uses ``self.loop``: a new suite's additions to it must be read, not trusted to pass.
FIXTURE_STDLIB_LOOPS = {
    "test_base_events": ["BaseEventLoopTests.setUp"],
}

# Longest traceback text kept per test (the tail is kept: it holds the exception itself).
MAX_DETAIL_CHARS = 6000


class EventWriter:
    """Appends JSON lines to the events file; one ``os.write`` per event."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        # A test may fork (subprocess tests, fork-safety tests): a forked child that somehow
        # returns into unittest must not write events in our name.
        self._pid = os.getpid()

    def emit(self, event: str, **fields) -> None:
        if os.getpid() != self._pid:
            return
        fields["event"] = event
        fields["t"] = time.time()
        os.write(self._fd, (json.dumps(fields) + "\n").encode())


# --------------------------------------------------------------------------------------------
# Which loop implementation to use, and the stdlib-leak tracer
# --------------------------------------------------------------------------------------------


def load_loop_implementation(name: str):
    """Return ``(factory, loop_class)`` for a third-party loop, or ``(None, None)`` for asyncio."""
    if name == "asyncio":
        return None, None
    if name == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop, ferroloop.Loop
    if name == "uvloop":
        # Not a target of this project: only a way to check the runner against the reference
        # figures in shared/conformance/README.md (uvloop is installed in the dev venv).
        import uvloop

        return uvloop.new_event_loop, uvloop.Loop
    raise SystemExit(f"unknown loop {name!r}")


class LoopTracer:
    """Records every stdlib event loop built while a test runs.

    ``asyncio.BaseEventLoop.__init__`` is wrapped: any loop that runs it and is not an instance of
    the loop class under test is a stdlib loop (``SelectorEventLoop``, the suite's ``TestLoop``,
    a subclass, ...). A test that passes while having built one has not shown anything about the
    loop under test, so the runner reports it as ``stdlib-leak`` rather than ``passed``.

    Exception: loops built directly by a fixture listed in ``FIXTURE_STDLIB_LOOPS``.
    """

    def __init__(self, loop_class) -> None:
        self.loop_class = loop_class
        self.built: list[str] = []
        self.exempt_codes: set = set()
        original_init = asyncio.BaseEventLoop.__init__
        tracer = self

        def traced_init(loop_self, *args, **kwargs):
            stdlib = loop_class is None or not isinstance(loop_self, loop_class)
            if stdlib and sys._getframe(1).f_code not in tracer.exempt_codes:
                cls = type(loop_self)
                tracer.built.append(f"{cls.__module__}.{cls.__qualname__}")
            return original_init(loop_self, *args, **kwargs)

        asyncio.BaseEventLoop.__init__ = traced_init

    def exempt_fixtures(self, module) -> None:
        """Resolve the module's entries of ``FIXTURE_STDLIB_LOOPS`` to code objects."""
        for qualname in FIXTURE_STDLIB_LOOPS.get(module.__name__.rpartition(".")[2], ()):
            obj = module
            for part in qualname.split("."):
                obj = getattr(obj, part)
            self.exempt_codes.add(obj.__code__)

    def reset(self) -> None:
        self.built.clear()


def install_loop(factory, loop_class) -> None:
    """Make every loop the suite builds through asyncio's public API a loop from ``factory``."""
    stock_policy = (
        asyncio.unix_events._DefaultEventLoopPolicy
        if POLICIES_DEPRECATED
        else asyncio.unix_events.DefaultEventLoopPolicy
    )

    # A subclass of the stock Unix policy, so the child-watcher API (used by the subprocess tests
    # and by ``close_loop`` up to 3.13) stays exactly as the suite expects.
    class ConformancePolicy(stock_policy):
        # BaseDefaultEventLoopPolicy.new_event_loop() calls self._loop_factory(); override both so
        # that nothing reaching either one can get a stdlib loop.
        _loop_factory = staticmethod(factory)

        def new_event_loop(self):
            return factory()

    ConformancePolicy.__name__ = ConformancePolicy.__qualname__ = (
        f"{loop_class.__name__}ConformancePolicy"
    )

    # Many tests call ``asyncio.set_event_loop_policy(None)`` in tearDown / tearDownModule; asyncio
    # then re-creates the policy from the default policy class: ``asyncio.DefaultEventLoopPolicy``
    # up to 3.13 (events.py imports it from the package namespace), unix_events'
    # ``_DefaultEventLoopPolicy`` from 3.14. Replace that name (and its source in unix_events), so
    # the default stays ours instead of falling back silently to the stdlib loop.
    if POLICIES_DEPRECATED:
        asyncio.unix_events._DefaultEventLoopPolicy = ConformancePolicy
        asyncio.events._set_event_loop_policy(ConformancePolicy())
    else:
        asyncio.DefaultEventLoopPolicy = ConformancePolicy
        asyncio.unix_events.DefaultEventLoopPolicy = ConformancePolicy
        asyncio.set_event_loop_policy(ConformancePolicy())

    # 3.13 names the platform's default loop class ``asyncio.EventLoop``, and 3.14's suite uses
    # it as a loop factory (test_taskgroups' ``loop_factory = asyncio.EventLoop``, test_tasks'
    # ``asyncio.run(main(), loop_factory=asyncio.EventLoop)``): it is "the default loop", so it
    # becomes the loop class under test, before any test module is imported. (The one test that
    # asserts it is a SelectorEventLoop is not applicable.)
    if hasattr(asyncio, "EventLoop"):
        asyncio.EventLoop = asyncio.unix_events.EventLoop = loop_class

    # ``test.test_asyncio.utils.TestCase.new_test_loop(gen)`` builds the suite's virtual-clock
    # ``TestLoop``. Called *without* a time generator it is just "give me a loop", so route it.
    # With a generator the test needs the virtual clock; those tests are not applicable and keep
    # the original (the tracer reports them as stdlib-leak if one is ever run).
    from test.test_asyncio import utils as test_utils

    # 3.14's suite keeps its own name for the default policy class (imported before this runs).
    if hasattr(test_utils, "DefaultEventLoopPolicy"):
        test_utils.DefaultEventLoopPolicy = ConformancePolicy

    original_new_test_loop = test_utils.TestCase.new_test_loop

    def new_test_loop(self, gen=None):
        if gen is not None:
            return original_new_test_loop(self, gen)
        loop = factory()
        self.set_event_loop(loop)
        return loop

    test_utils.TestCase.new_test_loop = new_test_loop


def route_module_hooks(module, factory) -> int:
    """Route the module's ``create_event_loop`` / ``new_loop`` hooks to ``factory``.

    ``asyncio.SelectorEventLoop`` itself is *not* replaced globally: tests subclass it, mock it and
    isinstance-check it. Instead each TestCase class of the module that has the hook gets it
    overridden. Returns the number of classes patched.
    """
    hook = HOOKS_BY_MODULE.get(module.__name__.rpartition(".")[2])
    if hook is None:
        return 0

    def routed_hook(self):
        return factory()

    routed_hook.__name__ = hook
    patched = 0
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase) and hasattr(obj, hook):
            setattr(obj, hook, routed_hook)
            patched += 1
    return patched


def route_close_loop() -> None:
    """Route ``test.test_asyncio.utils.TestCase.close_loop`` through public API for our loops.

    The suite's shared cleanup starts with ``if loop._default_executor is not None:``, a private
    attribute of the stdlib loop that a third-party loop need not have (uvloop has none). The
    replacement keeps the original decision, word for word, for stdlib loops (instances of
    ``asyncio.BaseEventLoop``: the reference run, and the suite's own fixture loops, some of which
    are mocks that cannot run at all). Any other loop is asked through the public API instead:
    while it is still open, ``loop.shutdown_default_executor()`` is run (a no-op when the loop has
    no default executor), then the loop is closed. The child-watcher wait that follows is kept.
    """
    from test import support
    from test.test_asyncio import utils as test_utils

    original = test_utils.TestCase.close_loop

    def close_loop(loop):
        if isinstance(loop, asyncio.BaseEventLoop):
            # Stdlib loop: exactly the original code.
            return original(loop)
        if not loop.is_closed():
            # Public route. The stdlib path above runs the loop only if an executor exists; this
            # one always runs it, so first drop test doubles that the test put on the instance in
            # place of the loop's own methods (test_tasks' test_error_in_call_soon replaces
            # ``call_soon`` by a function that raises): the cleanup must run the loop itself.
            drop_instance_method_overrides(loop)
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        if POLICIES_DEPRECATED:
            return None  # 3.14 removed the child watchers, and this wait with them

        # Unchanged from the original: wait (bounded) for subprocess-watcher threads.
        policy = support.maybe_get_event_loop_policy()
        if policy is not None:
            try:
                watcher = policy.get_child_watcher()
            except NotImplementedError:
                pass
            else:
                if isinstance(watcher, asyncio.ThreadedChildWatcher):
                    for thread in list(watcher._threads.values()):
                        thread.join(timeout=support.SHORT_TIMEOUT)
                        if thread.is_alive():
                            raise RuntimeError(
                                f"thread {thread} still alive: subprocess still running"
                            )
        return None

    test_utils.TestCase.close_loop = staticmethod(close_loop)


def drop_instance_method_overrides(loop) -> None:
    """Delete instance attributes of ``loop`` that shadow a method of its class."""
    try:
        attrs = vars(loop)
    except TypeError:  # no __dict__: nothing can have been overridden
        return
    for name in [n for n in attrs if callable(getattr(type(loop), n, None))]:
        delattr(loop, name)


# How many times the routed GatherTestsBase._run_loop runs the loop briefly (see below).
RUN_BRIEFLY_ROUNDS = 10


def route_gather_run_loop(module) -> None:
    """Route test_tasks' ``GatherTestsBase._run_loop`` through public API.

    The original is ``while loop._ready: test_utils.run_briefly(loop)``: it reads the stdlib
    loop's private ready queue to run the loop until no callback is pending. The replacement runs
    the loop briefly a fixed number of times instead, far more than the two or three hops of
    callbacks that ``gather()`` needs to settle. Running a few more iterations than needed cannot
    settle a future that the test has not resolved, so the tests' assertions mean the same.
    Applied for every ``--loop``, so the stdlib reference run checks this routing.
    """
    if module.__name__.rpartition(".")[2] != "test_tasks":
        return
    from test.test_asyncio import utils as test_utils

    def _run_loop(self, loop):
        for _ in range(RUN_BRIEFLY_ROUNDS):
            test_utils.run_briefly(loop)

    module.GatherTestsBase._run_loop = _run_loop


# --------------------------------------------------------------------------------------------
# Running the tests
# --------------------------------------------------------------------------------------------


def iter_tests(suite):
    """Flatten a (nested) TestSuite into its test cases, in order."""
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def tail(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


class StreamingResult(unittest.TestResult):
    """Collects one outcome per test and streams it to the events file.

    Outcomes: passed, failed, error, skipped, stdlib-leak. A test with several problems (a failing
    subtest and an error in tearDown, say) is reported by its first error or failure; errors take
    precedence over failures, as an error usually means the test did not get to check anything.
    """

    def __init__(self, writer: EventWriter, tracer: LoopTracer, hang_dump_after: float) -> None:
        super().__init__()
        self.writer = writer
        self.tracer = tracer
        self.hang_dump_after = hang_dump_after
        self.started: set[str] = set()
        # Fixture (setUpClass / setUpModule) errors and skips: prefix of the ids concerned -> info.
        self.fixture_outcomes: dict[str, tuple[str, str]] = {}
        self._current = None

    # -- per-test bookkeeping ------------------------------------------------------------------

    def startTest(self, test):
        super().startTest(test)
        test_id = test.id()
        self.started.add(test_id)
        self._current = {"id": test_id, "problems": [], "skip": None, "success": False}
        self.tracer.reset()
        self.writer.emit("start", id=test_id)
        if self.hang_dump_after > 0:
            # Shortly before the parent's watchdog kills us, dump every thread's stack into the
            # fault file, so a hung test comes with a traceback of where it hung.
            faulthandler.dump_traceback_later(self.hang_dump_after, exit=False)

    def stopTest(self, test):
        if self.hang_dump_after > 0:
            faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        cur, self._current = self._current, None
        if cur is None:
            return
        problems = cur["problems"]
        built = sorted(set(self.tracer.built))
        detail = ""
        if problems:
            errors = [p for p in problems if p[0] == "error"]
            outcome, detail = (errors or problems)[0]
        elif cur["skip"] is not None:
            outcome, detail = "skipped", cur["skip"]
        elif cur["success"]:
            outcome = "passed"
        else:
            # Should not happen; report rather than guess.
            outcome, detail = "error", "test ended without an outcome"
        if built and self.tracer.loop_class is not None:
            note = "built stdlib loop(s): " + ", ".join(built)
            if outcome == "passed":
                outcome, detail = "stdlib-leak", note
            elif outcome in ("failed", "error"):
                detail = f"{detail}\n({note})"
        self.writer.emit("result", id=cur["id"], outcome=outcome, detail=detail)

    def _problem(self, test, kind: str, err) -> None:
        text = tail(self._exc_info_to_string(err, test))
        if self._current is not None and test.id() == self._current["id"]:
            self._current["problems"].append((kind, text))
        elif isinstance(test, unittest.suite._ErrorHolder):
            self._fixture(test.id(), kind, text)
        elif self._current is not None:
            # A subtest: attribute it to the test that is running.
            self._current["problems"].append((kind, text))
        else:
            self._fixture(test.id(), kind, text)

    def _fixture(self, description: str, kind: str, text: str) -> None:
        """Record a class- or module-level fixture error/skip (description like
        ``setUpClass (test.test_asyncio.test_x.Cls)``)."""
        self.writer.emit("fixture", description=description, outcome=kind, detail=text)
        match = re.match(r"^(\w+) \((.+)\)$", description)
        if match and match.group(1) in ("setUpClass", "setUpModule"):
            self.fixture_outcomes.setdefault(match.group(2) + ".", (kind, text))

    # -- unittest.TestResult API -----------------------------------------------------------------

    def addSuccess(self, test):
        super().addSuccess(test)
        if self._current is not None:
            self._current["success"] = True

    def addError(self, test, err):
        super().addError(test, err)
        self._problem(test, "error", err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._problem(test, "failed", err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failed" if issubclass(err[0], test.failureException) else "error"
            self._problem(subtest, kind, err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if isinstance(test, unittest.suite._ErrorHolder):
            self._fixture(test.id(), "skipped", reason)
        elif self._current is not None:
            self._current["skip"] = reason

    def addExpectedFailure(self, test, err):
        # The suite expects this test to fail (on every loop); doing so is conforming.
        super().addExpectedFailure(test, err)
        if self._current is not None:
            self._current["success"] = True

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        if self._current is not None:
            self._current["problems"].append(("failed", "unexpected success"))


def read_id_file(path: str | None) -> set[str]:
    if not path:
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.split("\t")[0].strip() for line in f if line.strip()} - {""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", default="ferroloop", choices=["ferroloop", "asyncio", "uvloop"])
    parser.add_argument("--module", required=True, help="e.g. test_events")
    parser.add_argument("--events", required=True, help="JSON-lines file to append events to")
    parser.add_argument("--skip-file", help="file of test ids not to run, one per line")
    parser.add_argument("--only-file", help="file of test ids: run only these (minus skipped)")
    parser.add_argument("--fault-file", help="where faulthandler writes crash/hang tracebacks")
    parser.add_argument(
        "--hang-dump-after",
        type=float,
        default=0,
        help="dump all stacks to the fault file after a test ran this many seconds (0: never)",
    )
    args = parser.parse_args()

    writer = EventWriter(args.events)
    fault_file = open(args.fault_file, "a") if args.fault_file else sys.stderr  # noqa: SIM115
    faulthandler.enable(file=fault_file, all_threads=True)

    try:
        factory, loop_class = load_loop_implementation(args.loop)
    except Exception:  # reported to the parent, not swallowed
        writer.emit("module_error", detail=tail(traceback.format_exc()))
        return 2
    tracer = LoopTracer(loop_class)
    route_close_loop()
    if factory is not None:
        install_loop(factory, loop_class)

    name = f"{SUITE_PACKAGE}.{args.module}"
    try:
        suite = unittest.defaultTestLoader.loadTestsFromName(name)
    except unittest.SkipTest as exc:
        # e.g. test_windows_events raises SkipTest('Windows only') at import.
        writer.emit("module_skipped", reason=str(exc))
        writer.emit("done")
        return 0
    except Exception:  # reported to the parent, not swallowed
        writer.emit("module_error", detail=tail(traceback.format_exc()))
        return 2
    if unittest.defaultTestLoader.errors:
        writer.emit("module_error", detail=tail("\n".join(unittest.defaultTestLoader.errors)))
        return 2

    tracer.exempt_fixtures(sys.modules[name])
    route_gather_run_loop(sys.modules[name])
    if factory is not None:
        route_module_hooks(sys.modules[name], factory)

    tests = list(iter_tests(suite))
    writer.emit("plan", ids=[t.id() for t in tests])
    skip = read_id_file(args.skip_file)
    only = read_id_file(args.only_file) if args.only_file else None
    to_run = [t for t in tests if t.id() not in skip and (only is None or t.id() in only)]

    result = StreamingResult(writer, tracer, args.hang_dump_after)
    unittest.TestSuite(to_run).run(result)

    # Tests that never started: their class or module fixture failed or skipped them.
    for test in to_run:
        test_id = test.id()
        if test_id in result.started:
            continue
        outcome, detail = "error", "not run (no class/module fixture error was reported)"
        for prefix, (kind, text) in result.fixture_outcomes.items():
            if test_id.startswith(prefix):
                outcome, detail = kind, text
                break
        writer.emit("result", id=test_id, outcome=outcome, detail=detail)

    writer.emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
