"""Helpers for the transport, server, stream and sendfile tests (loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct

FAR = 10  # seconds: a bound only a hang reaches
MiB = 1 << 20


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, FAR))


def payload(n, seed=0):
    """n pseudo-random bytes: a lost, repeated or reordered chunk cannot go unnoticed."""
    return random.Random(seed).randbytes(n)


def ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def linger_zero(transport):
    """Make the transport's socket send a reset (RST) instead of a FIN when it closes."""
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def poll_once():
    """Return once the loop has polled for I/O and run every callback that poll reported.

    Whatever was readable before this call has had its chance to be delivered by then.
    """
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with a, b:
        polled = loop.create_future()
        loop.add_reader(b, lambda: polled.done() or polled.set_result(None))
        a.send(b"x")
        try:
            await polled
        finally:
            loop.remove_reader(b)


class Recorder(asyncio.Protocol):
    """Keeps what it receives; futures for connection_made, eof_received, connection_lost."""

    keep_open = False  # what eof_received() returns

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.transport = None
        self.data = bytearray()
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.paused = []  # write buffer size at each pause_writing()
        self.resumed = []  # and at each resume_writing()
        self._more = None

    def _wake(self):
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        assert not self.eof.done(), "data_received() after eof_received()"
        self.data += data
        self._wake()

    def eof_received(self):
        self.eof.set_result(bytes(self.data))
        self._wake()
        return self.keep_open

    def connection_lost(self, exc):
        self.lost.set_result(exc)
        self._wake()

    def pause_writing(self):
        self.paused.append(self.transport.get_write_buffer_size())

    def resume_writing(self):
        self.resumed.append(self.transport.get_write_buffer_size())

    async def received(self, n):
        """Wait until n bytes have arrived in all; return them."""
        while len(self.data) < n:
            if self.eof.done() or self.lost.done():
                raise AssertionError(f"connection ended after {len(self.data)} of {n} bytes")
            self._more = asyncio.get_running_loop().create_future()
            await self._more
        return bytes(self.data)


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class Accepting:
    """A server's protocol factory: the i-th connection gets classes[i] (the last repeats)."""

    def __init__(self, *classes):
        self.classes = classes or (Recorder,)
        self.protocols = []
        self._more = None

    def __call__(self):
        cls = self.classes[min(len(self.protocols), len(self.classes) - 1)]
        self.protocols.append(cls())
        if self._more is not None and not self._more.done():
            self._more.set_result(None)
        return self.protocols[-1]

    async def made(self, i=0):
        """The i-th protocol, once its connection_made() has run."""
        while len(self.protocols) <= i:
            self._more = asyncio.get_running_loop().create_future()
            await self._more
        await self.protocols[i].made
        return self.protocols[i]


def address_of(server):
    return server.sockets[0].getsockname()[:2]


async def close_all(*protocols):
    """Abort the protocols' transports and wait for their connection_lost()."""
    for proto in protocols:
        # (not after connection_lost: asyncio 3.11's abort() then fails on a closed loop
        # reference when close() had flushed a buffer)
        if proto.transport is not None and not proto.lost.done():
            proto.transport.abort()
    for proto in protocols:
        if proto.transport is not None:
            await proto.lost


@contextlib.asynccontextmanager
async def serving(loop, factory, host="127.0.0.1", **kwargs):
    """A TCP server on host, port 0, closed (and waited for) on exit."""
    server = await loop.create_server(factory, host, 0, **kwargs)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def connected(loop, client=Recorder, server=Recorder, host="127.0.0.1"):
    """A (client protocol, server protocol) pair over TCP, both connected; aborted on exit."""
    accepting = Accepting(server)
    async with serving(loop, accepting, host) as srv:
        _, cp = await loop.create_connection(client, *address_of(srv))
        sp = await accepting.made()
        try:
            yield cp, sp
        finally:
            await close_all(cp, *accepting.protocols)
