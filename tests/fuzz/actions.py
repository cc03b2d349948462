"""The fuzzer's actions (fuzz_loop.py): each takes the run's state and a random source,
makes one (or a few) calls on the loop with random, often hostile arguments, and returns a
result to compare or raises. ``ACTIONS`` says which are deterministic: their outcome
(result or exception class) must be the same on ferroloop and asyncio."""

from __future__ import annotations

import array
import asyncio
import contextlib
import contextvars
import gc
import math
import os
import socket
import threading

from hostile import (
    Fileno,
    FuzzBufferedProtocol,
    FuzzDatagramProtocol,
    FuzzError,
    FuzzInterrupt,
    FuzzProtocol,
    Reentrant,
    cb_exit,
    cb_interrupt,
    cb_plain,
    cb_raise,
    odd_buffer,
)

# Each action takes (fuzz, rng) and is either deterministic (its outcome is compared with
# asyncio's) or timing-dependent.


def callback(rng, fuzz):
    r = rng.random()
    if r < 0.6:
        return cb_plain
    if r < 0.8:
        return cb_raise
    if r < 0.83:
        return cb_interrupt
    if r < 0.85:
        return cb_exit
    if r < 0.9:
        return lambda: fuzz.loop.stop()
    if r < 0.95:
        return gc.collect
    return rng.choice([None, 1, "x"])  # not callable: fails when it runs


def callback_args(rng, fuzz):
    args = []
    for _ in range(rng.randrange(3)):
        args.append(rng.choice([1, "a", None]) if rng.random() < 0.7 else Reentrant(fuzz, rng))
    return args


def context(rng):
    r = rng.random()
    if r < 0.7:
        return {}
    return {"context": contextvars.copy_context()}


DELAYS = [
    0,
    0.0,
    0.001,
    0.01,
    -1,
    -1e300,
    math.nan,
    math.inf,
    -math.inf,
    1e300,
    2**1000,
    True,
    10**9,
    "1",
    None,
]


def act_call_soon(f, rng):
    h = f.loop.call_soon(callback(rng, f), *callback_args(rng, f), **context(rng))
    f.handles.append(h)


def act_call_later(f, rng):
    h = f.loop.call_later(f.when(rng.choice(DELAYS)), callback(rng, f), *callback_args(rng, f))
    f.handles.append(h)


def act_call_at(f, rng):
    when = rng.choice([f.loop.time(), f.loop.time() + 0.005, math.nan, math.inf, -math.inf, 0])
    h = f.loop.call_at(f.when(when), callback(rng, f), *callback_args(rng, f), **context(rng))
    f.handles.append(h)


def act_cancel_handle(f, rng):
    h = f.pick(rng, f.handles)
    if h is not None:
        h.cancel()
        h.cancel()
        return h.cancelled()


def act_handle_when(f, rng):
    h = f.pick(rng, f.handles)
    if isinstance(h, asyncio.TimerHandle):
        h.when()


def act_call_soon_threadsafe_here(f, rng):
    f.handles.append(f.loop.call_soon_threadsafe(callback(rng, f), *callback_args(rng, f)))


def fd_spec(f, rng):
    """A file descriptor argument (and the pipe it belongs to, to close afterwards)."""
    r = rng.randrange(14)
    if r < 4:
        rfd, wfd = os.pipe()
        return (rfd if r < 3 else Fileno(rfd)), (rfd, wfd)
    bad = [
        -1,
        2**64,
        999_999,
        "3",
        Fileno(FuzzError("fileno")),
        Fileno(FuzzInterrupt("fileno")),
        Fileno("x"),
        Fileno(-5),
        Fileno(2**70),
        Fileno(999_999.5),
    ]
    return bad[r - 4], None


def known_issue(f, fd):
    """Issue 10 item 17 (open): ferroloop turns any exception from fileno() into
    ValueError (asyncio lets all but AttributeError, TypeError and ValueError through),
    refuses a fileno() that is not an int (asyncio takes int() of it: a float works), and
    refuses fds beyond C int range with OverflowError in remove_* (asyncio: False)."""
    if f.known:
        return
    if isinstance(fd, Fileno):
        fd = fd.result
        if isinstance(fd, float):
            f.loose = True
    if isinstance(fd, BaseException) or (isinstance(fd, int) and fd > 2**31):
        f.loose = True


def act_reader_roundtrip(f, rng):
    """add_reader/add_writer then remove them, on a good or bad fd."""
    fd, pipe = fd_spec(f, rng)
    known_issue(f, fd)
    try:
        side = rng.choice(["reader", "writer"])
        add = getattr(f.loop, f"add_{side}")
        remove = getattr(f.loop, f"remove_{side}")
        results = []
        try:
            add(fd, cb_plain)
        except BaseException as exc:
            results.append(type(exc).__name__)
            f.check("add", exc)
        if rng.random() < 0.5:
            try:
                add(fd, cb_plain)
            except BaseException as exc:
                results.append(type(exc).__name__)
        for _ in range(2):
            try:
                results.append(remove(fd))
            except BaseException as exc:
                results.append(type(exc).__name__)
                f.check("remove", exc)
        return results
    finally:
        if pipe is not None:
            os.close(pipe[0])
            os.close(pipe[1])


def act_remove_odd(f, rng):
    """remove_reader/remove_writer of fds nobody registered."""
    fd = rng.choice([-1, 2**64, 999_999, "x", Fileno(-1), Fileno(FuzzError("fileno"))])
    known_issue(f, fd)
    return getattr(f.loop, rng.choice(["remove_reader", "remove_writer"]))(fd)


def act_devnull_reader(f, rng):
    """epoll refuses a regular file (EPERM), asyncio too."""
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        f.loop.add_reader(fd, cb_plain)
    finally:
        os.close(fd)


async def sock_arg(f, rng):
    """A socket-ish argument for sock_* and the peer that can send to it, if any."""
    r = rng.randrange(8)
    if r == 0:
        return object(), None
    if r == 1:
        a, b = f.socketpair()
        a.close()
        return a, b
    if r == 2:
        rfd, wfd = os.pipe()
        f.own(os.fdopen(rfd, "rb", buffering=0))
        f.own(os.fdopen(wfd, "wb", buffering=0))
        return rfd, None
    if r == 3:
        a, b = f.socketpair(blocking=True)
        a.settimeout(0.01)  # blocking, with a timeout: its own recv raises TimeoutError
        return a, b
    if r == 4:
        a, b = f.socketpair(blocking=True)
        b.send(b"ready")  # blocking, but what it waits for is there
        return a, b
    # Never a socket with nothing to read: asyncio's outcome would depend on whether an
    # earlier fd with the same number left a stale registration (a wait is exercised by
    # the timing-dependent actions).
    a, b = f.socketpair()
    if r == 5:
        b.send(b"data!")
    elif r == 6:
        b.close()
    else:
        b.send(b"more" * 5000)
    return a, b


def recv_size(rng):
    return rng.choice([0, 1, 5, 100, 65536, -1, 2**62, 2**64, "x", None])


async def act_sock_recv(f, rng):
    sock, _peer = await sock_arg(f, rng)
    data = await asyncio.wait_for(f.loop.sock_recv(sock, recv_size(rng)), 10)
    return type(data).__name__


async def act_sock_recv_into(f, rng):
    sock, _peer = await sock_arg(f, rng)
    buf = rng.choice(
        [
            bytearray(10),
            bytearray(0),
            memoryview(bytearray(64)).cast("Q"),
            array.array("i", [0] * 4),
            b"readonly",
            memoryview(b"readonly"),
            "str",
        ]
    )
    return await asyncio.wait_for(f.loop.sock_recv_into(sock, buf), 10)


async def act_sock_sendall(f, rng):
    sock, _peer = await sock_arg(f, rng)
    data = odd_buffer(rng)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        if len(data) > 4096:
            data = data[:4096]  # the peer never reads: stay within the socket buffer
        if memoryview(data).itemsize != 1:
            # asyncio counts items as bytes here and never finishes (ferroloop sends the
            # bytes): not comparable.
            f.loose = True
    return await asyncio.wait_for(f.loop.sock_sendall(sock, data), 10)


async def act_sock_accept_connect(f, rng):
    sock, _peer = await sock_arg(f, rng)
    if rng.random() < 0.5:
        return await asyncio.wait_for(f.loop.sock_accept(sock), 10)
    return await asyncio.wait_for(f.loop.sock_connect(sock, rng.choice(["", 1, ("x",)])), 10)


def act_misc_api(f, rng):
    r = rng.randrange(8)
    loop = f.loop
    if r == 0:
        loop.create_task(rng.choice([None, 1, cb_plain]))
    elif r == 1:
        loop.run_until_complete(loop.create_future())
    elif r == 2:
        loop.set_exception_handler(rng.choice(["x", 1]))
    elif r == 3:
        loop.set_debug(rng.random() < 0.3)
        return loop.get_debug()
    elif r == 4:
        return (loop.is_running(), loop.is_closed())
    elif r == 5:
        fut = loop.create_future()
        fut.set_result(1)
        fut.set_result(2)
    elif r == 6:
        loop.run_forever()
    else:
        loop.close()


def act_closed_loop_calls(f, rng):
    """What every API says once the loop is closed (run between phases)."""
    loop = f.loop
    return getattr(loop, rng.choice(["call_soon", "call_later", "call_soon_threadsafe"]))(
        *([0] if rng.random() < 0.5 else []), cb_plain
    )


# timing-dependent actions


async def act_tcp_pair(f, rng):
    proto_cls = rng.choice([FuzzProtocol, FuzzProtocol, FuzzBufferedProtocol])
    seed = rng.random()
    if not f.servers or rng.random() < 0.2:
        srv = await f.loop.create_server(
            lambda: proto_cls(f, seed), "127.0.0.1", 0, backlog=rng.choice([1, 10])
        )
        f.servers.append(srv)
    srv = f.pick(rng, f.servers)
    if not srv.sockets:
        return
    port = srv.sockets[0].getsockname()[1]
    t, _p = await asyncio.wait_for(
        f.loop.create_connection(lambda: proto_cls(f, seed + 1), "127.0.0.1", port), 10
    )
    f.transports.append(t)


async def act_unix_pair(f, rng):
    a, b = socket.socketpair()
    cls = rng.choice([FuzzProtocol, FuzzBufferedProtocol])
    t1, _ = await asyncio.wait_for(
        f.loop.create_connection(lambda: cls(f, rng.random()), sock=a), 10
    )
    t2, _ = await asyncio.wait_for(
        f.loop.connect_accepted_socket(lambda: cls(f, rng.random()), sock=b), 10
    )
    f.transports += [t1, t2]
    if rng.random() < 0.2:
        # The caller closes the transport's socket under it (then the transport, which
        # asyncio would otherwise keep counting as the owner of the fd number).
        a.close()
        t1.close()


async def act_datagram(f, rng):
    kw = {"local_addr": ("127.0.0.1", 0)}
    others = [t for t in f.transports if hasattr(t, "sendto") and not t.is_closing()]
    if others and rng.random() < 0.5:
        addr = f.pick(rng, others).get_extra_info("sockname")
        if addr is not None:
            kw["remote_addr"] = addr
    t, _ = await asyncio.wait_for(
        f.loop.create_datagram_endpoint(lambda: FuzzDatagramProtocol(f, rng.random()), **kw), 10
    )
    f.transports.append(t)


async def act_pipe_transports(f, rng):
    """A pipe with a read-pipe transport at one end and a write-pipe one at the other."""
    rfd, wfd = os.pipe()
    rpipe = os.fdopen(rfd, "rb", buffering=0)
    wpipe = os.fdopen(wfd, "wb", buffering=0)
    try:
        rt, _ = await asyncio.wait_for(
            f.loop.connect_read_pipe(lambda: FuzzProtocol(f, rng.random()), rpipe), 10
        )
    except BaseException:
        rpipe.close()
        wpipe.close()
        raise
    f.transports.append(rt)
    try:
        wt, _ = await asyncio.wait_for(
            f.loop.connect_write_pipe(lambda: FuzzProtocol(f, rng.random()), wpipe), 10
        )
    except BaseException:
        wpipe.close()
        raise
    f.transports.append(wt)


def act_transport_op(f, rng):
    t = f.pick(rng, f.transports)
    if t is None:
        return
    op = rng.randrange(16)
    if op < 4:
        if hasattr(t, "sendto"):
            port = rng.choice([9, 0, -1, 70000])
            addr = rng.choice(
                [
                    None,
                    ("127.0.0.1", port),
                    ("::1", 9),
                    "garbage",
                    ("127.0.0.1", Reentrant(f, rng, t)),
                    Reentrant(f, rng, t),
                ]
            )
            t.sendto(odd_buffer(rng), addr)
        else:
            t.write(odd_buffer(rng, big=True))
    elif op == 4:
        t.writelines([odd_buffer(rng) for _ in range(rng.randrange(4))])
    elif op == 5:
        t.write_eof()
    elif op == 6:
        t.pause_reading()
    elif op == 7:
        t.resume_reading()
    elif op == 8:
        high = rng.choice([None, 0, 1, 100, -1, 2**70, "x"])
        low = rng.choice([None, 0, 50, 200, -1])
        t.set_write_buffer_limits(high, low)
    elif op == 9:
        key = rng.choice(["peername", "socket", "nope", Reentrant(f, rng, t), ["unhashable"]])
        t.get_extra_info(key, None)
    elif op == 10:
        t.close()
    elif op == 11:
        t.abort()
    elif op == 12:
        (t.is_closing(), t.get_write_buffer_size(), t.is_reading(), t.can_write_eof())
    elif op == 13:
        t.set_protocol(rng.choice([FuzzProtocol(f, rng.random()), FuzzBufferedProtocol(f, 1)]))
    elif op == 14:
        t.get_write_buffer_limits()
    else:
        t.get_protocol()


def act_pipe_reader(f, rng):
    """A reader on a pipe that a later action fills or closes."""
    if not f.pipes or rng.random() < 0.3:
        rfd, wfd = os.pipe()
        # Both ends non-blocking: a reader may be called when its fd is not readable any
        # more, on both loops (a handle left queued when a KeyboardInterrupt escaped is
        # queued again by the next poll, and runs twice).
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        f.pipes.append([rfd, wfd])
    p = f.pick(rng, f.pipes)
    if p[0] < 0:
        return
    r = rng.randrange(5)
    if r == 0:
        once = rng.random() < 0.5

        def on_readable(p=p, once=once):
            if p[0] >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.read(p[0], 100)
                if once:
                    f.loop.remove_reader(p[0])

        f.loop.add_reader(p[0], on_readable)
    elif r == 1:
        os.write(p[1], b"x" * rng.choice([1, 100]))
    elif r == 2:
        f.loop.add_writer(p[1], rng.choice([cb_plain, cb_raise]))
    elif r == 3:
        # Closed without removing the reader first; the number may be reused at once.
        # (removed after the close: asyncio's selector would otherwise keep a stale key
        # for the number, which makes its later registrations of that number fail)
        rfd, wfd = p
        p[0] = p[1] = -1
        os.close(rfd)
        os.close(wfd)
        f.loop.remove_reader(rfd)
        f.loop.remove_writer(wfd)
    else:
        f.loop.remove_reader(p[0])


def act_threads(f, rng):
    n = rng.randrange(1, 50)

    def run(loop=f.loop):
        for _ in range(n):
            try:
                loop.call_soon_threadsafe(cb_plain)
            except RuntimeError:
                return  # closed
            except BaseException as exc:
                f.check("call_soon_threadsafe (thread)", exc)
                return

    t = threading.Thread(target=run)
    t.start()
    f.threads.append(t)


async def act_sock_race(f, rng):
    """A sock_recv whose socket is closed (or whose task is cancelled) while it waits."""
    a, b = f.socketpair()
    op = f.loop.create_task(f.loop.sock_recv(a, 100))
    f.tasks.append(op)
    await asyncio.sleep(0)
    r = rng.randrange(4)
    if r == 0:
        a.close()
    elif r == 1:
        op.cancel()
    elif r == 2:
        b.send(b"hi")
    else:
        f.loop.call_soon(a.close)
    try:
        await asyncio.wait_for(asyncio.shield(op), 0.05)
    except asyncio.TimeoutError:
        # Closing the socket does not complete asyncio's wait either; cancelling it
        # removes its registration (before the fd number can be reused).
        op.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)


async def act_sleep(f, rng):
    await asyncio.sleep(rng.choice([0, 0, 0, 0.001, 0.005]))


def act_gc(f, rng):
    gc.collect()


def act_stop(f, rng):
    f.loop.stop()


ACTIONS = {
    # name: (function, deterministic, weight)
    "call_soon": (act_call_soon, True, 8),
    "call_later": (act_call_later, True, 6),
    "call_at": (act_call_at, True, 3),
    "call_soon_threadsafe": (act_call_soon_threadsafe_here, True, 2),
    "cancel_handle": (act_cancel_handle, True, 4),
    "handle_when": (act_handle_when, True, 1),
    "reader_roundtrip": (act_reader_roundtrip, True, 5),
    "remove_odd": (act_remove_odd, True, 2),
    "devnull_reader": (act_devnull_reader, True, 1),
    "sock_recv": (act_sock_recv, True, 3),
    "sock_recv_into": (act_sock_recv_into, True, 3),
    "sock_sendall": (act_sock_sendall, True, 3),
    "sock_accept_connect": (act_sock_accept_connect, True, 1),
    "misc_api": (act_misc_api, True, 2),
    "tcp_pair": (act_tcp_pair, False, 3),
    "unix_pair": (act_unix_pair, False, 2),
    "datagram": (act_datagram, False, 2),
    "pipe_transports": (act_pipe_transports, False, 1),
    "transport_op": (act_transport_op, False, 14),
    "pipe_reader": (act_pipe_reader, False, 4),
    "threads": (act_threads, False, 1),
    "sock_race": (act_sock_race, False, 2),
    "sleep": (act_sleep, False, 6),
    "gc": (act_gc, False, 1),
    "stop": (act_stop, False, 1),
}
NAMES = sorted(ACTIONS)
WEIGHTS = [ACTIONS[n][2] for n in NAMES]
