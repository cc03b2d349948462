"""Transport and loop API surface, and errors that must not escape the loop (issue 10: items
15, 17; issue 11: items 1, 2; datagram transports' inherited methods). Each body runs on
ferroloop and on stdlib asyncio, and asserts what asyncio does. Loopback only."""

import asyncio
import os
import socket

import pytest
from _netkit import Accepting, Recorder, address_of, run
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
