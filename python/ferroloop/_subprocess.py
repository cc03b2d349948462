"""Subprocesses: ``loop.subprocess_exec``, ``loop.subprocess_shell`` and their transport.

``SubprocessMixin`` checks the arguments as asyncio does and builds a
``SubprocessTransport``: the child is started synchronously with ``subprocess.Popen`` (as
asyncio 3.11 does), its pipes are wrapped with ``loop.connect_write_pipe`` (stdin) and
``loop.connect_read_pipe`` (stdout, stderr), and the protocol gets asyncio's callbacks in
asyncio's order: ``connection_made``, ``pipe_data_received``, ``pipe_connection_lost``,
``process_exited``, and ``connection_lost`` once the child has exited *and* every pipe is
closed.

The child's exit is noticed without any SIGCHLD handler or asyncio child watcher, so it
coexists with whatever the application installs: a pidfd (``os.pidfd_open``, Linux 5.3+)
watched as an ordinary reader, or, where there is none, a daemon thread blocked in
``os.waitid(..., WNOWAIT)`` that wakes the loop. Either way the child is reaped on the loop
thread, the same thread that calls ``Popen.send_signal``/``poll`` for the transport.

Behaviour follows CPython 3.11's ``asyncio/base_events.py``, ``base_subprocess.py`` and
``unix_events.py``; the code is our own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import os
import subprocess
import sys
import threading
import warnings

from ._format import logger
from ._typing import LoopAPI

_PIPE = subprocess.PIPE
_PY314 = sys.version_info >= (3, 14)


def _check_popen_args(universal_newlines, shell, want_shell, bufsize, text, encoding, errors):
    # asyncio's checks and messages, in asyncio's order.
    if universal_newlines:
        raise ValueError("universal_newlines must be False")
    if bool(shell) != want_shell:
        raise ValueError(f"shell must be {want_shell}")
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")


def _format_pipe(spec) -> str:
    if spec == subprocess.PIPE:
        return "<pipe>"
    if spec == subprocess.STDOUT:
        return "<stdout>"
    return repr(spec)


def _log_subprocess(message, stdin, stdout, stderr) -> None:
    info = [message]
    if stdin is not None:
        info.append(f"stdin={_format_pipe(stdin)}")
    if stdout is not None and stderr == subprocess.STDOUT:
        info.append(f"stdout=stderr={_format_pipe(stdout)}")
    else:
        if stdout is not None:
            info.append(f"stdout={_format_pipe(stdout)}")
        if stderr is not None:
            info.append(f"stderr={_format_pipe(stderr)}")
    logger().debug(" ".join(info))


def _exitcode(status: int) -> int:
    try:
        return os.waitstatus_to_exitcode(status)
    except ValueError:  # a status we do not understand: hand it on as is, like asyncio
        return status


class _ExitWatch:
    """Tells ``on_exit(returncode)`` on the loop thread, once, when the child has exited.

    The loop's reader registration (pidfd) or the waiting thread is what keeps this object,
    and through ``on_exit`` the transport, alive until then: nothing else needs to hold it.
    """

    def __init__(self, loop, proc, on_exit) -> None:
        self._loop = loop
        self._proc = proc
        self._on_exit = on_exit
        self._pidfd = -1
        try:
            pidfd = os.pidfd_open(proc.pid)
        except AttributeError:  # not Linux
            self._start_thread()
        except OSError as exc:
            if exc.errno == errno.ESRCH:  # already reaped (SIGCHLD ignored?): report it now
                loop.call_soon(self._reap)
            else:  # ENOSYS (kernel older than 5.3), EPERM (seccomp), EMFILE...
                self._start_thread()
        else:
            try:
                loop.add_reader(pidfd, self._reap)
            except BaseException:
                os.close(pidfd)
                raise
            self._pidfd = pidfd  # O_CLOEXEC: never inherited by other children

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._wait_in_thread, name=f"ferroloop-waitpid-{self._proc.pid}", daemon=True
        )
        thread.start()

    def _wait_in_thread(self) -> None:
        seen, reaped = None, False
        with contextlib.suppress(ChildProcessError):  # reaped elsewhere: _reap() finds out
            if hasattr(os, "waitid"):
                # Wait without reaping: the loop thread reaps, so Popen.poll() (which the
                # transport's close/send_signal call there) never races us for the status.
                # What we saw still counts if someone's waitpid(-1) reaps it before we do.
                info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)
                exited = info.si_code == os.CLD_EXITED
                seen = info.si_status if exited else -info.si_status
            else:  # no waitid (macOS): reap here
                _, status = os.waitpid(self._proc.pid, 0)
                seen, reaped = _exitcode(status), True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._reap, seen, reaped)

    def _reap(self, seen=None, reaped=False) -> None:
        proc = self._proc
        returncode = proc.returncode  # set if Popen.poll()/wait() reaped it already
        if returncode is None and not reaped:
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pass  # reaped behind our back (waitpid(-1) elsewhere)
            else:
                if pid == 0:  # still running: a spurious wake-up, keep watching
                    return
                returncode = _exitcode(status)
        if returncode is None:
            returncode = seen
        if returncode is None:  # as asyncio reports it
            logger().warning(
                "child process pid %d exit status already read: will report returncode 255",
                proc.pid,
            )
            returncode = 255
        self.close()
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:
            on_exit(returncode)

    def close(self) -> None:
        pidfd, self._pidfd = self._pidfd, -1
        if pidfd >= 0:
            if not self._loop.is_closed():
                self._loop.remove_reader(pidfd)
            os.close(pidfd)

    def __del__(self) -> None:
        # The loop was closed (dropping our reader) before the child exited.
        self.close()


class _PipeProtocol(asyncio.Protocol):
    """The protocol of one of the child's pipe transports: reports to the subprocess
    transport, which hands things on to the subprocess protocol."""

    def __init__(self, owner, fd) -> None:
        self.owner = owner
        self.fd = fd
        self.pipe = None  # the pipe transport
        self.disconnected = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self.fd} pipe={self.pipe!r}>"

    def connection_made(self, transport) -> None:
        self.pipe = transport

    def connection_lost(self, exc) -> None:
        self.disconnected = True
        owner, self.owner = self.owner, None
        owner._pipe_connection_lost(self.fd, exc)

    def data_received(self, data) -> None:
        self.owner._pipe_data_received(self.fd, data)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner._protocol.resume_writing()


class SubprocessTransport(asyncio.SubprocessTransport):
    """A child process and its pipes (asyncio: ``base_subprocess.BaseSubprocessTransport``)."""

    def __init__(
        self, loop, protocol, args, shell, stdin, stdout, stderr, bufsize,
        waiter=None, extra=None, **kwargs,
    ) -> None:  # fmt: skip
        super().__init__(extra)
        self._closed = False
        self._loop = loop
        self._protocol = protocol
        self._proc = None
        self._pid = None
        self._returncode = None
        self._finished = False  # connection_lost() scheduled
        self._exit_waiters = []  # futures of _wait()
        # Protocol calls held back until connection_made() (all pipes connected).
        self._pending_calls = collections.deque()
        # fd -> its _PipeProtocol, or None until connected; only the fds that are PIPEs.
        self._pipes = {fd: None for fd, spec in enumerate((stdin, stdout, stderr)) if spec == _PIPE}
        try:
            self._proc = subprocess.Popen(
                args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                universal_newlines=False, bufsize=bufsize, **kwargs,
            )  # fmt: skip
            self._pid = self._proc.pid
            self._extra["subprocess"] = self._proc
            if loop.get_debug():
                program = args if isinstance(args, (bytes, str)) else args[0]
                logger().debug("process %r created: pid %s", program, self._pid)
            _ExitWatch(loop, self._proc, self._process_exited)
            loop.create_task(self._connect_pipes(waiter))
        except BaseException:
            self.close()  # kills a child that was started
            raise

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._closed:
            info.append("closed")
        if self._pid is not None:
            info.append(f"pid={self._pid}")
        if self._returncode is not None:
            info.append(f"returncode={self._returncode}")
        else:
            info.append("running" if self._pid is not None else "not started")
        pipes = {fd: getattr(self._pipes.get(fd), "pipe", None) for fd in range(3)}
        if pipes[0] is not None:
            info.append(f"stdin={pipes[0]}")
        if pipes[1] is not None and pipes[2] is pipes[1]:
            info.append(f"stdout=stderr={pipes[1]}")
        else:
            if pipes[1] is not None:
                info.append(f"stdout={pipes[1]}")
            if pipes[2] is not None:
                info.append(f"stderr={pipes[2]}")
        return f"<{' '.join(info)}>"

    # -- the public API ------------------------------------------------------------------

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the pipes and kill the child if it is still running."""
        if self._closed:
            return
        self._closed = True
        for proto in self._pipes.values():
            if proto is not None:
                proto.pipe.close()
        # poll(): the child may have exited without the transport being told yet.
        if self._proc is not None and self._returncode is None and self._proc.poll() is None:
            if self._loop.get_debug():
                logger().warning("Close running child process: kill %r", self)
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    def __del__(self, _warn=warnings.warn) -> None:
        if not getattr(self, "_closed", True):
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self.close()

    def get_pid(self):
        return self._pid

    def get_returncode(self):
        return self._returncode

    def get_pipe_transport(self, fd):
        proto = self._pipes.get(fd)
        return None if proto is None else proto.pipe

    def _check_proc(self) -> None:
        # After connection_lost() the process is gone, as in asyncio.
        if self._proc is None:
            raise ProcessLookupError()

    def send_signal(self, signal) -> None:
        self._check_proc()
        self._proc.send_signal(signal)

    def terminate(self) -> None:
        self._check_proc()
        self._proc.terminate()

    def kill(self) -> None:
        self._check_proc()
        self._proc.kill()

    async def _wait(self):
        """The return code, once the child has exited (before 3.14: and every pipe is
        closed); ``asyncio.subprocess.Process.wait`` awaits this."""
        if self._returncode is not None:
            return self._returncode
        waiter = self._loop.create_future()
        self._exit_waiters.append(waiter)
        return await waiter

    # -- the pipes -----------------------------------------------------------------------

    async def _connect_pipes(self, waiter) -> None:
        loop, proc = self._loop, self._proc
        fd = -1  # the pipe being connected
        try:
            for fd, pipe in enumerate((proc.stdin, proc.stdout, proc.stderr)):
                if pipe is None:
                    continue
                connect = loop.connect_write_pipe if fd == 0 else loop.connect_read_pipe
                _, proto = await connect(functools.partial(_PipeProtocol, self, fd), pipe)
                self._pipes[fd] = proto
                if self._closed:  # close() ran while we were connecting
                    proto.pipe.close()
            loop.call_soon(self._protocol.connection_made, self)
            for callback, args in self._pending_calls:
                loop.call_soon(callback, *args)
            self._pending_calls = None
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._abandon_pipes(proc, fd)
            if waiter is not None and not waiter.cancelled():
                if isinstance(exc, asyncio.CancelledError):
                    waiter.cancel()
                else:
                    waiter.set_exception(exc)
        else:
            if waiter is not None and not waiter.cancelled():
                waiter.set_result(None)

    def _abandon_pipes(self, proc, failed_fd) -> None:
        # Connecting failed: the caller gets the error and closes us. The protocol was never
        # connected, so it hears nothing more, and _wait() must not wait for pipes that have
        # no transport: forget them, and close those not handed to one (failed_fd's was, and
        # connect_*_pipe() closed that transport, which closes the pipe).
        self._protocol = asyncio.SubprocessProtocol()
        self._pending_calls = None
        for fd, pipe in enumerate((proc.stdin, proc.stdout, proc.stderr)):
            if fd in self._pipes and self._pipes[fd] is None:
                del self._pipes[fd]
                if fd > failed_fd:
                    pipe.close()
        self._try_finish()

    def _call(self, callback, *args) -> None:
        if self._pending_calls is not None:
            self._pending_calls.append((callback, args))
        else:
            self._loop.call_soon(callback, *args)

    def _pipe_data_received(self, fd, data) -> None:
        self._call(self._protocol.pipe_data_received, fd, data)

    def _pipe_connection_lost(self, fd, exc) -> None:
        self._call(self._protocol.pipe_connection_lost, fd, exc)
        self._try_finish()

    # -- the end -------------------------------------------------------------------------

    def _process_exited(self, returncode) -> None:
        # Called by the _ExitWatch, on the loop thread.
        if self._returncode is not None:
            return
        if self._loop.get_debug():
            logger().info("%r exited with return code %r", self, returncode)
        self._returncode = returncode
        if self._proc.returncode is None:
            # We reaped it: tell the Popen (else it warns "subprocess ... is still running").
            self._proc.returncode = returncode
        self._call(self._protocol.process_exited)
        self._try_finish()
        if _PY314:
            # 3.14 (gh-119710): wait() returns once the child has exited, even while a
            # grandchild keeps one of its pipes open; before, it waited for the pipes too.
            self._wake_exit_waiters()

    def _wake_exit_waiters(self) -> None:
        if self._exit_waiters is None:
            return
        for waiter in self._exit_waiters:
            if not waiter.done():
                waiter.set_result(self._returncode)
        self._exit_waiters = None

    def _try_finish(self) -> None:
        if self._finished or self._returncode is None:
            return
        if all(p is not None and p.disconnected for p in self._pipes.values()):
            self._finished = True
            self._call(self._call_connection_lost, None)

    def _call_connection_lost(self, exc) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._wake_exit_waiters()
            self._loop = self._proc = self._protocol = None


class SubprocessMixin(LoopAPI):
    """``subprocess_exec`` and ``subprocess_shell``."""

    async def subprocess_exec(
        self, protocol_factory, program, *args,
        stdin=_PIPE, stdout=_PIPE, stderr=_PIPE, universal_newlines=False, shell=False,
        bufsize=0, encoding=None, errors=None, text=None, **kwargs,
    ):  # fmt: skip
        """Run ``program`` with ``args``; return (transport, protocol)."""
        _check_popen_args(universal_newlines, shell, False, bufsize, text, encoding, errors)
        protocol = protocol_factory()
        log = None
        if self.get_debug():
            # Not the arguments: they may hold secrets, or be long.
            log = f"execute program {program!r}"
            _log_subprocess(log, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, (program, *args), False, stdin, stdout, stderr, bufsize, **kwargs
        )
        if log is not None:
            logger().info("%s: %r", log, transport)
        return transport, protocol

    async def subprocess_shell(
        self, protocol_factory, cmd, *,
        stdin=_PIPE, stdout=_PIPE, stderr=_PIPE, universal_newlines=False, shell=True,
        bufsize=0, encoding=None, errors=None, text=None, **kwargs,
    ):  # fmt: skip
        """Run ``cmd`` through the shell; return (transport, protocol)."""
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        _check_popen_args(universal_newlines, shell, True, bufsize, text, encoding, errors)
        protocol = protocol_factory()
        log = None
        if self.get_debug():
            log = f"run shell command {cmd!r}"
            _log_subprocess(log, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, cmd, True, stdin, stdout, stderr, bufsize, **kwargs
        )
        if log is not None:
            logger().info("%s: %r", log, transport)
        return transport, protocol

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        waiter = self.create_future()
        transport = SubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs,
        )  # fmt: skip
        try:
            await waiter  # the pipes are connected
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            # Cancelled or failed: kill the child and wait for it, then re-raise.
            transport.close()
            await transport._wait()
            raise
        return transport
