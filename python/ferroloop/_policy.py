"""Event-loop policies: everything ferroloop does with them, in one module.

asyncio's policy system is deprecated from Python 3.14 (each public name of it warns:
``asyncio.DefaultEventLoopPolicy``, ``get_event_loop_policy()``, ``set_event_loop_policy()``,
...) and goes away in 3.16. So ferroloop:

- touches no policy when it is imported: ``ferroloop.EventLoopPolicy`` is made on first use
  (``ferroloop.__getattr__`` calls ``event_loop_policy_class()``);
- on 3.14 and 3.15 reaches the policy machinery through the private functions that asyncio's
  own ``asyncio.run`` uses (``asyncio.events._get/_set_event_loop_policy``), so that
  ``ferroloop.install()`` and ``ferroloop.EventLoopPolicy`` make asyncio warn on nobody's
  behalf: a user who calls ``asyncio.set_event_loop_policy`` still gets asyncio's warning;
- on a Python without policies (3.16+), ``install()`` and ``use_ferroloop_for_every_new_loop()``
  replace ``asyncio.new_event_loop`` instead, which ``asyncio.run()`` and ``asyncio.Runner``
  call when they are given no ``loop_factory``; ``EventLoopPolicy`` raises AttributeError.

The way to use ferroloop that needs none of this is ``loop_factory=ferroloop.new_event_loop``.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import sys
from collections.abc import Callable

TYPE_CHECKING = False  # (see __init__)
if TYPE_CHECKING:
    from typing import Any

# From 3.14 on, asyncio's public policy names emit DeprecationWarning.
_POLICIES_DEPRECATED = sys.version_info >= (3, 14)

_policy_class: type | None = None


def _stock_policy_class() -> type | None:
    """This Python's default (Unix) policy class, reached without a warning; None if gone."""
    if not _POLICIES_DEPRECATED:
        return asyncio.DefaultEventLoopPolicy
    unix_events = sys.modules.get("asyncio.unix_events")
    return getattr(unix_events, "_DefaultEventLoopPolicy", None)


def _policy_functions() -> tuple[Callable, Callable] | None:
    """``(get_policy, set_policy)`` of this Python, without warnings; None without policies."""
    if not _POLICIES_DEPRECATED:
        return asyncio.get_event_loop_policy, asyncio.set_event_loop_policy
    get = getattr(asyncio.events, "_get_event_loop_policy", None)
    set_ = getattr(asyncio.events, "_set_event_loop_policy", None)
    if get is None or set_ is None or _stock_policy_class() is None:
        return None
    return get, set_


def has_policies() -> bool:
    """Whether this Python still has asyncio's event-loop policies."""
    return _policy_functions() is not None


def event_loop_policy_class() -> type:
    """``ferroloop.EventLoopPolicy``, made on first use (a subclass of the stock policy).

    Raises AttributeError on a Python without policies, so that ``ferroloop.EventLoopPolicy``
    behaves there like any missing attribute (``hasattr`` is False).
    """
    global _policy_class
    if _policy_class is not None:
        return _policy_class
    base: Any = _stock_policy_class()
    if base is None or not has_policies():
        raise AttributeError(
            "ferroloop.EventLoopPolicy needs asyncio's event-loop policies, which this Python "
            f"({sys.version.split()[0]}) no longer has; use "
            "asyncio.run(main(), loop_factory=ferroloop.new_event_loop) or ferroloop.run(main())"
        )
    from ._loop import new_event_loop

    class EventLoopPolicy(base):
        """An event-loop policy whose loops are ferroloop loops.

        A subclass of the stock policy, so everything else it does (the child watcher API on
        Unix up to 3.13, ``get_event_loop`` in the main thread) stays as asyncio has it.
        Policies are deprecated from Python 3.14: prefer ``loop_factory=ferroloop.new_event_loop``.
        """

        def new_event_loop(self):
            return new_event_loop()

    EventLoopPolicy.__module__ = "ferroloop"
    EventLoopPolicy.__qualname__ = "EventLoopPolicy"
    _policy_class = EventLoopPolicy
    return EventLoopPolicy


def install() -> None:
    """Make every new asyncio loop of the program a ferroloop loop (``ferroloop.install()``)."""
    functions = _policy_functions()
    if functions is None:
        _replace_new_event_loop()
        return
    functions[1](event_loop_policy_class()())


def use_ferroloop_for_every_new_loop() -> Callable[[], None]:
    """Make every event loop that asyncio creates from now on a ferroloop loop; return ``undo``.

    For tools that run a program or a test suite unchanged on ferroloop (``python -m ferroloop
    run``, the pytest plugin). Covers ``asyncio.run()`` and ``asyncio.Runner`` without a
    ``loop_factory``, ``asyncio.new_event_loop()``, ``get_event_loop()`` where the Python still
    creates a loop there (up to 3.13, main thread), and a program that resets the policy with
    ``set_event_loop_policy(None)`` or builds ``asyncio.DefaultEventLoopPolicy()``: the default
    policy class is replaced as well. On 3.14/3.15 it goes through asyncio's private policy
    functions, so asyncio emits no deprecation warning on the program's behalf (the program's
    own calls of deprecated names still warn, as they should). Without policies (3.16+) it
    replaces ``asyncio.new_event_loop``.

    Not covered: loops built from a class directly (``asyncio.SelectorEventLoop()``,
    ``loop_factory=asyncio.EventLoop``).

    ``undo()`` restores the previous policy, default policy class and ``new_event_loop``.
    """
    functions = _policy_functions()
    if functions is None:
        return _replace_new_event_loop()
    _, set_policy = functions
    policy_class = event_loop_policy_class()
    # Where asyncio looks the default policy class up when it (re)creates the policy: the
    # package's name up to 3.13; from 3.14, unix_events' private name (which the deprecated
    # ``asyncio.DefaultEventLoopPolicy`` also returns, still with its warning).
    if _POLICIES_DEPRECATED:
        names = [(sys.modules["asyncio.unix_events"], "_DefaultEventLoopPolicy")]
    else:
        names = [(asyncio, "DefaultEventLoopPolicy")]
        unix_events = sys.modules.get("asyncio.unix_events")
        if unix_events is not None:
            names.append((unix_events, "DefaultEventLoopPolicy"))
    saved_names = [(module, name, getattr(module, name)) for module, name in names]
    # The policy as set (None until asyncio first needs one), read without creating one.
    saved_policy = getattr(asyncio.events, "_event_loop_policy", None)
    for module, name, _ in saved_names:
        setattr(module, name, policy_class)
    set_policy(policy_class())

    def undo() -> None:
        for module, name, value in saved_names:
            setattr(module, name, value)
        set_policy(saved_policy)

    return undo


def _replace_new_event_loop() -> Callable[[], None]:
    """Without policies: replace ``asyncio.new_event_loop`` (which ``asyncio.run`` and
    ``asyncio.Runner`` call without a ``loop_factory``); return ``undo``."""
    from ._loop import new_event_loop

    modules: list[Any] = [asyncio, asyncio.events]
    saved = [(module, module.new_event_loop) for module in modules]
    for module in modules:
        module.new_event_loop = new_event_loop

    def undo() -> None:
        for module, value in saved:
            module.new_event_loop = value

    return undo
