"""Datagram endpoints (create_datagram_endpoint): UDP over IPv4/IPv6 loopback and Unix
datagram sockets; data, connected endpoints, errors, extra info, closing."""

import asyncio
import contextlib
import os
import socket
import sys
import tempfile

import pytest
from _netkit import ipv6_loopback_available, payload, run

HOSTS = [
    "127.0.0.1",
    pytest.param(
        "::1",
        marks=pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback"),
    ),
]
SOON = 5  # seconds: what arrives on loopback arrives well within this


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Endpoint(asyncio.DatagramProtocol):
    """Queues what it receives: (data, addr) in `received`, exceptions in `errors`."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.transport = None
        self.received = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr):
        assert not self.lost.done(), "datagram_received() after connection_lost()"
        self.received.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.put_nowait(exc)

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    async def next(self):
        return await asyncio.wait_for(self.received.get(), SOON)


class Echo(Endpoint):
    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def endpoint(loop, factory=Endpoint, **kwargs):
    """A datagram endpoint's protocol; closed, and its connection_lost() awaited, on exit."""
    transport, proto = await loop.create_datagram_endpoint(factory, **kwargs)
    assert proto.made.done() and proto.transport is transport
    try:
        yield proto
    finally:
        transport.close()
        await proto.lost


# -- data ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_large_datagram_echo(loop, host):
    data = payload(60 * 1024)

    async def main():
        async with (
            endpoint(loop, Echo, local_addr=(host, 0)) as server,
            endpoint(loop, local_addr=(host, 0)) as client,
        ):
            server_addr = server.transport.get_extra_info("sockname")
            # An empty datagram: asyncio 3.13+ sends it, 3.12 and older send nothing.
            client.transport.sendto(b"", server_addr)
            client.transport.sendto(data, server_addr)
            if sys.version_info >= (3, 13):
                assert await client.next() == (b"", server_addr)
                assert await server.next() == (b"", client.transport.get_extra_info("sockname"))
            got, addr = await client.next()
            assert got == data
            assert addr == server_addr
            got, addr = await server.next()
            assert got == data
            assert addr == client.transport.get_extra_info("sockname")

    run(loop, main())


@pytest.mark.parametrize("host", HOSTS)
def test_many_datagrams_windowed_ping_pong(loop, host):
    n, window = 500, 32
    messages = [payload(1 + i * 37 % 1400, i) for i in range(n)]

    async def main():
        async with (
            endpoint(loop, Echo, local_addr=(host, 0)) as server,
            endpoint(loop, local_addr=(host, 0)) as client,
        ):
            server_addr = server.transport.get_extra_info("sockname")
            sent, got = 0, []
            while len(got) < n:
                while sent < n and sent - len(got) < window:
                    as_type = (bytes, bytearray, memoryview)[sent % 3]  # all are accepted
                    client.transport.sendto(as_type(messages[sent]), server_addr)
                    sent += 1
                data, addr = await client.next()
                assert addr == server_addr
                got.append(data)
            assert got == messages
            assert server.received.qsize() == n

    run(loop, main())


@pytest.mark.parametrize("host", HOSTS)
def test_replies_reach_each_of_many_peers(loop, host):
    # More peers than ferroloop keeps converted addresses for, in interleaved rounds: each
    # datagram is delivered with its sender's address, and a reply to it (the very tuple
    # received, or an equal one made anew) reaches that sender and no other.
    peers, rounds = 40, 3

    class Replier(Endpoint):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            self.transport.sendto(data, addr if data[-1] % 2 else tuple(list(addr)))

    async def main():
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(endpoint(loop, Replier, local_addr=(host, 0)))
            server_addr = server.transport.get_extra_info("sockname")
            clients = [
                await stack.enter_async_context(endpoint(loop, local_addr=(host, 0)))
                for _ in range(peers)
            ]
            for r in range(rounds):
                for i, client in enumerate(clients):
                    client.transport.sendto(b"%d:%d" % (i, r) + bytes([i + r]), server_addr)
                for i, client in enumerate(clients):
                    assert await client.next() == (b"%d:%d" % (i, r) + bytes([i + r]), server_addr)
            senders = {}
            while not server.received.empty():
                data, addr = server.received.get_nowait()
                senders[int(data.split(b":")[0])] = addr
            assert senders == {
                i: c.transport.get_extra_info("sockname") for i, c in enumerate(clients)
            }

    run(loop, main())


@pytest.mark.parametrize("host", HOSTS)
def test_connected_endpoint(loop, host):
    async def main():
        async with endpoint(loop, Echo, local_addr=(host, 0)) as server:
            server_addr = server.transport.get_extra_info("sockname")
            async with endpoint(loop, remote_addr=server_addr[:2]) as client:
                t = client.transport
                assert t.get_extra_info("peername") == server_addr
                t.sendto(b"no address")
                assert await client.next() == (b"no address", server_addr)
                t.sendto(b"its own address", t.get_extra_info("peername"))
                assert await client.next() == (b"its own address", server_addr)
                with pytest.raises(ValueError, match="Invalid address"):
                    t.sendto(b"elsewhere", (host, server_addr[1] ^ 1))
                assert not t.is_closing()
                t.sendto(b"still open")
                assert await client.next() == (b"still open", server_addr)
                assert [(await server.next())[0] for _ in range(3)] == [
                    b"no address",
                    b"its own address",
                    b"still open",
                ]

    run(loop, main())


@pytest.mark.parametrize("host", HOSTS)
def test_port_unreachable_goes_to_error_received(loop, host):
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        closed_port = sock.getsockname()[1]

    async def main():
        async with endpoint(loop, remote_addr=(host, closed_port)) as client:
            for message in (b"first", b"second"):  # the endpoint survives the first error
                client.transport.sendto(message)
                exc = await asyncio.wait_for(client.errors.get(), SOON)
                assert isinstance(exc, ConnectionRefusedError)
                assert not client.transport.is_closing()
                assert not client.lost.done()

    run(loop, main())


def test_exception_in_datagram_received(loop, expect_exception_handler):
    raised = []

    class Faulty(Endpoint):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                raised.append(ZeroDivisionError("boom"))
                raise raised[-1]

    async def main():
        async with endpoint(loop, Faulty, local_addr=("127.0.0.1", 0)) as proto:
            address = proto.transport.get_extra_info("sockname")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                # Both wait in the socket before the endpoint reads either.
                sender.sendto(b"boom", address)
                sender.sendto(b"queued behind it", address)
                assert (await proto.next())[0] == b"boom"
                assert (await proto.next())[0] == b"queued behind it"
                sender.sendto(b"later", address)
                assert (await proto.next())[0] == b"later"
                assert not proto.transport.is_closing()

    run(loop, main())
    assert len(expect_exception_handler) == 1
    context = expect_exception_handler[0]
    assert context["exception"] is raised[0]
    assert context["message"].startswith("Exception in callback")


@pytest.mark.parametrize("host", HOSTS)
def test_extra_info(loop, host):
    async def main():
        async with endpoint(loop, Echo, local_addr=(host, 0)) as server:
            t = server.transport
            sock = t.get_extra_info("socket")
            sockname = t.get_extra_info("sockname")
            assert sockname[0] == host and sockname[1] > 0
            assert sock.getsockname() == sockname
            assert sock.family == family_of(host)
            assert sock.type == socket.SOCK_DGRAM
            assert sock.fileno() >= 0
            assert t.get_extra_info("peername") is None
            assert t.get_extra_info("no such key", "default") == "default"
            async with endpoint(loop, remote_addr=sockname[:2]) as client:
                c = client.transport
                assert c.get_extra_info("peername") == sockname
                assert c.get_extra_info("socket").getpeername() == sockname
                assert c.get_extra_info("sockname") == c.get_extra_info("socket").getsockname()

    run(loop, main())


def test_unix_datagram_endpoint(loop):
    data = payload(60 * 1024)

    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            server_path = os.path.join(tmp, "server")
            client_path = os.path.join(tmp, "client")
            async with (
                endpoint(loop, Echo, local_addr=server_path, family=socket.AF_UNIX) as server,
                endpoint(
                    loop, local_addr=client_path, remote_addr=server_path, family=socket.AF_UNIX
                ) as client,
            ):
                assert server.transport.get_extra_info("sockname") == server_path
                assert client.transport.get_extra_info("peername") == server_path
                client.transport.sendto(b"hello")
                assert await client.next() == (b"hello", server_path)
                assert await server.next() == (b"hello", client_path)
                client.transport.sendto(data)
                assert await client.next() == (data, server_path)

    run(loop, main())


# -- the transport ---------------------------------------------------------------------


# -- datagrams waiting in the socket ------------------------------------------------


def largest_datagram(host):
    """The largest UDP payload: 65,535 bytes of IP length less the headers."""
    return 65535 - 8 - (0 if ":" in host else 20)


@pytest.mark.parametrize("host", HOSTS)
def test_many_waiting_datagrams_arrive_whole_and_in_order(loop, host):
    # More than one read (and one turn) takes, of every size up to the largest, all sent
    # before the endpoint reads any (and all within the default receive buffer).
    sizes = [0, 1, largest_datagram(host), 1000, largest_datagram(host) - 1] + [7] * 40
    messages = [payload(n, i) for i, n in enumerate(sizes)]

    async def main():
        async with endpoint(loop, local_addr=(host, 0)) as proto:
            address = proto.transport.get_extra_info("sockname")
            with socket.socket(family_of(host), socket.SOCK_DGRAM) as sender:
                sender.bind((host, 0))
                for m in messages:
                    sender.sendto(m, address)
                sender_addr = sender.getsockname()[:2]
                for m in messages:
                    data, addr = await proto.next()
                    assert (len(data), data) == (len(m), m)
                    assert addr[:2] == sender_addr

    run(loop, main())


@pytest.mark.parametrize("host", HOSTS)
def test_no_datagram_while_reading_is_paused(loop, host):
    # Paused in the middle of datagrams that were waiting together, and more sent while
    # paused: nothing comes until resume_reading(), then everything, in order.

    class Pausing(Endpoint):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"2":
                self.transport.pause_reading()

    async def main():
        async with endpoint(loop, Pausing, local_addr=(host, 0)) as proto:
            address = proto.transport.get_extra_info("sockname")
            with socket.socket(family_of(host), socket.SOCK_DGRAM) as sender:
                for i in range(10):
                    sender.sendto(b"%d" % i, address)
                assert [(await proto.next())[0] for _ in range(3)] == [b"0", b"1", b"2"]
                assert not proto.transport.is_reading()
                for i in range(10, 15):
                    sender.sendto(b"%d" % i, address)
                for _ in range(20):  # loop iterations: a datagram turn would run in one
                    await asyncio.sleep(0)
                assert proto.received.empty()
                proto.transport.resume_reading()
                got = [(await proto.next())[0] for _ in range(3, 15)]
                assert got == [b"%d" % i for i in range(3, 15)]

    run(loop, main())


def test_no_datagram_after_close_in_datagram_received(loop):
    closed = []

    class Closing(Endpoint):
        def datagram_received(self, data, addr):
            assert not closed, "datagram_received() after close()"
            super().datagram_received(data, addr)
            if data == b"1":
                self.transport.close()
                closed.append(data)

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Closing, local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(6):
                sender.sendto(b"%d" % i, transport.get_extra_info("sockname"))
            assert await asyncio.wait_for(proto.lost, SOON) is None
        assert [proto.received.get_nowait()[0] for _ in range(2)] == [b"0", b"1"]
        assert proto.received.empty()

    run(loop, main())


def test_sendto_after_close_is_ignored(loop):
    async def main():
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
        ):
            receiver.bind(("127.0.0.1", 0))
            receiver.setblocking(False)
            address = receiver.getsockname()
            transport, proto = await loop.create_datagram_endpoint(Endpoint, remote_addr=address)
            transport.close()
            assert transport.is_closing()
            transport.sendto(b"after close")
            assert await proto.lost is None
            transport.sendto(b"after connection_lost")
            transport.sendto(b"again", address)
            other.sendto(b"marker", address)
            assert await loop.sock_recv(receiver, 100) == b"marker"
            assert proto.errors.empty()

    run(loop, main())


def test_transport_types_buffer_size_and_abort(loop):
    async def main():
        async with endpoint(loop, Echo, local_addr=("127.0.0.1", 0)) as server:
            server_addr = server.transport.get_extra_info("sockname")
            transport, proto = await loop.create_datagram_endpoint(
                Endpoint, local_addr=("127.0.0.1", 0)
            )
            assert isinstance(transport, asyncio.BaseTransport)
            # asyncio's own datagram transport is an asyncio.Transport, and also an
            # asyncio.DatagramTransport only since 3.12
            assert isinstance(transport, asyncio.DatagramTransport) or sys.version_info < (3, 12)
            assert transport.get_protocol() is proto
            assert transport.get_write_buffer_size() == 0
            with pytest.raises(TypeError):
                transport.sendto("text", server_addr)
            transport.sendto(b"ping", server_addr)
            assert await proto.next() == (b"ping", server_addr)
            assert transport.get_write_buffer_size() == 0
            assert not transport.is_closing()
            sock = transport.get_extra_info("socket")
            transport.abort()
            assert transport.is_closing()
            assert await proto.lost is None
            assert sock.fileno() == -1  # the transport closed its socket
            transport.close()  # closing again is harmless

    run(loop, main())
