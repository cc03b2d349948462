"""The libraries built on asyncio, on each loop: aiohttp (HTTP, HTTPS, WebSocket, chunked
bodies, static files), websockets, uvicorn serving ASGI apps, asyncpg against a PostgreSQL
server the tests start, Twisted's asyncio reactor, and blockbuster watching the loop.

Each library is optional: its tests are skipped when it is not installed (``make venv``
installs them). Everything binds 127.0.0.1 port 0 or a Unix socket in a temporary
directory; TLS uses the suite's own certificates.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest
from _netkit import payload, run
from _tlskit import client_context, server_context


def _listening_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# -- aiohttp ------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_aiohttp_server_and_client(loop, tls):
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    async def hello(request):
        return web.Response(text="hello " + request.match_info["name"])

    async def echo(request):
        return web.Response(body=await request.read())

    async def shout(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data.upper())
        return ws

    async def main():
        app = web.Application(client_max_size=8 << 20)
        app.add_routes(
            [web.get("/hello/{name}", hello), web.post("/echo", echo), web.get("/ws", shout)]
        )
        runner = web.AppRunner(app)
        await runner.setup()
        sock = _listening_socket()
        site = web.SockSite(runner, sock, ssl_context=server_context() if tls else None)
        await site.start()
        port = sock.getsockname()[1]
        base = f"{'https' if tls else 'http'}://localhost:{port}"
        ssl = client_context() if tls else True  # True: aiohttp's default checks
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/hello/bob", ssl=ssl) as r:
                    assert r.status == 200
                    assert await r.text() == "hello bob"
                body = payload(3 << 20)
                async with session.post(f"{base}/echo", data=body, ssl=ssl) as r:
                    assert await r.read() == body
                ws_url = f"{'wss' if tls else 'ws'}://localhost:{port}/ws"
                async with session.ws_connect(ws_url, ssl=ssl) as ws:
                    for i in range(20):
                        await ws.send_str(f"m{i}")
                        assert (await ws.receive()).data == f"M{i}"

                async def get(i):
                    async with session.get(f"{base}/hello/{i}", ssl=ssl) as r:
                        return await r.text()

                texts = await asyncio.gather(*(get(i) for i in range(30)))
                assert texts == [f"hello {i}" for i in range(30)]
        finally:
            await runner.cleanup()

    run(loop, main())


# -- websockets ---------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_websockets_echo(loop, tls):
    websockets = pytest.importorskip("websockets")

    async def reverse(ws):
        async for message in ws:
            await ws.send(message[::-1])

    async def main():
        ssl = server_context() if tls else None
        async with websockets.serve(reverse, "127.0.0.1", 0, ssl=ssl) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            uri = f"{'wss' if tls else 'ws'}://localhost:{port}"
            async with websockets.connect(uri, ssl=client_context() if tls else None) as ws:
                for i in range(50):
                    await ws.send(f"abc{i}")
                    assert await ws.recv() == f"abc{i}"[::-1]
                big = payload(512 << 10)  # under websockets' 1 MiB limit once framed
                await ws.send(big)
                assert await ws.recv() == big[::-1]

    run(loop, main())


# -- uvicorn + Starlette ------------------------------------------------------------------


def test_uvicorn_serves_starlette(loop):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    aiohttp = pytest.importorskip("aiohttp")
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def home(request):
        return PlainTextResponse("home")

    async def mirror(request):
        return JSONResponse(await request.json())

    app = Starlette(routes=[Route("/", home), Route("/json", mirror, methods=["POST"])])

    async def main():
        sock = _listening_socket()
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            while not server.started:
                assert not serving.done(), serving.exception()
                await asyncio.sleep(0.01)  # uvicorn has no startup event to await
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/") as r:
                    assert await r.text() == "home"
                doc = {"a": [1, 2], "b": "x" * 10000}
                async with session.post(f"http://127.0.0.1:{port}/json", json=doc) as r:
                    assert await r.json() == doc
        finally:
            server.should_exit = True
            await serving
            sock.close()

    run(loop, main())


# -- Twisted ------------------------------------------------------------------------------

# The asyncio reactor is installed once per process, so each loop gets its own interpreter.
_TWISTED_ECHO = textwrap.dedent(
    """
    import asyncio, sys
    if sys.argv[1] == "ferroloop":
        import ferroloop
        loop = ferroloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor
    asyncioreactor.install(loop)
    from twisted.internet import defer, protocol, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

    PAYLOAD = bytes(range(256)) * 1000

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

    class Client(protocol.Protocol):
        def __init__(self):
            self.received = b""
            self.done = defer.Deferred()
        def dataReceived(self, data):
            self.received += data
            if len(self.received) >= len(PAYLOAD):
                self.done.callback(self.received)

    @defer.inlineCallbacks
    def main():
        try:
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            port = yield endpoint.listen(protocol.Factory.forProtocol(Echo))
            client = Client()
            target = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
            yield connectProtocol(target, client)
            client.transport.write(PAYLOAD)
            received = yield client.done
            assert received == PAYLOAD, "echo differs"
            client.transport.loseConnection()
            yield port.stopListening()
            print("echoed", len(received), type(loop).__module__)
        finally:
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    """
)


def test_twisted_asyncio_reactor(loop_kind):
    pytest.importorskip("twisted")
    done = subprocess.run(
        [sys.executable, "-c", _TWISTED_ECHO, loop_kind],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    module = "ferroloop" if loop_kind == "ferroloop" else "asyncio"
    assert done.stdout.split()[:2] == ["echoed", str(256 * 1000)]
    assert done.stdout.split()[2].startswith(module)


# -- blockbuster --------------------------------------------------------------------------


def test_blockbuster_finds_no_blocking_call_in_the_loop(loop, tmp_path):
    # Blocking-call detectors wrap os.stat, os.sendfile, socket methods... and exempt
    # asyncio's own functions by file name; the loop's own calls must not trip them.
    blockbuster = pytest.importorskip("blockbuster")
    data = payload(3 << 20)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    sock_path = tempfile.mktemp(prefix="fl", suffix=".sock", dir="/tmp")

    async def echo(reader, writer):
        writer.write(await reader.read())
        await writer.drain()
        writer.close()

    async def round_trip(reader, writer, body):
        writer.write(body)
        writer.write_eof()
        assert await reader.read() == body
        writer.close()

    async def main():
        # TCP: serve, connect, echo.
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await round_trip(*await asyncio.open_connection("127.0.0.1", port), b"tcp")
        # Unix: serve on a path (checked for a stale file first), connect, close (3.13+
        # removes the file).
        unix = await asyncio.start_unix_server(echo, sock_path)
        await round_trip(*await asyncio.open_unix_connection(sock_path), b"unix")
        unix.close()
        await unix.wait_closed()
        # loop.sendfile over a transport, and loop.sock_sendfile over a socket.
        received = asyncio.Queue()

        async def sink(reader, writer):
            received.put_nowait(await reader.read())
            writer.close()

        sink_server = await asyncio.start_server(sink, "127.0.0.1", 0)
        sink_port = sink_server.sockets[0].getsockname()[1]
        with open(path, "rb") as f:
            _, writer = await asyncio.open_connection("127.0.0.1", sink_port)
            assert await loop.sendfile(writer.transport, f) == len(data)
            writer.close()
            await writer.wait_closed()
            with socket.socket() as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", sink_port))
                assert await loop.sock_sendfile(sock, f, 0) == len(data)
        got = [await received.get(), await received.get()]
        for s in (server, sink_server):
            s.close()
            await s.wait_closed()
        return got

    try:
        with blockbuster.blockbuster_ctx():
            received = run(loop, main())
    finally:
        if os.path.exists(sock_path):
            os.unlink(sock_path)
    assert received == [data, data]


# -- asyncpg + PostgreSQL -----------------------------------------------------------------


def _postgres_bin():
    """The directory of PostgreSQL's server binaries, or None."""
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return dirs[-1] if dirs else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own on a Unix socket in a temporary directory, stopped at
    the end: yields the socket directory (user postgres, trust authentication).

    PostgreSQL refuses to run as root: as root, the server runs as the user nobody.
    """
    pytest.importorskip("asyncpg")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (.ci/install-postgres.sh)")
    as_user = {}
    tmp = tempfile.mkdtemp(prefix="flpg")
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        os.chown(tmp, nobody.pw_uid, nobody.pw_gid)
    data, log = os.path.join(tmp, "data"), os.path.join(tmp, "log")

    def pg(tool, *args):
        return subprocess.run(
            [os.path.join(bindir, tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp,
            **as_user,
        )

    try:
        done = pg("initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
        assert done.returncode == 0, done.stderr[-2000:]
        options = f"-k {tmp} -c listen_addresses='' -F"
        done = pg("pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start")
        if done.returncode != 0:
            with open(log) as f:
                pytest.fail(f"pg_ctl start failed: {done.stderr[-2000:]}{f.read()[-2000:]}")
        try:
            yield tmp
        finally:
            pg("pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_asyncpg_queries_transactions_notify_and_pool(loop, postgres):
    asyncpg = pytest.importorskip("asyncpg")

    async def main():
        conn = await asyncpg.connect(host=postgres, user="postgres", database="postgres")
        try:
            assert await conn.fetchval("SELECT 1 + 1") == 2
            await conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, body bytea)")
            rows = [(i, payload(i * 100, seed=i)) for i in range(200)]
            await conn.executemany("INSERT INTO t VALUES ($1, $2)", rows)
            await conn.copy_records_to_table("t", records=[(1000, b"copied")])
            got = await conn.fetch("SELECT id, body FROM t ORDER BY id")
            assert [tuple(r) for r in got] == [*rows, (1000, b"copied")]
            stmt = await conn.prepare("SELECT body FROM t WHERE id = $1")
            assert await stmt.fetchval(7) == rows[7][1]
            # A rolled-back transaction leaves nothing behind.
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute("DELETE FROM t")
                    raise RuntimeError("roll back")
            assert await conn.fetchval("SELECT count(*) FROM t") == 201
            # LISTEN/NOTIFY through a second connection.
            notified = loop.create_future()
            await conn.add_listener("ch", lambda *args: notified.set_result(args[-1]))
            other = await asyncpg.connect(host=postgres, user="postgres", database="postgres")
            await other.execute("NOTIFY ch, 'hello'")
            assert await notified == "hello"
            await other.close()
            # A query past its timeout is cancelled (a cancel request on a new connection).
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("SELECT pg_sleep(30)", timeout=0.2)
            assert await conn.fetchval("SELECT 'still usable'") == "still usable"
        finally:
            await conn.close()
        async with asyncpg.create_pool(
            host=postgres, user="postgres", database="postgres", min_size=2, max_size=4
        ) as pool:
            results = await asyncio.gather(
                *(pool.fetchval("SELECT $1::int * 2", i) for i in range(40))
            )
            assert results == [i * 2 for i in range(40)]

    run(loop, main())
