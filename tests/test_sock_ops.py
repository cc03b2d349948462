"""loop.sock_* operations on non-blocking sockets, over 127.0.0.1 / ::1 only."""

import asyncio
import io
import os
import socket
import struct
import sys

import pytest
from _netkit import ipv6_loopback_available

FAR = 10


@pytest.fixture
def sockets():
    """Collects sockets a test makes and closes them at teardown."""
    made = []

    def make(*args, bind=None, listen=False):
        sock = socket.socket(*args)
        made.append(sock)
        sock.setblocking(False)
        if bind is not None:
            sock.bind(bind)
        if listen:
            sock.listen(16)
        return sock

    yield make
    for sock in made:
        sock.close()


@pytest.fixture
def tcp_pair(loop, sockets):
    """A connected (client, server-side) pair of non-blocking TCP sockets."""
    listener = sockets(bind=("127.0.0.1", 0), listen=True)
    client = sockets()

    async def connect():
        _, (conn, _) = await asyncio.gather(
            loop.sock_connect(client, listener.getsockname()), loop.sock_accept(listener)
        )
        return conn

    conn = loop.run_until_complete(asyncio.wait_for(connect(), FAR))
    yield client, conn
    conn.close()


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, FAR))


async def recv_exactly(loop, sock, n):
    chunks = []
    while n:
        chunk = await loop.sock_recv(sock, min(n, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def test_sock_accept_and_sock_connect(loop, sockets):
    listener = sockets(bind=("127.0.0.1", 0), listen=True)
    client = sockets()

    async def main():
        accepted, connected = await asyncio.gather(
            loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname())
        )
        return accepted, connected

    (conn, peer), connected = run(loop, main())
    with conn:
        assert connected is None
        assert peer == client.getsockname()
        assert conn.getpeername() == client.getsockname()
        assert conn.gettimeout() == 0, "accepted socket must be non-blocking"


def test_sock_connect_resolves_localhost(loop, sockets):
    listener = sockets(bind=("127.0.0.1", 0), listen=True)
    client = sockets()
    port = listener.getsockname()[1]

    async def main():
        await loop.sock_connect(client, ("localhost", port))
        conn, _ = await loop.sock_accept(listener)
        return conn

    with run(loop, main()):
        assert client.getpeername() == ("127.0.0.1", port)


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_sock_connect_and_accept_over_ipv6(loop, sockets):
    listener = sockets(socket.AF_INET6, bind=("::1", 0), listen=True)
    client = sockets(socket.AF_INET6)

    async def main():
        (conn, peer), _ = await asyncio.gather(
            loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname()[:2])
        )
        with conn:
            await loop.sock_sendall(client, b"over ipv6")
            return peer, await recv_exactly(loop, conn, 9)

    peer, data = run(loop, main())
    assert peer[:2] == client.getsockname()[:2]
    assert data == b"over ipv6"


def test_sock_connect_refused(loop, sockets):
    closed = sockets(bind=("127.0.0.1", 0))
    address = closed.getsockname()
    closed.close()  # nothing listens on this port any more
    client = sockets()
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.sock_connect(client, address))


def test_sock_recv_waits_for_data(loop, tcp_pair):
    client, conn = tcp_pair

    async def main():
        recv = asyncio.ensure_future(loop.sock_recv(conn, 100))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not recv.done()
        await loop.sock_sendall(client, b"hello")
        return await recv

    assert run(loop, main()) == b"hello"


def test_sock_recv_returns_empty_bytes_at_eof(loop, tcp_pair):
    client, conn = tcp_pair
    client.shutdown(socket.SHUT_WR)
    assert run(loop, loop.sock_recv(conn, 100)) == b""


def test_sock_recv_into(loop, tcp_pair):
    client, conn = tcp_pair
    buf = bytearray(16)

    async def main():
        await loop.sock_sendall(client, b"into the buffer")
        return await loop.sock_recv_into(conn, buf)

    n = run(loop, main())
    assert n == len(b"into the buffer")
    assert buf[:n] == b"into the buffer"


def test_sock_sendall_large_payload_byte_for_byte(loop, tcp_pair):
    client, conn = tcp_pair
    payload = os.urandom(4 * 1024 * 1024)

    async def main():
        sent, received = await asyncio.gather(
            loop.sock_sendall(client, payload), recv_exactly(loop, conn, len(payload))
        )
        return sent, received

    sent, received = run(loop, main())
    assert sent is None
    assert len(received) == len(payload)
    assert received == payload


def test_sock_sendall_accepts_memoryview(loop, tcp_pair):
    client, conn = tcp_pair
    payload = bytearray(b"abcdefghij" * 1000)

    async def main():
        await loop.sock_sendall(client, memoryview(payload)[10:])
        return await recv_exactly(loop, conn, len(payload) - 10)

    assert run(loop, main()) == bytes(payload[10:])


def test_udp_sock_sendto_and_sock_recvfrom(loop, loop_kind, sockets):
    if loop_kind == "asyncio" and sys.version_info < (3, 11):
        pytest.skip("asyncio has sock_sendto/sock_recvfrom since 3.11")
    receiver = sockets(socket.AF_INET, socket.SOCK_DGRAM, bind=("127.0.0.1", 0))
    sender = sockets(socket.AF_INET, socket.SOCK_DGRAM, bind=("127.0.0.1", 0))

    async def main():
        recv = asyncio.ensure_future(loop.sock_recvfrom(receiver, 1024))
        await asyncio.sleep(0)
        assert not recv.done()
        sent = await loop.sock_sendto(sender, b"datagram", receiver.getsockname())
        return sent, await recv

    sent, (data, addr) = run(loop, main())
    assert sent == len(b"datagram")
    assert data == b"datagram"
    assert addr == sender.getsockname()


def test_udp_sock_recvfrom_into(loop, loop_kind, sockets):
    if loop_kind == "asyncio" and sys.version_info < (3, 11):
        pytest.skip("asyncio has sock_sendto/sock_recvfrom_into since 3.11")
    receiver = sockets(socket.AF_INET, socket.SOCK_DGRAM, bind=("127.0.0.1", 0))
    sender = sockets(socket.AF_INET, socket.SOCK_DGRAM, bind=("127.0.0.1", 0))
    buf = bytearray(64)

    async def main():
        await loop.sock_sendto(sender, b"first", receiver.getsockname())
        await loop.sock_sendto(sender, b"second datagram", receiver.getsockname())
        first = await loop.sock_recvfrom_into(receiver, buf)
        first_data = bytes(buf[: first[0]])
        second = await loop.sock_recvfrom_into(receiver, buf, 6)
        return first, first_data, second

    (n1, addr1), data1, (n2, addr2) = run(loop, main())
    assert (n1, data1, addr1) == (5, b"first", sender.getsockname())
    # nbytes=6 truncates the datagram
    assert (n2, bytes(buf[:n2]), addr2) == (6, b"second", sender.getsockname())


@pytest.mark.parametrize(
    ("offset", "count"), [(0, None), (100, 1000)], ids=["whole-file", "offset-count"]
)
def test_sock_sendfile(loop, tcp_pair, tmp_path, offset, count):
    client, conn = tcp_pair
    content = os.urandom(1024 * 1024 + 123)
    path = tmp_path / "payload.bin"
    path.write_bytes(content)
    expected = content[offset : offset + count if count is not None else None]

    async def main(file):
        return await asyncio.gather(
            loop.sock_sendfile(client, file, offset, count),
            recv_exactly(loop, conn, len(expected)),
        )

    with open(path, "rb") as file:
        sent, received = run(loop, main(file))
        position = file.tell()
    assert sent == len(expected)
    assert received == expected
    assert position == offset + len(expected)


def test_cancelled_sock_recv_leaves_no_registration(loop, tcp_pair):
    client, conn = tcp_pair

    async def main():
        recv = asyncio.ensure_future(loop.sock_recv(conn, 100))
        await asyncio.sleep(0)
        recv.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recv
        # Nothing is left watching conn: no reader, and no data is swallowed.
        assert loop.remove_reader(conn) is False
        await loop.sock_sendall(client, b"after cancel")
        return await recv_exactly(loop, conn, len(b"after cancel"))

    assert run(loop, main()) == b"after cancel"


def test_cancelled_sock_recv_then_add_reader(loop, tcp_pair):
    client, conn = tcp_pair

    async def main():
        recv = asyncio.ensure_future(loop.sock_recv(conn, 100))
        await asyncio.sleep(0)
        recv.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recv
        readable = loop.create_future()
        loop.add_reader(conn, lambda: readable.done() or readable.set_result(conn.recv(100)))
        try:
            await loop.sock_sendall(client, b"to the reader")
            return await readable
        finally:
            assert loop.remove_reader(conn) is True

    assert run(loop, main()) == b"to the reader"


def _wait_then_recv(loop, conn, peer, payload):
    """sock_recv on conn that has to wait for the peer's payload."""

    async def go():
        recv = asyncio.ensure_future(loop.sock_recv(conn, 100))
        await asyncio.sleep(0)
        assert not recv.done()
        await loop.sock_sendall(peer, payload)
        return await recv

    return go()


def test_sock_recv_on_a_socket_that_reuses_a_closed_ones_fd(loop, tcp_pair, sockets):
    # A socket closed after waiting in sock_recv gives its fd number to the next socket,
    # whose waits must still be reported.
    client, conn = tcp_pair
    listener = sockets(bind=("127.0.0.1", 0), listen=True)

    async def main():
        assert await _wait_then_recv(loop, conn, client, b"first") == b"first"
        old_fd = conn.fileno()
        conn.close()
        other = sockets()
        (new_conn, _), _ = await asyncio.gather(
            loop.sock_accept(listener), loop.sock_connect(other, listener.getsockname())
        )
        try:
            new_conn.setblocking(False)
            reused = new_conn.fileno() == old_fd or other.fileno() == old_fd
            got = await _wait_then_recv(loop, new_conn, other, b"second")
            back = await _wait_then_recv(loop, other, new_conn, b"third")
            return reused, got, back
        finally:
            new_conn.close()

    reused, got, back = run(loop, main())
    assert (got, back) == (b"second", b"third")
    assert reused  # the kernel hands out the lowest free number: the case is exercised


def test_add_reader_then_sock_recv_after_sock_recv_waited(loop, tcp_pair):
    client, conn = tcp_pair

    async def main():
        assert await _wait_then_recv(loop, conn, client, b"one") == b"one"
        readable = loop.create_future()
        loop.add_reader(conn, lambda: readable.done() or readable.set_result(conn.recv(100)))
        try:
            await loop.sock_sendall(client, b"two")
            got = await readable
        finally:
            assert loop.remove_reader(conn) is True
        # The reader's removal took the fd out of the poller: sock_recv must register it.
        return got, await _wait_then_recv(loop, conn, client, b"three")

    assert run(loop, main()) == (b"two", b"three")


def test_transport_on_a_socket_that_waited_in_sock_recv(loop, tcp_pair):
    client, conn = tcp_pair

    class Collect(asyncio.Protocol):
        def __init__(self):
            self.got = loop.create_future()

        def data_received(self, data):
            if not self.got.done():
                self.got.set_result(data)

    async def main():
        assert await _wait_then_recv(loop, conn, client, b"raw") == b"raw"
        transport, protocol = await loop.connect_accepted_socket(Collect, conn)
        try:
            await loop.sock_sendall(client, b"via transport")
            return await protocol.got
        finally:
            transport.close()

    assert run(loop, main()) == b"via transport"


def test_cancelled_sock_accept_leaves_no_registration(loop, sockets):
    listener = sockets(bind=("127.0.0.1", 0), listen=True)
    client = sockets()

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0)
        accept.cancel()
        with pytest.raises(asyncio.CancelledError):
            await accept
        assert loop.remove_reader(listener) is False
        (conn, peer), _ = await asyncio.gather(
            loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname())
        )
        conn.close()
        return peer

    assert run(loop, main()) == client.getsockname()


def test_concurrent_sock_recv_on_different_sockets(loop, sockets):
    listener = sockets(bind=("127.0.0.1", 0), listen=True)
    clients = [sockets() for _ in range(20)]

    async def main():
        conns = []
        for client in clients:
            (conn, _), _ = await asyncio.gather(
                loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname())
            )
            conns.append(conn)
        try:
            recvs = [asyncio.ensure_future(loop.sock_recv(c, 100)) for c in conns]
            for i, client in reversed(list(enumerate(clients))):
                await loop.sock_sendall(client, b"msg %d" % i)
            return await asyncio.gather(*recvs)
        finally:
            for conn in conns:
                conn.close()

    assert run(loop, main()) == [b"msg %d" % i for i in range(20)]


@pytest.mark.parametrize(
    "operation",
    ["sock_recv", "sock_recv_into", "sock_sendall", "sock_accept", "sock_connect"],
)
def test_blocking_socket_raises_value_error_in_debug_mode(loop, operation):
    """asyncio checks this only in debug mode.  Each operation would complete at
    once on these blocking sockets, so a missing check fails instead of hanging."""
    loop.set_debug(True)
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = server.getsockname()
        with socket.create_connection(address) as connected, socket.socket() as fresh:
            peer, _ = server.accept()
            with peer:
                peer.sendall(b"data")  # a recv on `connected` would not block
                socket.create_connection(address).close()  # an accept would not block
                operations = {
                    "sock_recv": lambda: loop.sock_recv(connected, 10),
                    "sock_recv_into": lambda: loop.sock_recv_into(connected, bytearray(10)),
                    "sock_sendall": lambda: loop.sock_sendall(connected, b"small"),
                    "sock_accept": lambda: loop.sock_accept(server),
                    "sock_connect": lambda: loop.sock_connect(fresh, address),
                }
                with pytest.raises(ValueError, match="non-blocking"):
                    run(loop, operations[operation]())


def test_sock_recv_zero_bytes_returns_at_once(loop, tcp_pair):
    _, conn = tcp_pair
    assert run(loop, loop.sock_recv(conn, 0)) == b""


def test_sock_sendall_empty_data(loop, tcp_pair):
    client, conn = tcp_pair

    async def main():
        assert await loop.sock_sendall(client, b"") is None
        await loop.sock_sendall(client, b"after empty")
        return await recv_exactly(loop, conn, len(b"after empty"))

    assert run(loop, main()) == b"after empty"


def test_sock_recv_connection_reset(loop, tcp_pair):
    client, conn = tcp_pair
    # SO_LINGER with a zero timeout makes close() send a RST.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    with pytest.raises(ConnectionResetError):
        run(loop, loop.sock_recv(conn, 100))


def test_sock_sendfile_falls_back_for_objects_without_a_file_descriptor(loop, tcp_pair):
    client, conn = tcp_pair
    content = os.urandom(200_000)

    async def main():
        return await asyncio.gather(
            loop.sock_sendfile(client, io.BytesIO(content)),
            recv_exactly(loop, conn, len(content)),
        )

    sent, received = run(loop, main())
    assert sent == len(content)
    assert received == content
    loop.run_until_complete(loop.shutdown_default_executor())


def test_sock_sendfile_without_fallback_raises(loop, tcp_pair):
    client, _ = tcp_pair
    with pytest.raises(asyncio.SendfileNotAvailableError):
        run(loop, loop.sock_sendfile(client, io.BytesIO(b"data"), fallback=False))


def test_sock_sendfile_checks_its_arguments(loop, tcp_pair, sockets, tmp_path):
    client, _ = tcp_pair
    path = tmp_path / "data.txt"
    path.write_bytes(b"data")
    udp = sockets(socket.AF_INET, socket.SOCK_DGRAM)
    with open(path, "rb") as binary, open(path) as text:
        for sock, file, offset, count, error in [
            (client, text, 0, None, ValueError),
            (udp, binary, 0, None, ValueError),
            (client, binary, -1, None, ValueError),
            (client, binary, "0", None, TypeError),
            (client, binary, 0, 0, ValueError),
            (client, binary, 0, 1.5, TypeError),
        ]:
            with pytest.raises(error):
                run(loop, loop.sock_sendfile(sock, file, offset, count))
