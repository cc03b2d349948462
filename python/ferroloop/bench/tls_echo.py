"""TLS echo: the ``tcp_echo`` Protocol server listening with ``loop.create_server(...,
ssl=server_context)``, driven by the fixed load generator of ``echo.py`` speaking TLS.

The server (in its own process, pinned to the first CPU) is the ``asyncio.Protocol`` of
``tcp_echo``: ``data_received(data)`` writes ``data`` back with ``transport.write``, here through
the loop's TLS transport.  The load generator is the TCP one of ``echo.py`` (10 connections in
ping-pong, every byte verified) given the server's certificate as its CA: it connects with
``loop.create_connection(..., ssl=client_context, server_hostname="localhost")`` on the fixed
client loop (uvloop if installed, else asyncio), so its TLS costs the same whatever the server;
it reads through a ``BufferedProtocol`` (see ``echo._BufferedEchoClient`` for why).  At 100 KiB
it does as much AES work per request as the server, so the two are about equally busy: the
server's CPU time per request is the figure to compare.
Both sides use Python's ``ssl`` defaults, which negotiate TLS 1.3; the handshakes happen before the
warm-up, so the window measures record encryption, decryption and the loop's transport.

The certificate is a throwaway self-signed EC (prime256v1) one for ``localhost`` and 127.0.0.1,
made with the ``openssl`` command-line tool once per run in a temporary directory
(:func:`certificate`).  Without ``openssl`` the workloads are "unsupported"; a loop whose
``create_server`` rejects ``ssl=`` with ``NotImplementedError`` is "unsupported" too.  The floor
server has no TLS, so it does not run here.

A corrupting server (``corrupt="flip"``/``"drop"``, applied to the plaintext before it is
encrypted) must be rejected: :func:`selftest` checks that it is.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import echo
from .echo import CONNECTIONS
from .registry import ERROR, UNSUPPORTED, Measurement, Settings, Workload

#: The openssl command line that makes the throwaway certificate (EC key, self-signed, 2 days).
_OPENSSL_REQ = (
    "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
    f"-subj /CN={echo.TLS_HOSTNAME} -addext subjectAltName=DNS:{echo.TLS_HOSTNAME},IP:127.0.0.1"
).split()

_certificate: tuple[str, str] | Measurement | None = None


def certificate() -> tuple[str, str] | Measurement:
    """(certfile, keyfile) of this run's throwaway certificate, made on first use, or the
    failure (a :class:`Measurement`) to report for every TLS measurement."""
    global _certificate
    if _certificate is None:
        _certificate = _make_certificate()
    return _certificate


def _make_certificate() -> tuple[str, str] | Measurement:
    openssl = shutil.which("openssl")
    if openssl is None:
        return Measurement(
            UNSUPPORTED,
            detail="the openssl command-line tool, needed to make the test certificate, is not "
            "installed (apt-get install openssl)",
        )
    directory = Path(tempfile.mkdtemp(prefix="ferroloop-bench-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    argv = [openssl, *_OPENSSL_REQ, "-keyout", str(keyfile), "-out", str(certfile)]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Measurement(ERROR, detail=f"making the test certificate: {exc}")
    if done.returncode != 0 or not certfile.exists() or not keyfile.exists():
        why = f"exit status {done.returncode}: {done.stderr.strip()[-400:]}"
        return Measurement(ERROR, detail=f"openssl failed to make the test certificate ({why})")
    return str(certfile), str(keyfile)


# --------------------------------------------------------------------------- parent side


def measure_tls_echo(
    contestant: str,
    size: int,
    settings: Settings,
    corrupt: str = "",
    warmup: float | None = None,
    duration: float | None = None,
    stall_timeout: float = 5.0,
    min_requests: int = 0,
) -> Measurement:
    """One TLS echo measurement of the Protocol server on ``contestant``."""
    made = certificate()
    if isinstance(made, Measurement):
        return made
    certfile, keyfile = made
    argv = echo.python_server(
        "tcp_echo",
        "server",
        kind="protocol",
        contestant=contestant,
        cpu=settings.server_cpu,
        corrupt=corrupt,
        certfile=certfile,
        keyfile=keyfile,
    )
    return echo.measure_echo(
        "echo",
        argv,
        size,
        settings,
        warmup,
        duration,
        stall_timeout,
        client_options={"cafile": certfile, "min_requests": min_requests},
    )


def _measurer(size: int) -> Callable[[str, Settings], Measurement]:
    def measure(contestant: str, settings: Settings) -> Measurement:
        return measure_tls_echo(contestant, size, settings)

    return measure


def _workload(size_kib: int) -> Workload:
    return Workload(
        name=f"tls_echo_{size_kib}k",
        family="tls_echo",
        title=f"TLS echo Protocol {size_kib} KiB",
        description=(
            "TLS echo server: loop.create_server(..., ssl=context) with an asyncio.Protocol "
            "whose data_received() writes the data back with transport.write(); "
            f"{CONNECTIONS} TLS 1.3 connections in ping-pong with {size_kib} KiB messages from a "
            "fixed load generator, every byte verified; throughput and the server's CPU time "
            "per request (handshakes excluded)."
        ),
        metrics=echo.ECHO_METRICS,
        measure=_measurer(size_kib * 1024),
        quick=size_kib == 1,
    )


WORKLOADS: list[Workload] = [_workload(1), _workload(100)]


def selftest(settings: Settings, log: Callable[[str], None] = print) -> bool:
    """Check that the TLS echo harness accepts a correct server and rejects corrupting ones."""

    def measure(corrupt: str) -> Measurement:
        return measure_tls_echo(
            "asyncio",
            1024,
            settings,
            corrupt,
            **echo.SELFTEST,
            min_requests=echo.selftest_requests(1024),
        )

    return echo.run_selftest(measure, log, "tls echo")
