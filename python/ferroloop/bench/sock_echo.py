"""TCP echo over ``loop.sock_recv`` / ``loop.sock_sendall``, driven by a fixed load generator.

One measurement uses two fresh processes:

* the **server** runs on the contestant loop, pinned to the first CPU: it accepts with
  ``loop.sock_accept`` and echoes with ``loop.sock_recv(conn, 65536)`` / ``loop.sock_sendall``;
* the **load generator** (:func:`client`) always runs on the same loop (uvloop if installed, else
  asyncio) with ``asyncio.Protocol`` connections, pinned to the second CPU.  It keeps 10
  connections in ping-pong: send a message, wait until all of it came back, send the next.  Every
  echoed byte is compared with what was sent (messages differ from one request to the next).

After a warm-up the client samples, at the start and end of the measured window, the number of
completed requests and, from ``/proc``, the CPU time of the server process, of itself and of the
two CPUs.  It reports requests/s, the **server's CPU time per request** (the fair efficiency
figure when the client is the bottleneck, as it often is on 2 cores), how busy the client was, and
how much CPU time other work took on the two CPUs during the window (interference).  Server
startup and the warm-up are outside the window.

A deliberately broken server (``corrupt="flip"`` flips one byte per connection, ``"drop"`` drops
one) must be rejected: :func:`selftest` checks that it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from . import contestants, procstat, subproc
from .registry import ERROR, OK, UNSUPPORTED, Measurement, Metric, Settings, Workload

CONNECTIONS = 10
RECV_SIZE = 65536
#: Messages are slices of one random pool starting at different offsets, so that consecutive
#: requests differ and a stale or misrouted buffer is caught.
_SPREAD = 4096
#: Bytes a corrupting server echoes faithfully on a connection before it tampers with one chunk.
_CORRUPT_AFTER = 65536
#: A client busier than this share of one CPU is likely the bottleneck.
CLIENT_BUSY = 0.9

# --------------------------------------------------------------------------- server (child)


async def _serve(loop: asyncio.AbstractEventLoop, listener: socket.socket, corrupt: str) -> None:
    failure = loop.create_future()
    handlers: set[asyncio.Task] = set()

    async def handle(conn: socket.socket) -> None:
        echoed = 0
        tampered = False
        try:
            while True:
                data = await loop.sock_recv(conn, RECV_SIZE)
                if not data:
                    break
                if corrupt and not tampered and echoed >= _CORRUPT_AFTER:
                    tampered = True
                    if corrupt == "flip":
                        flipped = bytearray(data)
                        flipped[len(flipped) // 2] ^= 0x20
                        data = bytes(flipped)
                    else:  # "drop"
                        data = data[:-1]
                echoed += len(data)
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
    """Child process: echo server on ``contestant``'s loop.

    Prints ``{"port": ..., "pid": ...}`` once listening, then serves until killed.  If serving
    fails, returns (so prints) a status dict.
    """
    procstat.pin_to_cpu(cpu)
    loop = contestants.new_loop(contestant)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    print(json.dumps({"port": listener.getsockname()[1], "pid": os.getpid()}), flush=True)
    try:
        contestants.run(loop, _serve(loop, listener, corrupt))
    except Exception as exc:
        status = UNSUPPORTED if contestants.is_unsupported(exc, loop) else ERROR
        return {"status": status, "detail": f"server: {contestants.describe_exception(exc)}"}
    finally:
        listener.close()
    return {"status": ERROR, "detail": "server stopped serving"}


# --------------------------------------------------------------------------- client (child)


class _Run:
    """State shared by the load generator's connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        self.pool = memoryview(os.urandom(size + _SPREAD))
        self.running = True
        self.completed = 0
        self.failed: asyncio.Future[str] = loop.create_future()

    def fail(self, reason: str) -> None:
        self.running = False
        if not self.failed.done():
            self.failed.set_result(reason)


class _EchoClient(asyncio.Protocol):
    def __init__(self, run: _Run, index: int) -> None:
        self.run = run
        self.index = index
        self.sent = 0
        self.got = 0
        self.expected = run.pool[: run.size]
        self.transport: asyncio.Transport | None = None
        self.closed = run.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        run = self.run
        if not run.running:
            self.transport.close()
            return
        offset = (self.sent * 61 + self.index * 397) % _SPREAD
        self.expected = run.pool[offset : offset + run.size]
        self.got = 0
        self.sent += 1
        self.transport.write(self.expected)

    def data_received(self, data: bytes) -> None:
        got = self.got
        end = got + len(data)
        if end > self.run.size or self.expected[got:end] != data:
            self.run.fail(
                f"content mismatch: connection {self.index}, request {self.sent}, "
                f"bytes {got}..{end} of {self.run.size} differ from what was sent"
            )
            self.transport.abort()
            return
        self.got = end
        if end == self.run.size:
            self.run.completed += 1
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.run.running:
            self.run.fail(f"connection {self.index} closed by the server early ({exc!r})")
        if not self.closed.done():
            self.closed.set_result(None)


async def _drive(
    loop: asyncio.AbstractEventLoop,
    port: int,
    server_pid: int,
    size: int,
    connections: int,
    warmup: float,
    duration: float,
    stall_timeout: float,
    cpus: list[int] | None,
) -> dict:
    run = _Run(loop, size)
    clients = []
    for index in range(connections):
        _, proto = await loop.create_connection(
            lambda index=index: _EchoClient(run, index), "127.0.0.1", port
        )
        clients.append(proto)

    def failed_within(seconds: float) -> Any:
        return asyncio.wait({run.failed}, timeout=seconds)

    cpus = tuple(cpus) if cpus else None
    await failed_within(warmup)
    busy0 = procstat.cpu_busy_ns(cpus)
    count0, server0, client0 = run.completed, procstat.snapshot(server_pid), procstat.snapshot()
    await failed_within(duration)
    count1, server1, client1 = run.completed, procstat.snapshot(server_pid), procstat.snapshot()
    busy = procstat.cpu_busy_ns(cpus) - busy0

    run.running = False
    _, stuck = await asyncio.wait({c.closed for c in clients}, timeout=stall_timeout)
    if stuck:
        run.fail(
            f"stalled: {len(stuck)} connection(s) still waiting for their echo after "
            f"{stall_timeout:g} s (bytes lost?)"
        )
    for c in clients:
        if c.transport is not None:
            c.transport.abort()
    if run.failed.done():
        return {"status": ERROR, "detail": run.failed.result()}

    requests = count1 - count0
    if requests <= 0:
        return {"status": ERROR, "detail": "no request completed in the measured window"}
    server_use, client_use = server1 - server0, client1 - client0
    window = server_use.wall_ns
    # CPU time others took on the two CPUs.  Unpinned (one CPU only), it is not attributable.
    others = busy - server_use.cpu_ns - client_use.cpu_ns if cpus else 0
    measurement = Measurement(
        OK,
        values={
            "rps": requests * 1e9 / window,
            "server_us": server_use.cpu_ns / requests / 1000,
            "client_busy": client_use.busy,
            "server_busy": server_use.busy,
            "server_delayed": server_use.delayed,
            "client_delayed": client_use.delayed,
            "others": others / window,
            "requests": float(requests),
            "seconds": window / 1e9,
        },
        disturbance=max(0.0, others / window),
        flags=frozenset({"client_busy"} if client_use.busy >= CLIENT_BUSY else ()),
    )
    return measurement.to_json()


def client(
    port: int,
    server_pid: int,
    size: int,
    loop_name: str,
    warmup: float,
    duration: float,
    connections: int = CONNECTIONS,
    stall_timeout: float = 5.0,
    cpu: int | None = None,
    server_cpu: int | None = None,
) -> dict:
    """Child process: the load generator.  Returns a :class:`Measurement` as JSON."""
    procstat.pin_to_cpu(cpu)
    loop = contestants.new_loop(loop_name)
    cpus = sorted({c for c in (cpu, server_cpu) if c is not None}) or None
    try:
        return contestants.run(
            loop,
            _drive(
                loop, port, server_pid, size, connections, warmup, duration, stall_timeout, cpus
            ),
        )
    finally:
        contestants.close(loop)


# --------------------------------------------------------------------------- parent side


def _read_line(proc: subprocess.Popen[str], timeout: float) -> dict | None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    return subproc.parse_result(proc.stdout.readline())


def measure_echo(
    contestant: str,
    size: int,
    settings: Settings,
    corrupt: str = "",
    warmup: float | None = None,
    duration: float | None = None,
    stall_timeout: float = 5.0,
) -> Measurement:
    """One echo measurement: start the server and the load generator, return the result."""
    if duration is None:
        duration = (0.8 if settings.quick else 2.0) * settings.time_scale
    if warmup is None:
        warmup = duration / 4
    with tempfile.TemporaryFile() as server_err:
        server_proc = subproc.start(
            "sock_echo",
            "server",
            {"contestant": contestant, "cpu": settings.server_cpu, "corrupt": corrupt},
            stderr=server_err,
        )
        try:
            hello = _read_line(server_proc, settings.timeout)
            if hello is None or "port" not in hello:
                return _server_failure(server_proc, server_err, hello)
            kwargs = {
                "port": hello["port"],
                "server_pid": hello["pid"],
                "size": size,
                "loop_name": settings.client_loop,
                "warmup": warmup,
                "duration": duration,
                "stall_timeout": stall_timeout,
                "cpu": settings.client_cpu,
                "server_cpu": settings.server_cpu,
            }
            timeout = warmup + duration + stall_timeout + settings.timeout
            try:
                result = subproc.run_child("sock_echo", "client", kwargs, timeout)
            except subproc.ChildFailed as exc:
                result = {"status": ERROR, "detail": f"load generator failed: {exc}"}
            crashed = server_proc.poll()
        finally:
            if server_proc.poll() is None:
                server_proc.kill()
            server_out, _ = server_proc.communicate()
        report = subproc.parse_result(server_out)
        if crashed is not None:
            return _server_failure(server_proc, server_err, report)
        if report is not None and report.get("status", OK) != OK:
            return Measurement(report["status"], detail=report.get("detail", ""))
        return Measurement.from_json(result)


def _server_failure(proc: subprocess.Popen[str], err: Any, report: dict | None) -> Measurement:
    if report is not None and "status" in report:
        return Measurement(report["status"], detail=report.get("detail", ""))
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        return Measurement(ERROR, detail=f"server did not start; stderr: {subproc.tail(err)}")
    why = subproc.describe_exit(proc.returncode)
    return Measurement(ERROR, detail=f"server {why}; stderr: {subproc.tail(err)}")


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
        metrics=(
            Metric("rps", "throughput", "req/s", "higher", "rate"),
            Metric("server_us", "server CPU/request", "µs", "lower", "us"),
        ),
        measure=_measurer(size),
        quick=quick,
    )


WORKLOADS: list[Workload] = [
    _workload(1024, "1k", quick=True),
    _workload(10 * 1024, "10k", quick=False),
    _workload(100 * 1024, "100k", quick=False),
]


def selftest(settings: Settings, log: Callable[[str], None] = print) -> bool:
    """Check that the harness accepts a correct server and rejects corrupting ones."""
    ok = True
    for corrupt, want_ok in (("", True), ("flip", False), ("drop", False)):
        result = measure_echo(
            "asyncio",
            1024,
            settings,
            corrupt=corrupt,
            warmup=0.2,
            duration=0.3,
            stall_timeout=1.0,
        )
        passed = result.ok == want_ok
        ok &= passed
        label = f"corrupt={corrupt}" if corrupt else "faithful server"
        verdict = "accepted" if result.ok else f"rejected ({result.detail})"
        log(f"selftest: {label}: {verdict} -> {'PASS' if passed else 'FAIL'}")
    return ok
