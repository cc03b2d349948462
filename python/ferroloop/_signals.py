"""Unix signal handlers (asyncio: ``unix_events._UnixSelectorEventLoop.add_signal_handler``).

Python's C-level signal handler writes the signal number to the wakeup fd
(``signal.set_wakeup_fd``); the loop watches the other end of that socket pair with an
ordinary reader and runs the registered handlers as loop callbacks. Only the main thread
may install handlers, as in asyncio.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import inspect
import signal
import socket
import sys
import warnings

from ._typing import LoopAPI


def _noop_handler(signum, frame) -> None:
    # Installed as the Python-level handler: the wakeup fd does the real work.
    pass


class SignalsMixin(LoopAPI):
    def _init_signals(self) -> None:
        self._signal_handlers = {}
        self._ssock = self._csock = None

    def _check_signal(self, sig) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _ensure_self_pipe(self) -> None:
        if self._ssock is None:
            self._ssock, self._csock = socket.socketpair()
            self._ssock.setblocking(False)
            self._csock.setblocking(False)
            self.add_reader(self._ssock.fileno(), self._read_signals)

    def _read_signals(self) -> None:
        while True:
            try:
                data = self._ssock.recv(4096)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                entry = self._signal_handlers.get(signum)
                if entry is not None:
                    callback, args, context = entry
                    self.call_soon(callback, *args, context=context)

    def add_signal_handler(self, sig, callback, *args) -> None:
        """Run ``callback(*args)`` on the loop when signal ``sig`` arrives."""
        if inspect.iscoroutine(callback) or inspect.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        self._ensure_self_pipe()
        try:
            # Raises ValueError if this is not the main thread of the main interpreter.
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        self._signal_handlers[sig] = (callback, args, contextvars.copy_context())
        try:
            signal.signal(sig, _noop_handler)
            # Let system calls interrupted by the signal be restarted.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    asyncio.log.logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise

    def remove_signal_handler(self, sig) -> bool:
        """Remove the handler for ``sig``; return whether one was installed."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                asyncio.log.logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    def _close_signals(self) -> None:
        if sys.is_finalizing():
            for sig in list(self._signal_handlers):
                del self._signal_handlers[sig]
        else:
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        if self._ssock is not None:
            self.remove_reader(self._ssock.fileno())
            self._ssock.close()
            self._csock.close()
            self._ssock = self._csock = None
        elif self._signal_handlers:
            warnings.warn(
                "signal handlers left installed", ResourceWarning, source=self, stacklevel=2
            )
