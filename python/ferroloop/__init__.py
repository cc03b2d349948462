"""ferroloop: a drop-in asyncio event loop for CPython, written in Rust.

Use it in one line::

    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # Python 3.12+
    ferroloop.run(main())                                         # any version
    ferroloop.install()                                           # every new loop (policies)

Importing ferroloop touches no event-loop policy (they are deprecated from Python 3.14 and
gone in 3.16): ``EventLoopPolicy`` is made on first use, see ``_policy.py``.
"""

from __future__ import annotations

from . import (
    _interpreter,  # noqa: F401  (first: refuses a subinterpreter)
    _policy,
)
from ._ferroloop import BUILD_PROFILE, __version__
from ._loop import Loop, new_event_loop
from ._run import run

TYPE_CHECKING = False  # (as typing.TYPE_CHECKING: ferroloop does not import typing at run time)

if TYPE_CHECKING:  # at run time, given by __getattr__ on first use
    from asyncio import DefaultEventLoopPolicy as _StockPolicy

    from ._metrics import LoopMetrics, SlowCallback

    class EventLoopPolicy(_StockPolicy):
        def new_event_loop(self) -> Loop: ...


__all__ = [
    "BUILD_PROFILE",
    "EventLoopPolicy",
    "Loop",
    "LoopMetrics",
    "SlowCallback",
    "__version__",
    "install",
    "new_event_loop",
    "run",
]


def __dir__() -> list[str]:
    """``dir(ferroloop)``: the public API only."""
    return sorted(__all__)


def install() -> None:
    """Make ferroloop the event loop of every ``asyncio.new_event_loop()``/``asyncio.run()``.

    Through an event-loop policy where the Python has them (without asyncio's deprecation
    warnings on 3.14/3.15); prefer ``loop_factory=ferroloop.new_event_loop``.
    """
    _policy.install()


def __getattr__(name: str) -> type:
    # ``EventLoopPolicy`` subclasses asyncio's policy, which 3.14 deprecates and 3.16 removes:
    # it is made when first asked for, never at import.
    if name == "EventLoopPolicy":
        return _policy.event_loop_policy_class()
    # The metrics' classes are dataclasses: ``dataclasses`` is imported on first use.
    if name in ("LoopMetrics", "SlowCallback"):
        from . import _metrics

        return getattr(_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
