"""asyncio streams (StreamReader/StreamWriter) over the loop's TCP and Unix transports."""

import asyncio
import contextlib
import os
import tempfile

import pytest
from _netkit import MiB, payload, poll_once, run


async def echo_lines(reader, writer):
    """Echo line by line until EOF, then close."""
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


@contextlib.asynccontextmanager
async def handlers_awaited(handler):
    """Wraps a connection handler; on exit, waits for every call of it to finish."""
    tasks = []

    async def tracked(reader, writer):
        tasks.append(asyncio.current_task())
        await handler(reader, writer)

    yield tracked
    await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def tcp_server(handler):
    async with (
        handlers_awaited(handler) as tracked,
        await asyncio.start_server(tracked, "127.0.0.1", 0) as server,
    ):
        yield server.sockets[0].getsockname()[:2]


@contextlib.asynccontextmanager
async def unix_server(handler):
    with tempfile.TemporaryDirectory(prefix="fl") as tmp:
        path = os.path.join(tmp, "s.sock")
        async with (
            handlers_awaited(handler) as tracked,
            await asyncio.start_unix_server(tracked, path),
        ):
            yield (path,)  # connect(*address) on either kind of server


@pytest.fixture(params=["tcp", "unix"])
def open_echo(request):
    """An async context manager: a line echo server and a (reader, writer) connected to it."""

    @contextlib.asynccontextmanager
    async def open_echo():
        if request.param == "tcp":
            server, connect = tcp_server, asyncio.open_connection
        else:
            server, connect = unix_server, asyncio.open_unix_connection
        async with server(echo_lines) as address:
            reader, writer = await connect(*address)
            yield reader, writer
            writer.close()
            await writer.wait_closed()

    return open_echo


def test_echo_readline_readexactly_read(loop, open_echo):
    async def main():
        async with open_echo() as (reader, writer):
            writer.write(b"one\ntwo\n")
            assert await reader.readline() == b"one\n"
            assert await reader.readexactly(2) == b"tw"
            assert await reader.readexactly(2) == b"o\n"
            writer.writelines([b"thr", b"ee\nfour\n"])
            await writer.drain()
            assert await reader.readuntil(b"\n") == b"three\n"
            writer.write(b"no newline at the end")
            writer.write_eof()  # the server echoes, sees EOF and closes
            assert await reader.read() == b"four\nno newline at the end"
            assert reader.at_eof()
            assert await reader.read() == b""
            assert await reader.readline() == b""

    run(loop, main())


def test_readexactly_short_of_bytes_at_eof(loop, open_echo):
    async def main():
        async with open_echo() as (reader, writer):
            writer.write(b"short\n")
            writer.write_eof()
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(100)
            assert info.value.partial == b"short\n"
            assert info.value.expected == 100

    run(loop, main())


def test_extra_info_through_the_writer(loop, open_echo):
    async def main():
        async with open_echo() as (_, writer):
            sock = writer.get_extra_info("socket")
            assert writer.get_extra_info("peername") == sock.getpeername()
            assert writer.get_extra_info("sockname") == sock.getsockname()
            assert isinstance(writer.transport, asyncio.Transport)
            assert writer.can_write_eof()

    run(loop, main())


def test_drain_waits_for_a_slow_reader(loop):
    data = payload(8 * MiB)
    go = None

    async def slow_reader(reader, writer):
        await go.wait()
        got = await reader.readexactly(len(data))
        writer.write(b"%d" % len(got) if got == data else b"mismatch")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        nonlocal go
        go = asyncio.Event()
        async with tcp_server(slow_reader) as address:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(data)
            assert writer.transport.get_write_buffer_size() > 0
            drained = asyncio.ensure_future(writer.drain())
            await poll_once()
            await poll_once()
            assert not drained.done(), "drain() returned while the peer read nothing"
            go.set()
            await drained
            assert writer.transport.get_write_buffer_size() <= 16 * 1024
            assert await reader.read() == b"%d" % len(data)
            writer.close()
            await writer.wait_closed()

    run(loop, main())


def test_close_and_wait_closed(loop):
    seen = None

    async def handler(reader, writer):
        seen.set_result(await reader.read())
        writer.close()
        await writer.wait_closed()

    async def main():
        nonlocal seen
        seen = loop.create_future()
        async with tcp_server(handler) as address:
            _, writer = await asyncio.open_connection(*address)
            writer.write(b"bye")
            assert not writer.is_closing()
            writer.close()
            assert writer.is_closing()
            await writer.wait_closed()
            assert writer.transport.is_closing()
            assert await seen == b"bye"
            await writer.wait_closed()  # again: returns at once

    run(loop, main())


def test_many_stream_clients(loop):
    async def client(address, i):
        reader, writer = await asyncio.open_connection(*address)
        lines = [b"client %d line %d\n" % (i, j) for j in range(10)]
        writer.writelines(lines)
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        return got == b"".join(lines)

    async def main():
        async with tcp_server(echo_lines) as address:
            assert all(await asyncio.gather(*(client(address, i) for i in range(50))))

    run(loop, main())
