"""add_reader / add_writer / remove_reader / remove_writer."""

import contextvars
import os
import socket
import time

import pytest

var = contextvars.ContextVar("var", default="unset")

FAR = 10


@pytest.mark.parametrize("as_object", [False, True], ids=["fd", "fileobj"])
def test_reader_is_called_when_data_arrives(loop, pair, as_object):
    r, w = pair
    target = r if as_object else r.fileno()
    received = []

    def on_readable(tag):
        received.append((tag, r.recv(100)))
        assert loop.remove_reader(target)
        loop.stop()

    loop.add_reader(target, on_readable, "tag")
    loop.call_soon(w.send, b"ping")
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert received == [("tag", b"ping")]


def test_reader_registered_with_an_object_can_be_removed_by_fd(loop, pair):
    r, _ = pair
    loop.add_reader(r, print)
    assert loop.remove_reader(r.fileno()) is True
    assert loop.remove_reader(r) is False


@pytest.mark.parametrize("as_object", [False, True], ids=["fd", "fileobj"])
def test_writer_is_called_when_writable(loop, pair, as_object):
    _, w = pair
    target = w if as_object else w.fileno()
    calls = []

    def on_writable():
        calls.append(w.send(b"x"))
        assert loop.remove_writer(target)
        loop.stop()

    loop.add_writer(target, on_writable)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == [1]


def test_reader_is_level_triggered(loop, pair):
    r, w = pair
    iterations = []
    calls = []

    def tick():
        iterations.append(len(calls))
        loop.call_soon(tick)

    def on_readable():
        calls.append(len(iterations))
        if len(calls) == 3:
            assert r.recv(100) == b"data"
            loop.remove_reader(r)
            loop.stop()

    w.send(b"data")
    loop.call_soon(tick)
    loop.add_reader(r, on_readable)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert len(calls) == 3
    # Called again although nothing was read, once per iteration.
    assert calls[1] > calls[0] and calls[2] > calls[1]


def test_remove_reader_and_writer_return_whether_something_was_removed(loop, pair):
    r, w = pair
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(w) is False
    loop.add_reader(r, print)
    loop.add_writer(w, print)
    assert loop.remove_writer(r) is False
    assert loop.remove_reader(w) is False
    assert loop.remove_reader(r) is True
    assert loop.remove_writer(w) is True
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(w) is False


def test_removed_reader_is_not_called(loop, pair):
    r, w = pair
    calls = []
    loop.add_reader(r, calls.append, "reader")
    w.send(b"x")
    loop.remove_reader(r)
    for _ in range(3):  # each stop()+run_forever() is one iteration that polls for I/O
        loop.stop()
        loop.run_forever()
    assert calls == []


def test_replacing_a_reader_calls_only_the_new_one(loop, pair):
    r, w = pair
    calls = []

    def new_reader():
        calls.append("new")
        r.recv(100)
        loop.remove_reader(r)
        loop.stop()

    loop.add_reader(r, calls.append, "old")
    loop.add_reader(r, new_reader)
    w.send(b"x")
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == ["new"]


def test_reader_and_writer_on_the_same_fd_are_independent(loop, pair):
    r, w = pair
    calls = []

    def on_writable():
        calls.append("writer")
        loop.remove_writer(r)
        loop.stop()

    loop.add_reader(r, calls.append, "reader")
    loop.add_writer(r, on_writable)
    assert loop.remove_reader(r) is True
    w.send(b"would make the removed reader ready")
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == ["writer"]


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
@pytest.mark.parametrize("bad", [-1, "not a file", object()], ids=["negative", "str", "object"])
def test_invalid_file_descriptor_raises_value_error(loop, method, bad):
    args = (bad, print) if method.startswith("add") else (bad,)
    with pytest.raises(ValueError):
        getattr(loop, method)(*args)


def test_registering_a_closed_fd_raises_os_error(loop):
    sock = socket.socket()
    fd = sock.fileno()
    sock.close()
    with pytest.raises(OSError):
        loop.add_reader(fd, print)
    assert loop.remove_reader(fd) is False


def test_add_reader_on_a_closed_loop_raises(loop, pair):
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.add_reader(pair[0], print)


def test_fd_closed_and_reused_in_the_same_batch_gets_no_stale_event(loop):
    """Two readers are ready in one batch.  Whichever runs first unregisters and
    closes the other's socket and puts a fresh, empty socket at the same fd
    number.  Neither the old callback nor the new owner's may be called with
    the stale readiness; the new owner must still see its own data later."""
    a_r, a_w = socket.socketpair()
    b_r, b_w = socket.socketpair()
    fresh_r, fresh_w = socket.socketpair()
    for sock in (a_r, a_w, b_r, b_w, fresh_r, fresh_w):
        sock.setblocking(False)
    sockets = {"a": a_r, "b": b_r}
    events = []
    reused_fd = []

    def on_new_owner():
        try:
            data = os.read(reused_fd[0], 100)
        except BlockingIOError:
            events.append("stale event delivered to new owner")
            return
        events.append(("new owner read", data))
        loop.remove_reader(reused_fd[0])
        loop.stop()

    def write_fresh_data(iterations_left):
        if iterations_left:
            loop.call_soon(write_fresh_data, iterations_left - 1)
        else:
            fresh_w.send(b"fresh")

    def on_ready(name):
        if reused_fd:
            events.append(f"old callback {name} called after its fd was removed")
            return
        events.append(f"{name} first")
        mine, other = sockets[name], sockets["b" if name == "a" else "a"]
        loop.remove_reader(mine)
        fd = other.fileno()
        loop.remove_reader(fd)
        other.close()
        os.dup2(fresh_r.fileno(), fd)
        reused_fd.append(fd)
        loop.add_reader(fd, on_new_owner)
        # Only after a few idle iterations does the new owner get real data.
        loop.call_soon(write_fresh_data, 3)

    a_w.send(b"a")
    b_w.send(b"b")
    loop.add_reader(a_r, on_ready, "a")
    loop.add_reader(b_r, on_ready, "b")
    fallback = loop.call_later(FAR, loop.stop)
    try:
        loop.run_forever()
    finally:
        fallback.cancel()
        if reused_fd:
            os.close(reused_fd[0])
        for sock in (a_r, a_w, b_r, b_w, fresh_r, fresh_w):
            sock.close()
    assert len(events) == 2, events
    assert events[0] in ("a first", "b first")
    assert events[1] == ("new owner read", b"fresh")


def test_reader_is_called_at_peer_eof(loop, pair):
    r, w = pair
    received = []

    def on_readable():
        received.append(r.recv(100))
        loop.remove_reader(r)
        loop.stop()

    loop.add_reader(r, on_readable)
    loop.call_soon(w.close)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert received == [b""]


def test_writer_waits_while_a_pipe_is_full(loop):
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    try:
        while True:  # fill the pipe
            try:
                os.write(wfd, b"x" * 65536)
            except BlockingIOError:
                break
        calls = []

        def on_writable():
            calls.append(os.write(wfd, b"y"))
            loop.remove_writer(wfd)
            loop.stop()

        loop.add_writer(wfd, on_writable)
        for _ in range(3):  # the pipe is full: not writable
            loop.stop()
            loop.run_forever()
        assert calls == []

        while True:  # drain it
            try:
                os.read(rfd, 1 << 20)
            except BlockingIOError:
                break
        fallback = loop.call_later(FAR, loop.stop)
        loop.run_forever()
        fallback.cancel()
        assert calls == [1]
    finally:
        os.close(rfd)
        os.close(wfd)


def test_remove_reader_after_the_fd_was_closed(loop, pair):
    r, _ = pair
    fd = r.fileno()
    loop.add_reader(fd, print)
    r.close()
    loop.stop()
    loop.run_forever()
    assert loop.remove_reader(fd) is True
    assert loop.remove_reader(fd) is False


def test_many_readers_in_one_batch(loop):
    pairs = [socket.socketpair() for _ in range(300)]
    try:
        seen = set()

        def on_readable(i, sock):
            assert sock.recv(10) == b"%d" % i
            loop.remove_reader(sock)
            seen.add(i)
            if len(seen) == len(pairs):
                loop.stop()

        for i, (r, w) in enumerate(pairs):
            r.setblocking(False)
            loop.add_reader(r, on_readable, i, r)
            w.send(b"%d" % i)
        fallback = loop.call_later(FAR, loop.stop)
        loop.run_forever()
        fallback.cancel()
        assert seen == set(range(len(pairs)))
    finally:
        for r, w in pairs:
            r.close()
            w.close()


def test_reader_runs_in_the_context_copied_at_add_reader_time(loop, pair):
    r, w = pair
    seen = []

    def on_readable():
        seen.append(var.get())
        r.recv(100)
        loop.remove_reader(r)
        loop.stop()

    token = var.set("at add_reader")
    try:
        loop.add_reader(r, on_readable)
        var.set("later")
        w.send(b"x")
        fallback = loop.call_later(FAR, loop.stop)
        loop.run_forever()
        fallback.cancel()
    finally:
        var.reset(token)
    assert seen == ["at add_reader"]


def test_idle_loop_with_a_registered_reader_does_not_busy_wait(loop, pair):
    r, _ = pair
    loop.add_reader(r, print)
    loop.call_later(0.2, loop.stop)
    cpu = time.process_time()
    loop.run_forever()
    cpu = time.process_time() - cpu
    loop.remove_reader(r)
    assert cpu < 0.1, f"the loop used {cpu:.3f} s of CPU while waiting 0.2 s"


def test_order_within_an_iteration_is_ready_callbacks_then_io_then_due_timers(loop, pair):
    r, w = pair
    order = []
    w.send(b"x")
    loop.call_at(loop.time() - 1, order.append, "timer")
    loop.add_reader(r, lambda: (order.append("reader"), loop.remove_reader(r)))
    loop.call_soon(order.append, "soon")
    loop.stop()
    loop.run_forever()
    assert order == ["soon", "reader", "timer"]
