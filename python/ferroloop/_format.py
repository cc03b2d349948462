"""Cold-path formatting for handles and callbacks (asyncio: ``format_helpers``).

Called from the Rust core for ``repr()`` of handles, exception messages, debug-mode source
tracebacks and debug-mode callback checks. Nothing here runs on a hot path.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import reprlib
import sys
import traceback

_MAX_STACK = 10
# 3.13+ prints a callback's arguments only in debug mode (they may hold secrets).
_ARGS_ONLY_IN_DEBUG = sys.version_info >= (3, 13)


def logger() -> logging.Logger:
    """asyncio's logger. The test suite and some applications patch
    ``asyncio.base_events.logger``; use that object when it exists so they see our messages."""
    base = sys.modules.get("asyncio.base_events")
    return getattr(base, "logger", None) or logging.getLogger("asyncio")


def _source(func):
    # Where a plain function (or a partial of one) is defined; None for anything else,
    # bound methods included, as asyncio prints them.
    func = inspect.unwrap(func)
    if inspect.isfunction(func):
        code = func.__code__
        return code.co_filename, code.co_firstlineno
    if isinstance(func, (functools.partial, functools.partialmethod)):
        return _source(func.func)
    return None


def _args_repr(args, kwargs=None, debug=True):
    if not debug and _ARGS_ONLY_IN_DEBUG:
        return "()"
    parts = [reprlib.repr(a) for a in args or ()]
    if kwargs:
        parts.extend(f"{k}={reprlib.repr(v)}" for k, v in kwargs.items())
    return "(" + ", ".join(parts) + ")"


def _callback_repr(func, args, debug):
    if isinstance(func, functools.partial):
        return _callback_repr(func.func, func.args, debug) + _args_repr(args, func.keywords, debug)
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return name + _args_repr(args, None, debug)


def format_callback(func, args, debug=True) -> str:
    """``name(args) at file:line``, as asyncio prints a callback.

    3.13+: the arguments only when ``debug`` (the loop's debug mode); ``()`` otherwise.
    """
    text = _callback_repr(func, args, debug)
    where = _source(func)
    if where:
        text += f" at {where[0]}:{where[1]}"
    return text


def handle_repr(handle) -> str:
    kind = type(handle).__name__
    parts = []
    if handle.cancelled():
        parts.append("cancelled")
    when = getattr(handle, "_when", None)
    if when is not None:
        parts.append(f"when={when}")
    cb = handle._callback
    if cb is not None:
        # A handle does not know its loop: the running loop's debug mode, else whether the
        # handle was made in debug mode (it then has a source traceback).
        running = asyncio._get_running_loop()
        debug = running.get_debug() if running is not None else bool(handle._source_traceback)
        parts.append(format_callback(cb, handle._args, debug))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        parts.append(f"created at {frame[0]}:{frame[1]}")
    return f"<{kind} {' '.join(parts)}>"


def extract_stack():
    """The caller's stack, oldest first, for debug-mode ``_source_traceback``."""
    frame = sys._getframe(1)
    stack = traceback.StackSummary.extract(
        traceback.walk_stack(frame), limit=_MAX_STACK, lookup_lines=False
    )
    stack.reverse()
    return stack


def check_callback(callback, method: str) -> None:
    """Debug-mode argument check of ``call_soon`` and friends (asyncio's message)."""
    if inspect.iscoroutine(callback) or inspect.iscoroutinefunction(callback):
        raise TypeError(f"coroutines cannot be used with {method}()")
    if not callable(callback):
        raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")


def _describe_callback(func) -> str:
    # A task's step or wake-up is best named by its task (the coroutine, and the line it
    # stopped at). Arguments are left out: metrics may be exported, and arguments may hold
    # secrets (asyncio itself shows them only in debug mode since 3.13).
    owner = getattr(func, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return repr(owner)
    return format_callback(func, (), debug=False)


def _describe_transport(transport, side: str) -> str:
    protocol = transport.get_protocol()
    app_transport = getattr(protocol, "_app_transport", None)  # TLS: the application's
    if app_transport is not None:
        protocol = app_transport.get_protocol()
    what = "reading" if side == "read" else "writing"
    return f"{what} {transport!r} for {type(protocol).__qualname__}"


def describe_slow(subject, side: str | None = None) -> tuple[str, str | None]:
    """``(description, source)`` of a slow callback, for ``loop.metrics()``.

    ``subject`` is a handle (debug mode: ``source`` is where it was scheduled), a callback,
    a transport (``side`` is ``"read"`` or ``"write"``), or the fd of a native ``sock_*``
    operation (with ``side``).
    """
    if isinstance(subject, int):
        op = "sock_recv" if side == "read" else "sock_sendall"
        return f"{op} on fd {subject}", None
    if side is not None:
        return _describe_transport(subject, side), None
    callback = getattr(subject, "_callback", None) if isinstance(subject, asyncio.Handle) else None
    if callback is None:
        return _describe_callback(subject), None
    source = None
    tb = subject._source_traceback
    if tb:
        source = f"{tb[-1][0]}:{tb[-1][1]}"
    return _describe_callback(callback), source
