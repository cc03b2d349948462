"""Refuses to load ferroloop in a subinterpreter (imported first by the package).

ferroloop's Rust core keeps process-wide state: cached Python objects (``asyncio.Handle``,
``ferroloop._format``, ...), the handles' free lists, the types themselves. Objects of one
interpreter used from another, or kept after it is destroyed, break the other (a ``repr``
raising TypeError, ``isinstance(handle, asyncio.Handle)`` false) or crash the process.
Until the core keeps its state per interpreter, it runs in the main interpreter only. The
check runs before the extension is loaded: once a subinterpreter has initialised it, PyO3
would refuse it to the main interpreter for good.
"""

from __future__ import annotations


def _interpreter_ids():
    """(current, main) interpreter ids, or None if this Python cannot tell."""
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        try:
            current, main = module.get_current(), module.get_main()
        except Exception:
            return None
        # 3.13+ gives (id, whence) pairs, earlier versions plain ids.
        if isinstance(current, tuple):
            current, main = current[0], main[0]
        return int(current), int(main)
    return None


def refuse_subinterpreter() -> None:
    ids = _interpreter_ids()
    if ids is not None and ids[0] != ids[1]:
        raise ImportError(
            "ferroloop cannot be imported in a subinterpreter: it supports the main "
            "interpreter only"
        )


refuse_subinterpreter()
