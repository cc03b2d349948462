"""``ferroloop.Loop``: the Rust core plus asyncio's rarely-hot orchestration.

The Rust base class (``_ferroloop.CoreLoop``) owns the ready queue, timers, fd readiness and
the poller. This class adds what asyncio's ``BaseEventLoop`` does around them that is not on
a hot path: running until a future completes, tasks and their factory, the exception
handler, executors, address resolution, async-generator hooks and debug mode. Socket
operations live in ``_sockets.py`` and signal handling in ``_signals.py`` (mixins).

Behaviour follows CPython's ``asyncio/base_events.py``; the code is our own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import sys
import threading
import traceback
import warnings
import weakref

from . import _ferroloop
from ._datagram import DatagramMixin
from ._format import format_callback
from ._format import logger as _logger
from ._pipes import PipesMixin
from ._servers import NetworkMixin
from ._signals import SignalsMixin
from ._sockets import SocketOpsMixin
from ._subprocess import SubprocessMixin
from ._transports import TransportsMixin

TYPE_CHECKING = False  # (see __init__)
if TYPE_CHECKING:
    from typing import Any

    from ._metrics import LoopMetrics

_PY312 = sys.version_info >= (3, 12)


def _debug_from_environment() -> bool:
    return sys.flags.dev_mode or (
        not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))
    )


def _stop_when_done(fut) -> None:
    # Like asyncio: a future that ends with KeyboardInterrupt/SystemExit lets the exception
    # propagate out of run_forever instead of stopping the loop quietly.
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return
    fut.get_loop().stop()


class Loop(
    NetworkMixin,
    DatagramMixin,
    SubprocessMixin,
    PipesMixin,
    TransportsMixin,
    SignalsMixin,
    SocketOpsMixin,
    _ferroloop.CoreLoop,
    asyncio.AbstractEventLoop,
):
    """An asyncio event loop whose core runs in Rust."""

    def __init__(self) -> None:
        self._default_executor: Any = None
        self._executor_shutdown_called = False
        self._exception_handler: Any = None
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth: Any = None
        self._init_signals()
        # listening socket -> inode of its path (3.13+)
        self._unix_server_sockets: dict[Any, Any] = {}
        self.set_debug(_debug_from_environment())
        # asyncio's C futures and tasks look ``loop.call_soon`` up for every callback they
        # schedule; one bound method kept in the instance spares making one each time.
        # (Not when a subclass overrides call_soon; dropped on close, which breaks the cycle.)
        self._bound_call_soon = None
        if type(self).call_soon is _ferroloop.CoreLoop.call_soon:
            self.call_soon = self._bound_call_soon = self.call_soon  # type: ignore[method-assign]
        self._set_custom_clock(self._time_overridden_by_class())

    # asyncio's scheduling reads ``self.time()``; tests fake the clock by replacing
    # ``loop.time`` (or overriding it in a subclass). The Rust core reads the monotonic
    # clock directly unless told that ``time`` is someone else's. (Never ``self.__dict__``
    # here: making it turns every attribute lookup on the loop into a dict lookup.)
    def _time_overridden_by_class(self) -> bool:
        return type(self).time is not _ferroloop.CoreLoop.time

    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)
        if name == "time":
            self._set_custom_clock(True)

    def __delattr__(self, name) -> None:
        super().__delattr__(name)
        if name == "time":
            self._set_custom_clock(self._time_overridden_by_class())

    def __repr__(self) -> str:
        cls = type(self)
        name = "ferroloop.Loop" if cls is Loop else f"{cls.__module__}.{cls.__qualname__}"
        return (
            f"<{name} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn=warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- running -------------------------------------------------------------------------

    def _check_closed(self) -> None:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if asyncio._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self) -> None:
        """Run until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_hooks = sys.get_asyncgen_hooks()
        try:
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            asyncio._set_running_loop(self)
            self._run()
        finally:
            asyncio._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_hooks)

    def run_until_complete(self, future):
        """Run until the future (or coroutine) is done and return its result."""
        self._check_closed()
        self._check_running()
        new_task = not asyncio.isfuture(future)
        future = asyncio.ensure_future(future, loop=self)
        if new_task:
            # An exception escaping run_until_complete reaches the caller; don't also
            # log "Task was destroyed but it is pending!".
            future._log_destroy_pending = False
        future.add_done_callback(_stop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                # Mark the exception retrieved: it is being raised to the caller.
                future.exception()
            raise
        finally:
            future.remove_done_callback(_stop_when_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self) -> None:
        """Close the loop: drop pending callbacks, shut the default executor down."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            _logger().debug("Close %r", self)
        self._close_signals()
        self._close()
        if self.__dict__.get("call_soon") is self._bound_call_soon is not None:
            del self.call_soon
        self._bound_call_soon = None
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    # -- debug ---------------------------------------------------------------------------

    def set_debug(self, enabled: bool) -> None:
        self._set_debug(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(10)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    def _log_slow_callback(self, handle, seconds: float) -> None:
        # As asyncio: a handle running a task's step is shown as the task.
        task = getattr(getattr(handle, "_callback", None), "__self__", None)
        what = repr(task) if isinstance(task, asyncio.Task) else str(handle)
        _logger().warning("Executing %s took %.3f seconds", what, seconds)

    # -- metrics -------------------------------------------------------------------------

    def metrics(self, *, reset: bool = False) -> LoopMetrics:
        """A snapshot of what the loop has done (see ``LoopMetrics`` and docs/metrics.md).

        With ``reset=True``, the timer-lag histogram and the slowest callbacks start afresh
        after this snapshot (the counters never reset). Callable from any thread, and on a
        closed loop.
        """
        from ._metrics import LoopMetrics  # (dataclasses, imported on first use)

        return LoopMetrics._from_core(self._metrics(bool(reset)))

    # -- futures and tasks ---------------------------------------------------------------

    # create_future, create_task, set_task_factory and get_task_factory are in Rust.

    # -- async generators ----------------------------------------------------------------

    def _asyncgen_finalizer_hook(self, agen) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self) -> None:
        """Close every async generator still alive."""
        self._asyncgens_shutdown_called = True
        if not self._asyncgens:
            return
        agens = list(self._asyncgens)
        self._asyncgens.clear()
        results = await asyncio.gather(*[ag.aclose() for ag in agens], return_exceptions=True)
        for result, agen in zip(results, agens, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": "an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- executors -----------------------------------------------------------------------

    def run_in_executor(self, executor, func, *args):
        self._check_closed()
        if self.get_debug():
            from ._format import check_callback

            check_callback(func, "run_in_executor")
        if executor is None:
            executor = self._default_executor
            if executor is None:
                if self._executor_shutdown_called:
                    raise RuntimeError("Executor shutdown has been called")
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return asyncio.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            if sys.version_info >= (3, 11):
                raise TypeError("executor must be ThreadPoolExecutor")
            warnings.warn(
                "Using the default executor that is not an instance of "
                "ThreadPoolExecutor is deprecated and will be prohibited in Python 3.9",
                DeprecationWarning,
                2,
            )
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout=None) -> None:
        """Shut the default executor down, waiting for its threads in another thread."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        done = self.create_future()

        def shutdown() -> None:
            try:
                executor.shutdown(wait=True)
                if not self.is_closed():
                    self.call_soon_threadsafe(done.set_result, None)
            except Exception as exc:  # reported to the awaiting coroutine
                if not self.is_closed():
                    self.call_soon_threadsafe(done.set_exception, exc)

        thread = threading.Thread(target=shutdown, name="ferroloop-executor-shutdown")
        thread.start()
        try:
            if timeout is None:
                await done
            else:
                await asyncio.wait_for(asyncio.shield(done), timeout)
        except asyncio.TimeoutError:
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)
        else:
            thread.join()

    # -- address resolution --------------------------------------------------------------

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        """``socket.getaddrinfo`` without blocking the loop.

        Numeric hosts and ports are resolved inline (``AI_NUMERICHOST|AI_NUMERICSERV``
        never consults DNS); anything else goes to the default executor.
        """
        if _is_numeric(host) and _is_numeric_port(port):
            try:
                return socket.getaddrinfo(
                    host,
                    port,
                    family,
                    type,
                    proto,
                    flags | socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            except socket.gaierror:
                pass
        return await self.run_in_executor(
            None, socket.getaddrinfo, host, port, family, type, proto, flags
        )

    async def getnameinfo(self, sockaddr, flags=0):
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    # -- exceptions ----------------------------------------------------------------------

    def get_exception_handler(self):
        return self._exception_handler

    def set_exception_handler(self, handler) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context) -> None:
        """Log the context through the ``asyncio`` logger, in asyncio's format."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info = (type(exception), exception, exception.__traceback__) if exception else False
        context = dict(context)
        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key == "source_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Object created at (most recent call last):\n" + tb.rstrip()
            elif key == "handle_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Handle created at (most recent call last):\n" + tb.rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        _logger().error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context) -> None:
        """Call the handler set by set_exception_handler(), or the default one."""
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                _logger().error("Exception in default exception handler", exc_info=True)
            return
        try:
            ctx = _handler_context(context) if _PY312 else None
            if ctx is not None:
                ctx.run(handler, self, context)
            else:
                handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                _logger().error(
                    "Exception in default exception handler while handling an unexpected "
                    "error in custom exception handler",
                    exc_info=True,
                )

    def _report_callback_error(self, handle, exc, callback, args) -> None:
        # Called by the Rust core when a callback raises (asyncio: Handle._run).
        context = {
            "message": "Exception in callback " + format_callback(callback, args, self.get_debug()),
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)


def _handler_context(context):
    """The contextvars context that 3.12+ runs a custom exception handler in.

    That of the task, else the future (a Task under that key), else the handle, when the
    object has ``get_context()`` and it returns something runnable; else None.
    """
    thing = context.get("task")
    if thing is None:
        thing = context.get("future")
    if thing is None:
        thing = context.get("handle")
    if thing is None or not hasattr(thing, "get_context"):
        return None
    ctx = thing.get_context()
    return ctx if ctx is not None and hasattr(ctx, "run") else None


def _is_numeric(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("idna")
        except UnicodeError:
            return False
    if not isinstance(host, str):
        return False
    host = host.partition("%")[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            pass
    return False


def _is_numeric_port(port) -> bool:
    if port is None or isinstance(port, int):
        return True
    if isinstance(port, (str, bytes)):
        return port.isdigit()
    return False


def new_event_loop() -> Loop:
    """A new ferroloop event loop."""
    return Loop()
