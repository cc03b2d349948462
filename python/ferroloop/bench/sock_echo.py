"""TCP echo over ``loop.sock_recv`` / ``loop.sock_sendall``, driven by a fixed load generator.

The server runs on the contestant loop in its own process, pinned to the first CPU: it accepts
with ``loop.sock_accept`` and echoes with ``loop.sock_recv(conn, 65536)`` / ``loop.sock_sendall``.
The load generator, the verification of every echoed byte and the measured window are shared
with the other echo workloads (see ``echo.py``).

A deliberately broken server (``corrupt="flip"`` flips one byte per connection, ``"drop"`` drops
one) must be rejected: :func:`selftest` checks that it is.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from . import echo
from .echo import CONNECTIONS, RECV_SIZE
from .registry import Measurement, Settings, Workload

# --------------------------------------------------------------------------- server (child)


async def _serve(loop: asyncio.AbstractEventLoop, listener: socket.socket, corrupt: str) -> None:
    failure = loop.create_future()
    handlers: set[asyncio.Task] = set()

    async def handle(conn: socket.socket) -> None:
        tamper = echo.Tamper(corrupt) if corrupt else None
        try:
            while True:
                data = await loop.sock_recv(conn, RECV_SIZE)
                if not data:
                    break
                if tamper is not None:
                    data = tamper(data)
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass
        except BaseException as exc:
            if not failure.done():
                failure.set_exception(exc)
            raise
        finally:
            conn.close()

    async def accept_forever() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(handle(conn))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

    acceptor = loop.create_task(accept_forever())
    await asyncio.wait({acceptor, failure}, return_when=asyncio.FIRST_COMPLETED)
    if failure.done():
        acceptor.cancel()
        failure.result()
    acceptor.result()


def server(contestant: str, cpu: int | None = None, corrupt: str = "") -> dict:
    """Child process: echo server on ``contestant``'s loop (see :func:`echo.serve_until_killed`)."""

    async def serve(loop: asyncio.AbstractEventLoop) -> None:
        listener = echo.listening_socket()
        try:
            echo.announce(listener.getsockname()[1])
            await _serve(loop, listener, corrupt)
        finally:
            listener.close()

    return echo.serve_until_killed(contestant, cpu, serve)


# --------------------------------------------------------------------------- parent side


def measure_echo(
    contestant: str,
    size: int,
    settings: Settings,
    corrupt: str = "",
    warmup: float | None = None,
    duration: float | None = None,
    stall_timeout: float = 5.0,
    min_requests: int = 0,
) -> Measurement:
    """One echo measurement: start the server and the load generator, return the result."""
    argv = echo.python_server(
        "sock_echo", "server", contestant=contestant, cpu=settings.server_cpu, corrupt=corrupt
    )
    options = {"min_requests": min_requests} if min_requests else None
    return echo.measure_echo(
        "echo", argv, size, settings, warmup, duration, stall_timeout, client_options=options
    )


def _measurer(size: int) -> Callable[[str, Settings], Measurement]:
    def measure(contestant: str, settings: Settings) -> Measurement:
        return measure_echo(contestant, size, settings)

    return measure


def _workload(size: int, label: str, quick: bool) -> Workload:
    return Workload(
        name=f"sock_echo_{label}",
        family="sock_echo",
        title=f"echo sock_recv/sendall {label[:-1]} KiB",
        description=(
            f"TCP echo server using loop.sock_recv/sock_sendall, {CONNECTIONS} connections "
            f"in ping-pong with {label[:-1]} KiB messages from a fixed load generator; "
            "throughput and the server's CPU time per request."
        ),
        metrics=echo.ECHO_METRICS,
        measure=_measurer(size),
        quick=quick,
    )


WORKLOADS: list[Workload] = [
    _workload(1024, "1k", quick=True),
    _workload(10 * 1024, "10k", quick=False),
    _workload(100 * 1024, "100k", quick=False),
]


def selftest(settings: Settings, log: Callable[[str], None] = print) -> bool:
    """Check that the TCP echo harness accepts a correct server and rejects corrupting ones."""

    def measure(corrupt: str) -> Measurement:
        return measure_echo(
            "asyncio",
            1024,
            settings,
            corrupt,
            **echo.SELFTEST,
            min_requests=echo.selftest_requests(1024),
        )

    return echo.run_selftest(measure, log, "tcp echo")
