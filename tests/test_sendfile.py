"""loop.sendfile() over a TCP transport: the zero-copy path for regular files, the read and
write fallback for other file objects, what the transport allows meanwhile; and its refusal
of pipe transports."""

import asyncio
import io
import os
import socket

import pytest
from _netkit import MiB, Recorder, connected, payload, poll_once, run

DATA = payload(8 * MiB, 3)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    with open(path, "rb") as f:
        yield f


class PausedServer(Recorder):
    """Does not read until told to (resume_reading)."""

    def connection_made(self, transport):
        transport.pause_reading()
        super().connection_made(transport)


def test_sendfile_whole_file(loop, data_file):
    async def main():
        async with connected(loop) as (cp, sp):
            sent = await loop.sendfile(cp.transport, data_file)
            assert sent == len(DATA)
            assert data_file.tell() == len(DATA)
            assert await sp.received(len(DATA)) == DATA
            assert cp.transport.is_reading()
            sp.transport.write(b"reading again")
            assert await cp.received(13) == b"reading again"

    run(loop, main())


@pytest.mark.parametrize(
    "offset, count",
    [(1000, 5000), (3 * MiB + 1, None), (0, 1), (len(DATA) - 10, 1000), (12345, 4 * MiB)],
)
def test_sendfile_offset_and_count(loop, data_file, offset, count):
    expected = DATA[offset : offset + count if count else None]

    async def main():
        async with connected(loop) as (cp, sp):
            sent = await loop.sendfile(cp.transport, data_file, offset, count)
            assert sent == len(expected)
            assert data_file.tell() == offset + len(expected)
            cp.transport.write_eof()
            assert await sp.eof == expected

    run(loop, main())


def test_sendfile_between_writes(loop, data_file):
    async def main():
        async with connected(loop, server=PausedServer) as (cp, sp):
            cp.transport.write(DATA)
            cp.transport.write(b"before")
            assert cp.transport.get_write_buffer_size() > 0  # sendfile must wait for it
            sending = asyncio.ensure_future(loop.sendfile(cp.transport, data_file, 0, 1000))
            sp.transport.resume_reading()
            assert await sending == 1000
            cp.transport.write(b"after")
            cp.transport.write_eof()
            assert await sp.eof == DATA + b"before" + DATA[:1000] + b"after"

    run(loop, main())


def test_write_during_sendfile_raises(loop, data_file):
    async def main():
        async with connected(loop, server=PausedServer) as (cp, sp):
            sock = cp.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            sending = asyncio.ensure_future(loop.sendfile(cp.transport, data_file))
            await poll_once()
            await poll_once()
            assert not sending.done(), "the peer reads nothing, yet sendfile() finished"
            with pytest.raises(RuntimeError):
                cp.transport.write(b"sneaking in")
            sp.transport.resume_reading()
            assert await sending == len(DATA)
            cp.transport.write(b"after")
            assert await sp.received(len(DATA) + 5) == DATA + b"after"

    run(loop, main())


def test_sendfile_of_a_file_object_without_fileno_falls_back(loop):
    file = io.BytesIO(DATA)

    async def main():
        async with connected(loop) as (cp, sp):
            sent = await loop.sendfile(cp.transport, file, 100, 2 * MiB)
            assert sent == 2 * MiB
            assert file.tell() == 100 + 2 * MiB
            cp.transport.write_eof()
            assert await sp.eof == DATA[100 : 100 + 2 * MiB]

    run(loop, main())


def test_sendfile_without_fallback_refuses_such_a_file(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sendfile(cp.transport, io.BytesIO(b"abc"), fallback=False)
            assert cp.transport.is_reading()
            cp.transport.write(b"unharmed")
            assert await sp.received(8) == b"unharmed"

    run(loop, main())


def test_sendfile_argument_errors_leave_the_transport_usable(loop, data_file, tmp_path):
    (tmp_path / "text.txt").write_text("text")

    async def main():
        async with connected(loop) as (cp, sp):
            with open(tmp_path / "text.txt") as text, pytest.raises(ValueError):
                await loop.sendfile(cp.transport, text)
            with pytest.raises(ValueError):
                await loop.sendfile(cp.transport, data_file, -1)
            with pytest.raises(ValueError):
                await loop.sendfile(cp.transport, data_file, 0, 0)
            with pytest.raises(TypeError):
                await loop.sendfile(cp.transport, data_file, 0, 1.5)
            assert data_file.tell() == 0
            assert cp.transport.is_reading()
            cp.transport.write(b"unharmed")
            assert await sp.received(8) == b"unharmed"
            sp.transport.write(b"both ways")
            assert await cp.received(9) == b"both ways"

    run(loop, main())


def test_sendfile_on_a_closing_transport_raises(loop, data_file):
    async def main():
        async with connected(loop) as (cp, sp):
            cp.transport.close()
            with pytest.raises(RuntimeError):
                await loop.sendfile(cp.transport, data_file)
            assert data_file.tell() == 0
            assert await sp.eof == b""

    run(loop, main())


def test_sendfile_of_an_empty_file(loop, tmp_path):
    (tmp_path / "empty").write_bytes(b"")

    async def main():
        async with connected(loop) as (cp, sp):
            with open(tmp_path / "empty", "rb") as empty:
                assert await loop.sendfile(cp.transport, empty) == 0
                assert empty.tell() == 0
            cp.transport.write(b"next")
            assert await sp.received(4) == b"next"

    run(loop, main())


def test_sendfile_of_nothing_leaves_the_file_where_the_version_says(loop, data_file):
    # Nothing left to send after the offset. From 3.14 the file position ends at the offset
    # anyway (sendfile seeks however it ends); before, sending nothing left it where it was.
    import sys

    expected = len(DATA) if sys.version_info >= (3, 14) else 123

    async def main():
        async with connected(loop) as (cp, _sp):
            data_file.seek(123)
            assert await loop.sendfile(cp.transport, data_file, len(DATA)) == 0
            assert data_file.tell() == expected

    run(loop, main())

    async def sock_main():
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            data_file.seek(123)
            assert await loop.sock_sendfile(a, data_file, len(DATA)) == 0
            return data_file.tell()

    assert run(loop, sock_main()) == expected


def test_sendfile_fallback_from_offset_0_reads_where_the_version_says(loop, data_file, monkeypatch):
    # From 3.14 the read/write fallback seeks to the offset even when it is 0; before, it read
    # from wherever the file was.
    import sys

    start = 0 if sys.version_info >= (3, 14) else 123

    async def unavailable(*args):
        raise asyncio.SendfileNotAvailableError("testing the fallback")

    monkeypatch.setattr(loop, "_sendfile_native", unavailable)
    monkeypatch.setattr(loop, "_sock_sendfile_native", unavailable)

    async def main():
        async with connected(loop) as (cp, sp):
            data_file.seek(123)
            assert await loop.sendfile(cp.transport, data_file, 0, 10) == 10
            cp.transport.write_eof()
            assert await sp.eof == DATA[start : start + 10]
            assert data_file.tell() == 10

    run(loop, main())

    async def sock_main():
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            data_file.seek(123)
            assert await loop.sock_sendfile(a, data_file, 0, 10) == 10
            return b.recv(100)

    assert run(loop, sock_main()) == DATA[start : start + 10]


@pytest.mark.parametrize("fallback", [True, False])
def test_sendfile_on_a_pipe_transport_is_not_supported(loop, data_file, fallback):
    # asyncio's pipe transports are not marked as sendfile-capable: loop.sendfile refuses them
    # before touching the file or the pipe, with or without the fallback.
    async def main():
        rfd, wfd = os.pipe()
        with open(rfd, "rb", buffering=0) as rpipe, open(wfd, "wb", buffering=0) as wpipe:
            wt, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, wpipe)
            got = asyncio.Queue()

            class Reader(asyncio.Protocol):
                def data_received(self, data):
                    got.put_nowait(data)

            rt, _ = await loop.connect_read_pipe(Reader, rpipe)
            try:
                for transport in (wt, rt):
                    with pytest.raises(RuntimeError, match="sendfile is not supported"):
                        await loop.sendfile(transport, data_file, fallback=fallback)
                    assert data_file.tell() == 0
                    assert not transport.is_closing()
                wt.write(b"still a pipe")
                assert await asyncio.wait_for(got.get(), 5) == b"still a pipe"
                assert rt.is_reading()
            finally:
                wt.close()
                rt.close()

    run(loop, main())
