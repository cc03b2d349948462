"""Machinery shared by the network workloads (``sock_echo``, ``tcp_echo``, ``tls_echo``,
``udp_echo``, ``http_keepalive``): server processes, the fixed TCP (or TLS) load generator,
content verification, the measured window and the self-tests.

A network measurement uses two fresh processes:

* the **server**, started by :func:`with_server`: a Python child running on the contestant loop
  pinned to the first CPU (``python_server(...)``), or the floor binary (``floor.command``).  It
  binds 127.0.0.1 port 0 and prints ``{"port": ..., "pid": ...}`` once listening, then serves
  until killed; if serving fails, a Python server prints a status dict instead
  (:func:`serve_until_killed`);
* the **load generator**, which always runs on the same loop (uvloop if installed, else asyncio),
  pinned to the second CPU.  The TCP one (:func:`client`) keeps 10 connections in ping-pong: send
  a message, wait until all of it came back, send the next.  Every echoed byte is compared with
  what was sent (messages differ from one request to the next).  Given a CA file (``cafile``) it
  speaks TLS instead, through the fixed loop's own TLS transport, verifying the server's
  certificate for :data:`TLS_HOSTNAME` (:func:`tls_client_context`).

After a warm-up the load generator samples (:func:`sample_window`), at the start and end of the
measured window, the number of completed requests and, from ``/proc``, the CPU time of the server
process, of itself and of the two CPUs.  It reports requests/s, the **server's CPU time per
request** (the fair efficiency figure when the client is the bottleneck, as it often is on 2
cores), how busy the client was, and how much CPU time other work took on the two CPUs during the
window (interference).  Server startup and the warm-up are outside the window.

A deliberately broken Python server (``corrupt="flip"`` flips one byte per connection after
:data:`CORRUPT_AFTER` bytes, ``"drop"`` drops one, see :class:`Tamper`) must be rejected:
:func:`run_selftest` checks that it is.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import select
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from . import contestants, procstat, subproc
from .registry import ERROR, OK, UNSUPPORTED, Measurement, Metric, Settings

CONNECTIONS = 10
#: Bytes a server reads at a time (``sock_recv`` size, ``BufferedProtocol`` buffer, floor).
RECV_SIZE = 65536
#: Messages are slices of one random pool starting at different offsets, so that consecutive
#: requests differ and a stale or misrouted buffer is caught.
SPREAD = 4096
#: Bytes a corrupting server echoes faithfully on a connection before it tampers with one chunk.
CORRUPT_AFTER = 65536
#: How long a load generator waits, past its measured window, for the ``min_requests`` a
#: self-test asks for (progress, not time, ends a self-test's window; this only bounds it).
MIN_REQUESTS_PATIENCE = 20.0
#: A client busier than this share of one CPU is likely the bottleneck.
CLIENT_BUSY = 0.9
#: The name TLS servers' certificates are issued for and TLS clients check.
TLS_HOSTNAME = "localhost"

#: The metrics of every echo-style workload.
ECHO_METRICS = (
    Metric("rps", "throughput", "req/s", "higher", "rate"),
    Metric("server_us", "server CPU/request", "µs", "lower", "us"),
)


def measured_times(settings: Settings) -> tuple[float, float]:
    """(warm-up, measured window) in seconds of a network measurement."""
    duration = (0.8 if settings.quick else 2.0) * settings.time_scale
    return duration / 4, duration


# --------------------------------------------------------------------------- servers (children)


class Tamper:
    """What a deliberately broken server does to the data it echoes: nothing for the first
    :data:`CORRUPT_AFTER` bytes of a connection (or socket), then once it flips a byte of a
    chunk (``"flip"``) or drops its last byte (``"drop"``), then nothing again."""

    __slots__ = ("done", "echoed", "mode")

    def __init__(self, mode: str) -> None:
        if mode not in ("flip", "drop"):
            raise ValueError(f"unknown corruption {mode!r}")
        self.mode = mode
        self.echoed = 0
        self.done = False

    def __call__(self, data: bytes | bytearray) -> bytes:
        if not self.done and self.echoed >= CORRUPT_AFTER:
            self.done = True
            if self.mode == "flip":
                flipped = bytearray(data)
                flipped[len(flipped) // 2] ^= 0x20
                data = bytes(flipped)
            else:
                data = data[:-1]
        self.echoed += len(data)
        return bytes(data)  # no copy for bytes


def announce(port: int) -> None:
    """Tell the parent the server is listening (the first JSON line on stdout)."""
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)


def serve_until_killed(
    contestant: str,
    cpu: int | None,
    serve: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, Any]],
) -> dict:
    """Child-process body of a Python server: pin, create ``contestant``'s loop, run ``serve``.

    ``serve(loop)`` must call :func:`announce` once listening and then run until killed.  If it
    fails, returns (so the child prints) a status dict: "unsupported" when the loop lacks a
    feature it needs, else "error".
    """
    procstat.pin_to_cpu(cpu)
    loop = contestants.new_loop(contestant)
    try:
        contestants.run(loop, serve(loop))
    except Exception as exc:
        status = UNSUPPORTED if contestants.is_unsupported(exc, loop) else ERROR
        return {"status": status, "detail": f"server: {contestants.describe_exception(exc)}"}
    return {"status": ERROR, "detail": "server stopped serving"}


def listening_socket() -> socket.socket:
    """A nonblocking TCP socket listening on 127.0.0.1, on a free port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    return listener


def tls_server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The server side of the TLS workloads: Python's defaults with the given certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context


def tls_client_context(cafile: str) -> ssl.SSLContext:
    """The client side: Python's defaults, trusting only ``cafile`` (certificate and host name
    are verified, so a server that is not speaking TLS with that certificate fails)."""
    return ssl.create_default_context(cafile=cafile)


async def forever() -> None:
    """Wait until the process is killed (errors in callbacks end :func:`contestants.run`)."""
    await asyncio.get_running_loop().create_future()


# --------------------------------------------------------------------------- the measured window


@dataclass
class Window:
    """What the load generator saw during the measured window."""

    requests: int
    server: procstat.Usage
    client: procstat.Usage
    #: CPU time the benchmark's CPUs were busy (everyone's), in ns.
    busy_ns: int
    #: Whether both processes were pinned, so that other work on the CPUs is attributable.
    pinned: bool

    def measurement(self, client_cpu_ns: int | None = None) -> Measurement:
        """The window as a :class:`Measurement` (``client_cpu_ns`` overrides the client's CPU
        time, for a load generator that is not this process, e.g. wrk)."""
        if self.requests <= 0:
            return Measurement(ERROR, detail="no request completed in the measured window")
        window = self.server.wall_ns
        client_ns = self.client.cpu_ns if client_cpu_ns is None else client_cpu_ns
        client_busy = client_ns / window
        # CPU time others took on the two CPUs.  Unpinned (one CPU only), it is not attributable.
        others = self.busy_ns - self.server.cpu_ns - client_ns if self.pinned else 0
        return Measurement(
            OK,
            values={
                "rps": self.requests * 1e9 / window,
                "server_us": self.server.cpu_ns / self.requests / 1000,
                "client_busy": client_busy,
                "server_busy": self.server.busy,
                "server_delayed": self.server.delayed,
                "client_delayed": self.client.delayed,
                "others": others / window,
                "requests": float(self.requests),
                "seconds": window / 1e9,
            },
            disturbance=max(0.0, others / window),
            flags=frozenset({"client_busy"} if client_busy >= CLIENT_BUSY else ()),
        )


class Run:
    """State shared by a load generator's connections (or sockets)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        self.random = os.urandom(size + SPREAD)
        self.pool = memoryview(self.random)
        self.running = True
        self.completed = 0
        self.failed: asyncio.Future[str] = loop.create_future()

    def fail(self, reason: str) -> None:
        self.running = False
        if not self.failed.done():
            self.failed.set_result(reason)

    @staticmethod
    def offset(index: int, sequence: int) -> int:
        """Where in the pool the ``sequence``-th message of connection ``index`` starts."""
        return (sequence * 61 + index * 397) % SPREAD

    def message(self, index: int, sequence: int) -> memoryview:
        """The ``sequence``-th message of connection ``index``."""
        offset = self.offset(index, sequence)
        return self.pool[offset : offset + self.size]

    def echoes(self, offset: int, data: bytes | memoryview) -> bool:
        """Whether ``data`` equals the pool's bytes from ``offset`` on.

        One ``memcmp`` without a copy: comparing memoryviews goes item by item (about 2 ns a
        byte, 0.2 ms per 100 KiB), which made the load generator the bottleneck.
        """
        return self.random.startswith(data, offset)


async def sample_window(
    run: Run,
    server_pid: int,
    warmup: float,
    duration: float,
    cpus: tuple[int, ...] | None,
    min_requests: int = 0,
) -> Window:
    """Let ``run`` warm up, then sample requests and CPU use over ``duration`` seconds, or for
    as long as it takes the whole run to complete ``min_requests`` (a self-test's corrupting
    server must have been reached however slow a loaded machine makes the processes)."""

    async def failed_within(seconds: float) -> None:
        await asyncio.wait({run.failed}, timeout=seconds)

    await failed_within(warmup)
    busy0 = procstat.cpu_busy_ns(cpus)
    count0, server0, client0 = run.completed, procstat.snapshot(server_pid), procstat.snapshot()
    await failed_within(duration)
    limit = run.loop.time() + MIN_REQUESTS_PATIENCE
    while run.completed < min_requests and not run.failed.done() and run.loop.time() < limit:
        await failed_within(0.05)
    count1, server1, client1 = run.completed, procstat.snapshot(server_pid), procstat.snapshot()
    busy = procstat.cpu_busy_ns(cpus) - busy0
    return Window(count1 - count0, server1 - server0, client1 - client0, busy, cpus is not None)


async def finish(run: Run, closed: list[asyncio.Future], stall_timeout: float) -> None:
    """Stop ``run`` and wait until every connection finished its last request and closed."""
    run.running = False
    _, stuck = await asyncio.wait(set(closed), timeout=stall_timeout)
    if stuck:
        run.fail(
            f"stalled: {len(stuck)} connection(s) still waiting for their echo after "
            f"{stall_timeout:g} s (bytes lost?)"
        )


def client_cpus(cpu: int | None, server_cpu: int | None) -> tuple[int, ...] | None:
    """The CPUs whose interference a load generator measures (None: not pinned)."""
    return tuple(sorted({c for c in (cpu, server_cpu) if c is not None})) or None


def run_client(
    loop_name: str, cpu: int | None, drive: Callable[[asyncio.AbstractEventLoop], Coroutine]
) -> dict:
    """Child-process body of a load generator: pin, create the fixed loop, run ``drive``."""
    procstat.pin_to_cpu(cpu)
    loop = contestants.new_loop(loop_name)
    try:
        return contestants.run(loop, drive(loop))
    finally:
        contestants.close(loop)


# --------------------------------------------------------------------------- TCP load generator


class _Echoing:
    """One connection of the TCP load generator: send a message, check what comes back, send the
    next once all of it came back.  Mixed into a ``Protocol`` and a ``BufferedProtocol``."""

    def __init__(self, run: Run, index: int) -> None:
        self.run = run
        self.index = index
        self.sent = 0
        self.got = 0
        #: Where in the pool the message being echoed starts.
        self.start = 0
        self.transport: Any = None  # an asyncio.Transport once connected
        self.closed = run.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        run = self.run
        if not run.running:
            self.transport.close()
            return
        self.start = run.offset(self.index, self.sent)
        self.got = 0
        self.sent += 1
        self.transport.write(run.pool[self.start : self.start + run.size])

    def data_received(self, data: bytes | memoryview) -> None:
        got = self.got
        end = got + len(data)
        if end > self.run.size or not self.run.echoes(self.start + got, data):
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


class _EchoClient(_Echoing, asyncio.Protocol):
    """The TCP load generator's connection."""


class _BufferedEchoClient(_Echoing, asyncio.BufferedProtocol):
    """The TLS load generator's connection, reading into one reused buffer.  Given a plain
    ``Protocol``, asyncio's and uvloop's TLS transports allocate a 256 KiB ``bytes`` per read of
    decrypted data (then shrink it), which made the generator twice as costly per request and
    the bottleneck.  (uvloop only takes a protocol for buffered if it is no ``asyncio.Protocol``,
    hence the mixin.)"""

    def __init__(self, run: Run, index: int) -> None:
        super().__init__(run, index)
        self.buffer = memoryview(bytearray(RECV_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.buffer[:nbytes])


async def _drive_tcp(
    loop: asyncio.AbstractEventLoop,
    port: int,
    server_pid: int,
    size: int,
    connections: int,
    warmup: float,
    duration: float,
    stall_timeout: float,
    cpus: tuple[int, ...] | None,
    cafile: str | None,
    min_requests: int,
) -> dict:
    run = Run(loop, size)
    tls: dict[str, Any] = {}
    protocol: Any = _EchoClient
    if cafile:
        tls = {"ssl": tls_client_context(cafile), "server_hostname": TLS_HOSTNAME}
        protocol = _BufferedEchoClient
    clients = []
    for index in range(connections):
        _, proto = await loop.create_connection(
            functools.partial(protocol, run, index), "127.0.0.1", port, **tls
        )
        clients.append(proto)
    return await measure_clients(
        run, clients, server_pid, warmup, duration, stall_timeout, cpus, min_requests
    )


async def measure_clients(
    run: Run,
    clients: list,
    server_pid: int,
    warmup: float,
    duration: float,
    stall_timeout: float,
    cpus: tuple[int, ...] | None,
    min_requests: int = 0,
) -> dict:
    """Sample the window, let every client finish and abort its transport; the
    :class:`Measurement` as JSON, or the run's failure."""
    window = await sample_window(run, server_pid, warmup, duration, cpus, min_requests)
    await finish(run, [c.closed for c in clients], stall_timeout)
    for c in clients:
        if c.transport is not None:
            c.transport.abort()
    if run.failed.done():
        return {"status": ERROR, "detail": run.failed.result()}
    return window.measurement().to_json()


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
    cafile: str | None = None,
    min_requests: int = 0,
) -> dict:
    """Child process: the TCP echo load generator (TLS when given the server's CA ``cafile``).
    Returns a :class:`Measurement` as JSON."""
    cpus = client_cpus(cpu, server_cpu)
    return run_client(
        loop_name,
        cpu,
        lambda loop: _drive_tcp(
            loop,
            port,
            server_pid,
            size,
            connections,
            warmup,
            duration,
            stall_timeout,
            cpus,
            cafile,
            min_requests,
        ),
    )


# --------------------------------------------------------------------------- parent side


def python_server(module: str, function: str, **kwargs: Any) -> list[str]:
    """The argv of a Python server child: ``ferroloop.bench.<module>.<function>(**kwargs)``."""
    return subproc.command(module, function, kwargs)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> dict | None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    return subproc.parse_result(proc.stdout.readline())


def with_server(
    argv: list[str], settings: Settings, use: Callable[[dict], Measurement]
) -> Measurement:
    """Start the server ``argv``, call ``use(hello)`` with its ``{"port", "pid"}`` line, stop it.

    A server that fails to start, reports a failure or crashes meanwhile turns the measurement
    into that failure.
    """
    with tempfile.TemporaryFile() as server_err:
        server_proc = subproc.start_argv(argv, stderr=server_err)
        try:
            hello = _read_line(server_proc, settings.timeout)
            if hello is None or "port" not in hello:
                return _server_failure(server_proc, server_err, hello)
            result = use(hello)
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
        return result


def _server_failure(proc: subprocess.Popen[str], err: Any, report: dict | None) -> Measurement:
    if report is not None and "status" in report:
        return Measurement(report["status"], detail=report.get("detail", ""))
    try:
        proc.wait(timeout=1.0)  # it may have closed stdout on its way out
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return Measurement(ERROR, detail=f"server did not start; stderr: {subproc.tail(err)}")
    why = subproc.describe_exit(proc.returncode)
    return Measurement(ERROR, detail=f"server {why}; stderr: {subproc.tail(err)}")


def run_load_generator(
    module: str, function: str, kwargs: dict[str, Any], settings: Settings, seconds: float
) -> Measurement:
    """Run a load generator child for about ``seconds`` and return its measurement."""
    try:
        result = subproc.run_child(module, function, kwargs, seconds + settings.timeout)
    except subproc.ChildFailed as exc:
        return Measurement(ERROR, detail=f"load generator failed: {exc}")
    return Measurement.from_json(result)


def measure_echo(
    client_module: str,
    server_argv: list[str],
    size: int,
    settings: Settings,
    warmup: float | None = None,
    duration: float | None = None,
    stall_timeout: float = 5.0,
    client_options: dict[str, Any] | None = None,
) -> Measurement:
    """One echo measurement of the server ``server_argv`` under ``client_module``'s
    ``client`` load generator (TCP: this module's :func:`client`; UDP: ``udp_echo``'s).
    ``client_options`` are further keyword arguments of the load generator (e.g. ``cafile``
    for TLS)."""
    default_warmup, default_duration = measured_times(settings)
    warmup = default_warmup if warmup is None else warmup
    duration = default_duration if duration is None else duration

    def drive(hello: dict) -> Measurement:
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
            **(client_options or {}),
        }
        seconds = warmup + duration + stall_timeout
        return run_load_generator(client_module, "client", kwargs, settings, seconds)

    return with_server(server_argv, settings, drive)


#: Window of an echo self-test's measurements.  Its ``stall_timeout`` is how long a request may
#: take once the window closed before its bytes count as lost (the "drop" corruption's verdict):
#: far above a request's time even on a machine whose CPUs are busy with other work.
SELFTEST: dict[str, float] = {"warmup": 0.2, "duration": 0.3, "stall_timeout": 3.0}


def selftest_requests(size: int, connections: int = CONNECTIONS) -> int:
    """Requests of ``size`` bytes after which every connection has had its full
    :data:`CORRUPT_AFTER` faithful bytes, so the next request of each meets the corruption."""
    return connections * -(-CORRUPT_AFTER // size)


def run_selftest(
    measure: Callable[[str], Measurement],
    log: Callable[[str], None],
    what: str,
    corruptions: tuple[str, ...] = ("flip", "drop"),
) -> bool:
    """Measure a faithful server (``measure("")``), which must be accepted, then one server per
    corruption, each of which must be rejected; True if all were.

    The echo self-tests measure with :data:`SELFTEST` and ``min_requests=selftest_requests(size)``,
    so the outcome does not depend on how fast a busy machine runs the processes."""
    ok = True
    for corrupt in ("", *corruptions):
        result = measure(corrupt)
        want_ok = not corrupt
        passed = result.ok == want_ok
        ok &= passed
        label = f"corrupt={corrupt}" if corrupt else "faithful server"
        verdict = "accepted" if result.ok else f"rejected ({result.detail})"
        log(f"selftest {what}: {label}: {verdict} -> {'PASS' if passed else 'FAIL'}")
    return ok
