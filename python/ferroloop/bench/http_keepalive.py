"""HTTP/1.1 keep-alive: a small ``asyncio.Protocol`` server using the ``httptools`` parser on the
contestant loop, driven by ``wrk``.

The server (in its own process, pinned to the first CPU) feeds every chunk it receives to an
``httptools.HttpRequestParser`` and answers each complete request with the same fixed 78-byte
response (``200 OK``, ``Hello, World!``), keeping the connection open.  The load generator is
``wrk -t1 -c50 -d<s>s`` (one thread, 50 connections), pinned to the second CPU, the same for
every contestant; the floor column is the plain Rust epoll server answering every ``\\r\\n\\r\\n``
with the same bytes.

Before wrk runs, the harness checks the server's answers byte for byte (pipelined requests on one
connection); wrk then counts non-2xx answers and socket errors, and any makes the measurement an
error.  The measured window runs from just before wrk starts to just after it exits: requests/s
is wrk's (requests over its own run time), the **server's CPU time per request** is the server
process's CPU time over the window divided by wrk's request count, and wrk's CPU time (from
``wait4``) gives how busy the load generator was.

Without ``wrk`` (``apt-get install wrk``) or ``httptools`` the workload reports "unsupported".
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from . import echo, floor, procstat, subproc
from .registry import ERROR, FLOOR, UNSUPPORTED, Measurement, Metric, Settings, Workload

CONNECTIONS = 50
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
#: A corrupting server with ``corrupt="status"`` answers 500 after this many requests.
_STATUS_AFTER = 1000
_ERROR_RESPONSE = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 13\r\nContent-Type: text/plain"
    b"\r\n\r\nHello, World!"
)

#: wrk's report, as one JSON line (wrk's own text output is meant for people).
_WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# --------------------------------------------------------------------------- server (child)


def _protocol_class(corrupt: str) -> type[asyncio.Protocol]:
    import httptools

    class HttpProtocol(asyncio.Protocol):
        __slots__ = ("keep_alive", "parser", "transport")
        transport: asyncio.Transport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            self.parser = httptools.HttpRequestParser(self)
            self.keep_alive = True

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()

        def on_headers_complete(self) -> None:
            self.keep_alive = self.parser.should_keep_alive()

        def on_message_complete(self) -> None:
            self.transport.write(RESPONSE)
            if not self.keep_alive:
                self.transport.close()

    if not corrupt:
        return HttpProtocol

    class CorruptingHttpProtocol(HttpProtocol):
        __slots__ = ()
        answered = 0

        def on_message_complete(self) -> None:
            cls = CorruptingHttpProtocol
            cls.answered += 1
            if corrupt == "flip":
                self.transport.write(RESPONSE[:-3] + b"X" + RESPONSE[-2:])
            elif cls.answered > _STATUS_AFTER:
                self.transport.write(_ERROR_RESPONSE)
            else:
                self.transport.write(RESPONSE)

    return CorruptingHttpProtocol


def server(contestant: str, cpu: int | None = None, corrupt: str = "") -> dict:
    """Child process: the HTTP server on ``contestant``'s loop (``corrupt``: "flip" answers with
    a wrong byte, "status" with 500 after the first 1000 requests)."""

    async def serve(loop: asyncio.AbstractEventLoop) -> None:
        protocol = _protocol_class(corrupt)
        listener = echo.listening_socket()
        server = await loop.create_server(protocol, sock=listener, backlog=1024)
        echo.announce(listener.getsockname()[1])
        async with server:
            await echo.forever()

    return echo.serve_until_killed(contestant, cpu, serve)


# --------------------------------------------------------------------------- parent side


def check_responses(port: int, timeout: float = 5.0, pipelined: int = 3) -> str | None:
    """Send requests (``pipelined`` in one write, then one more) and compare the answers byte
    for byte; returns what was wrong, or None."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for count in (pipelined, 1):
            sock.sendall(REQUEST * count)
            want = RESPONSE * count
            got = b""
            try:
                while len(got) < len(want):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except TimeoutError:
                pass
            if got != want:
                return (
                    f"wrong answer to {count} request(s): expected {len(want)} bytes "
                    f"{want[:100]!r}, got {len(got)} bytes {got[:100]!r}"
                )
    return None


def _wait_with_rusage(proc: subprocess.Popen, timeout: float) -> tuple[int, int]:
    """Wait for ``proc`` (killing it after ``timeout``); returns (exit code, CPU time in ns)."""
    timer = threading.Timer(timeout, lambda: proc.send_signal(signal.SIGKILL))
    timer.start()
    try:
        while True:
            try:
                _, status, usage = os.wait4(proc.pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, int((usage.ru_utime + usage.ru_stime) * 1e9)


def run_wrk(port: int, server_pid: int, settings: Settings, seconds: int) -> Measurement:
    """Run wrk against ``port`` for ``seconds``; the measurement of the server ``server_pid``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return Measurement(UNSUPPORTED, detail="wrk is not installed (apt-get install wrk)")
    cpus = echo.client_cpus(settings.client_cpu, settings.server_cpu)
    client_cpu = settings.client_cpu
    with (
        tempfile.NamedTemporaryFile("w", suffix=".lua") as script,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        script.write(_WRK_SCRIPT)
        script.flush()
        argv = [
            wrk,
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            script.name,
            f"http://127.0.0.1:{port}/",
        ]
        busy0 = procstat.cpu_busy_ns(cpus)
        server0 = procstat.snapshot(server_pid)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=(lambda: procstat.pin_to_cpu(client_cpu))
            if client_cpu is not None
            else None,
        )
        code, wrk_ns = _wait_with_rusage(proc, seconds + settings.timeout)
        server1 = procstat.snapshot(server_pid)
        busy = procstat.cpu_busy_ns(cpus) - busy0
        out.seek(0)
        report: dict[str, Any] | None = None
        for line in out.read().decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                report = json.loads(line)
        if code != 0 or report is None:
            why = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
            return Measurement(ERROR, detail=f"wrk failed ({why}): {subproc.tail(err)}")
    errors = {k: report[k] for k in ("connect", "read", "write", "timeout", "status") if report[k]}
    if errors:
        text = ", ".join(f"{k} {v}" for k, v in errors.items())
        what = "non-2xx/3xx answers or socket errors"
        return Measurement(ERROR, detail=f"wrk counted {what}: {text}")
    server_use = server1 - server0
    window = echo.Window(
        requests=int(report["requests"]),
        server=server_use,
        client=procstat.Usage(server_use.wall_ns, wrk_ns, 0),
        busy_ns=busy,
        pinned=cpus is not None,
    )
    measurement = window.measurement()
    if measurement.ok and report["duration_us"] > 0:
        measurement.values["rps"] = report["requests"] * 1e6 / report["duration_us"]
        measurement.values["client_busy"] = wrk_ns / (report["duration_us"] * 1000)
    return measurement


def measure_http(
    contestant: str, settings: Settings, corrupt: str = "", seconds: int = 0
) -> Measurement:
    """One HTTP measurement of ``contestant``'s server (or of the floor) under wrk."""
    if shutil.which("wrk") is None:
        return Measurement(UNSUPPORTED, detail="wrk is not installed (apt-get install wrk)")
    if contestant == FLOOR:
        argv = floor.command("http", settings.server_cpu)
    else:
        if importlib.util.find_spec("httptools") is None:
            return Measurement(UNSUPPORTED, detail="httptools is not installed")
        argv = echo.python_server(
            "http_keepalive",
            "server",
            contestant=contestant,
            cpu=settings.server_cpu,
            corrupt=corrupt,
        )
    if not seconds:
        seconds = max(1, round(echo.measured_times(settings)[1]))

    def drive(hello: dict) -> Measurement:
        try:
            wrong = check_responses(hello["port"])
        except OSError as exc:
            wrong = f"checking the answers failed: {exc!r}"
        if wrong:
            return Measurement(ERROR, detail=wrong)
        return run_wrk(hello["port"], hello["pid"], settings, seconds)

    return echo.with_server(argv, settings, drive)


def _measure(contestant: str, settings: Settings) -> Measurement:
    return measure_http(contestant, settings)


WORKLOADS: list[Workload] = [
    Workload(
        name="http_keepalive",
        family="http_keepalive",
        title="HTTP keep-alive (httptools)",
        description=(
            "HTTP/1.1 keep-alive server: an asyncio.Protocol feeding an httptools parser, "
            f"answering every request with a fixed {len(RESPONSE)}-byte response; load from "
            "wrk -t1 -c50 "
            "(pinned to the other CPU), answers checked byte for byte before and wrk's error "
            "counts after; requests/s and the server's CPU time per request. The floor column "
            "is a plain Rust epoll server that answers every blank line with the same bytes."
        ),
        metrics=(
            Metric("rps", "throughput", "req/s", "higher", "rate"),
            Metric("server_us", "server CPU/request", "µs", "lower", "us"),
        ),
        measure=_measure,
        extras=(FLOOR,),
    )
]


def selftest(settings: Settings, log: Callable[[str], None] = print) -> bool:
    """Check that the HTTP harness accepts a correct server and rejects wrong answers."""
    if shutil.which("wrk") is None or importlib.util.find_spec("httptools") is None:
        log("selftest http: skipped (wrk or httptools not installed)")
        return True

    def measure(corrupt: str) -> Measurement:
        return measure_http("asyncio", settings, corrupt, seconds=1)

    return echo.run_selftest(measure, log, "http", ("flip", "status"))
