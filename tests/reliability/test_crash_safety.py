"""Crashes, panics and deadlocks that Python code must never be able to cause (issue 10).

Each test body runs on ferroloop and on stdlib asyncio (the reference). Tests whose failure
would take the process down (an abort, a segfault, a deadlock) run a child interpreter and
check its exit status and output.
"""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys

import pytest
from _childkit import child_command

FAR = 10  # seconds: a bound only a hang reaches
CHILD_TIMEOUT = 60

nan = math.nan
inf = math.inf


def run_child(loop_kind, body, *, timeout=CHILD_TIMEOUT):
    """Runs ``body`` in a fresh interpreter with ``new_loop`` bound to the kind's factory.

    Returns the completed process (stdout and stderr as text); a child that does not
    finish within ``timeout`` fails the test.
    """
    try:
        return subprocess.run(
            child_command(loop_kind, body),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"child process hung (killed after {timeout} s); stderr: {exc.stderr!r}")


def assert_clean_exit(proc):
    assert proc.returncode == 0, f"exit status {proc.returncode}; stderr:\n{proc.stderr}"
    assert "Fatal" not in proc.stderr and "FATAL" not in proc.stderr, proc.stderr


# -- item 6: a loop in a daemon thread when the interpreter exits -----------------------------

DAEMON_LOOPS = """
import socket, threading, time

running = []

def start(name, make_coro):
    ready = threading.Event()
    running.append(ready)

    def thread_main():
        loop = new_loop()
        loop.run_until_complete(make_coro(loop, ready))

    threading.Thread(target=thread_main, name=name, daemon=True).start()

async def idle(loop, ready):
    # Waits in the poller: it re-attaches only when the interpreter is gone.
    ready.set()
    await asyncio.sleep(3600)

async def short_waits(loop, ready):
    # Re-attaches after each short wait: some of them while the interpreter exits.
    ready.set()
    while True:
        await asyncio.sleep(0.0002)

async def busy(loop, ready):
    # Runs Python code all the time, which gives the lock up and takes it back.
    ready.set()
    while True:
        await asyncio.sleep(0)

async def blocking_callbacks(loop, ready):
    ready.set()
    while True:
        time.sleep(0.0005)
        await asyncio.sleep(0)

async def protocol_callbacks(loop, ready):
    # A protocol that blocks in data_received, ping-ponging bytes forever.
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            time.sleep(0.0005)
            self.transport.write(data)

    a, b = socket.socketpair()
    ta, _ = await loop.connect_accepted_socket(Echo, a)
    await loop.connect_accepted_socket(Echo, b)
    ta.write(b"ping")
    ready.set()
    await asyncio.sleep(3600)

async def exception_handler(loop, ready):
    def handler(loop, context):
        time.sleep(0.0005)

    def failing():
        loop.call_soon(failing)
        raise ValueError("reported to the handler")

    loop.set_exception_handler(handler)
    loop.call_soon(failing)
    ready.set()
    await asyncio.sleep(3600)

for coro in (idle, short_waits, busy, blocking_callbacks, protocol_callbacks,
             exception_handler):
    start(coro.__name__, coro)
for ready in running:
    ready.wait()
print("exiting")
"""


@pytest.mark.parametrize("attempt", range(6))
def test_interpreter_exits_cleanly_with_loops_running_in_daemon_threads(loop_kind, attempt):
    # CPython <= 3.13 ends each daemon thread with pthread_exit when it takes the lock back
    # during finalization; ferroloop used to abort ("FATAL: exception not rethrown") or
    # crash then. Several attempts: part of it is a race with the exit.
    proc = run_child(loop_kind, DAEMON_LOOPS)
    assert_clean_exit(proc)
    assert proc.stdout == "exiting\n"


# -- item 8: NaN, infinite and huge delays ----------------------------------------------------
# No other timer may be pending in these tests: asyncio's heap compares NaN false with
# everything, so there a NaN timer fires at once only when it is at the top of the heap
# (docs/compatibility.md). The per-test time limit catches a hang instead.

ASYNCIO_NAN_SELECT_FAILS = sys.version_info >= (3, 13)


def skip_nan_timer_on_new_asyncio(loop_kind):
    if loop_kind == "asyncio" and ASYNCIO_NAN_SELECT_FAILS:
        pytest.skip(
            "asyncio 3.13+ passes a NaN timeout to its selector, which raises ValueError "
            "(docs/compatibility.md)"
        )


def test_sleep_nan_returns_at_once_and_the_loop_stops(loop):
    if ASYNCIO_NAN_SELECT_FAILS:
        # asyncio.sleep itself refuses NaN from 3.13 on, whatever the loop.
        with pytest.raises(ValueError, match="NaN"):
            loop.run_until_complete(asyncio.sleep(nan, "done"))
    else:
        assert loop.run_until_complete(asyncio.sleep(nan, "done")) == "done"
    assert not loop.is_running()
    # The loop is still usable.
    assert loop.run_until_complete(asyncio.sleep(0, 7)) == 7


@pytest.mark.parametrize("schedule", ["call_later", "call_at"])
@pytest.mark.parametrize("when", [nan, -inf], ids=["nan", "-inf"])
def test_timer_with_nan_or_minus_inf_deadline_fires_at_once(loop, loop_kind, schedule, when):
    if math.isnan(when):
        skip_nan_timer_on_new_asyncio(loop_kind)
    fired = loop.create_future()
    handle = getattr(loop, schedule)(when, fired.set_result, "fired")
    assert loop.run_until_complete(fired) == "fired"
    assert not loop.is_running()
    if math.isnan(when):
        assert math.isnan(handle.when())
    else:
        assert handle.when() == -inf


@pytest.mark.parametrize("delay", [inf, 1e300, sys.float_info.max], ids=["inf", "1e300", "max"])
def test_timer_with_infinite_or_huge_delay_never_fires(loop, delay):
    fired = []
    handle = loop.call_later(delay, fired.append, "fired")

    async def spin():
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.001)

    loop.run_until_complete(asyncio.wait_for(spin(), FAR))
    assert fired == []
    assert handle.when() >= delay or handle.when() == inf
    handle.cancel()


def test_wait_for_nan_times_out_at_once(loop, loop_kind):
    skip_nan_timer_on_new_asyncio(loop_kind)

    async def main():
        never = loop.create_future()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(never, nan)
        return "timed out"

    assert loop.run_until_complete(main()) == "timed out"
    assert not loop.is_running()


def test_ssl_handshake_timeout_nan_aborts_the_handshake_at_once(loop, loop_kind):
    import ssl

    skip_nan_timer_on_new_asyncio(loop_kind)

    # A server that accepts and never answers: only the timeout ends the handshake.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def main():
        host, port = listener.getsockname()
        with pytest.raises((ConnectionAbortedError, TimeoutError, asyncio.TimeoutError)):
            await loop.create_connection(
                asyncio.Protocol, host, port, ssl=ctx, ssl_handshake_timeout=nan
            )

    try:
        loop.run_until_complete(main())
    finally:
        listener.close()
    assert not loop.is_running()


# -- item 3: native sock_* waits and other registrations of the same fd ----------------------


@pytest.fixture
def tcp_pair(loop):
    """A connected (client, server-side) pair of non-blocking TCP sockets on 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=FAR)
    conn, _ = listener.accept()
    listener.close()
    for s in (client, conn):
        s.setblocking(False)
    yield client, conn
    client.close()
    conn.close()


def fill_send_buffer(sock):
    """Sends until the kernel refuses more: the next send must wait for the peer."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    chunk = b"f" * 65536
    sent = 0
    while True:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            return sent


async def drain(loop, sock, n):
    got = 0
    while got < n:
        data = await loop.sock_recv(sock, 1 << 16)
        assert data, "EOF before everything arrived"
        got += len(data)
    return got


def test_sock_recv_wait_survives_add_writer_on_the_same_fd(loop, tcp_pair):
    client, conn = tcp_pair

    async def main():
        recv = loop.create_task(loop.sock_recv(client, 100))
        await asyncio.sleep(0)  # the recv now waits for data
        writable = loop.create_future()
        loop.add_writer(client.fileno(), lambda: writable.done() or writable.set_result(1))
        try:
            await writable
            conn.send(b"hello")
            return await recv
        finally:
            loop.remove_writer(client.fileno())

    assert loop.run_until_complete(asyncio.wait_for(main(), FAR)) == b"hello"


def test_sock_recv_wait_survives_sock_sendfile_from_another_task(loop, tcp_pair, tmp_path):
    client, conn = tcp_pair
    path = tmp_path / "blob"
    path.write_bytes(b"s" * (1 << 20))

    async def main():
        queued = fill_send_buffer(client)
        recv = loop.create_task(loop.sock_recv(client, 100))
        await asyncio.sleep(0)  # the recv now waits for data
        with open(path, "rb") as f:
            sendfile = loop.create_task(loop.sock_sendfile(client, f))
            await asyncio.sleep(0)  # the sendfile now waits for room
            conn.send(b"hello")
            got = await recv
            drained = loop.create_task(drain(loop, conn, queued + (1 << 20)))
            sent = await sendfile
            await drained
        return got, sent

    assert loop.run_until_complete(asyncio.wait_for(main(), FAR)) == (b"hello", 1 << 20)


def test_sock_waits_of_two_socket_objects_for_one_fd_both_complete(loop, tcp_pair):
    client, conn = tcp_pair
    twin = socket.socket(fileno=client.fileno())  # another object, the same fd
    payload = b"p" * (4 << 20)

    async def main():
        recv = loop.create_task(loop.sock_recv(client, 100))
        await asyncio.sleep(0)  # the recv now waits for data
        sendall = loop.create_task(loop.sock_sendall(twin, payload))
        await asyncio.sleep(0)  # the sendall now waits for room
        conn.send(b"hello")
        got = await recv
        drained = await drain(loop, conn, len(payload))
        await sendall
        return got, drained

    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), FAR)) == (b"hello", len(payload))
    finally:
        twin.detach()


def test_wait_of_a_closed_socket_never_touches_the_socket_reusing_its_fd(loop, loop_kind):
    if loop_kind == "asyncio":
        pytest.skip("asyncio's selector raises FileNotFoundError for the reused fd here")
    a, a_peer = socket.socketpair()
    for s in (a, a_peer):
        s.setblocking(False)
    fd = a.fileno()

    async def main():
        fill_send_buffer(a)
        stale = loop.create_task(loop.sock_sendall(a, b"stale" * 10000))
        await asyncio.sleep(0)  # waits for room that never comes
        a.close()
        a_peer.close()
        b, b_peer = socket.socketpair()
        try:
            if b.fileno() != fd:
                pytest.skip("the fd number was not reused")
            b.setblocking(False)
            b_peer.setblocking(False)
            recv = loop.create_task(loop.sock_recv(b, 100))
            await asyncio.sleep(0)  # b's recv and a's stale sendall now share the fd
            b_peer.send(b"fresh")
            assert await recv == b"fresh"
            with pytest.raises(OSError):
                await stale  # EBADF: its socket is closed
            await loop.sock_sendall(b, b"ack")
            assert await loop.sock_recv(b_peer, 100) == b"ack"  # nothing of a's
        finally:
            b.close()
            b_peer.close()

    loop.run_until_complete(asyncio.wait_for(main(), FAR))


# -- item 4: sock_* on a socket in blocking mode ----------------------------------------------
# asyncio calls the socket's own method, which waits without the interpreter lock. The peer
# below is a Python thread that can only run once the loop's thread lets the lock go: the
# switch interval is made huge, so only a wait without the lock gives it a turn. Holding
# the lock in the syscall deadlocked the process.

BLOCKING_SOCKET = """
import socket, sys, threading

sys.setswitchinterval(1000)
a, b = socket.socketpair()  # both in blocking mode
gate = threading.Lock()
gate.acquire()
PAYLOAD = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than the socket buffers hold

def peer(op):
    gate.acquire()  # released by the loop's thread just before the operation
    if op == "sendall":
        got = bytearray()
        while len(got) < len(PAYLOAD):
            got += b.recv(1 << 20)
        assert got == PAYLOAD
    else:
        b.sendall(b"hello")

async def main(loop, op):
    gate.release()
    if op == "recv":
        return await loop.sock_recv(a, 100)
    if op == "recv_into":
        buf = bytearray(100)
        n = await loop.sock_recv_into(a, buf)
        return bytes(buf[:n])
    await loop.sock_sendall(a, PAYLOAD)
    return b"sent"

op = sys.argv[1]
t = threading.Thread(target=peer, args=(op,))
t.start()
loop = new_loop()
print(loop.run_until_complete(main(loop, op)).decode())
t.join()
loop.close()
"""


@pytest.mark.parametrize("op", ["recv", "recv_into", "sendall"])
def test_sock_operation_on_a_blocking_socket_waits_without_the_lock(loop_kind, op):
    proc = run_child(loop_kind, BLOCKING_SOCKET.replace("sys.argv[1]", repr(op)))
    assert_clean_exit(proc)
    assert proc.stdout == ("sent\n" if op == "sendall" else "hello\n")


@pytest.mark.parametrize("op", ["sock_recv", "sock_recv_into", "sock_sendall"])
def test_sock_operation_on_a_blocking_socket_is_refused_in_debug_mode(loop, op):
    a, b = socket.socketpair()
    loop.set_debug(True)
    args = {"sock_recv": (100,), "sock_recv_into": (bytearray(10),), "sock_sendall": (b"x",)}

    async def main():
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            await getattr(loop, op)(a, *args[op])

    try:
        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()


def test_sock_recv_on_a_socket_with_a_timeout_times_out_like_the_socket(loop):
    # A timeout socket waits (up to its timeout) in its own method, as asyncio calls it.
    a, b = socket.socketpair()
    a.settimeout(0.05)

    async def main():
        with pytest.raises(TimeoutError):
            await loop.sock_recv(a, 100)

    try:
        loop.run_until_complete(asyncio.wait_for(main(), FAR))
    finally:
        a.close()
        b.close()


# -- item 7: sizes from the caller -----------------------------------------------------------


IMPOSSIBLE_RECV = """
import socket

a, b = socket.socketpair()
a.setblocking(False)
b.send(b"x")

async def main(loop):
    try:
        await loop.sock_recv(a, 2**62)
    except MemoryError:
        print("MemoryError")
    # Nothing was lost: the byte is still there.
    print((await loop.sock_recv(a, 10)).decode())

loop = new_loop()
loop.run_until_complete(main(loop))
loop.close()
"""


def test_sock_recv_of_an_impossible_size_raises_memory_error(loop_kind):
    # A child process: the failure this guards against aborts the process.
    proc = run_child(loop_kind, IMPOSSIBLE_RECV)
    assert_clean_exit(proc)
    assert proc.stdout == "MemoryError\nx\n"


def test_sock_recv_of_a_size_too_large_for_the_platform_raises_overflow_error(loop, tcp_pair):
    client, _ = tcp_pair

    async def main():
        with pytest.raises(OverflowError):
            await loop.sock_recv(client, 2**64)

    loop.run_until_complete(asyncio.wait_for(main(), FAR))


# -- item 10: subinterpreters ------------------------------------------------------------------

SUBINTERPRETER = """
import sys

try:
    import _interpreters as interpreters
except ImportError:
    try:
        import _xxsubinterpreters as interpreters
    except ImportError:
        print("no subinterpreters")
        sys.exit(0)


def new_interpreter():
    # A legacy (shared-GIL) subinterpreter: the kind that loads single-phase extensions.
    for args, kwargs in ((("legacy",), {}), ((), {"isolated": False}), ((), {})):
        try:
            return interpreters.create(*args, **kwargs)
        except (TypeError, ValueError):
            continue
    raise RuntimeError("cannot make a subinterpreter")


def run_in(interp, code):
    run = getattr(interpreters, "run_string", None) or interpreters.exec
    try:
        failure = run(interp, code)
    except Exception as exc:  # 3.12: RunFailedError
        return str(exc)
    return failure and failure.formatted


SUB = '''
import asyncio
from ferroloop import new_event_loop
loop = new_event_loop()
handle = loop.call_soon(int)
repr(handle), isinstance(handle, asyncio.Handle)
loop.run_until_complete(asyncio.sleep(0))
loop.close()
'''

if sys.argv[1] == "main-first":
    import ferroloop  # noqa: F401
interp = new_interpreter()
failure = run_in(interp, SUB)
interpreters.destroy(interp)
print("sub refused" if failure and "ImportError" in failure else f"sub: {failure!r}")

# The main interpreter's loop and handles work as if nothing happened.
loop = new_loop()
handle = loop.call_soon(int)
print(repr(handle), isinstance(handle, asyncio.Handle))
loop.run_until_complete(asyncio.sleep(0))
loop.close()
"""


@pytest.mark.ferroloop_only
@pytest.mark.parametrize("order", ["main-first", "sub-first"])
def test_subinterpreter_import_is_refused_and_leaves_the_main_interpreter_intact(order):
    proc = run_child("ferroloop", SUBINTERPRETER.replace("sys.argv[1]", repr(order)))
    assert_clean_exit(proc)
    if proc.stdout == "no subinterpreters\n":
        pytest.skip("this Python has no subinterpreter module")
    assert proc.stdout == "sub refused\n<Handle int()> True\n"


# -- item 9: Python code that re-enters a transport while the loop is inside it ---------------


class ReenteringKey(str):
    """An extra-info key whose hash uses the transport (as any __hash__ may)."""

    transport = None

    def __hash__(self):
        self.transport.pause_reading()
        self.transport.resume_reading()
        return str.__hash__(self)

    def __eq__(self, other):
        return str.__eq__(self, other)


def test_get_extra_info_key_whose_hash_uses_the_transport(loop, tcp_pair):
    client, _ = tcp_pair

    async def main():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=client)
        key = ReenteringKey("no such key")
        key.transport = transport
        try:
            return transport.get_extra_info(key, "default")
        finally:
            transport.close()

    assert loop.run_until_complete(asyncio.wait_for(main(), FAR)) == "default"


def test_sendto_address_whose_eq_uses_the_transport(loop):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(FAR)
    peer = receiver.getsockname()
    used = []

    class Address(tuple):
        transport = None

        def __eq__(self, other):
            used.append(self.transport.get_write_buffer_size())
            return tuple.__eq__(self, other)

        __hash__ = tuple.__hash__

    async def main():
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=peer
        )
        address = Address(peer)
        address.transport = transport
        try:
            transport.sendto(b"datagram", address)
        finally:
            transport.close()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), FAR))
        assert receiver.recv(100) == b"datagram"
    finally:
        receiver.close()
    assert used and set(used) == {0}
