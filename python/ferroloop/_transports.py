"""Making transports (asyncio: ``selector_events._make_socket_transport`` and friends).

The transports themselves are Rust objects (``_ferroloop.StreamTransport``); this mixin
builds what they are given (the ``extra`` info) and schedules what asyncio schedules around
their creation: ``connection_made``, the start of reading, then the waiter.
"""

from __future__ import annotations

import socket

from . import _ferroloop
from ._format import logger

try:  # A read-only view of the socket, as asyncio hands out (stable since 3.8).
    from asyncio.trsock import TransportSocket as _TransportSocket
except ImportError:  # pragma: no cover - not on supported versions
    _TransportSocket = None


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


class TransportsMixin:
    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        """A Rust stream transport for a connected non-blocking stream socket."""
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
        _set_nodelay(sock)
        transport = _ferroloop.StreamTransport(self, sock, protocol, info, server)
        self.call_soon(protocol.connection_made, transport)
        self.call_soon(transport._start_reading)
        if waiter is not None:
            self.call_soon(_set_result_unless_cancelled, waiter, None)
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
