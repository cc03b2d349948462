"""ferroloop: a drop-in asyncio event loop for CPython, written in Rust.

Use it in one line::

    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # Python 3.12+
    ferroloop.run(main())                                         # any version
    ferroloop.install()                                           # policy for the program
"""

from __future__ import annotations

import asyncio
import sys

from . import _interpreter  # noqa: F401  (first: refuses a subinterpreter)
from ._ferroloop import BUILD_PROFILE, __version__
from ._loop import Loop, new_event_loop

__all__ = [
    "BUILD_PROFILE",
    "EventLoopPolicy",
    "Loop",
    "__version__",
    "install",
    "new_event_loop",
    "run",
]


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event-loop policy whose loops are ferroloop loops.

    A subclass of the stock policy, so everything else it does (the child watcher API on
    Unix, ``get_event_loop`` in the main thread) stays as asyncio has it.
    """

    def new_event_loop(self) -> Loop:
        return new_event_loop()


def install() -> None:
    """Make ferroloop the event loop of every ``asyncio.new_event_loop()``/``asyncio.run()``."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Run a coroutine on a new ferroloop loop and close it, like ``asyncio.run``."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    return _run_310(main, debug)


def _run_310(main, debug):
    # asyncio.Runner arrived in 3.11; this is asyncio.run's sequence for 3.10.
    if asyncio._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
