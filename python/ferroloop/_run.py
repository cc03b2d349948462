"""``ferroloop.run``: ``asyncio.run`` on a ferroloop loop, on every supported Python.

It takes what ``asyncio.run`` takes on the running Python, and what ``uvloop.run`` takes
(``loop_factory``, ``debug``, further keyword arguments passed on to ``asyncio.run``), and
behaves as ``asyncio.run`` does there: 3.12+ calls ``asyncio.run`` itself, 3.11 its
``asyncio.Runner`` (which has ``loop_factory`` where ``asyncio.run`` has not yet), and 3.10,
which has neither, runs 3.10's ``asyncio.run`` sequence on a loop from ``loop_factory``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine

from ._loop import new_event_loop

TYPE_CHECKING = False  # (see __init__)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _T = TypeVar("_T")


def run(
    main: Coroutine[Any, Any, _T],
    *,
    debug: bool | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    **run_kwargs: Any,
) -> _T:
    """Run the coroutine ``main`` on a new ferroloop loop, close the loop, return the result.

    Like ``asyncio.run(main, debug=debug, loop_factory=ferroloop.new_event_loop)``;
    ``loop_factory=None`` means ``ferroloop.new_event_loop``.
    """
    if loop_factory is None:
        loop_factory = new_event_loop
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=loop_factory, **run_kwargs)
    if asyncio._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=loop_factory, **run_kwargs) as runner:
            return runner.run(main)
    if run_kwargs:
        name = next(iter(run_kwargs))
        raise TypeError(f"run() got an unexpected keyword argument {name!r}")
    return _run_310(main, debug, loop_factory)


def _run_310(main, debug, loop_factory):
    # 3.10's asyncio.run, on a loop from loop_factory.
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = loop_factory()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during asyncio.run() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
