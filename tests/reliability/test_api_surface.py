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
