"""TCP echo through the loop's transports: an ``asyncio.Protocol``, asyncio streams and an
``asyncio.BufferedProtocol``, driven by the fixed load generator of ``echo.py``.

The servers run on the contestant loop in their own process, pinned to the first CPU, and listen
with ``loop.create_server`` (streams: ``asyncio.start_server``):

* **Protocol**: ``data_received(data)`` writes ``data`` back with ``transport.write``;
* **streams**: per connection a task loops on ``await reader.read(65536)``, ``writer.write``,
  ``await writer.drain()``;
* **BufferedProtocol**: ``get_buffer`` returns the connection's 64 KiB ``bytearray``;
  ``buffer_updated(n)`` writes a copy of its first ``n`` bytes (as uvloop's own benchmark does:
  the transport may keep what it cannot send at once, and the buffer is refilled next).

Given a certificate (``certfile``/``keyfile``), each server listens with TLS (``ssl=`` a server
context from :func:`echo.tls_server_context`); ``tls_echo`` measures that.

The Protocol workloads also run the **floor**: the plain Rust epoll echo server (``floor.py``).
The load generator, content verification and measured window are those of ``echo.py``.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from . import echo, floor
from .echo import CONNECTIONS, RECV_SIZE
from .registry import FLOOR, Measurement, Settings, Workload

# --------------------------------------------------------------------------- servers (child)


class _EchoProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _TamperingEchoProtocol(_EchoProtocol):
    def __init__(self, corrupt: str) -> None:
        self.tamper = echo.Tamper(corrupt)

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.tamper(data))


class _EchoBufferedProtocol(asyncio.BufferedProtocol):
    transport: asyncio.Transport

    def __init__(self, corrupt: str = "") -> None:
        self.buffer = bytearray(RECV_SIZE)
        self.tamper = echo.Tamper(corrupt) if corrupt else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer[:nbytes]
        self.transport.write(data if self.tamper is None else self.tamper(data))


async def _serve_protocol(
    loop: asyncio.AbstractEventLoop, kind: str, corrupt: str, tls: ssl.SSLContext | None
) -> None:
    factory: Callable[[], asyncio.BaseProtocol]
    if kind == "buffered":
        factory = functools.partial(_EchoBufferedProtocol, corrupt)
    elif corrupt:
        factory = functools.partial(_TamperingEchoProtocol, corrupt)
    else:
        factory = _EchoProtocol
    listener = echo.listening_socket()
    server = await loop.create_server(factory, sock=listener, ssl=tls)
    echo.announce(listener.getsockname()[1])
    async with server:
        await echo.forever()


async def _serve_streams(
    loop: asyncio.AbstractEventLoop, corrupt: str, tls: ssl.SSLContext | None
) -> None:
    failure = loop.create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tamper = echo.Tamper(corrupt) if corrupt else None
        try:
            while True:
                data = await reader.read(RECV_SIZE)
                if not data:
                    break
                writer.write(data if tamper is None else tamper(data))
                await writer.drain()
        except ConnectionError:
            pass
        except BaseException as exc:
            # start_server's handler tasks swallow exceptions into the exception handler only
            # when they are garbage collected: report them now.
            if not failure.done():
                failure.set_exception(exc)
            raise
        finally:
            writer.close()

    listener = echo.listening_socket()
    server = await asyncio.start_server(handle, sock=listener, ssl=tls)
    echo.announce(listener.getsockname()[1])
    async with server:
        await failure


def server(
    kind: str,
    contestant: str,
    cpu: int | None = None,
    corrupt: str = "",
    certfile: str = "",
    keyfile: str = "",
) -> dict:
    """Child process: an echo server of ``kind`` ("protocol", "streams" or "buffered"),
    speaking TLS with ``certfile``/``keyfile`` when given."""
    tls = echo.tls_server_context(certfile, keyfile) if certfile else None

    def serve(loop: asyncio.AbstractEventLoop) -> Coroutine[Any, Any, None]:
        if kind == "streams":
            return _serve_streams(loop, corrupt, tls)
        return _serve_protocol(loop, kind, corrupt, tls)

    return echo.serve_until_killed(contestant, cpu, serve)


# --------------------------------------------------------------------------- parent side


def measure_echo(
    kind: str, contestant: str, size: int, settings: Settings, corrupt: str = ""
) -> Measurement:
    """One echo measurement of the ``kind`` server on ``contestant`` (or of the floor)."""
    if contestant == FLOOR:
        argv = floor.command("echo", settings.server_cpu)
    else:
        argv = echo.python_server(
            "tcp_echo",
            "server",
            kind=kind,
            contestant=contestant,
            cpu=settings.server_cpu,
            corrupt=corrupt,
        )
    return echo.measure_echo("echo", argv, size, settings)


_KINDS = {
    "protocol": (
        "echo Protocol",
        "an asyncio.Protocol whose data_received() writes the data back with transport.write()",
    ),
    "streams": (
        "echo streams",
        "asyncio.start_server; per connection reader.read(65536), writer.write(), "
        "await writer.drain()",
    ),
    "buffered": (
        "echo BufferedProtocol",
        "an asyncio.BufferedProtocol reading into a 64 KiB bytearray; buffer_updated() writes "
        "a copy of what was read",
    ),
}


def _measurer(kind: str, size: int) -> Callable[[str, Settings], Measurement]:
    def measure(contestant: str, settings: Settings) -> Measurement:
        return measure_echo(kind, contestant, size, settings)

    return measure


def _workload(kind: str, size_kib: int, quick: bool) -> Workload:
    title, how = _KINDS[kind]
    extras = (FLOOR,) if kind == "protocol" else ()
    floor_note = (
        " The floor column is a plain Rust epoll echo server with no Python." if extras else ""
    )
    return Workload(
        name=f"echo_{kind}_{size_kib}k",
        family="tcp_echo",
        title=f"{title} {size_kib} KiB",
        description=(
            f"TCP echo server: {how}; {CONNECTIONS} connections in ping-pong with {size_kib} "
            "KiB messages from a fixed load generator, every byte verified; throughput and the "
            f"server's CPU time per request.{floor_note}"
        ),
        metrics=echo.ECHO_METRICS,
        measure=_measurer(kind, size_kib * 1024),
        quick=quick and size_kib == 1,
        extras=extras,
    )


WORKLOADS: list[Workload] = [
    _workload(kind, size_kib, quick=kind != "buffered")
    for kind in ("protocol", "streams", "buffered")
    for size_kib in (1, 10, 100)
]
