"""ferroloop's public API: Loop, new_event_loop, EventLoopPolicy, install(), run().

These tests are ferroloop-only by nature (marked ``ferroloop_only``); they are
skipped when ferroloop cannot be imported.
"""

import asyncio
import inspect
import subprocess
import sys
import warnings

import pytest

ferroloop = pytest.importorskip("ferroloop", reason="ferroloop is not importable")

pytestmark = pytest.mark.ferroloop_only


async def running_loop():
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


def current_policy():
    """asyncio's current policy, read without the deprecation warning of 3.14+."""
    get = getattr(asyncio.events, "_get_event_loop_policy", asyncio.get_event_loop_policy)
    return get()


def run_python(code, *args):
    """Run ``code`` in a child interpreter (this one) with every warning an error."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-X", "dev", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
    abstract = getattr(asyncio.events, "_AbstractEventLoopPolicy", None)
    assert isinstance(policy, abstract or asyncio.AbstractEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()


def test_install_makes_asyncio_use_ferroloop():
    # tests/conftest.py restores the previous policy after each test.
    ferroloop.install()
    assert isinstance(current_policy(), ferroloop.EventLoopPolicy)
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


# -- imports and policies on every Python (policies are deprecated from 3.14, gone in 3.16) ---


def test_import_is_silent_and_touches_no_policy():
    # Under -W error: on 3.14+ building EventLoopPolicy at import made asyncio warn.
    proc = run_python(
        "import asyncio.events, ferroloop\n"
        "assert 'EventLoopPolicy' not in vars(ferroloop), 'EventLoopPolicy made at import'\n"
        "assert asyncio.events._event_loop_policy is None, 'a policy was created at import'\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_install_and_event_loop_policy_make_asyncio_warn_on_nobodys_behalf():
    proc = run_python(
        "import asyncio, ferroloop\n"
        "assert ferroloop.EventLoopPolicy.__name__ == 'EventLoopPolicy'\n"
        "assert ferroloop.EventLoopPolicy.__module__ == 'ferroloop'\n"
        "ferroloop.install()\n"
        "loop = asyncio.new_event_loop()\n"
        "assert isinstance(loop, ferroloop.Loop), loop\n"
        "loop.close()\n"
        "async def main():\n"
        "    return asyncio.get_running_loop()\n"
        "assert isinstance(asyncio.run(main()), ferroloop.Loop)\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_a_users_own_deprecated_policy_call_still_warns():
    if sys.version_info < (3, 14):
        pytest.skip("policies are deprecated from Python 3.14")
    with pytest.warns(DeprecationWarning, match="set_event_loop_policy"):
        asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())


def test_dir_and_all_name_event_loop_policy():
    assert "EventLoopPolicy" in ferroloop.__all__
    assert hasattr(ferroloop, "EventLoopPolicy")
    with pytest.raises(AttributeError, match="no_such_name"):
        ferroloop.no_such_name  # noqa: B018


@pytest.fixture
def without_policies(monkeypatch):
    """Make ferroloop see a Python whose asyncio has no policies (3.16+)."""
    from ferroloop import _policy

    monkeypatch.setattr(_policy, "_POLICIES_DEPRECATED", True)
    monkeypatch.setattr(_policy, "_policy_class", None)
    monkeypatch.delattr(asyncio.events, "_get_event_loop_policy", raising=False)
    monkeypatch.delattr(asyncio.events, "_set_event_loop_policy", raising=False)
    monkeypatch.setattr(asyncio, "new_event_loop", asyncio.new_event_loop)
    monkeypatch.setattr(asyncio.events, "new_event_loop", asyncio.events.new_event_loop)
    assert not _policy.has_policies()
    return _policy


def test_without_policies_install_still_makes_asyncio_use_ferroloop(without_policies):
    with pytest.raises(AttributeError, match="no longer has"):
        ferroloop.EventLoopPolicy  # noqa: B018
    assert not hasattr(ferroloop, "EventLoopPolicy")
    ferroloop.install()
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()


def test_without_policies_the_helper_replaces_new_event_loop_and_undoes(without_policies):
    stock = asyncio.new_event_loop
    undo = without_policies.use_ferroloop_for_every_new_loop()
    loop = asyncio.events.new_event_loop()
    loop.close()
    assert isinstance(loop, ferroloop.Loop)
    undo()
    assert asyncio.new_event_loop is stock


def test_every_new_loop_helper_survives_a_policy_reset_and_undoes():
    from ferroloop import _policy

    before = asyncio.events._event_loop_policy
    undo = _policy.use_ferroloop_for_every_new_loop()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert isinstance(asyncio.run(running_loop()), ferroloop.Loop)
            # A program that resets the policy gets the default policy class: ours now.
            getattr(asyncio.events, "_set_event_loop_policy", asyncio.set_event_loop_policy)(None)
            assert isinstance(asyncio.run(running_loop()), ferroloop.Loop)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert asyncio.DefaultEventLoopPolicy is ferroloop.EventLoopPolicy
    finally:
        undo()
    assert asyncio.events._event_loop_policy is before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert asyncio.DefaultEventLoopPolicy is not ferroloop.EventLoopPolicy
    loop = asyncio.new_event_loop()
    loop.close()
    assert not isinstance(loop, ferroloop.Loop)


# -- ferroloop.run: asyncio.run's signature and behaviour on each Python, and uvloop.run's ----


def test_run_accepts_what_asyncio_run_accepts():
    ours = inspect.signature(ferroloop.run).parameters
    for name, param in inspect.signature(asyncio.run).parameters.items():
        assert name in ours, name
        assert ours[name].kind == param.kind, name


def test_run_accepts_uvloop_run_arguments():
    made = []

    def factory():
        made.append(ferroloop.new_event_loop())
        return made[-1]

    async def main():
        loop = await running_loop()
        return loop, loop.get_debug()

    assert ferroloop.run(main(), loop_factory=factory, debug=True) == (made[0], True)
    coro = asyncio.sleep(0)
    with pytest.raises(TypeError, match="no_such_argument"):
        ferroloop.run(coro, no_such_argument=1)
    coro.close()


class _Awaitable:
    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return "awaited"


@pytest.mark.parametrize("kind", ["awaitable", "not-awaitable", "future"])
def test_run_treats_odd_arguments_as_asyncio_run_does(kind):
    def outcome(run):
        main = {"awaitable": _Awaitable, "not-awaitable": lambda: 42, "future": None}[kind]
        if main is None:
            main = asyncio.Future  # no loop at this point: fails the same way on both
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return ("result", run(main()))
            except Exception as exc:
                return ("raised", type(exc))

    assert outcome(ferroloop.run) == outcome(asyncio.run)


def test_run_reports_a_task_failing_during_shutdown_as_asyncio_run_does():
    def reports(run):
        seen = []

        async def stubborn():
            try:
                await asyncio.sleep(10)
            finally:
                raise ValueError("while cancelled")

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda loop, ctx: seen.append(ctx["message"]))
            task = loop.create_task(stubborn())
            await asyncio.sleep(0)
            return task

        assert not run(main()).cancelled()
        return seen

    assert reports(ferroloop.run) == reports(asyncio.run)
    assert reports(ferroloop.run) == ["unhandled exception during asyncio.run() shutdown"]
