"""The fault catalog of issue 10 ("Instruments to add"): peer resets, half-closes, EMFILE
on accept, SIGINT, call_soon_threadsafe racing close, subprocesses that die or close their
pipes early. Each body runs on ferroloop and on stdlib asyncio and asserts what asyncio
does. Loopback only; tests whose failure could take the process down run a child
interpreter."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from _childkit import child_command
from _netkit import (
    FAR,
    Accepting,
    MiB,
    Recorder,
    address_of,
    close_all,
    linger_zero,
    payload,
    poll_once,
    run,
    serving,
)
from _tlskit import SERVER_CN, certs, client_context, tls_serving

CHILD_TIMEOUT = 60


def skip_asyncio_tls_before_311(kind, loop_kind):
    if kind == "tls" and loop_kind == "asyncio" and sys.version_info < (3, 11):
        pytest.skip("3.10's asyncio TLS layer predates the 3.11 sslproto that ferroloop follows")


def open_fds():
    return set(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def stream_pair(loop, kind, client=Recorder, server=Recorder):
    """A connected (client protocol, server protocol) pair: kind is tcp, unix or tls."""
    accepting = Accepting(server)
    if kind == "unix":
        with tempfile.TemporaryDirectory(prefix="ferroloop-") as d:
            path = os.path.join(d, "s")
            srv = await loop.create_unix_server(accepting, path)
            try:
                _, cp = await loop.create_unix_connection(client, path)
                sp = await accepting.made()
                try:
                    yield cp, sp
                finally:
                    await close_all(cp, *accepting.protocols)
            finally:
                srv.close()
                await srv.wait_closed()
        return
    if kind == "tls":
        serve, options = tls_serving, {"ssl": client_context(), "server_hostname": SERVER_CN}
    else:
        serve, options = serving, {}
    async with serve(loop, accepting) as srv:
        _, cp = await loop.create_connection(client, *address_of(srv), **options)
        sp = await accepting.made()
        try:
            yield cp, sp
        finally:
            await close_all(cp, *accepting.protocols)


def run_child(loop_kind, body, *args, timeout=CHILD_TIMEOUT, **popen):
    """Starts ``body`` in a fresh interpreter with ``new_loop`` bound to the kind's factory
    (and ``run_main(coro)`` running a coroutine as asyncio.run does); returns the Popen."""
    return subprocess.Popen(
        child_command(loop_kind, body, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc, timeout=CHILD_TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child process hung (killed after {timeout} s); stderr: {err[-3000:]}")
    assert "Fatal Python error" not in err and "panicked" not in err, err[-3000:]
    return proc.returncode, out, err


# -- peer reset (RST) mid-read and mid-write ---------------------------------------------


class Drained(Recorder):
    """drained(): returns once the transport's write buffer is empty (high-water mark 0:
    resume_writing() comes exactly then)."""

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=0)
        self._empty = None

    def resume_writing(self):
        super().resume_writing()
        if self._empty is not None and not self._empty.done():
            self._empty.set_result(None)

    async def drained(self):
        while self.transport.get_write_buffer_size():
            self._empty = asyncio.get_running_loop().create_future()
            await self._empty


@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_peer_reset_mid_read(loop, loop_kind, kind):
    skip_asyncio_tls_before_311(kind, loop_kind)
    data = payload(64 * 1024, 31)

    async def main():
        before = open_fds()
        async with stream_pair(loop, kind, server=Drained) as (cp, sp):
            # (not from connection_made: a TLS client would then never send its Finished)
            cp.transport.pause_reading()
            sp.transport.write(data)
            # The peer waits until its bytes are out, then resets the connection while the
            # client still has them unread.
            await sp.drained()
            linger_zero(sp.transport)
            sp.transport.abort()
            assert await sp.lost is None
            cp.transport.resume_reading()
            exc = await cp.lost
            assert isinstance(exc, ConnectionResetError), repr(exc)
            assert not cp.eof.done()
            assert data.startswith(bytes(cp.data))
            assert cp.transport.is_closing()
        assert open_fds() <= before

    run(loop, main())


class Flooding(Recorder):
    """Writes until its buffer holds more than the high-water mark."""

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=256 * 1024)

    def pause_writing(self):
        super().pause_writing()
        self.full.set_result(None)


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_peer_reset_mid_write(loop, loop_kind, kind):
    # (a Unix socket closed with unread data resets its peer too)
    skip_asyncio_tls_before_311(kind, loop_kind)

    def flooding():
        p = Flooding()
        p.full = asyncio.get_running_loop().create_future()
        return p

    async def main():
        before = open_fds()
        async with stream_pair(loop, kind, client=flooding) as (cp, sp):
            # (not from connection_made: 3.10's asyncio goes on reading then)
            sp.transport.pause_reading()
            chunk = payload(64 * 1024, 32)
            while not cp.full.done():
                cp.transport.write(chunk)
                await asyncio.sleep(0)
            assert cp.transport.get_write_buffer_size() > 0
            if kind != "unix":
                linger_zero(sp.transport)
            sp.transport.abort()
            assert await sp.lost is None
            exc = await cp.lost
            assert isinstance(exc, ConnectionResetError), repr(exc)
            assert cp.transport.is_closing()
            assert cp.transport.get_write_buffer_size() == 0
            # Writes to a lost connection are dropped without an error.
            cp.transport.write(b"late")
        assert open_fds() <= before

    run(loop, main())


def test_pipe_reader_closes_mid_write(loop):
    async def main():
        before = open_fds()
        r, w = os.pipe()
        t, p = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        t.write(payload(MiB, 36))  # more than the pipe holds
        assert t.get_write_buffer_size() > 0
        os.close(r)
        exc = await p.lost
        assert isinstance(exc, BrokenPipeError), repr(exc)
        assert t.is_closing()
        assert t.get_write_buffer_size() == 0
        assert open_fds() <= before

    run(loop, main())


def test_pipe_reader_closes_while_nothing_is_written(loop):
    async def main():
        r, w = os.pipe()
        t, p = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        os.close(r)
        assert await p.lost is None
        assert t.is_closing()

    run(loop, main())


def test_pipe_writer_closes_mid_read(loop):
    async def main():
        r, w = os.pipe()
        t, p = await loop.connect_read_pipe(Recorder, os.fdopen(r, "rb", 0))
        os.write(w, b"last words")
        os.close(w)
        assert await p.eof == b"last words"
        assert await p.lost is None
        assert t.is_closing()

    run(loop, main())


async def handshake_peer(loop, listener, fault):
    """Accepts one connection, reads the ClientHello, then commits the fault."""
    conn, _ = await loop.sock_accept(listener)
    with conn:
        assert await loop.sock_recv(conn, 65536)  # the ClientHello
        if fault == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif fault == "garbage":
            await loop.sock_sendall(conn, b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await loop.sock_recv(conn, 65536)  # (until the client gives up)


@pytest.mark.parametrize(
    "fault, error",
    [("reset", ConnectionResetError), ("eof", ConnectionResetError), ("garbage", ssl.SSLError)],
)
def test_tls_handshake_fault_on_the_client(loop, loop_kind, fault, error):
    skip_asyncio_tls_before_311("tls", loop_kind)

    async def main():
        before = open_fds()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            peer = asyncio.ensure_future(handshake_peer(loop, listener, fault))
            with pytest.raises(error):
                await loop.create_connection(
                    Recorder,
                    *listener.getsockname(),
                    ssl=client_context(),
                    server_hostname=SERVER_CN,
                )
            await peer
        assert open_fds() <= before

    run(loop, main())


def test_tls_client_resetting_in_its_handshake_leaves_the_server_serving(loop):
    async def main():
        accepting = Accepting(Recorder)
        async with tls_serving(loop, accepting) as srv:
            with socket.create_connection(address_of(srv)) as bad:
                bad.sendall(b"\x16\x03\x01\x00\x05hello")  # a truncated handshake record
                bad.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            _, good = await loop.create_connection(
                Recorder, *address_of(srv), ssl=client_context(), server_hostname=SERVER_CN
            )
            server_side = await accepting.made(1)
            good.transport.write(b"still serving")
            assert await server_side.received(13) == b"still serving"
            assert not accepting.protocols[0].made.done()
            await close_all(good, server_side)

    run(loop, main())


def test_peer_reset_during_tls_shutdown(loop, loop_kind):
    skip_asyncio_tls_before_311("tls", loop_kind)

    async def main():
        async with stream_pair(loop, "tls") as (cp, sp):
            sp.transport.pause_reading()
            cp.transport.close()  # sends close_notify, waits for the peer's
            await poll_once()
            assert not cp.lost.done()
            linger_zero(sp.transport)
            sp.transport.abort()
            exc = await cp.lost
            assert isinstance(exc, ConnectionResetError), repr(exc)

    run(loop, main())


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextlib.contextmanager
def tcp_socket_pair():
    """(ours, peer): a connected TCP pair, ours non-blocking with a small send buffer."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    with ours, peer:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        yield ours, peer


@pytest.mark.parametrize("op", ["sock_sendall", "sock_sendfile", "sock_recv", "sock_recv_into"])
def test_peer_reset_during_a_sock_operation(loop, op, tmp_path):
    sending = op in ("sock_sendall", "sock_sendfile")
    data = payload(16 * MiB if sending else 0, 40)  # far more than the peer (not reading) takes
    path = tmp_path / "data"
    path.write_bytes(data)

    async def main():
        with tcp_socket_pair() as (ours, peer), open(path, "rb") as f:
            if op == "sock_sendall":
                pending = loop.sock_sendall(ours, data)
            elif op == "sock_sendfile":
                pending = loop.sock_sendfile(ours, f)
            elif op == "sock_recv":
                pending = loop.sock_recv(ours, 100)
            else:
                pending = loop.sock_recv_into(ours, bytearray(100))
            task = asyncio.ensure_future(pending)
            await poll_once()  # (it waits now)
            assert not task.done()
            reset(peer)
            with pytest.raises(ConnectionResetError):
                await task

    run(loop, main())


def test_peer_reset_during_transport_sendfile(loop, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(payload(16 * MiB, 41))

    async def main():
        async with stream_pair(loop, "tcp") as (cp, sp):
            sp.transport.pause_reading()
            small_send_buffer(cp.transport)
            with open(path, "rb") as f:
                task = asyncio.ensure_future(loop.sendfile(cp.transport, f))
                await poll_once()
                assert not task.done()
                linger_zero(sp.transport)
                sp.transport.abort()
                with pytest.raises(ConnectionResetError):
                    await task
            # (the transport is closed, as asyncio's: its error went to sendfile's caller)
            assert await cp.lost is None

    run(loop, main())


def test_peer_reset_under_streams(loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            reader, writer = await asyncio.open_connection(*listener.getsockname())
            peer, _ = listener.accept()
        peer.sendall(b"a line without its end")
        reset(peer)
        with pytest.raises(ConnectionResetError):
            await reader.readline()
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await writer.drain()
        writer.close()
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()

    run(loop, main())


class BufferedRecorder(asyncio.BufferedProtocol, Recorder):
    def get_buffer(self, sizehint):
        self.buf = bytearray(1000)
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]


def test_peer_reset_under_a_buffered_protocol(loop):
    data = payload(5000, 42)

    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            _, p = await loop.create_connection(BufferedRecorder, *listener.getsockname())
            peer, _ = listener.accept()
        peer.sendall(data)
        reset(peer)
        exc = await p.lost
        assert isinstance(exc, ConnectionResetError), repr(exc)
        assert data.startswith(bytes(p.data))

    run(loop, main())


# -- half-close both ways ------------------------------------------------------------------


def small_send_buffer(transport):
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)


class KeepOpen(Recorder):
    keep_open = True


@pytest.mark.parametrize("keep_open", [True, False], ids=["keep-open", "close"])
@pytest.mark.parametrize("closer", ["client", "server"])
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_half_close(loop, kind, closer, keep_open):
    request = payload(2 * MiB, 37)
    receiver_cls = KeepOpen if keep_open else Recorder
    if closer == "client":
        classes = {"client": Recorder, "server": receiver_cls}
    else:
        classes = {"client": receiver_cls, "server": Recorder}

    async def main():
        async with stream_pair(loop, kind, **classes) as (cp, sp):
            shut, other = (cp, sp) if closer == "client" else (sp, cp)
            assert shut.transport.can_write_eof()
            # More than the kernel takes at once: the EOF waits for the buffer to drain.
            small_send_buffer(shut.transport)
            shut.transport.write(request)
            assert shut.transport.get_write_buffer_size() > 0
            shut.transport.write_eof()
            with pytest.raises(RuntimeError):
                shut.transport.write(b"more")
            assert await other.eof == request
            if keep_open:
                # The other side still writes, and the half-closed side still reads.
                assert not other.transport.is_closing()
                other.transport.write(b"reply")
                assert await shut.received(5) == b"reply"
                assert not shut.eof.done() and not other.lost.done()
                other.transport.close()
            else:
                # eof_received() returned false: the transport closed itself.
                assert other.transport.is_closing()
            assert await other.lost is None
            assert await shut.eof == (b"reply" if keep_open else b"")
            assert await shut.lost is None

    run(loop, main())


@pytest.mark.parametrize("keep_open", [True, False], ids=["keep-open", "close"])
@pytest.mark.parametrize("closer", ["client", "server"])
def test_tls_half_close(loop, loop_kind, closer, keep_open):
    # TLS has no half-close: write_eof() is refused, and a peer's close_notify is an
    # EOF after which the connection closes whatever eof_received() returns.
    skip_asyncio_tls_before_311("tls", loop_kind)
    receiver_cls = KeepOpen if keep_open else Recorder
    request = payload(2 * MiB, 38)

    async def main():
        classes = {"client": receiver_cls, "server": receiver_cls}
        async with stream_pair(loop, "tls", **classes) as (cp, sp):
            shut, other = (cp, sp) if closer == "client" else (sp, cp)
            assert not shut.transport.can_write_eof()
            with pytest.raises(NotImplementedError):
                shut.transport.write_eof()
            small_send_buffer(shut.transport)
            shut.transport.write(request)
            shut.transport.close()  # (with data still buffered)
            assert await other.eof == request
            assert await other.lost is None
            assert await shut.lost is None

    run(loop, main())


# -- EMFILE on accept ----------------------------------------------------------------------

EMFILE_SERVER = r"""
import errno, os, resource, socket, ssl, tempfile
kind = sys.argv[1]
"localhost".encode("idna")  # (the codec is imported on first use: not with no fd left)

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

calls = []
fillers = []

def handler(loop, context):
    calls.append((context.get("message"), getattr(context.get("exception"), "errno", None)))
    # Free the file descriptors: the server must start accepting again by itself.
    while fillers:
        os.close(fillers.pop())

async def main(tmp):
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(handler)
    tls = {}
    if kind == "unix":
        addr = os.path.join(tmp, "s")
        server = await loop.create_unix_server(Echo, addr)
        family = socket.AF_UNIX
    else:
        if kind == "tls":
            server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ctx.load_cert_chain(sys.argv[3], sys.argv[4])
            client_ctx = ssl.create_default_context(cafile=sys.argv[2])
            tls = {"ssl": client_ctx, "server_hostname": "localhost"}
        else:
            server_ctx = None
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
        addr = server.sockets[0].getsockname()
        family = socket.AF_INET
    clients = []
    for _ in range(3):
        c = socket.socket(family)
        c.connect(addr)  # completed by the kernel's backlog
        c.setblocking(False)
        clients.append(c)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # (a low limit: filling the table is quick)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
    for i, c in enumerate(clients):
        reader, writer = await asyncio.open_connection(sock=c, **tls)
        msg = b"hello %d" % i
        writer.write(msg)
        assert await reader.readexactly(len(msg)) == msg
        writer.close()
        await writer.wait_closed()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    server.close()
    await server.wait_closed()
    assert calls, "accept() never failed: nothing was tested"
    assert set(calls) == {("socket.accept() out of system resource", errno.EMFILE)}, calls
    print("served", len(clients))

loop = new_loop()
with tempfile.TemporaryDirectory() as tmp:
    loop.run_until_complete(asyncio.wait_for(main(tmp), 30))
loop.close()
"""


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_emfile_on_accept_then_serving_again(loop_kind, kind):
    skip_asyncio_tls_before_311(kind, loop_kind)
    c = certs()
    proc = run_child(loop_kind, EMFILE_SERVER, kind, c.ca_pem, c.server_pem, c.server_key)
    status, out, err = finish(proc)
    assert status == 0, err[-3000:]
    assert out.split() == ["served", "3"]


SPAWN_WITH_FEW_FDS = r"""
import errno, os, resource, subprocess

calls = []

def open_fds():
    return set(os.listdir("/proc/self/fd"))

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: calls.append(context))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    outcomes = []
    for free in range(12):
        before = open_fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(map(int, before)) + 1 + free, hard))
        fillers = []
        try:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        for _ in range(free):
            os.close(fillers.pop())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "print('hi')", stdout=subprocess.PIPE
            )
            outcome = await proc.communicate(), proc.returncode
        except OSError as exc:
            outcome = exc.errno
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert open_fds() <= before, (free, open_fds() - before)
        outcomes.append(outcome)
    assert not calls, calls
    return outcomes

loop = new_loop()
outcomes = loop.run_until_complete(asyncio.wait_for(main(), 30))
loop.close()
ok = ((b"hi\n", None), 0)
print(" ".join("ok" if o == ok else errno.errorcode.get(o, repr(o)) for o in outcomes))
"""


def test_spawn_with_the_fd_table_nearly_full(loop_kind):
    # Each spawn fails with EMFILE or works; none leaks a file descriptor, none hangs.
    status, out, err = finish(run_child(loop_kind, SPAWN_WITH_FEW_FDS))
    assert status == 0, err[-3000:]
    outcomes = out.split()
    assert len(outcomes) == 12, out
    assert "ok" in outcomes, outcomes
    first_ok = outcomes.index("ok")
    assert set(outcomes[:first_ok]) <= {"EMFILE"}, outcomes
    assert set(outcomes[first_ok:]) == {"ok"}, outcomes


# -- SIGINT to an idle and to a busy loop --------------------------------------------------

SIGINT_CHILD = r"""
mode, load = sys.argv[1], sys.argv[2]

def ready():
    print("ready", flush=True)

async def main():
    asyncio.get_running_loop().call_soon(ready)
    try:
        if load == "idle":
            await asyncio.sleep(3600)
        elif load == "callbacks":
            # Busy with callbacks only, no task step in between.
            loop = asyncio.get_running_loop()

            def again():
                loop.call_soon(again)

            loop.call_soon(again)
            await asyncio.sleep(3600)
        else:
            while True:
                await asyncio.sleep(0)
    except asyncio.CancelledError:
        print("main cancelled", flush=True)
        raise

if mode == "run_until_complete":
    loop = new_loop()
    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    # The loop is usable afterwards, and closes.
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"
    loop.close()
    print("closed", flush=True)
else:
    run_main(main())
"""


def wait_until_sleeping(pid, timeout=FAR):
    """Wait until the process's main thread blocks in the kernel (the loop's poll)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        if state == "S":
            return
        time.sleep(0.005)  # no event tells another process's scheduling state
    pytest.fail("the child's loop never went to sleep")


@pytest.mark.parametrize("load", ["idle", "busy", "callbacks"])
@pytest.mark.parametrize("mode", ["run_until_complete", "asyncio.run"])
def test_sigint(loop_kind, mode, load):
    proc = run_child(loop_kind, SIGINT_CHILD, mode, load)
    try:
        assert proc.stdout.readline() == "ready\n"
        if load == "idle":
            wait_until_sleeping(proc.pid)
        proc.send_signal(signal.SIGINT)
    finally:
        status, out, err = finish(proc)
    if mode == "run_until_complete":
        # The default SIGINT handler raises KeyboardInterrupt out of run_until_complete;
        # the coroutine is not cancelled.
        assert (status, out.split("\n")) == (0, ["KeyboardInterrupt", "closed", ""]), err
    else:
        # asyncio.run cancels the main task, then raises KeyboardInterrupt, and the
        # interpreter ends by SIGINT.
        assert out == "main cancelled\n", err
        assert status == -signal.SIGINT, err[-3000:]
        assert err.rstrip().endswith("KeyboardInterrupt"), err[-3000:]


# -- call_soon_threadsafe from many threads while the loop closes --------------------------

THREADSAFE_CLOSE = r"""
import threading

THREADS, ROUNDS, TICKS, WINDOW = 8, 10, 2000, 64
unexpected = []

def hammer(loop, go, tick):
    # At most WINDOW of its callbacks are waiting at a time (the loop must not be outrun
    # by eight producers), except once the loop stops running them: then a call is made
    # anyway after a short wait, and must fail.
    window = threading.Semaphore(WINDOW)
    go.wait()
    while True:
        window.acquire(timeout=0.05)
        try:
            loop.call_soon_threadsafe(tick, window)
        except RuntimeError as exc:
            if str(exc) != "Event loop is closed":
                unexpected.append(repr(exc))
            return
        except BaseException as exc:
            unexpected.append(repr(exc))
            return

for _ in range(ROUNDS):
    loop = new_loop()
    enough = loop.create_future()
    ticks = 0

    def tick(window):
        global ticks
        window.release()
        ticks += 1
        if ticks == TICKS:
            enough.set_result(None)

    go = threading.Event()
    threads = [threading.Thread(target=hammer, args=(loop, go, tick)) for _ in range(THREADS)]
    for t in threads:
        t.start()
    go.set()
    # Runs until the threads' callbacks arrive, then closes while they go on calling.
    loop.run_until_complete(enough)
    loop.close()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a thread never saw the loop closed"
    try:
        loop.call_soon_threadsafe(int)
    except RuntimeError as exc:
        assert str(exc) == "Event loop is closed", exc
    else:
        raise AssertionError("call_soon_threadsafe on a closed loop")

assert not unexpected, unexpected
print("ok")
"""


def test_call_soon_threadsafe_from_many_threads_while_the_loop_closes(loop_kind):
    status, out, err = finish(run_child(loop_kind, THREADSAFE_CLOSE))
    assert (status, out) == (0, "ok\n"), err[-3000:]


# -- subprocesses that die or close their pipes early ---------------------------------------

PY = sys.executable


def assert_nothing_reported_but_310s_broken_pipe(contexts):
    """3.10's subprocess streams may leave a broken pipe in a future nobody reads (fixed in
    3.11): its report is the only one allowed, and only there."""
    gc.collect()
    messages = {context["message"] for context in contexts}
    if sys.version_info >= (3, 11):
        assert not messages
    else:
        assert messages <= {"Future exception was never retrieved"}


def test_communicate_with_a_child_that_exits_without_reading(loop, expect_exception_handler):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.exit(3)", stdin=subprocess.PIPE
        )
        # Its stdin is gone before (or while) 1 MiB goes in: the broken pipe is ignored.
        assert await proc.communicate(payload(MiB, 33)) == (None, None)
        assert proc.returncode == 3

    run(loop, main())
    assert_nothing_reported_but_310s_broken_pipe(expect_exception_handler)


def test_stdin_write_to_a_dead_child(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.exit(4)", stdin=subprocess.PIPE
        )
        assert await proc.wait() == 4
        proc.stdin.write(payload(MiB, 34))
        with pytest.raises(ConnectionResetError):
            while True:  # (as many turns as it takes the broken pipe to be noticed)
                await proc.stdin.drain()
                await asyncio.sleep(0)
        proc.stdin.close()
        await proc.stdin.wait_closed()

    run(loop, main())


class SubprocessRecorder(asyncio.SubprocessProtocol):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.events = []
        self.pipe_lost = {}
        self.exited = loop.create_future()
        self.lost = loop.create_future()
        self.data = {1: bytearray(), 2: bytearray()}
        self._changed = None

    def pipe_data_received(self, fd, data):
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_connection_lost", fd))
        self.pipe_lost[fd] = exc
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def pipes_lost(self, *fds):
        while not set(fds) <= set(self.pipe_lost):
            self._changed = asyncio.get_running_loop().create_future()
            await self._changed

    def process_exited(self):
        self.events.append(("process_exited",))
        self.exited.set_result(None)

    def connection_lost(self, exc):
        self.events.append(("connection_lost", exc))
        self.lost.set_result(exc)


def test_stdin_pipe_of_a_child_that_exits_without_reading(loop):
    async def main():
        before = open_fds()
        t, p = await loop.subprocess_exec(
            SubprocessRecorder, PY, "-c", "import sys; sys.exit(5)", stdout=None, stderr=None
        )
        stdin = t.get_pipe_transport(0)
        stdin.write(payload(MiB, 35))  # more than the pipe takes: some of it stays buffered
        assert await p.lost is None
        assert t.get_returncode() == 5
        assert isinstance(p.pipe_lost[0], BrokenPipeError), p.pipe_lost
        assert sorted(p.events[:-1]) == [("pipe_connection_lost", 0), ("process_exited",)]
        assert p.events[-1] == ("connection_lost", None)
        assert stdin.is_closing()
        t.close()
        assert open_fds() <= before

    run(loop, main())


def test_child_closes_stdout_before_exiting(loop):
    code = "import os, sys; os.write(1, b'partial'); os.close(1); sys.stdin.read(); sys.exit(6)"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        # EOF on stdout while the child still runs (it waits for its stdin to close).
        assert await proc.stdout.read() == b"partial"
        assert proc.returncode is None
        proc.stdin.close()
        assert await proc.wait() == 6

    run(loop, main())


def test_child_closes_its_pipes_then_keeps_running(loop):
    code = (
        "import os, sys; os.write(2, b'err'); os.close(1); os.close(2); "
        "sys.stdin.read(); sys.exit(7)"
    )

    async def main():
        before = open_fds()
        t, p = await loop.subprocess_exec(SubprocessRecorder, PY, "-c", code)
        await p.pipes_lost(1, 2)
        assert not p.exited.done() and t.get_returncode() is None
        assert p.pipe_lost == {1: None, 2: None}
        assert bytes(p.data[2]) == b"err"
        t.get_pipe_transport(0).close()
        assert await p.lost is None
        assert t.get_returncode() == 7
        assert sorted(p.events[2:-1]) == [("pipe_connection_lost", 0), ("process_exited",)]
        assert p.events[-1] == ("connection_lost", None)
        t.close()
        assert open_fds() <= before

    run(loop, main())


def test_child_killed_with_stdin_data_pending(loop, expect_exception_handler):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdin.read()", stdin=subprocess.PIPE
        )
        proc.stdin.write(payload(4 * MiB, 39))  # more than the pipe holds
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        with pytest.raises(ConnectionResetError):
            while True:  # (as many turns as it takes the broken pipe to be noticed)
                await proc.stdin.drain()
                await asyncio.sleep(0)
        proc.stdin.close()

    run(loop, main())
    assert_nothing_reported_but_310s_broken_pipe(expect_exception_handler)


def test_child_killed_while_writing(loop):
    code = "import os, sys\nwhile True: os.write(1, b'x' * 65536)"

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=subprocess.PIPE)
        assert len(await proc.stdout.readexactly(65536)) == 65536
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        rest = await proc.stdout.read()  # what the pipe held, then EOF
        assert set(rest) <= {ord("x")}

    run(loop, main())
