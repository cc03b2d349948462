"""UDP echo of 1 KiB datagrams: a ``loop.create_datagram_endpoint`` server on the contestant loop,
driven by a fixed-loop client.

The server (in its own process, pinned to the first CPU) is an ``asyncio.DatagramProtocol`` whose
``datagram_received(data, addr)`` sends ``data`` back with ``transport.sendto(data, addr)``.  A
loop without ``create_datagram_endpoint`` is reported as "unsupported".  The load generator (same
loop as the TCP ones, pinned to the second CPU) keeps 10 connected datagram sockets in ping-pong:
send a 1 KiB datagram, wait for it to come back, compare it byte for byte with what was sent,
send the next (consecutive datagrams differ).  A datagram that never comes back stalls its socket,
which is reported as an error at the end of the window.  The measured window, the server's CPU
time per request and the interference figures are those of ``echo.py``.

The floor column is the plain Rust epoll server sending every datagram straight back.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from . import echo, floor
from .echo import CONNECTIONS
from .registry import ERROR, FLOOR, Measurement, Settings, Workload

SIZE = 1024

# --------------------------------------------------------------------------- server (child)


class _EchoDatagram(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.transport.sendto(data, addr)


class _TamperingEchoDatagram(_EchoDatagram):
    def __init__(self, corrupt: str) -> None:
        self.corrupt = corrupt
        self.tampers: dict[tuple, echo.Tamper] = {}

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        tamper = self.tampers.get(addr)
        if tamper is None:
            tamper = self.tampers[addr] = echo.Tamper(self.corrupt)
        self.transport.sendto(tamper(data), addr)


def server(contestant: str, cpu: int | None = None, corrupt: str = "") -> dict:
    """Child process: UDP echo server on ``contestant``'s loop."""

    async def serve(loop: asyncio.AbstractEventLoop) -> None:
        factory = functools.partial(_TamperingEchoDatagram, corrupt) if corrupt else _EchoDatagram
        transport, _ = await loop.create_datagram_endpoint(factory, local_addr=("127.0.0.1", 0))
        try:
            echo.announce(transport.get_extra_info("sockname")[1])
            await echo.forever()
        finally:
            transport.close()

    return echo.serve_until_killed(contestant, cpu, serve)


# --------------------------------------------------------------------------- client (child)


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, run: echo.Run, index: int) -> None:
        self.run = run
        self.index = index
        self.sent = 0
        self.offset = 0  # in the run's pool: the datagram awaiting its echo
        self.transport: Any = None  # an asyncio.DatagramTransport once connected
        self.closed = run.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        run = self.run
        if not run.running:
            self.transport.close()
            return
        self.offset = run.offset(self.index, self.sent)
        self.sent += 1
        self.transport.sendto(run.pool[self.offset : self.offset + run.size])

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) != self.run.size or not self.run.echoes(self.offset, data):
            self.run.fail(
                f"content mismatch: socket {self.index}, datagram {self.sent}: got "
                f"{len(data)} bytes that differ from the {self.run.size} sent"
            )
            self.transport.abort()
            return
        self.run.completed += 1
        self._send()

    def error_received(self, exc: Exception) -> None:
        self.run.fail(f"socket {self.index}: {exc!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.run.running:
            self.run.fail(f"socket {self.index} closed early ({exc!r})")
        if not self.closed.done():
            self.closed.set_result(None)


async def _drive(
    loop: asyncio.AbstractEventLoop,
    port: int,
    server_pid: int,
    size: int,
    sockets: int,
    warmup: float,
    duration: float,
    stall_timeout: float,
    cpus: tuple[int, ...] | None,
    min_requests: int,
) -> dict:
    run = echo.Run(loop, size)
    clients = []
    for index in range(sockets):
        _, proto = await loop.create_datagram_endpoint(
            functools.partial(_UdpClient, run, index), remote_addr=("127.0.0.1", port)
        )
        clients.append(proto)
    result = await echo.measure_clients(
        run, clients, server_pid, warmup, duration, stall_timeout, cpus, min_requests
    )
    if result.get("status") == ERROR:
        detail = result["detail"].replace("their echo", "their datagram")
        result["detail"] = detail.replace("connection(s)", "socket(s)")
    return result


def client(
    port: int,
    server_pid: int,
    size: int,
    loop_name: str,
    warmup: float,
    duration: float,
    sockets: int = CONNECTIONS,
    stall_timeout: float = 5.0,
    cpu: int | None = None,
    server_cpu: int | None = None,
    min_requests: int = 0,
) -> dict:
    """Child process: the UDP load generator.  Returns a :class:`Measurement` as JSON."""
    cpus = echo.client_cpus(cpu, server_cpu)
    return echo.run_client(
        loop_name,
        cpu,
        lambda loop: _drive(
            loop,
            port,
            server_pid,
            size,
            sockets,
            warmup,
            duration,
            stall_timeout,
            cpus,
            min_requests,
        ),
    )


# --------------------------------------------------------------------------- parent side


def measure_udp(
    contestant: str,
    settings: Settings,
    corrupt: str = "",
    warmup: float | None = None,
    duration: float | None = None,
    stall_timeout: float = 5.0,
    min_requests: int = 0,
) -> Measurement:
    """One UDP echo measurement of ``contestant``'s server (or of the floor)."""
    if contestant == FLOOR:
        argv = floor.command("udp", settings.server_cpu)
    else:
        argv = echo.python_server(
            "udp_echo", "server", contestant=contestant, cpu=settings.server_cpu, corrupt=corrupt
        )
    return echo.measure_echo(
        "udp_echo",
        argv,
        SIZE,
        settings,
        warmup,
        duration,
        stall_timeout=stall_timeout,
        client_options={"min_requests": min_requests} if min_requests else None,
    )


def _measure(contestant: str, settings: Settings) -> Measurement:
    return measure_udp(contestant, settings)


WORKLOADS: list[Workload] = [
    Workload(
        name="udp_echo_1k",
        family="udp_echo",
        title="UDP echo 1 KiB",
        description=(
            "UDP echo server: an asyncio.DatagramProtocol from loop.create_datagram_endpoint "
            f"sending every datagram back; {CONNECTIONS} client sockets in ping-pong with 1 KiB "
            "datagrams from a fixed load generator, every byte verified; throughput and the "
            "server's CPU time per request. The floor column is a plain Rust epoll server."
        ),
        metrics=echo.ECHO_METRICS,
        measure=_measure,
        extras=(FLOOR,),
    )
]


def selftest(settings: Settings, log: Callable[[str], None] = print) -> bool:
    """Check that the UDP harness accepts a correct server and rejects corrupting ones."""

    def measure(corrupt: str) -> Measurement:
        return measure_udp(
            "asyncio", settings, corrupt, **echo.SELFTEST, min_requests=echo.selftest_requests(SIZE)
        )

    return echo.run_selftest(measure, log, "udp echo")
