"""Making transports (asyncio: ``selector_events._make_socket_transport`` and friends).

The transports themselves are Rust objects (``_ferroloop.StreamTransport``); this mixin
builds what they are given (the ``extra`` info) and schedules what asyncio schedules around
their creation: ``connection_made``, the start of reading, then the waiter.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
from asyncio import Protocol
from asyncio.exceptions import SendfileNotAvailableError

from . import _ferroloop
from ._format import logger
from ._sockets import SENDFILE_ALWAYS_SEEKS
from ._typing import LoopAPI

try:
    import ssl
except ImportError:  # pragma: no cover - an interpreter built without OpenSSL
    ssl = None

try:  # A read-only view of the socket, as asyncio hands out (stable since 3.8).
    from asyncio.trsock import TransportSocket as _TransportSocket
except ImportError:  # pragma: no cover - not on supported versions
    _TransportSocket = None


_FALLBACK_BLOCK = 16 * 1024
_PY314 = sys.version_info >= (3, 14)

# asyncio's socket, datagram and read-pipe transports have a public ``max_size``: the most
# one read asks for. Ours read the same 256 KiB (the Rust MAX_READ / MAX_DATAGRAM); the
# attribute is informative, assigning it changes nothing (docs/compatibility.md).
_ferroloop.StreamTransport.max_size = 256 * 1024
_ferroloop.DatagramTransport.max_size = 256 * 1024


class _Absent:
    """An attribute that asyncio's class of a transport lacks, on ours: reading it raises
    AttributeError (so ``hasattr`` is False), unless it was assigned on the instance (test
    suites patch transports), as with asyncio's."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is not None:
            try:
                return obj.__dict__[self.name]
            except KeyError:
                pass
            owner = type(obj)
        raise AttributeError(f"{owner.__name__!r} object has no attribute {self.name!r}")

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.name] = value

    def __delete__(self, obj) -> None:
        try:
            del obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


# asyncio's read pipe transport is a ReadTransport only (no write side, not even abort);
# its write pipe transport has no max_size (it never reads).
for _name in (
    "abort",
    "can_write_eof",
    "get_write_buffer_limits",
    "get_write_buffer_size",
    "set_write_buffer_limits",
    "write",
    "write_eof",
    "writelines",
):
    setattr(_ferroloop.ReadPipeTransport, _name, _Absent(_name))
_ferroloop.WritePipeTransport.max_size = _Absent("max_size")


def _transport_dir(self):
    # object.__dir__ lists what ``__class__`` (an asyncio class) and the instance have;
    # add what the Rust class has beyond it (max_size, private methods).
    names = set(object.__dir__(self))
    names.update(name for name in dir(type(self)) if hasattr(self, name))
    return sorted(names)


for _cls in (_ferroloop.StreamTransport, _ferroloop.DatagramTransport):
    _cls.__dir__ = _transport_dir
del _cls, _name


class DatagramTransport(asyncio.Transport, asyncio.DatagramTransport):
    """The class ferroloop's (Rust) datagram transports report as ``__class__``.

    asyncio's own datagram transport passes ``isinstance(t, asyncio.Transport)`` (it
    derives from it) but not ``isinstance(t, asyncio.DatagramTransport)``; code checks
    both, so ours passes both. Never instantiated.
    """

    __slots__ = ()


class SSLTransport(asyncio.Transport):
    """The class ferroloop's (Rust) TLS transports report as ``__class__``: an
    ``asyncio.Transport`` with "SSL" in its name, as asyncio's own TLS transport has.
    Never instantiated."""

    __slots__ = ()


def _sendfile_mode(transport) -> str:
    # asyncio marks transports with a private enum; compare its member names, not the enum.
    if isinstance(transport, (_ferroloop.ReadPipeTransport, _ferroloop.WritePipeTransport)):
        return "UNSUPPORTED"  # as asyncio's pipe transports, which carry no mark
    if isinstance(transport, _ferroloop.StreamTransport):
        return "TRY_NATIVE"
    if isinstance(transport, _ferroloop.TlsTransport):
        return "FALLBACK"  # the bytes must go through the TLS layer
    mode = getattr(transport, "_sendfile_compatible", None)
    return getattr(mode, "name", "UNSUPPORTED")


class _WriteGate(Protocol):
    """Stands in for the transport's protocol while ``loop.sendfile`` falls back to reads and
    writes: it turns pause/resume_writing into an awaitable gate, and hands connection_lost on.
    """

    def __init__(self, loop, transport) -> None:
        self._loop = loop
        self._transport = transport
        self._proto = transport.get_protocol()
        self._resume_reading = transport.is_reading()
        self._resume_writing = transport._protocol_paused
        transport.pause_reading()
        transport.set_protocol(self)
        self._gate = loop.create_future() if self._resume_writing else None

    async def drain(self) -> None:
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._gate is not None:
            await self._gate

    def connection_made(self, transport) -> None:
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc) -> None:
        if self._gate is not None:
            self._gate.set_exception(exc or ConnectionError("Connection is closed by peer"))
        self._proto.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._gate is None:
            self._gate = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._gate is not None:
            self._gate.set_result(False)
            self._gate = None

    def data_received(self, data) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def restore(self) -> None:
        self._transport.set_protocol(self._proto)
        if self._resume_reading:
            self._transport.resume_reading()
        if self._gate is not None:
            self._gate.cancel()
        if self._resume_writing:
            self._proto.resume_writing()


def _set_result_unless_cancelled(fut, result) -> None:
    if not fut.cancelled():
        fut.set_result(result)


def _set_nodelay(sock: socket.socket) -> None:
    # asyncio sets TCP_NODELAY on every TCP stream socket it wraps.
    if (
        sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
        and sock.proto == socket.IPPROTO_TCP
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TransportsMixin(LoopAPI):
    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        """A Rust stream transport for a connected non-blocking stream socket."""
        info = self._socket_info(sock, extra)
        _set_nodelay(sock)
        transport = _ferroloop.StreamTransport(self, sock, protocol, info, server)
        if server is not None:
            server._attach(transport)
        self._schedule_start(transport, protocol, waiter)
        return transport

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        call_connection_made=True,
    ):
        """A TLS transport over a Rust stream transport for rawsock; the waiter is done when
        the handshake is (or with its exception)."""
        tls = self._tls_protocol(
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            call_connection_made,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, tls, extra=extra, server=server)
        return tls._app_transport

    def _tls_protocol(self, protocol, sslcontext, waiter, server_side, server_hostname, *args):
        if not sslcontext:  # ssl=True on a client: a default, verifying context
            if server_side:
                raise ValueError("Server side SSL needs a valid SSLContext")
            sslcontext = ssl.create_default_context()
            if not server_hostname:
                sslcontext.check_hostname = False
        return _ferroloop.TlsProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, *args
        )

    async def start_tls(
        self,
        transport,
        protocol,
        sslcontext,
        *,
        server_side=False,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Upgrade an existing connection to TLS; return the new (TLS) transport."""
        if ssl is None:
            raise RuntimeError("Python ssl module is not available")
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        tls = self._tls_protocol(
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            False,  # the protocol is connected already
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        # Pause first, so that no data reaches the TLS layer before its connection_made().
        transport.pause_reading()
        buffered = _take_stream_reader_buffer(protocol) if server_side and _PY314 else None
        transport.set_protocol(tls)
        scheduled = [self.call_soon(tls.connection_made, transport)]
        if buffered:
            # What the server's StreamReader received before start_tls(): the start of the
            # client's handshake (3.14, gh-142352).
            scheduled.append(self.call_soon(tls.data_received, buffered))
        scheduled.append(self.call_soon(transport.resume_reading))
        try:
            await waiter
        except BaseException:
            transport.close()
            for handle in scheduled:
                handle.cancel()
            # The exception's traceback holds this frame: let go of what holds the exception
            # (the waiter) and of the TLS protocol, so no cycle keeps the transport alive.
            waiter = tls = scheduled = None
            raise
        return tls._app_transport

    @staticmethod
    def _socket_info(sock, extra) -> dict:
        # asyncio's extra info of a socket transport: the socket (read-only view), both names.
        info = dict(extra) if extra else {}
        info["socket"] = _TransportSocket(sock) if _TransportSocket else sock
        try:
            info["sockname"] = sock.getsockname()
        except OSError:
            info["sockname"] = None
        if "peername" not in info:
            try:
                info["peername"] = sock.getpeername()
            except OSError:
                info["peername"] = None
        return info

    def _schedule_start(self, transport, protocol, waiter) -> None:
        # As asyncio: the fd belongs to the transport from now on; connection_made first,
        # then reading, then the waiter.
        self._attach_transport(transport)
        self.call_soon(protocol.connection_made, transport)
        self.call_soon(transport._start_reading)
        if waiter is not None:
            self.call_soon(_set_result_unless_cancelled, waiter, None)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        """A Rust datagram transport for a non-blocking UDP or Unix datagram socket."""
        info = self._socket_info(sock, extra)
        transport = _ferroloop.DatagramTransport(self, sock, protocol, info, address)
        self._schedule_start(transport, protocol, waiter)
        return transport

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        """A Rust read transport over a non-blocking pipe, socket or character device."""
        return self._start_pipe_transport(
            _ferroloop.ReadPipeTransport, pipe, protocol, waiter, extra
        )

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        """A Rust write transport over a non-blocking pipe, socket or character device.

        For pipes and sockets, readiness to read means the reader went away (asyncio watches
        it the same way); a character device (a PTY) may legitimately have input waiting.
        """
        mode = os.fstat(pipe.fileno()).st_mode
        watches = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        return self._start_pipe_transport(
            _ferroloop.WritePipeTransport, pipe, protocol, waiter, extra, watches
        )

    def _start_pipe_transport(self, make, pipe, protocol, waiter, extra, *args):
        info = dict(extra) if extra else {}
        info["pipe"] = pipe
        transport = make(self, pipe, protocol, info, *args)
        self._schedule_start(transport, protocol, waiter)
        return transport

    def _transport_error(self, transport, exc, message, protocol) -> None:
        # Called by a Rust transport before it force-closes (asyncio: _fatal_error).
        if isinstance(exc, OSError):
            if self.get_debug():
                logger().debug("%r: %s", transport, message, exc_info=True)
        else:
            self.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": transport,
                    "protocol": protocol,
                }
            )

    def _report_transport_turn_error(self, transport, exc, method) -> None:
        # Called by the Rust core when a transport's read or write turn raises what the
        # transport does not handle itself (asyncio: the reader/writer handle's callback
        # raised, reported by Handle._run; there is no handle here, so the transport and
        # its protocol are named instead).
        self.call_exception_handler(
            {
                "message": f"Exception in callback {type(transport).__name__}.{method}()",
                "exception": exc,
                "transport": transport,
                "protocol": transport.get_protocol(),
            }
        )

    # -- loop.sendfile -------------------------------------------------------------------

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """Send a file over a transport: zero-copy ``os.sendfile`` on plain sockets, else
        reads and writes (asyncio's semantics, including the file position afterwards)."""
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = _sendfile_mode(transport)
        if mode == "UNSUPPORTED":
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode == "TRY_NATIVE":
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(
                "fallback is disabled and native sendfile is not supported for "
                f"transport {transport!r}"
            )
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(self, transport, file, offset, count):
        resume_reading = transport.is_reading()
        transport.pause_reading()
        await transport._make_empty_waiter()
        # sock_sendfile drives the fd itself: lend it the poller registration.
        transport._suspend_io()
        try:
            return await self.sock_sendfile(transport._sock, file, offset, count, fallback=False)
        finally:
            transport._reset_empty_waiter()
            transport._resume_io()
            if resume_reading:
                transport.resume_reading()

    async def _sendfile_fallback(self, transport, file, offset, count):
        if offset or (SENDFILE_ALWAYS_SEEKS and hasattr(file, "seek")):
            file.seek(offset)
        blocksize = min(count, _FALLBACK_BLOCK) if count else _FALLBACK_BLOCK
        buf = bytearray(blocksize)
        total = 0
        gate = _WriteGate(self, transport)
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        return total
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total
                await gate.drain()
                transport.write(view[:read])
                total += read
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)
            gate.restore()


def _take_stream_reader_buffer(protocol) -> bytes | None:
    """Empty the StreamReader of an asyncio streams protocol; return what it held."""
    if not isinstance(protocol, asyncio.StreamReaderProtocol):
        return None
    reader = getattr(protocol, "_stream_reader", None)
    if reader is None or not reader._buffer:
        return None
    data = bytes(reader._buffer)
    reader._buffer.clear()
    return data
