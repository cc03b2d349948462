"""Slow readers and bulk transfers through every stream transport kind (issue 10, fault
catalog): write flow control (pause_writing above the high-water mark, resume_writing at or
below the low one, get_write_buffer_size consistent with both) against a reader slower than
the writer, and many MiB echoed and checksummed (sha256) through TCP, Unix, TLS, a pipe and
a subprocess's pipes. Each body runs on ferroloop and on stdlib asyncio.

The 1 GiB variants are marked ``big`` and run only with FERROLOOP_BIG=1
(``make reliability-big``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import struct
import sys
import tempfile

import pytest
from _netkit import Accepting, MiB, address_of, serving
from _tlskit import SERVER_CN, client_context, tls_serving

KiB = 1 << 10
GiB = 1 << 30
PY = sys.executable
STREAM_KINDS = ["tcp", "unix", "tls"]

big = pytest.mark.skipif(
    not os.environ.get("FERROLOOP_BIG"), reason="1 GiB transfer: set FERROLOOP_BIG=1"
)


def skip_asyncio_tls_before_311(kind, loop_kind):
    if kind == "tls" and loop_kind == "asyncio" and sys.version_info < (3, 11):
        pytest.skip("3.10's asyncio TLS layer predates the 3.11 sslproto that ferroloop follows")


def run(loop, coro, timeout):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def small_socket_buffers(transport, size=64 * KiB):
    """Small kernel buffers for a socket (no autotuning), so that a slow reader keeps
    pausing the writer; nothing for a pipe."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


# -- what writes and what reads -------------------------------------------------------------


class Source:
    """Writes `total` bytes into a transport in numbered chunks (a lost, repeated or
    reordered chunk changes the checksum), as fast as its flow control lets it; keeps the
    sha256 of what it wrote and the buffer size at each pause_writing/resume_writing."""

    def __init__(self, total, chunk=256 * KiB, seed=0):
        self.block = random.Random(seed).randbytes(chunk)
        self.total = total
        self.sent = 0
        self.sha = hashlib.sha256()
        self.paused = False
        self.pauses = []
        self.resumes = []
        self.transport = None
        self.on_done = None
        self.first_pause = asyncio.get_running_loop().create_future()

    def start(self, transport, on_done=None):
        self.transport = transport
        self.on_done = on_done
        self.pump()

    def pump(self):
        block = self.block
        while not self.paused and self.sent < self.total:
            n = min(len(block), self.total - self.sent)
            chunk = (struct.pack(">Q", self.sent // len(block)) + block[8:])[:n]
            self.sha.update(chunk)
            self.sent += n
            self.transport.write(chunk)
            assert self.transport.get_write_buffer_size() >= 0
        if self.sent >= self.total and self.on_done is not None:
            done, self.on_done = self.on_done, None
            done()

    def pause_writing(self):
        assert not self.paused, "pause_writing() twice"
        self.paused = True
        self.pauses.append(self.transport.get_write_buffer_size())
        if not self.first_pause.done():
            self.first_pause.set_result(None)

    def resume_writing(self):
        assert self.paused, "resume_writing() without pause_writing()"
        self.paused = False
        self.resumes.append(self.transport.get_write_buffer_size())
        asyncio.get_running_loop().call_soon(self.pump)

    def check_flow_control(self, low, high, strict_high=True):
        """What the transport reported at each pause and resume, once all is written."""
        assert self.pauses, "the writer never paused: nothing was tested"
        assert len(self.resumes) == len(self.pauses), (self.pauses, self.resumes)
        for size in self.pauses:
            assert size > high if strict_high else size >= high, (size, high)
        for size in self.resumes:
            assert size <= low, (size, low)


class Sink(asyncio.Protocol):
    """Hashes and counts what it receives. `slow`: reads one chunk per loop iteration
    (pause_reading, resume_reading on the next). `held`: does not read until release()."""

    def __init__(self, expected, *, slow=False, held=False):
        loop = asyncio.get_running_loop()
        self.expected = expected
        self.slow = slow
        self.held = held
        self.received = 0
        self.sha = hashlib.sha256()
        self.transport = None
        self.made = loop.create_future()
        self.complete = loop.create_future()
        self.lost = loop.create_future()
        self.eof = False

    def connection_made(self, transport):
        self.transport = transport
        small_socket_buffers(transport)
        if self.held:
            transport.pause_reading()
        self.made.set_result(transport)

    def release(self):
        if self.held:
            self.held = False
            self.transport.resume_reading()

    def data_received(self, data):
        assert not self.held
        self.received += len(data)
        self.sha.update(data)
        assert self.received <= self.expected, (self.received, self.expected)
        if self.received == self.expected:
            self.complete.set_result(self.sha.hexdigest())
        elif self.slow:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self):
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost.set_result(exc)
        if not self.complete.done():
            self.complete.set_exception(
                AssertionError(f"connection lost ({exc!r}) after {self.received} bytes")
            )


class Writer(asyncio.Protocol):
    """A transport's protocol that writes a Source's bytes; `limits`: the transport's
    write buffer limits."""

    def __init__(self, source, limits=None):
        self.source = source
        self.limits = limits
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        small_socket_buffers(transport)
        if self.limits is not None:
            transport.set_write_buffer_limits(**self.limits)
            assert transport.get_write_buffer_limits() == (self.limits["low"], self.limits["high"])
        self.source.start(transport)

    def pause_writing(self):
        self.source.pause_writing()

    def resume_writing(self):
        self.source.resume_writing()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class EchoClient(Writer, Sink):
    """Writes a Source's bytes and hashes what comes back."""

    def __init__(self, source, limits=None):
        Writer.__init__(self, source, limits)
        Sink.__init__(self, source.total)

    def connection_made(self, transport):
        Sink.connection_made(self, transport)
        Writer.connection_made(self, transport)

    connection_lost = Sink.connection_lost


class Echo(asyncio.Protocol):
    """Sends back what it receives, and stops reading while its own buffer is full."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        return False


@contextlib.asynccontextmanager
async def stream_server(loop, kind, factory):
    """A server of this kind; yields the keyword arguments that connect to it."""
    if kind == "unix":
        with tempfile.TemporaryDirectory(prefix="ferroloop-") as d:
            path = os.path.join(d, "s")
            srv = await loop.create_unix_server(factory, path)
            try:
                yield {"path": path}
            finally:
                srv.close()
                await srv.wait_closed()
        return
    serve = tls_serving if kind == "tls" else serving
    async with serve(loop, factory) as srv:
        host, port = address_of(srv)
        connect = {"host": host, "port": port}
        if kind == "tls":
            connect.update(ssl=client_context(), server_hostname=SERVER_CN)
        yield connect


async def connect(loop, kind, factory, address):
    if kind == "unix":
        return await loop.create_unix_connection(factory, **address)
    return await loop.create_connection(factory, **address)


# -- a slow reader against each transport kind, watermarks respected ------------------------

SLOW_TOTAL = 4 * MiB
LIMITS = {"high": 256 * KiB, "low": 64 * KiB}


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_slow_reader_stream(loop, loop_kind, kind):
    skip_asyncio_tls_before_311(kind, loop_kind)

    async def main():
        source = Source(SLOW_TOTAL, seed=41)
        accepting = Accepting(lambda: Sink(SLOW_TOTAL, slow=True, held=True))
        async with stream_server(loop, kind, accepting) as address:
            t, w = await connect(loop, kind, lambda: Writer(source, LIMITS), address)
            sink = await accepting.made()
            await source.first_pause
            sink.release()
            assert await sink.complete == source.sha.hexdigest()
            assert source.sent == SLOW_TOTAL
            assert t.get_write_buffer_size() == 0
            source.check_flow_control(strict_high=kind != "tls", **LIMITS)
            t.close()
            assert await w.lost is None
            assert await sink.lost is None

    run(loop, main(), 30)


def test_slow_reader_pipe(loop):
    async def main():
        source = Source(SLOW_TOTAL, seed=42)
        r, w = os.pipe()
        rf, wf = os.fdopen(r, "rb", 0), os.fdopen(w, "wb", 0)
        _, sink = await loop.connect_read_pipe(lambda: Sink(SLOW_TOTAL, slow=True, held=True), rf)
        t, writer = await loop.connect_write_pipe(lambda: Writer(source, LIMITS), wf)
        await source.first_pause
        sink.release()
        assert await sink.complete == source.sha.hexdigest()
        assert t.get_write_buffer_size() == 0
        source.check_flow_control(**LIMITS)
        t.close()
        assert await writer.lost is None
        assert await sink.lost is None
        assert sink.eof

    run(loop, main(), 30)


HASH_STDIN = (
    "import hashlib, sys\n"
    "h, n = hashlib.sha256(), 0\n"
    "while chunk := sys.stdin.buffer.read1(1 << 16):\n"
    "    h.update(chunk)\n"
    "    n += len(chunk)\n"
    "print(h.hexdigest(), n)\n"
)


class StdinWriter(asyncio.SubprocessProtocol):
    """Writes a Source into the child's stdin, then closes it; keeps the child's stdout."""

    def __init__(self, source, limits=None, out_sink=None):
        loop = asyncio.get_running_loop()
        self.source = source
        self.limits = limits
        self.out = bytearray()
        self.out_sink = out_sink
        self.lost = loop.create_future()

    def connection_made(self, transport):
        stdin = transport.get_pipe_transport(0)
        if self.limits is not None:
            stdin.set_write_buffer_limits(**self.limits)
        self.source.start(stdin, on_done=stdin.close)

    def pause_writing(self):
        self.source.pause_writing()

    def resume_writing(self):
        self.source.resume_writing()

    def pipe_data_received(self, fd, data):
        if self.out_sink is not None:
            self.out_sink.data_received(data)
        else:
            self.out += data

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_slow_reader_subprocess_stdin(loop):
    async def main():
        # A 1 MiB chunk is more than the pipe and the high-water mark hold together: the
        # first write pauses the writer, whatever the child's speed.
        source = Source(SLOW_TOTAL, chunk=MiB, seed=43)
        t, p = await loop.subprocess_exec(
            lambda: StdinWriter(source, LIMITS), PY, "-c", HASH_STDIN, stderr=None
        )
        assert await p.lost is None
        assert t.get_returncode() == 0
        assert bytes(p.out).split() == [source.sha.hexdigest().encode(), b"%d" % SLOW_TOTAL]
        source.check_flow_control(**LIMITS)
        t.close()

    run(loop, main(), 30)


# -- bulk transfers, echoed and checksummed -------------------------------------------------

CI_TOTAL = 64 * MiB


async def echo_stream(loop, kind, total):
    source = Source(total, seed=51)
    async with stream_server(loop, kind, Echo) as address:
        t, client = await connect(loop, kind, lambda: EchoClient(source), address)
        assert await client.complete == source.sha.hexdigest()
        assert client.received == source.sent == total
        t.close()
        assert await client.lost is None


async def through_pipe(loop, total):
    source = Source(total, seed=52)
    r, w = os.pipe()
    rf, wf = os.fdopen(r, "rb", 0), os.fdopen(w, "wb", 0)
    _, sink = await loop.connect_read_pipe(lambda: Sink(total), rf)
    t, writer = await loop.connect_write_pipe(lambda: Writer(source), wf)
    assert await sink.complete == source.sha.hexdigest()
    t.close()
    assert await writer.lost is None
    assert await sink.lost is None


async def echo_subprocess(loop, total):
    # `cat` echoes stdin to stdout; stdout is hashed as it comes.
    source = Source(total, seed=53)
    sink = Sink(total)
    t, p = await loop.subprocess_exec(
        lambda: StdinWriter(source, out_sink=sink), "cat", stderr=None
    )
    assert await sink.complete == source.sha.hexdigest()
    assert await p.lost is None
    assert t.get_returncode() == 0
    t.close()


def transfer(loop, loop_kind, kind, total, timeout):
    if kind == "pipe":
        coro = through_pipe(loop, total)
    elif kind == "subprocess":
        coro = echo_subprocess(loop, total)
    else:
        skip_asyncio_tls_before_311(kind, loop_kind)
        coro = echo_stream(loop, kind, total)
    run(loop, coro, timeout)


BULK_KINDS = [*STREAM_KINDS, "pipe", "subprocess"]


@pytest.mark.parametrize("kind", BULK_KINDS)
def test_bulk_transfer(loop, loop_kind, kind):
    transfer(loop, loop_kind, kind, CI_TOTAL, 60)


@big
@pytest.mark.big
@pytest.mark.parametrize("kind", BULK_KINDS)
def test_bulk_transfer_1gib(loop, loop_kind, kind):
    transfer(loop, loop_kind, kind, GiB, 900)
