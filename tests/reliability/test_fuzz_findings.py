"""Defects found by the fuzzer (tests/fuzz/fuzz_loop.py, ``make fuzz``), one test each.

Each test body runs on ferroloop and on stdlib asyncio (the reference).
"""

from __future__ import annotations

import pytest
from _netkit import run

EMPTY_BUFFERS = [b"", bytearray(), memoryview(b"")]


@pytest.mark.parametrize("data", EMPTY_BUFFERS, ids=["bytes", "bytearray", "memoryview"])
def test_sock_sendall_of_nothing_on_a_closed_socket_fails(loop, pair, data):
    # socket.send(b"") still makes the syscall: a closed socket says EBADF.
    a, _ = pair
    a.close()
    with pytest.raises(OSError) as info:
        run(loop, loop.sock_sendall(a, data))
    assert type(info.value) is OSError


@pytest.mark.parametrize("data", EMPTY_BUFFERS, ids=["bytes", "bytearray", "memoryview"])
def test_sock_sendall_of_nothing_to_a_closed_peer_fails(loop, pair, data):
    a, b = pair
    b.close()
    with pytest.raises(BrokenPipeError):
        run(loop, loop.sock_sendall(a, data))


def test_sock_sendall_of_nothing_on_a_good_socket_succeeds(loop, pair):
    a, b = pair
    assert run(loop, loop.sock_sendall(a, b"")) is None
    run(loop, loop.sock_sendall(a, b"after"))
    assert b.recv(100) == b"after"


def test_sock_recv_into_an_empty_buffer_makes_no_syscall(loop, pair):
    # socket.recv_into(bytearray()) returns 0 at once, even on a closed socket.
    a, _ = pair
    assert run(loop, loop.sock_recv_into(a, bytearray())) == 0
    a.close()
    assert run(loop, loop.sock_recv_into(a, bytearray())) == 0
