"""Pipe transports (connect_read_pipe, connect_write_pipe) over os.pipe() and a PTY: data,
EOF, flow control, closing from either end, and asyncio streams over pipes."""

import asyncio
import contextlib
import errno
import os
import sys
import tty

import pytest
from _netkit import MiB, Recorder, payload, poll_once, run


def has_is_reading(loop_kind):
    """asyncio's pipe transports have is_reading() since 3.11 (ferroloop's always do)."""
    return loop_kind == "ferroloop" or sys.version_info >= (3, 11)


class Events(Recorder):
    """A Recorder that also keeps the order of its callbacks, and notes resume_writing()."""

    def __init__(self):
        super().__init__()
        self.events = []
        self.resumed_writing = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.events.append("made")
        super().connection_made(transport)

    def eof_received(self):
        self.events.append("eof")
        return super().eof_received()

    def connection_lost(self, exc):
        self.events.append("lost")
        super().connection_lost(exc)

    def resume_writing(self):
        super().resume_writing()
        if not self.resumed_writing.done():
            self.resumed_writing.set_result(None)


@pytest.fixture
def pipe():
    """(read end, write end) of an os.pipe(), unbuffered file objects, closed at teardown."""
    r, w = os.pipe()
    with open(r, "rb", buffering=0) as reader, open(w, "wb", buffering=0) as writer:
        yield reader, writer


async def close_and_wait(*protocols):
    for proto in protocols:
        proto.transport.close()
    for proto in protocols:
        await proto.lost


# -- read pipes ------------------------------------------------------------------------


def test_read_pipe_data_then_eof_then_connection_lost(loop, loop_kind, pipe):
    reader, writer = pipe

    async def main():
        transport, proto = await loop.connect_read_pipe(Events, reader)
        assert transport.get_extra_info("pipe") is reader
        assert isinstance(transport, asyncio.ReadTransport)
        if has_is_reading(loop_kind):
            assert transport.is_reading()
        os.write(writer.fileno(), b"hello ")
        assert await proto.received(6) == b"hello "
        writer.write(b"world")
        writer.close()
        assert await proto.lost is None
        assert proto.events == ["made", "eof", "lost"]
        assert await proto.eof == b"hello world"
        assert transport.is_closing()
        assert reader.closed  # the transport closed its pipe

    run(loop, main())


def test_read_pipe_pause_and_resume_reading(loop, loop_kind, pipe):
    reader, writer = pipe

    async def main():
        transport, proto = await loop.connect_read_pipe(Events, reader)
        transport.pause_reading()
        if has_is_reading(loop_kind):
            assert not transport.is_reading()
        transport.pause_reading()  # again: no effect
        writer.write(b"written while paused")
        await poll_once()
        await poll_once()
        assert proto.data == b""
        transport.resume_reading()
        if has_is_reading(loop_kind):
            assert transport.is_reading()
        # Nothing more is written: what waited in the pipe must be delivered on its own.
        assert await proto.received(20) == b"written while paused"
        transport.pause_reading()
        writer.close()
        await poll_once()
        assert not proto.eof.done() and not proto.lost.done()
        transport.resume_reading()
        assert await proto.lost is None
        assert proto.events == ["made", "eof", "lost"]

    run(loop, main())


def test_read_pipe_rejects_a_regular_file(loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    async def main():
        with open(path, "rb") as f, pytest.raises(ValueError, match="Pipe transport is"):
            await loop.connect_read_pipe(asyncio.Protocol, f)
        with open(path, "wb") as f, pytest.raises(ValueError, match="Pipe transport is"):
            await loop.connect_write_pipe(asyncio.Protocol, f)

    run(loop, main())


# -- write pipes -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "write_eof"])
def test_write_pipe_large_write_flushed_before_closing(loop, pipe, how):
    reader, writer = pipe
    data = payload(4 * MiB)

    async def main():
        _, rp = await loop.connect_read_pipe(Events, reader)
        wt, wp = await loop.connect_write_pipe(Events, writer)
        assert wt.get_extra_info("pipe") is writer
        assert isinstance(wt, asyncio.WriteTransport)
        assert wt.can_write_eof()
        wt.write(data[: MiB // 2])
        wt.writelines([bytearray(data[MiB // 2 : MiB]), memoryview(data)[MiB:]])
        assert wt.get_write_buffer_size() > 0  # the pipe holds much less than 4 MiB
        getattr(wt, how)()
        assert wt.is_closing()
        assert await rp.eof == data
        assert await wp.lost is None
        assert wt.get_write_buffer_size() == 0
        assert await rp.lost is None
        assert writer.closed

    run(loop, main())


def test_write_pipe_flow_control(loop, pipe):
    reader, writer = pipe
    data = payload(MiB)

    async def main():
        rt, rp = await loop.connect_read_pipe(Events, reader)
        wt, wp = await loop.connect_write_pipe(Events, writer)
        rt.pause_reading()  # the reader stops reading
        wt.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        wt.write(data)
        assert len(wp.paused) == 1 and wp.paused[0] > 64 * 1024
        assert wp.resumed == []
        rt.resume_reading()  # and drains the pipe
        await wp.resumed_writing
        assert len(wp.paused) == 1
        assert len(wp.resumed) == 1 and wp.resumed[0] <= 16 * 1024
        assert await rp.received(len(data)) == data
        assert wt.get_write_buffer_size() == 0
        await close_and_wait(wp, rp)

    run(loop, main())


@pytest.mark.parametrize("buffered", [False, True], ids=["idle", "buffered"])
def test_write_pipe_reader_closes(loop, pipe, buffered):
    reader, writer = pipe

    async def main():
        wt, wp = await loop.connect_write_pipe(Events, writer)
        if buffered:
            wt.write(payload(MiB))
            assert wt.get_write_buffer_size() > 0
        reader.close()
        exc = await wp.lost
        if buffered:
            assert isinstance(exc, BrokenPipeError)
        else:
            assert exc is None
        assert wt.is_closing()
        assert wp.events == ["made", "lost"]
        wt.write(b"ignored after the end")  # no exception
        assert writer.closed

    run(loop, main())


# -- PTY -------------------------------------------------------------------------------


def test_pty_both_directions(loop):
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing, no \n -> \r\n: bytes pass as they are
    to_slave, to_master = payload(256 * 1024, 1), payload(256 * 1024, 2)
    with contextlib.ExitStack() as files:
        m_read, m_write, s_read, s_write = (
            files.enter_context(open(fd, mode, buffering=0))
            for fd, mode in (
                (master, "rb"),
                (os.dup(master), "wb"),
                (slave, "rb"),
                (os.dup(slave), "wb"),
            )
        )

        async def main():
            _, mr = await loop.connect_read_pipe(Events, m_read)
            _, sr = await loop.connect_read_pipe(Events, s_read)
            _, mw = await loop.connect_write_pipe(Events, m_write)
            _, sw = await loop.connect_write_pipe(Events, s_write)
            assert mw.transport.get_extra_info("pipe") is m_write
            mw.transport.write(to_slave)
            sw.transport.write(to_master)
            got_slave, got_master = await asyncio.gather(
                sr.received(len(to_slave)), mr.received(len(to_master))
            )
            assert got_slave == to_slave
            assert got_master == to_master
            await close_and_wait(mw, sw, sr)
            # Every slave descriptor is closed: reading the master fails with EIO, which
            # ends the connection without troubling the exception handler.
            exc = await mr.lost
            assert isinstance(exc, OSError) and exc.errno == errno.EIO
            assert mr.transport.is_closing()

        run(loop, main())


# -- streams ---------------------------------------------------------------------------


def test_streams_over_pipes(loop, pipe):
    reader_pipe, writer_pipe = pipe
    block = payload(MiB)
    from asyncio.streams import FlowControlMixin

    async def write_side():
        transport, proto = await loop.connect_write_pipe(FlowControlMixin, writer_pipe)
        writer = asyncio.StreamWriter(transport, proto, None, loop)
        writer.write(b"line one\nline two\n")
        writer.write(block)
        await writer.drain()
        writer.write(b"tail")
        assert writer.can_write_eof()
        writer.write_eof()

    async def read_side():
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), reader_pipe
        )
        assert await reader.readline() == b"line one\n"
        assert await reader.readuntil(b"\n") == b"line two\n"
        assert await reader.readexactly(len(block)) == block
        assert await reader.read() == b"tail"
        assert reader.at_eof()
        return transport

    async def main():
        _, transport = await asyncio.gather(write_side(), read_side())
        assert transport.is_closing()

    run(loop, main())
