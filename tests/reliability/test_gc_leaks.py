"""Leaks: what a connection, an endpoint, a spawn, a callback or a loop leaves behind.

Every body runs on ferroloop and on stdlib asyncio, and checks, after ``gc.collect()``, that
weak references to what the work made are dead (and file descriptors closed): the cyclic
collector must see every cycle, as it sees asyncio's. Protocols here keep their transport in
``self.transport`` and their handles in attributes, as real code does: each is a cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import subprocess
import sys
import warnings
import weakref

import pytest
from _childkit import child_command
from _netkit import FAR, run


def alive(refs):
    """The objects of `refs` (weak references) still alive after a full collection."""
    gc.collect()
    gc.collect()
    return [r() for r in refs if r() is not None]


def open_fds():
    return set(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def resource_warnings():
    """Records ResourceWarnings (asyncio's and ferroloop's "unclosed ..." reports)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield caught


def release_warnings(caught):
    """The recorded warnings' texts, letting go of the objects they name: a ResourceWarning
    keeps its `source` (the unclosed object, resurrected by its `__del__`); on Python 3.15 the
    weak references to such an object outlive the collection (on both loops), so the objects
    are checked once the records are gone."""
    messages = [str(w.message) for w in caught]
    caught.clear()
    return messages


class Payload:
    """Something a protocol or a callback holds: it must go when they go."""


class Keeper(asyncio.Protocol):
    """Keeps its transport and a payload; futures for connection_made/lost and data."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.transport = None
        self.payload = Payload()
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.got = loop.create_future()
        self.data = bytearray()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data):
        self.data += data
        if not self.got.done():
            self.got.set_result(None)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.lost.set_result(None)


class BufferedKeeper(asyncio.BufferedProtocol, Keeper):
    """Keeper as a BufferedProtocol (whose bound methods a transport keeps)."""

    def __init__(self):
        super().__init__()
        self.buffer = bytearray(1024)

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.data_received(bytes(self.buffer[:nbytes]))


class EchoKeeper(Keeper):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


def refs_of(*protocols):
    """Weak references to protocols, their transports and their payloads."""
    objs = []
    for p in protocols:
        objs += [p, p.transport, p.payload]
    return [weakref.ref(o) for o in objs]


# -- transports (issue 10, item 11) -----------------------------------------------------


@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("kind", [Keeper, BufferedKeeper], ids=["protocol", "buffered"])
def test_connection_leaves_nothing_behind(loop, tmp_path, family, kind):
    async def connection():
        server_protocols = []

        def factory():
            server_protocols.append(EchoKeeper())
            return server_protocols[-1]

        if family == "unix":
            path = str(tmp_path / "s")
            server = await loop.create_unix_server(factory, path)
            _, client = await loop.create_unix_connection(kind, path)
        else:
            server = await loop.create_server(factory, "127.0.0.1", 0)
            _, client = await loop.create_connection(kind, *server.sockets[0].getsockname())
        client.transport.write(b"ping")
        await client.got
        client.transport.close()
        await client.lost
        await server_protocols[0].lost
        server.close()
        await server.wait_closed()
        return refs_of(client, server_protocols[0])

    refs = run(loop, connection())
    assert alive(refs) == []


@pytest.mark.parametrize("kind", [Keeper, BufferedKeeper], ids=["protocol", "buffered"])
def test_tls_connection_leaves_nothing_behind(loop, kind):
    tlskit = pytest.importorskip("_tlskit")

    async def connection():
        server_protocols = []

        def factory():
            server_protocols.append(EchoKeeper())
            return server_protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tlskit.server_context())
        _, client = await loop.create_connection(
            kind,
            *server.sockets[0].getsockname(),
            ssl=tlskit.client_context(),
            server_hostname=tlskit.SERVER_CN,
        )
        client.transport.write(b"ping")
        await client.got
        client.transport.close()
        await client.lost
        await server_protocols[0].lost
        server.close()
        await server.wait_closed()
        return refs_of(client, server_protocols[0])

    refs = run(loop, connection())
    assert alive(refs) == []


class DatagramKeeper(asyncio.DatagramProtocol, Keeper):
    def datagram_received(self, data, addr):
        self.data_received(data)
        self.transport.sendto(data, addr)


def test_datagram_endpoint_leaves_nothing_behind(loop):
    async def endpoints():
        _, server = await loop.create_datagram_endpoint(DatagramKeeper, local_addr=("127.0.0.1", 0))
        addr = server.transport.get_extra_info("sockname")
        _, client = await loop.create_datagram_endpoint(DatagramKeeper, remote_addr=addr)
        client.transport.sendto(b"ping")
        await server.got
        await client.got
        client.transport.close()
        server.transport.close()
        await client.lost
        await server.lost
        return refs_of(client, server)

    refs = run(loop, endpoints())
    assert alive(refs) == []


def test_pipe_transports_leave_nothing_behind(loop):
    async def pipes():
        rfd, wfd = os.pipe()
        _, reader = await loop.connect_read_pipe(Keeper, open(rfd, "rb", 0))  # noqa: SIM115
        _, writer = await loop.connect_write_pipe(Keeper, open(wfd, "wb", 0))  # noqa: SIM115
        writer.transport.write(b"ping")
        await reader.got
        writer.transport.close()
        await writer.lost
        await reader.lost  # the writer's close is the reader's EOF
        return refs_of(reader, writer)

    refs = run(loop, pipes())
    assert alive(refs) == []


def test_subprocess_leaves_nothing_behind(loop):
    async def spawn():
        before = open_fds()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('pong')",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        transport = proc._transport
        pipes = [transport.get_pipe_transport(fd) for fd in (0, 1, 2)]
        out, _ = await proc.communicate()
        assert out.strip() == b"pong"
        return before, [weakref.ref(o) for o in (proc, transport, *pipes)]

    before, refs = run(loop, spawn())
    assert alive(refs) == []
    assert open_fds() <= before


def unclosed_stream(loop, sock):
    return loop.create_connection(Keeper, sock=sock)


def unclosed_datagram(loop, sock):
    return loop.create_datagram_endpoint(Keeper, sock=sock)


@pytest.mark.parametrize(
    ("make", "sock_type"),
    [(unclosed_stream, socket.SOCK_STREAM), (unclosed_datagram, socket.SOCK_DGRAM)],
    ids=["stream", "datagram"],
)
def test_transport_dropped_unclosed_closes_its_socket(new_loop, make, sock_type):
    """The loop closes with the connection still open, and the program forgets it: as
    asyncio's, the transport closes its socket when it goes, with a ResourceWarning."""
    loop = new_loop()
    a, b = socket.socketpair(socket.AF_UNIX, sock_type)
    with b:
        protocol = run(loop, make(loop, a))[1]
        refs = refs_of(protocol)
        del protocol
        with resource_warnings() as caught:
            loop.close()
            gc.collect()
        messages = release_warnings(caught)
        assert alive(refs) == []
    assert a.fileno() == -1
    assert any("unclosed transport" in m for m in messages)


# A collection that starts while a transport is being made (its __dict__ is created after
# the object is allocated, and creating a dict can start a collection) must not see the
# transport before its fields are written. Each new dict comes from the allocator (the
# spare dicts empty the dicts' free list), and the low thresholds make one of them start a
# collection at each point of the construction in turn. A crash takes the process down, so
# this runs in a child interpreter.
MADE_DURING_COLLECTIONS = """
import gc, os, socket

async def make_transports(loop):
    a, b = socket.socketpair()
    with b:
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        transport.close()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    transport.close()
    rfd, wfd = os.pipe()
    transport, _ = await loop.connect_read_pipe(asyncio.Protocol, open(rfd, "rb", 0))
    transport.close()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, open(wfd, "wb", 0))
    transport.close()

async def main(loop):
    thresholds = gc.get_threshold()
    for threshold in range(1, 8):
        for _ in range(5):
            spare = [{} for _ in range(200)]
            gc.set_threshold(threshold)
            try:
                await make_transports(loop)
            finally:
                gc.set_threshold(*thresholds)
            del spare
    await asyncio.sleep(0)

loop = new_loop()
loop.run_until_complete(main(loop))
loop.close()
print("made")
"""


def test_transports_made_while_the_collector_runs(loop_kind):
    proc = subprocess.run(
        child_command(loop_kind, MADE_DURING_COLLECTIONS),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}; stderr:\n{proc.stderr}"
    assert proc.stdout.strip() == "made"


def test_transports_are_visible_to_the_collector(loop):
    tlskit = pytest.importorskip("_tlskit")

    async def transports():
        a, b = socket.socketpair()
        with b:
            stream, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        datagram, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        made = [stream, datagram]
        server = await loop.create_server(Keeper, "127.0.0.1", 0, ssl=tlskit.server_context())
        _, client = await loop.create_connection(
            Keeper,
            *server.sockets[0].getsockname(),
            ssl=tlskit.client_context(),
            server_hostname=tlskit.SERVER_CN,
        )
        made.append(client.transport)
        tracked = [gc.is_tracked(t) for t in made]
        for t in made:
            t.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return tracked

    assert run(loop, transports()) == [True, True, True]


@pytest.mark.parametrize("kind", ["stream", "datagram"])
def test_cycle_through_a_transport_dict_is_collected(loop, kind):
    """A library keeps its protocol in an attribute of the transport (its __dict__), and
    the protocol keeps the transport: the cycle is collected once the connection is lost."""

    async def connection():
        if kind == "stream":
            a, b = socket.socketpair()
            with b:
                _, protocol = await loop.connect_accepted_socket(Keeper, a)
        else:
            _, protocol = await loop.create_datagram_endpoint(
                DatagramKeeper, local_addr=("127.0.0.1", 0)
            )
        protocol.transport.owner = protocol
        protocol.transport.close()
        await protocol.lost
        return refs_of(protocol)

    refs = run(loop, connection())
    assert alive(refs) == []


# -- handles (issue 10, item 12) --------------------------------------------------------


class Holder:
    """Keeps the handle of its own callback: holder -> handle -> bound method -> holder."""

    def __init__(self):
        self.handle = None
        self.payload = Payload()

    def cb(self):
        pass

    def fail(self):
        raise ValueError("from a callback")


@pytest.mark.parametrize("when", ["before running", "while running"])
def test_timer_pending_when_the_loop_closes_is_freed(new_loop, when):
    loop = new_loop()
    holder = Holder()

    async def arm():
        holder.handle = loop.call_later(60, holder.cb)

    if when == "before running":
        holder.handle = loop.call_later(60, holder.cb)
    else:
        run(loop, arm())
    refs = [weakref.ref(holder.payload)]
    loop.close()
    holder = None
    assert alive(refs) == []


@pytest.mark.parametrize("schedule", ["call_soon", "call_later"])
def test_debug_mode_handles_are_freed(loop, schedule):
    loop.set_debug(True)
    loop.slow_callback_duration = FAR  # no "Executing ... took" reports

    async def main():
        holder = Holder()
        if schedule == "call_soon":
            holder.handle = loop.call_soon(holder.cb)
        else:
            holder.handle = loop.call_later(0, holder.cb)
        await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        return [weakref.ref(holder.payload)]

    refs = run(loop, main())
    assert alive(refs) == []


def test_handle_whose_callback_raised_is_freed(loop, expect_exception_handler):
    async def main():
        holder = Holder()
        holder.handle = loop.call_soon(holder.fail)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return [weakref.ref(holder.payload)]

    refs = run(loop, main())
    assert len(expect_exception_handler) == 1
    expect_exception_handler.clear()  # the recorded context holds the handle
    assert alive(refs) == []


def pending_callback(loop):
    loop.call_soon(loop.stop)


def pending_sleep(loop):
    async def start():
        loop.create_task(asyncio.sleep(60))
        await asyncio.sleep(0)  # the task is sleeping

    run(loop, start())


def pending_kept_timer(loop):
    holder = Holder()
    holder.loop = loop

    async def arm():
        holder.handle = loop.call_later(60, holder.cb)

    run(loop, arm())


@pytest.mark.parametrize(
    "pending",
    [pending_callback, pending_sleep, pending_kept_timer],
    ids=["callback", "sleeping task", "kept timer"],
)
def test_loop_dropped_unclosed_with_work_pending_is_freed(loop_factory, pending):
    """A loop nobody closed, with a callback pending that leads back to it: the collector
    finds it, and its __del__ closes it (and its file descriptors)."""
    gc.collect()
    before = open_fds()
    loop = loop_factory()
    pending(loop)
    refs = [weakref.ref(loop)]
    del loop
    with resource_warnings() as caught:
        gc.collect()
    messages = release_warnings(caught)
    assert alive(refs) == []
    assert open_fds() <= before
    assert any("unclosed event loop" in m for m in messages)


# -- the fd -> transport registry (issue 10, item 14) -----------------------------------


def reuse_fd(fd):
    """A new socket whose file descriptor is `fd` (free again)."""
    fresh = socket.socket()
    if fresh.fileno() == fd:
        return fresh
    with fresh:
        os.dup2(fresh.fileno(), fd)
    return socket.socket(fileno=fd)


async def failed_endpoint(loop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    fd = sock.fileno()
    with contextlib.suppress(AttributeError):  # the protocol factory returned None
        await loop.create_datagram_endpoint(lambda: None, sock=sock)
    sock.close()
    return fd


async def failed_write_pipe(loop):
    rfd, wfd = os.pipe()
    os.close(rfd)
    pipe = open(wfd, "wb", 0)  # noqa: SIM115 (the transport owns it)
    with contextlib.suppress(AttributeError):
        await loop.connect_write_pipe(lambda: None, pipe)
    pipe.close()
    return wfd


@pytest.mark.parametrize("fail", [failed_endpoint, failed_write_pipe], ids=["datagram", "pipe"])
def test_failed_transport_leaves_its_fd_free(loop, fail):
    """A transport whose start failed (its protocol factory returned None) does not keep
    its fd number: a later socket with that number can be registered."""
    with resource_warnings():
        fd = run(loop, fail(loop))
        gc.collect()
    with reuse_fd(fd) as sock:
        loop.add_reader(sock, lambda: None)
        assert loop.remove_reader(sock)
