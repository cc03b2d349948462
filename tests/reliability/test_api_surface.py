"""Transport and loop API surface, and errors that must not escape the loop (issue 10: items
15, 17; issue 11: items 1, 2; datagram transports' inherited methods). Each body runs on
ferroloop and on stdlib asyncio, and asserts what asyncio does. Loopback only."""

import asyncio
import gc
import os
import socket
import warnings
import weakref

import pytest
from _netkit import Accepting, Recorder, address_of, run, serving
from _tlskit import SERVER_CN, client_context, tls_serving

# -- issue 10 item 15: eof_received failures go to the exception handler --------------------


class Unanswerable:
    """An answer to eof_received() whose truth test raises."""

    def __bool__(self):
        raise ZeroDivisionError("no truth")


class EofRaises(Recorder):
    def eof_received(self):
        super().eof_received()
        raise ZeroDivisionError("eof")


class EofAnswersBadly(Recorder):
    def eof_received(self):
        super().eof_received()
        return Unanswerable()


async def reported(errors):
    """The first context given to the exception handler (recorded in errors)."""
    while not errors:
        await asyncio.sleep(0)
    return errors[0]


def recording_handler(loop):
    errors = []

    def handler(lp, context):
        errors.append(context)
        transport = context.get("transport")
        if transport is None:
            transport = getattr(context.get("handle"), "_callback", None)
            transport = getattr(transport, "__self__", None)
        if transport is not None:
            transport.close()  # (asyncio would report the same EOF again and again)

    loop.set_exception_handler(handler)
    return errors


async def stream_pair(loop, family, server_protocol):
    """A (client socket, server protocol) pair over TCP or a Unix socket pair."""
    if family == "tcp":
        accepting = Accepting(server_protocol)
        server = await loop.create_server(accepting, "127.0.0.1", 0)
        client = socket.create_connection(address_of(server))
        proto = await accepting.made()
        server.close()
        return client, proto
    a, b = socket.socketpair()
    _, proto = await loop.connect_accepted_socket(server_protocol, a)
    return b, proto


@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("protocol", [EofRaises, EofAnswersBadly])
def test_eof_received_failure_is_reported_and_the_loop_goes_on(loop, family, protocol):
    errors = recording_handler(loop)

    async def main():
        client, proto = await stream_pair(loop, family, protocol)
        with client:
            client.sendall(b"hi")
            client.shutdown(socket.SHUT_WR)
            context = await reported(errors)
            assert isinstance(context["exception"], ZeroDivisionError)
            await proto.lost
        assert proto.data == b"hi"
        # the loop still runs callbacks and timers
        await asyncio.sleep(0.001)
        return "went on"

    assert run(loop, main()) == "went on"


@pytest.mark.parametrize("protocol", [EofRaises, EofAnswersBadly])
def test_tls_eof_received_failure_is_reported_and_the_loop_goes_on(loop, protocol):
    # asyncio's TLS layer reports it ("Error calling eof_received()") and closes.
    errors = recording_handler(loop)

    async def main():
        accepting = Accepting(protocol)
        async with tls_serving(loop, accepting) as server:
            transport, _ = await loop.create_connection(
                Recorder,
                *address_of(server),
                ssl=client_context(),
                server_hostname=SERVER_CN,
            )
            proto = await accepting.made()
            transport.close()  # close_notify: the server's eof_received()
            context = await reported(errors)
            assert isinstance(context["exception"], ZeroDivisionError)
            assert context["message"] == "Error calling eof_received()"
            await proto.lost
        await asyncio.sleep(0.001)
        return "went on"

    assert run(loop, main()) == "went on"


class DuckPipeProtocol:
    """A read pipe protocol without eof_received() (asyncio calls it anyway)."""

    def __init__(self):
        self.data = bytearray()
        self.lost = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        self.lost.append(exc)


def test_read_pipe_protocol_without_eof_received(loop):
    errors = recording_handler(loop)

    async def main():
        r, w = os.pipe()
        with open(r, "rb", 0) as pipe:
            transport, proto = await loop.connect_read_pipe(DuckPipeProtocol, pipe)
            os.write(w, b"data")
            os.close(w)
            context = await reported(errors)
            assert isinstance(context["exception"], AttributeError)
            assert proto.data == b"data"
            assert transport.is_closing()
            transport.close()
        await asyncio.sleep(0.001)
        return "went on"

    assert run(loop, main()) == "went on"


class PipeDataRaises(Recorder):
    def data_received(self, data):
        super().data_received(data)
        if len(self.data) == 1:
            raise ZeroDivisionError("first byte")


def test_read_pipe_data_received_failure_is_reported_and_reading_goes_on(loop):
    # asyncio's read pipe does not catch it: the loop reports it, the pipe reads on.
    errors = []
    loop.set_exception_handler(lambda lp, context: errors.append(context))

    async def main():
        r, w = os.pipe()
        with open(r, "rb", 0) as pipe:
            _, proto = await loop.connect_read_pipe(PipeDataRaises, pipe)
            os.write(w, b"a")
            await reported(errors)
            os.write(w, b"bc")
            os.close(w)
            assert await proto.eof == b"abc"
            assert await proto.lost is None
        assert len(errors) == 1
        assert isinstance(errors[0]["exception"], ZeroDivisionError)

    run(loop, main())


# -- issue 10 item 17: fileno() and fd arguments --------------------------------------------


class FilenoRaises:
    def __init__(self, exc):
        self.exc = exc

    def fileno(self):
        raise self.exc("from fileno")


class FilenoIs:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        return self.value


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, OSError, RuntimeError])
@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_fileno_exception_propagates_as_is(loop, exc, method):
    args = (lambda: None,) if method.startswith("add") else ()
    with pytest.raises(exc, match="from fileno"):
        getattr(loop, method)(FilenoRaises(exc), *args)


@pytest.mark.parametrize("exc", [AttributeError, TypeError, ValueError])
def test_fileno_invalid_object(loop, exc):
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.remove_reader(FilenoRaises(exc))


@pytest.mark.parametrize("fd", [2**64, 2**63, 2**31, FilenoIs(2**64), FilenoIs(2**31)], ids=repr)
@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_remove_of_a_huge_fd_returns_false(loop, method, fd):
    assert getattr(loop, method)(fd) is False


@pytest.mark.parametrize("fd", [2**64, 2**31, FilenoIs(2**64)], ids=repr)
def test_add_reader_of_a_huge_fd_overflows(loop, fd):
    with pytest.raises(OverflowError):
        loop.add_reader(fd, lambda: None)


@pytest.mark.parametrize("fd", [-1, -(2**64), FilenoIs(-1), FilenoIs(-(2**64))], ids=repr)
@pytest.mark.parametrize("method", ["remove_reader", "add_reader"])
def test_negative_fd_is_invalid(loop, method, fd):
    args = (lambda: None,) if method == "add_reader" else ()
    number = fd.value if isinstance(fd, FilenoIs) else fd
    with pytest.raises(ValueError, match=rf"^Invalid file descriptor: {number}$"):
        getattr(loop, method)(fd, *args)


@pytest.mark.parametrize("fd", ["x", 1.5, None, FilenoIs("x")], ids=repr)
def test_non_int_fd_is_an_invalid_file_object(loop, fd):
    with pytest.raises(ValueError, match=r"^Invalid file object: "):
        loop.remove_reader(fd)


def test_fileno_result_is_converted_with_int(loop):
    # selectors: int(fileobj.fileno()); a float names the fd it truncates to.
    a, b = socket.socketpair()
    with a, b:
        loop.add_reader(FilenoIs(a.fileno() + 0.5), lambda: None)
        assert loop.remove_reader(a.fileno()) is True


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
# (asyncio's half-made transport then fails in __del__)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_create_connection_fileno_exception_propagates(loop, exc):
    class Sock(socket.socket):
        def fileno(self):
            raise exc("from fileno")

    sock = Sock()
    try:
        with pytest.raises(exc, match="from fileno"):
            loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=sock))
    finally:
        socket.socket.close(sock)


# -- issue 11 item 2 and datagram transports: each transport's methods ----------------------

READ_PIPE_LACKS = (
    "abort",
    "can_write_eof",
    "get_write_buffer_limits",
    "get_write_buffer_size",
    "set_write_buffer_limits",
    "write",
    "write_eof",
    "writelines",
)

# What asyncio's transports have, on every supported Python (public names).
EXPECTED_PUBLIC = {
    "read_pipe": {
        "close",
        "get_extra_info",
        "get_protocol",
        "is_closing",
        "is_reading",
        "max_size",
        "pause_reading",
        "resume_reading",
        "set_protocol",
    },
}
EXPECTED_PUBLIC["write_pipe"] = EXPECTED_PUBLIC["read_pipe"] - {"max_size"} | set(READ_PIPE_LACKS)
EXPECTED_PUBLIC["datagram"] = EXPECTED_PUBLIC["write_pipe"] | {"max_size", "sendto"}
EXPECTED_PUBLIC["socket"] = EXPECTED_PUBLIC["write_pipe"] | {"max_size"}


async def make_transports(loop):
    """A transport of each kind, and a function closing them (and what they use)."""
    r, w = os.pipe()
    r2, w2 = os.pipe()
    # (the transports close the pipes)
    rpipe = open(r, "rb", 0)  # noqa: SIM115
    wpipe = open(w2, "wb", 0)  # noqa: SIM115
    read_pipe, _ = await loop.connect_read_pipe(asyncio.Protocol, rpipe)
    write_pipe, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, wpipe)
    datagram, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    a, b = socket.socketpair()
    stream, _ = await loop.create_connection(asyncio.Protocol, sock=a)
    transports = {
        "read_pipe": read_pipe,
        "write_pipe": write_pipe,
        "datagram": datagram,
        "socket": stream,
    }

    async def close():
        for t in transports.values():
            t.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        os.close(w)
        os.close(r2)
        b.close()

    return transports, close


def public(names):
    return {n for n in names if not n.startswith("_")}


def test_each_transport_has_asyncios_public_names(loop):
    async def main():
        transports, close = await make_transports(loop)
        try:
            for kind, t in transports.items():
                expected = EXPECTED_PUBLIC[kind]
                assert public(dir(t)) == expected, kind
                candidates = set().union(*EXPECTED_PUBLIC.values())
                present = {n for n in candidates if hasattr(t, n)}
                assert present == expected, kind
        finally:
            await close()

    run(loop, main())


def test_transport_isinstance(loop):
    async def main():
        transports, close = await make_transports(loop)
        try:
            expected = {
                "read_pipe": (True, False),
                "write_pipe": (True, True),  # asyncio's derives from Transport
                "datagram": (True, True),
                "socket": (True, True),
            }
            for kind, t in transports.items():
                found = (
                    isinstance(t, asyncio.ReadTransport),
                    isinstance(t, asyncio.WriteTransport),
                )
                assert found == expected[kind], kind
                assert isinstance(t, asyncio.BaseTransport)
        finally:
            await close()

    run(loop, main())


@pytest.mark.parametrize("name", READ_PIPE_LACKS)
def test_read_pipe_has_no_write_side(loop, name):
    async def main():
        transports, close = await make_transports(loop)
        try:
            t = transports["read_pipe"]
            with pytest.raises(AttributeError):
                getattr(t, name)
            assert not t.is_closing()
            assert t.is_reading()
        finally:
            await close()

    run(loop, main())


class Keeper(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport


@pytest.mark.parametrize("direction", ["read", "write"])
def test_pipe_transport_in_a_cycle_dropped_unclosed_is_collected(new_loop, direction):
    # The pipe transports' own classes get the transports' finalizer and GC support: the
    # cycle is collected, and the transport closes its pipe with a ResourceWarning.
    loop = new_loop()
    rfd, wfd = os.pipe()

    async def connect():
        if direction == "read":
            pipe, other = open(rfd, "rb", 0), wfd  # noqa: SIM115
            transport, protocol = await loop.connect_read_pipe(Keeper, pipe)
        else:
            pipe, other = open(wfd, "wb", 0), rfd  # noqa: SIM115
            transport, protocol = await loop.connect_write_pipe(Keeper, pipe)
        transport.owner = protocol  # a cycle through the instance dict
        assert gc.is_tracked(transport)
        return weakref.ref(transport), weakref.ref(protocol), pipe, other

    tref, pref, pipe, other = run(loop, connect())
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            loop.close()
            gc.collect()
        # A ResourceWarning keeps its source (the transport); on 3.15 the weak references
        # to it outlive the collection until the record goes (see test_gc_leaks.py).
        messages = [str(w.message) for w in caught]
        caught.clear()
        gc.collect()
        assert tref() is None and pref() is None
        assert pipe.closed
        assert any("unclosed transport" in m for m in messages)
    finally:
        os.close(other)


def test_read_pipe_write_can_be_patched(loop):
    # Test suites assign transport methods; asyncio's plain objects allow it.
    async def main():
        transports, close = await make_transports(loop)
        try:
            t = transports["read_pipe"]
            written = []
            t.write = written.append
            t.write(b"x")
            assert written == [b"x"]
            del t.write
            assert not hasattr(t, "write")
        finally:
            await close()

    run(loop, main())


@pytest.mark.parametrize("name", ["pause_reading", "resume_reading", "is_reading"])
def test_write_pipe_read_side_is_not_implemented(loop, name):
    async def main():
        transports, close = await make_transports(loop)
        try:
            t = transports["write_pipe"]
            with pytest.raises(NotImplementedError):
                getattr(t, name)()
            t.write(b"still works")
        finally:
            await close()

    run(loop, main())


@pytest.mark.parametrize(
    "name, args",
    [("write", (b"x",)), ("writelines", ([b"x"],)), ("write_eof", ()), ("can_write_eof", ())],
)
def test_datagram_write_side_is_not_implemented(loop, name, args):
    async def main():
        transports, close = await make_transports(loop)
        try:
            with pytest.raises(NotImplementedError):
                getattr(transports["datagram"], name)(*args)
        finally:
            await close()

    run(loop, main())


def test_datagram_writelines_joins_first(loop):
    # asyncio's WriteTransport.writelines: b"".join(list_of_data), then write().
    async def main():
        transports, close = await make_transports(loop)
        try:
            with pytest.raises(TypeError):
                transports["datagram"].writelines([1])
        finally:
            await close()

    run(loop, main())


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self):
        self.received = []
        self.more = None

    def datagram_received(self, data, addr):
        self.received.append(data)
        if self.more is not None and not self.more.done():
            self.more.set_result(None)


def test_datagram_pause_and_resume_reading(loop):
    async def main():
        transport, proto = await loop.create_datagram_endpoint(
            Datagrams, local_addr=("127.0.0.1", 0)
        )
        addr = transport.get_extra_info("sockname")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            assert transport.is_reading()
            transport.pause_reading()
            assert not transport.is_reading()
            sender.sendto(b"one", addr)
            sender.sendto(b"two", addr)
            # the datagrams wait in the socket: a zero-timeout recv proves they arrived
            peek = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
            with peek:
                assert peek.recv(10, socket.MSG_PEEK) == b"one"
            for _ in range(5):
                await asyncio.sleep(0)
            assert proto.received == []
            transport.resume_reading()
            assert transport.is_reading()
            while len(proto.received) < 2:
                proto.more = loop.create_future()
                await proto.more
            assert proto.received == [b"one", b"two"]
            transport.close()
            assert not transport.is_reading()
        finally:
            sender.close()
            transport.close()
            await asyncio.sleep(0)

    run(loop, main())


# -- issue 11 item 1: start_tls on a closing transport --------------------------------------


@pytest.mark.parametrize("how", ["close", "abort"])
def test_start_tls_on_a_closing_transport_returns_none(loop, how):
    # aiohttp relies on it to report the failed connection (its
    # test_start_tls_connection_returns_none). asyncio: the transport's connection_lost()
    # reaches the TLS layer (set as its protocol) before the handshake starts, which ends
    # start_tls() with no transport, and the new protocol's connection_lost(None).
    async def main():
        accepting = Accepting(Recorder)
        ctx = client_context()
        async with serving(loop, accepting) as server:
            transport, proto = await loop.create_connection(Recorder, *address_of(server))
            server_proto = await accepting.made()
            getattr(transport, how)()
            app = Recorder()
            result = await loop.start_tls(transport, app, ctx, server_hostname=SERVER_CN)
            assert result is None
            assert await app.lost is None
            assert not app.made.done()
            assert not proto.lost.done()  # replaced by the TLS layer before it was due
            assert transport.is_closing()
            await server_proto.lost

    run(loop, main())
