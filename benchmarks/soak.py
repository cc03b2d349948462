"""Leak soak: what each unit of work leaves behind, on asyncio and ferroloop side by side.

A unit is one connection, spawn, endpoint, callback, loop... For each scenario and loop, a
fresh child process warms up with one batch of units, then runs ROUNDS more batches; after
each batch it collects garbage and samples

- RSS (``/proc/self/statm``),
- open file descriptors (``/proc/self/fd``),
- objects tracked by the cyclic GC (``gc.get_objects()``),
- memory blocks held by Python's allocator (``sys.getallocatedblocks()``), which also counts
  objects the GC does not track.

The report gives each figure's growth per 10k units: the smallest over the rounds, since a
leak grows every round and noise does not. RSS moves in pages and with the allocator's mood:
one page per batch is the "RSS ±" column, large for the scenarios whose batches are small
(spawns, TLS handshakes), and `--check` tolerates two of them. The block count is exact.

    python benchmarks/soak.py                        # every scenario, asyncio and ferroloop
    python benchmarks/soak.py --only tcp,udp --scale 0.5
    python benchmarks/soak.py --check                # exit 1 if ferroloop exceeds the limits
    make soak                                        # the same, every scenario (~2 minutes)

A fifth of each batch, on ferroloop alone and without the RSS limit (too coarse at that size),
runs in the test suite (tests/reliability/test_soak_slice.py): fds and GC objects must not grow.

Linux only (``/proc``). Not a benchmark: nothing here is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings

PER = 10_000  # growth is reported per this many units


# -- measuring ---------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGESIZE") // 1024


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # minus the listing's own


def _sample() -> dict:
    for _ in range(3):
        gc.collect()
    return {
        "rss_kib": _rss_kib(),
        "fds": _fds(),
        "gc_objects": len(gc.get_objects()),
        "blocks": sys.getallocatedblocks(),
    }


def _new_loop(kind):
    if kind == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    return asyncio.new_event_loop()


# -- scenarios ---------------------------------------------------------------------------
#
# A scenario is a class with `unit` (what one unit is), `units` (per batch, at --scale 1),
# and `batch(n)`, which runs n units. Most run on one loop (`LoopScenario`); `loops` makes a
# loop per unit.


class LoopScenario:
    unit = "unit"
    units = 2000

    def __init__(self, kind):
        self.kind = kind
        self.loop = _new_loop(kind)
        self.loop.set_exception_handler(lambda loop, context: None)
        self.loop.run_until_complete(self.setup())

    async def setup(self):
        pass

    async def teardown(self):
        pass

    def batch(self, n):
        self.loop.run_until_complete(asyncio.wait_for(self.run(n), 600))

    async def run(self, n):
        raise NotImplementedError

    def close(self):
        self.loop.run_until_complete(self.teardown())
        self.loop.close()


class _Holder:
    """Keeps its own handle: the cycle holder -> handle -> bound method -> holder."""

    def __init__(self, fail=False):
        self.handle = None
        self.fail = fail
        self.payload = bytearray(64)

    def cb(self):
        if self.fail:
            raise ValueError("soak")


class Callbacks(LoopScenario):
    """call_soon; every holder keeps its handle (a cycle), every 10th callback raises."""

    unit = "callback"
    units = 20000

    async def run(self, n):
        loop = self.loop
        for i in range(n):
            h = _Holder(fail=i % 10 == 0)
            h.handle = loop.call_soon(h.cb)
            if i % 100 == 99:
                await asyncio.sleep(0)
        await asyncio.sleep(0)


class DebugCallbacks(Callbacks):
    """Callbacks, in debug mode (handles keep a traceback and their callback after running)."""

    units = 2000

    async def setup(self):
        self.loop.set_debug(True)
        self.loop.slow_callback_duration = 1e9


class Timers(LoopScenario):
    """call_later: half fire, half are cancelled; every holder keeps its timer."""

    unit = "timer"
    units = 20000

    async def run(self, n):
        loop = self.loop
        pending = []
        for i in range(n):
            h = _Holder()
            if i % 2:
                h.handle = loop.call_later(3600, h.cb)
                pending.append(h.handle)
            else:
                h.handle = loop.call_later(0, h.cb)
            if i % 100 == 99:
                await asyncio.sleep(0)
        for t in pending:
            t.cancel()
        await asyncio.sleep(0.002)


class Tasks(LoopScenario):
    """create_task of a coroutine that yields once, gathered by hundreds."""

    unit = "task"
    units = 20000

    async def run(self, n):
        async def step():
            await asyncio.sleep(0)

        for _ in range(n // 100):
            await asyncio.gather(*(self.loop.create_task(step()) for _ in range(100)))


class Loops:
    """A new loop per unit: a pending timer kept by its holder, a task sleeping, an unclosed
    socket transport, then close(); every 4th loop is dropped without close() instead."""

    unit = "loop"
    units = 1000

    def __init__(self, kind):
        self.kind = kind

    def batch(self, n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            for i in range(n):
                self._one(i % 4 == 3)
                if i % 50 == 49:
                    gc.collect()

    def _one(self, drop):
        loop = _new_loop(self.kind)
        loop.set_exception_handler(lambda loop, context: None)
        h = _Holder()
        h.handle = loop.call_later(60, h.cb)
        a, b = socket.socketpair()

        async def main():
            await loop.create_connection(asyncio.Protocol, sock=a)
            loop.create_task(asyncio.sleep(60))
            await asyncio.sleep(0)

        loop.run_until_complete(main())
        b.close()
        loop.call_soon(loop.stop)
        if not drop:
            loop.close()

    def close(self):
        pass


class EchoServer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.hold = bytearray(256)  # what a real protocol holds

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False


class Client(asyncio.Protocol):
    def __init__(self, loop):
        self.got = bytearray()
        self.echoed = loop.create_future()
        self.lost = loop.create_future()
        self.hold = bytearray(256)

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"x" * 100)

    def data_received(self, data):
        self.got += data
        if len(self.got) >= 100 and not self.echoed.done():
            self.echoed.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(None)


class Tcp(LoopScenario):
    """A Protocol echo server and Protocol clients that keep their transports: connect, echo
    100 bytes, the client closes; ten connections at a time."""

    unit = "connection"
    family = "tcp"
    ssl = False

    async def setup(self):
        self.server_ctx = self.client_ctx = None
        if self.ssl:
            self.server_ctx, self.client_ctx = _tls_contexts()
        if self.family == "unix":
            self.dir = tempfile.mkdtemp(prefix="ferroloop-soak-")
            self.path = os.path.join(self.dir, "s")
            self.server = await self.loop.create_unix_server(
                EchoServer, self.path, ssl=self.server_ctx
            )
        else:
            self.server = await self.loop.create_server(
                EchoServer, "127.0.0.1", 0, ssl=self.server_ctx
            )
            self.port = self.server.sockets[0].getsockname()[1]

    async def teardown(self):
        self.server.close()
        await self.server.wait_closed()
        if self.family == "unix":
            shutil.rmtree(self.dir, ignore_errors=True)

    async def one(self):
        loop = self.loop
        kwargs = {}
        if self.ssl:
            kwargs = {"ssl": self.client_ctx, "server_hostname": "localhost"}
        if self.family == "unix":
            _, proto = await loop.create_unix_connection(lambda: Client(loop), self.path, **kwargs)
        else:
            _, proto = await loop.create_connection(
                lambda: Client(loop), "127.0.0.1", self.port, **kwargs
            )
        await proto.echoed
        proto.transport.close()
        await proto.lost

    async def run(self, n):
        for _ in range(n // 10):
            await asyncio.gather(*(self.one() for _ in range(10)))
        await asyncio.sleep(0.01)  # the servers' side of the last connections


class Unix(Tcp):
    """As tcp, over a Unix socket."""

    family = "unix"


class Tls(Tcp):
    """As tcp, over TLS (a handshake per connection)."""

    units = 1000
    ssl = True


class Streams(Tcp):
    """asyncio streams: start_server, open_connection, echo a line, close, wait_closed."""

    async def setup(self):
        async def handle(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def one(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"x" * 100 + b"\n")
        assert len(await reader.readline()) == 101
        writer.close()
        await writer.wait_closed()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.echoed = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.sendto(b"x" * 100)

    def datagram_received(self, data, addr):
        if not self.echoed.done():
            self.echoed.set_result(data)

    def connection_lost(self, exc):
        self.lost.set_result(None)


class Udp(LoopScenario):
    """A UDP endpoint per unit (keeping its transport): send a datagram, get the echo, close."""

    unit = "endpoint"

    async def setup(self):
        self.server, _ = await self.loop.create_datagram_endpoint(
            UdpEcho, local_addr=("127.0.0.1", 0)
        )
        self.addr = self.server.get_extra_info("sockname")

    async def teardown(self):
        self.server.close()

    async def one(self):
        loop = self.loop
        _, proto = await loop.create_datagram_endpoint(
            lambda: UdpClient(loop), remote_addr=self.addr
        )
        await proto.echoed
        proto.transport.close()
        await proto.lost

    async def run(self, n):
        for _ in range(n // 10):
            await asyncio.gather(*(self.one() for _ in range(10)))


class PipeReader(asyncio.Protocol):
    def __init__(self, loop):
        self.got = bytearray()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.got += data

    def connection_lost(self, exc):
        self.lost.set_result(None)


class PipeWriter(asyncio.BaseProtocol):
    def __init__(self, loop):
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost.set_result(None)


class Pipes(LoopScenario):
    """connect_read_pipe and connect_write_pipe over a new os.pipe(); write, read, close."""

    unit = "pipe pair"

    async def one(self):
        loop = self.loop
        rfd, wfd = os.pipe()
        # The transports own the files (and close them).
        rpipe, wpipe = open(rfd, "rb", 0), open(wfd, "wb", 0)  # noqa: SIM115
        _, reader = await loop.connect_read_pipe(lambda: PipeReader(loop), rpipe)
        _, writer = await loop.connect_write_pipe(lambda: PipeWriter(loop), wpipe)
        writer.transport.write(b"x" * 100)
        writer.transport.close()
        await writer.lost
        await reader.lost  # EOF closes the read side

    async def run(self, n):
        for _ in range(n // 10):
            await asyncio.gather(*(self.one() for _ in range(10)))


class Spawns(LoopScenario):
    """create_subprocess_exec of `echo` with stdout piped; communicate()."""

    unit = "spawn"
    units = 1500

    async def run(self, n):
        for _ in range(n // 10):
            procs = [
                await asyncio.create_subprocess_exec(
                    "echo", "soak", stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
                for _ in range(10)
            ]
            for p in procs:
                out, _ = await p.communicate()
                assert out == b"soak\n", out


def _tls_contexts():
    import ssl

    d = tempfile.mkdtemp(prefix="ferroloop-soak-tls-")
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-days", "2", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    shutil.rmtree(d, ignore_errors=True)
    return server, client


SCENARIOS = {
    "callbacks": Callbacks,
    "debug_callbacks": DebugCallbacks,
    "timers": Timers,
    "tasks": Tasks,
    "loops": Loops,
    "tcp": Tcp,
    "unix": Unix,
    "streams": Streams,
    "tls": Tls,
    "udp": Udp,
    "pipes": Pipes,
    "spawns": Spawns,
}


# -- the child: one scenario on one loop -------------------------------------------------


def child(kind, name, units, rounds):
    scenario = SCENARIOS[name](kind)
    scenario.batch(units)  # warm-up: caches, free lists, the allocator's arenas
    samples = [_sample()]
    for _ in range(rounds):
        scenario.batch(units)
        samples.append(_sample())
    scenario.close()
    growth = {
        key: min(b[key] - a[key] for a, b in itertools.pairwise(samples)) * PER / units
        for key in samples[0]
    }
    resolution = os.sysconf("SC_PAGESIZE") / 1024 * PER / units
    print(json.dumps({"units": units, "growth": growth, "rss_resolution": resolution}))


# -- the parent: every scenario, side by side ---------------------------------------------

COLUMNS = (
    ("rss_kib", "RSS KiB"),
    ("fds", "fds"),
    ("gc_objects", "GC objects"),
    ("blocks", "blocks"),
)


def run_child(kind, name, units, rounds, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, name, str(units)]
    cmd.append(str(rounds))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"exit {r.returncode}: {tail}"
    return json.loads(r.stdout.strip().splitlines()[-1]), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--loops", default="asyncio,ferroloop")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--check", action="store_true", help="exit 1 above the limits")
    parser.add_argument("--max-rss-kib", type=float, default=64, help="per 10k units (--check)")
    parser.add_argument("--max-fds", type=float, default=0, help="per 10k units (--check)")
    parser.add_argument(
        "--max-gc-objects", type=float, default=None, help="per 10k units (--check; default: any)"
    )
    parser.add_argument("--child", nargs=4, metavar=("LOOP", "SCENARIO", "UNITS", "ROUNDS"))
    args = parser.parse_args(argv)
    if args.child:
        kind, name, units, rounds = args.child
        return child(kind, name, int(units), int(rounds))

    names = args.only.split(",") if args.only else list(SCENARIOS)
    kinds = args.loops.split(",")
    header = f"{'scenario':16} {'unit':11} {'loop':10}" + "".join(f"{t:>12}" for _, t in COLUMNS)
    header += f"{'RSS ±':>10}"
    print(f"growth per {PER:,} units after a warm-up batch (min over {args.rounds} rounds)")
    print(header)
    failures = []
    for name in names:
        cls = SCENARIOS[name]
        units = max(10, int(cls.units * args.scale) // 10 * 10)
        for kind in kinds:
            result, error = run_child(kind, name, units, args.rounds, args.timeout)
            row = f"{name:16} {cls.unit:11} {kind:10}"
            if error:
                print(f"{row} error: {error}", flush=True)
                if kind == "ferroloop":
                    failures.append(f"{name}: {error}")
                continue
            g, resolution = result["growth"], result["rss_resolution"]
            row += "".join(f"{g[key]:12.1f}" for key, _ in COLUMNS)
            print(f"{row}{resolution:10.1f}", flush=True)
            if kind == "ferroloop":
                if g["rss_kib"] > max(args.max_rss_kib, 2 * resolution):
                    failures.append(f"{name}: RSS +{g['rss_kib']:.0f} KiB per {PER:,}")
                if g["fds"] > args.max_fds:
                    failures.append(f"{name}: {g['fds']:.0f} fds per {PER:,}")
                if args.max_gc_objects is not None and g["gc_objects"] > args.max_gc_objects:
                    failures.append(f"{name}: {g['gc_objects']:.0f} GC objects per {PER:,}")
    if args.check and failures:
        print("over the limits:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
