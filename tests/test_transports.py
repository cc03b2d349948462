"""Stream transports from create_connection/create_server: data, closing, flow control,
protocol callbacks and their errors. Loopback TCP only."""

import asyncio
import logging
import re
import socket
import sys
from asyncio.trsock import TransportSocket

import pytest
from _netkit import (
    Accepting,
    Echo,
    MiB,
    Recorder,
    address_of,
    close_all,
    connected,
    ipv6_loopback_available,
    linger_zero,
    payload,
    poll_once,
    run,
    serving,
)

HOSTS = [
    "127.0.0.1",
    pytest.param(
        "::1",
        marks=pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback"),
    ),
]


async def fill_write_buffer(transport, size=8 * MiB):
    """Write until the transport buffers data (the peer must not be reading)."""
    data = payload(size)
    transport.write(data)
    assert transport.get_write_buffer_size() > 0, "the kernel took everything: no buffering"
    return data


# -- data ------------------------------------------------------------------------------


def test_large_transfer_both_directions(loop):
    up, down = payload(8 * MiB, 1), payload(8 * MiB, 2)

    async def main():
        async with connected(loop) as (cp, sp):
            cp.transport.write(up)
            sp.transport.write(down)
            got_up, got_down = await asyncio.gather(sp.received(len(up)), cp.received(len(down)))
            assert got_up == up
            assert got_down == down
            assert cp.transport.get_write_buffer_size() == 0
            assert sp.transport.get_write_buffer_size() == 0

    run(loop, main())


def test_writelines_and_bytes_like_objects(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            cp.transport.write(bytearray(b"ab"))
            cp.transport.write(memoryview(b"xcdx")[1:3])
            cp.transport.writelines([b"ef", bytearray(b"gh"), memoryview(b"ij")])
            assert await sp.received(10) == b"abcdefghij"

    run(loop, main())


def test_many_concurrent_connections(loop):
    n = 200
    accepting = Accepting(Echo)

    async def client(address, i):
        message = f"connection {i};".encode() * 50
        transport, proto = await loop.create_connection(Recorder, *address)
        transport.write(message)
        assert await proto.received(len(message)) == message
        transport.close()
        assert await proto.lost is None
        return transport.get_extra_info("sockname")

    async def main():
        async with serving(loop, accepting, backlog=n) as server:
            clients = await asyncio.gather(*(client(address_of(server), i) for i in range(n)))
            assert len(set(clients)) == n
            assert len(accepting.protocols) == n
            for proto in accepting.protocols:
                assert await proto.lost is None  # each saw the client's EOF and closed

    run(loop, main())


@pytest.mark.parametrize("host", HOSTS)
def test_extra_info(loop, host):
    async def main():
        async with connected(loop, host=host) as (cp, sp):
            for mine, theirs in ((cp, sp), (sp, cp)):
                t = mine.transport
                sock = t.get_extra_info("socket")
                assert isinstance(sock, TransportSocket)
                assert sock.family == (socket.AF_INET6 if ":" in host else socket.AF_INET)
                assert sock.type == socket.SOCK_STREAM
                assert t.get_extra_info("sockname") == sock.getsockname()
                assert t.get_extra_info("peername") == sock.getpeername()
                assert t.get_extra_info("sockname")[0] == host
                assert t.get_extra_info("peername") == theirs.transport.get_extra_info("sockname")
                assert t.get_extra_info("no such key") is None
                assert t.get_extra_info("no such key", "dflt") == "dflt"

    run(loop, main())


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_nodelay_is_set(loop, host):
    async def main():
        async with connected(loop, host=host) as (cp, sp):
            for t in (cp.transport, sp.transport):
                sock = t.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

    run(loop, main())


def test_transport_classes(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            for t in (cp.transport, sp.transport):
                assert isinstance(t, asyncio.Transport)
                assert isinstance(t, asyncio.ReadTransport)
                assert isinstance(t, asyncio.WriteTransport)
                assert isinstance(t, asyncio.BaseTransport)
                assert t.can_write_eof()

    run(loop, main())


def test_set_protocol_and_get_protocol(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            assert cp.transport.get_protocol() is cp
            assert sp.transport.get_protocol() is sp
            cp.transport.write(b"first")
            await sp.received(5)
            other = Recorder()
            sp.transport.set_protocol(other)
            assert sp.transport.get_protocol() is other
            other.transport = sp.transport
            cp.transport.write(b"second")
            assert await other.received(6) == b"second"
            assert sp.data == b"first"
            cp.transport.close()
            assert await other.lost is None
            assert not sp.lost.done()
            sp.transport = None  # closed already: nothing for the cleanup to wait for

    run(loop, main())


# -- half-close, reset, close, abort ---------------------------------------------------


def test_write_eof_then_peer_eof_received_closes_by_default(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            cp.transport.write(b"request")
            cp.transport.write_eof()
            assert await sp.eof == b"request"
            assert await sp.lost is None  # eof_received() returned a false value
            assert await cp.eof == b""
            assert await cp.lost is None

    run(loop, main())


def test_half_close_keep_open_then_write_back(loop):
    class KeepOpen(Recorder):
        keep_open = True

    async def main():
        async with connected(loop, server=KeepOpen) as (cp, sp):
            cp.transport.write(b"request")
            cp.transport.write_eof()
            assert not cp.transport.is_closing()
            assert await sp.eof == b"request"
            assert not sp.transport.is_closing()
            await poll_once()
            assert not sp.lost.done()
            sp.transport.write(b"reply to " + bytes(sp.data))
            sp.transport.close()
            assert await cp.eof == b"reply to request"
            assert await cp.lost is None
            assert await sp.lost is None

    run(loop, main())


def test_write_eof_waits_for_the_buffer_to_drain(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            sp.transport.pause_reading()
            data = await fill_write_buffer(cp.transport)
            cp.transport.write_eof()
            assert not cp.transport.is_closing()
            sp.transport.resume_reading()
            assert await sp.eof == data
            assert cp.transport.get_write_buffer_size() == 0

    run(loop, main())


def test_write_after_write_eof_raises(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            cp.transport.write(b"data")
            cp.transport.write_eof()
            cp.transport.write_eof()  # again: no error
            with pytest.raises(RuntimeError):
                cp.transport.write(b"more")
            with pytest.raises(RuntimeError):
                cp.transport.write(b"")
            assert await sp.eof == b"data"

    run(loop, main())


@pytest.mark.parametrize("writing", [False, True], ids=["idle", "writing"])
def test_peer_reset_reaches_connection_lost(loop, writing):
    async def main():
        async with connected(loop) as (cp, sp):
            sp.transport.pause_reading()
            if writing:
                await fill_write_buffer(cp.transport)
            linger_zero(sp.transport)
            sp.transport.abort()
            exc = await cp.lost
            assert isinstance(exc, ConnectionResetError), repr(exc)
            assert cp.transport.is_closing()
            assert cp.transport.get_write_buffer_size() == 0

    run(loop, main())


def test_close_flushes_buffer_then_peer_sees_eof(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            sp.transport.pause_reading()
            transport = cp.transport  # a reference: the garbage collector closes nothing
            data = await fill_write_buffer(transport)
            transport.close()
            assert transport.is_closing()
            transport.close()  # again: no error
            await poll_once()
            assert not cp.lost.done(), "connection_lost() before the buffer was flushed"
            sp.transport.resume_reading()
            assert await sp.eof == data
            assert await cp.lost is None
            assert transport.get_write_buffer_size() == 0

    run(loop, main())


def test_abort_drops_buffered_data(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            sp.transport.pause_reading()
            data = await fill_write_buffer(cp.transport)
            cp.transport.abort()
            assert cp.transport.is_closing()
            assert cp.transport.get_write_buffer_size() == 0
            assert await cp.lost is None
            sp.transport.resume_reading()
            await sp.lost
            assert len(sp.data) < len(data)
            assert data.startswith(sp.data)

    run(loop, main())


def test_is_closing(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            assert not cp.transport.is_closing()
            assert not sp.transport.is_closing()
            cp.transport.close()
            assert cp.transport.is_closing()
            await cp.lost
            assert cp.transport.is_closing()
            await sp.lost  # eof_received() returned None: the server side closed
            assert sp.transport.is_closing()

    run(loop, main())


def test_write_after_close_is_ignored_then_warns(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")

    def warnings():
        return [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]

    async def main():
        async with connected(loop) as (cp, sp):
            cp.transport.close()
            for _ in range(4):
                cp.transport.write(b"ignored")
            assert warnings() == []
            cp.transport.write(b"ignored")
            assert len(warnings()) == 1
            cp.transport.write(b"ignored")
            assert len(warnings()) == 2
            assert await sp.eof == b""
            assert await cp.lost is None

    run(loop, main())


def test_write_of_non_bytes_raises_type_error(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            with pytest.raises(TypeError):
                cp.transport.write("text")
            with pytest.raises(TypeError):
                cp.transport.write(42)
            cp.transport.write(b"still fine")
            assert await sp.received(10) == b"still fine"

    run(loop, main())


# -- write flow control ----------------------------------------------------------------


def test_write_buffer_limits(loop):
    async def main():
        async with connected(loop) as (cp, _):
            t = cp.transport
            assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            t.set_write_buffer_limits(high=4000)
            assert t.get_write_buffer_limits() == (1000, 4000)
            t.set_write_buffer_limits(low=100)
            assert t.get_write_buffer_limits() == (100, 400)
            t.set_write_buffer_limits(high=10, low=10)
            assert t.get_write_buffer_limits() == (10, 10)
            t.set_write_buffer_limits(high=0)
            assert t.get_write_buffer_limits() == (0, 0)
            t.set_write_buffer_limits()
            assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            with pytest.raises(ValueError):
                t.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(ValueError):
                t.set_write_buffer_limits(high=10, low=-1)
            assert t.get_write_buffer_size() == 0

    run(loop, main())


def test_pause_and_resume_writing_at_the_marks(loop):
    low, high, chunk = 16 * 1024, 64 * 1024, payload(4096)

    async def main():
        async with connected(loop) as (cp, sp):
            sp.transport.pause_reading()
            t = cp.transport
            t.set_write_buffer_limits(high=high, low=low)
            sent = 0
            while not cp.paused:
                before = t.get_write_buffer_size()
                assert before <= high
                t.write(chunk)
                sent += len(chunk)
                assert sent < 256 * 1024 * 1024, "pause_writing() never came"
            assert cp.paused == [t.get_write_buffer_size()]
            assert cp.paused[0] > high
            for _ in range(8):  # still paused: no second call
                t.write(chunk)
                sent += len(chunk)
            assert len(cp.paused) == 1
            assert cp.resumed == []
            sp.transport.resume_reading()
            assert await sp.received(sent) == chunk * (sent // len(chunk))
            assert len(cp.resumed) == 1
            assert cp.resumed[0] <= low
            assert len(cp.paused) == 1
            assert t.get_write_buffer_size() == 0

    run(loop, main())


def test_lowering_the_high_mark_below_the_buffer_pauses_at_once(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            sp.transport.pause_reading()
            t = cp.transport
            t.set_write_buffer_limits(high=64 * MiB)
            data = await fill_write_buffer(t)
            assert cp.paused == []
            size = t.get_write_buffer_size()
            t.set_write_buffer_limits(high=size - 1)
            assert cp.paused == [size]
            sp.transport.resume_reading()
            assert await sp.received(len(data)) == data
            assert len(cp.resumed) == 1

    run(loop, main())


# -- read flow control -----------------------------------------------------------------


def test_pause_and_resume_reading(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            t = sp.transport
            assert t.is_reading()
            t.pause_reading()
            t.pause_reading()  # again: no error
            assert not t.is_reading()
            cp.transport.write(b"while ")
            cp.transport.write(b"paused")
            await poll_once()
            await poll_once()
            assert sp.data == b""
            t.resume_reading()
            t.resume_reading()  # again: no error
            assert t.is_reading()
            assert await sp.received(12) == b"while paused"
            cp.transport.write(b"!")
            assert await sp.received(13) == b"while paused!"
            t.close()
            assert not t.is_reading()

    run(loop, main())


def test_eof_arriving_while_paused_is_delivered_after_resume(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            sp.transport.pause_reading()
            cp.transport.write(b"last words")
            cp.transport.write_eof()
            await poll_once()
            await poll_once()
            assert not sp.eof.done()
            sp.transport.resume_reading()
            assert await sp.eof == b"last words"

    run(loop, main())


# -- BufferedProtocol ------------------------------------------------------------------


class Buffered(Recorder, asyncio.BufferedProtocol):
    """A BufferedProtocol whose get_buffer() hands out `size`-byte buffers."""

    size = 7

    def __init__(self):
        Recorder.__init__(self)
        self.buf = bytearray(self.size)
        self.hints = set()

    def get_buffer(self, sizehint):
        self.hints.add(sizehint)
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= self.size
        self.data += self.buf[:nbytes]
        self._wake()


@pytest.mark.parametrize("size, total", [(7, 20_000), (64 * 1024, 8 * MiB)])
def test_buffered_protocol(loop, size, total):
    sized = type("Sized", (Buffered,), {"size": size})
    data = payload(total)

    async def main():
        async with connected(loop, server=sized) as (cp, sp):
            assert isinstance(sp, asyncio.BufferedProtocol)
            cp.transport.write(data)
            cp.transport.write_eof()
            assert await sp.eof == data
            assert sp.hints == {-1}
            assert await sp.lost is None

    run(loop, main())


def test_set_protocol_switches_to_a_buffered_protocol(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            buffered = Buffered()
            buffered.transport = sp.transport
            sp.transport.set_protocol(buffered)
            cp.transport.write(b"into the buffer")
            assert await buffered.received(15) == b"into the buffer"
            assert sp.data == b""
            sp.transport.close()
            assert await buffered.lost is None
            sp.transport = None

    run(loop, main())


# -- errors in protocol callbacks ------------------------------------------------------


class Oops(Exception):
    pass


class RaisesInDataReceived(Recorder):
    def data_received(self, data):
        raise Oops("data_received")


class RaisesInEofReceived(Recorder):
    def eof_received(self):
        raise Oops("eof_received")


class RaisesInGetBuffer(Buffered):
    def get_buffer(self, sizehint):
        raise Oops("get_buffer")


class EmptyGetBuffer(Buffered):
    def get_buffer(self, sizehint):
        return bytearray()


class RaisesInBufferUpdated(Buffered):
    def buffer_updated(self, nbytes):
        raise Oops("buffer_updated")


@pytest.mark.parametrize(
    "bad, message, exc_type",
    [
        (RaisesInDataReceived, "Fatal error: protocol.data_received() call failed.", Oops),
        (RaisesInEofReceived, "Fatal error: protocol.eof_received() call failed.", Oops),
        (RaisesInGetBuffer, "Fatal error: protocol.get_buffer() call failed.", Oops),
        (EmptyGetBuffer, "Fatal error: protocol.get_buffer() call failed.", RuntimeError),
        (RaisesInBufferUpdated, "Fatal error: protocol.buffer_updated() call failed.", Oops),
    ],
    ids=["data_received", "eof_received", "get_buffer", "get_buffer-empty", "buffer_updated"],
)
def test_error_in_protocol_callback_closes_that_transport(
    loop, expect_exception_handler, bad, message, exc_type
):
    accepting = Accepting(bad, Echo)

    async def main():
        async with serving(loop, accepting) as server:
            address = address_of(server)
            t1, c1 = await loop.create_connection(Recorder, *address)
            t1.write(b"boom")
            t1.write_eof()
            victim = await accepting.made(0)
            exc = await victim.lost
            assert isinstance(exc, exc_type)
            assert victim.transport.is_closing()
            assert await c1.lost is None or isinstance(await c1.lost, ConnectionError)
            assert len(expect_exception_handler) == 1
            context = expect_exception_handler[0]
            assert context["message"] == message
            assert context["exception"] is exc
            assert context["transport"] is victim.transport
            assert context["protocol"] is victim
            # The server goes on serving.
            t2, c2 = await loop.create_connection(Recorder, *address)
            t2.write(b"still serving")
            assert await c2.received(13) == b"still serving"
            await close_all(c1, c2, *accepting.protocols)

    run(loop, main())


def test_error_in_connection_made_goes_to_the_handler(loop, expect_exception_handler):
    # asyncio calls connection_made() as a plain callback: the error is reported and the
    # transport stays open.
    class RaisesInConnectionMade(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            raise Oops("connection_made")

    accepting = Accepting(RaisesInConnectionMade)

    async def main():
        async with serving(loop, accepting) as server:
            t1, c1 = await loop.create_connection(Recorder, *address_of(server))
            victim = await accepting.made(0)
            t1.write(b"ping")
            assert await c1.received(4) == b"ping"
            assert not victim.transport.is_closing()
            assert len(expect_exception_handler) == 1
            context = expect_exception_handler[0]
            assert isinstance(context["exception"], Oops)
            # Named like asyncio names a bound method: no source location. 3.13+ shows the
            # arguments only in debug mode.
            name = re.escape(RaisesInConnectionMade.connection_made.__qualname__)
            args = r"\(\)" if sys.version_info >= (3, 13) else r"\(<.*>\)"
            assert re.fullmatch(rf"Exception in callback {name}{args}", context["message"])
            t2, c2 = await loop.create_connection(Recorder, *address_of(server))
            t2.write(b"pong")
            assert await c2.received(4) == b"pong"
            assert len(expect_exception_handler) == 2
            await close_all(c1, c2, *accepting.protocols)

    run(loop, main())


@pytest.mark.parametrize("method", ["pause_writing", "resume_writing"])
def test_error_in_flow_control_callback_is_reported(loop, expect_exception_handler, method):
    # Reported, and the transport carries on.
    class RaisesInFlowControl(Recorder):
        pass

    def oops(self):
        getattr(Recorder, method)(self)
        raise Oops(method)

    setattr(RaisesInFlowControl, method, oops)

    async def main():
        async with connected(loop, client=RaisesInFlowControl) as (cp, sp):
            sp.transport.pause_reading()
            data = await fill_write_buffer(cp.transport)
            assert len(cp.paused) == 1
            sp.transport.resume_reading()
            assert await sp.received(len(data)) == data
            assert len(cp.resumed) == 1
            assert not cp.transport.is_closing()
            assert len(expect_exception_handler) == 1
            context = expect_exception_handler[0]
            assert context["message"] == f"protocol.{method}() failed"
            assert isinstance(context["exception"], Oops)
            assert context["transport"] is cp.transport
            assert context["protocol"] is cp

    run(loop, main())


def test_error_in_connection_lost_is_reported_and_the_socket_closed(loop, expect_exception_handler):
    class RaisesInConnectionLost(Recorder):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise Oops("connection_lost")

    accepting = Accepting(RaisesInConnectionLost)

    async def main():
        server = await loop.create_server(accepting, "127.0.0.1", 0)
        _, cp = await loop.create_connection(Recorder, *address_of(server))
        sp = await accepting.made()
        waiting = asyncio.ensure_future(server.wait_closed())
        await poll_once()  # waiting before close(): 3.11 returns at once if closed already
        server.close()
        sp.transport.close()
        assert await sp.lost is None
        assert await cp.eof == b""  # the server side's socket was closed all the same
        await waiting  # and the transport detached itself from the server
        assert len(expect_exception_handler) == 1
        assert isinstance(expect_exception_handler[0]["exception"], Oops)
        await close_all(cp)

    run(loop, main())


# -- the transport's fd is off limits --------------------------------------------------


def test_add_reader_on_a_transport_fd_raises(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            fd = cp.transport.get_extra_info("socket").fileno()
            sock = cp.transport.get_extra_info("socket")
            for target in (fd, sock):
                with pytest.raises(RuntimeError):
                    loop.add_reader(target, lambda: None)
                with pytest.raises(RuntimeError):
                    loop.add_writer(target, lambda: None)
                with pytest.raises(RuntimeError):
                    loop.remove_reader(target)
                with pytest.raises(RuntimeError):
                    loop.remove_writer(target)
            cp.transport.write(b"unharmed")
            assert await sp.received(8) == b"unharmed"

    run(loop, main())


def test_add_reader_on_a_transport_fd_raises_in_connection_made(loop):
    # The fd belongs to the transport from the moment it exists.
    class TriesAddReader(Recorder):
        def connection_made(self, transport):
            fd = transport.get_extra_info("socket").fileno()
            try:
                asyncio.get_running_loop().add_reader(fd, lambda: None)
            except RuntimeError as exc:
                self.error = exc
            else:
                self.error = None
                asyncio.get_running_loop().remove_reader(fd)
            super().connection_made(transport)

    async def main():
        async with connected(loop, client=TriesAddReader) as (cp, sp):
            assert isinstance(cp.error, RuntimeError)
            cp.transport.write(b"ok")
            assert await sp.received(2) == b"ok"

    run(loop, main())
