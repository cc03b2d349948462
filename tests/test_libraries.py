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
def test_aiohttp_server_and_client(loop, tls, tmp_path):
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    static = payload(2 << 20, seed=5)  # served with loop.sendfile (TLS: its fallback)
    (tmp_path / "big.bin").write_bytes(static)

    async def stream(request):
        # A chunked response, written piece by piece.
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(50):
            await response.write(b"chunk%d;" % i)
        await response.write_eof()
        return response

    async def count(request):
        # A chunked request body, read as it arrives.
        assert request.headers.get("Transfer-Encoding") == "chunked"
        total = 0
        async for piece in request.content.iter_any():
            total += len(piece)
        return web.Response(text=str(total))

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
            [
                web.get("/hello/{name}", hello),
                web.post("/echo", echo),
                web.get("/ws", shout),
                web.get("/stream", stream),
                web.post("/count", count),
                web.static("/static", tmp_path),
            ]
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
                async with session.get(f"{base}/stream", ssl=ssl) as r:
                    assert r.headers["Transfer-Encoding"] == "chunked"
                    assert await r.read() == b"".join(b"chunk%d;" % i for i in range(50))

                async def pieces():
                    for _ in range(64):
                        yield payload(10_000)

                async with session.post(f"{base}/count", data=pieces(), ssl=ssl) as r:
                    assert await r.text() == str(64 * 10_000)
                async with session.get(f"{base}/static/big.bin", ssl=ssl) as r:
                    assert r.status == 200
                    assert await r.read() == static
                ranged = {"Range": "bytes=1000-1999"}
                async with session.get(f"{base}/static/big.bin", headers=ranged, ssl=ssl) as r:
                    assert r.status == 206
                    assert await r.read() == static[1000:2000]
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


def test_uvicorn_websocket_and_graceful_shutdown(loop):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("websockets")
    aiohttp = pytest.importorskip("aiohttp")

    async def app(scope, receive, send):
        # A raw ASGI app: a WebSocket that upper-cases text, and a slow HTTP response that
        # is in flight when the server is told to exit.
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message["text"].upper()})
            return
        assert scope["type"] == "http"
        await receive()
        started.set_result(None)
        await release
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"finished"})

    async def main():
        nonlocal started, release
        started, release = loop.create_future(), loop.create_future()
        sock = _listening_socket()
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            while not server.started:
                assert not serving.done(), serving.exception()
                await asyncio.sleep(0.01)  # uvicorn has no startup event to await
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                    for i in range(10):
                        await ws.send_str(f"m{i}")
                        assert (await ws.receive()).data == f"M{i}"
                slow = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow"))
                await started
                server.should_exit = True  # graceful: the request in flight completes
                await asyncio.sleep(0.2)  # nothing to await: the server must not be done
                assert not serving.done()
                release.set_result(None)
                async with await slow as r:
                    assert await r.read() == b"finished"
            await serving
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
        finally:
            server.should_exit = True
            await serving
            sock.close()

    started = release = None
    run(loop, main())


# -- Twisted ------------------------------------------------------------------------------

# The asyncio reactor is installed once per process, so each loop gets its own interpreter.
# argv: loop kind, server certificate, server key, CA certificate.
_TWISTED_SCRIPT = textwrap.dedent(
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
    from twisted.internet import defer, protocol, reactor, ssl
    from twisted.internet.endpoints import (
        SSL4ClientEndpoint, SSL4ServerEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint,
        connectProtocol,
    )

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

    class Child(protocol.ProcessProtocol):
        def __init__(self):
            self.out = b""
            self.ended = defer.Deferred()
        def connectionMade(self):
            self.transport.write(PAYLOAD)
            self.transport.closeStdin()
        def outReceived(self, data):
            self.out += data
        def processEnded(self, reason):
            self.ended.callback(reason.value.exitCode)

    @defer.inlineCallbacks
    def echo(server_endpoint, client_endpoint_for):
        port = yield server_endpoint.listen(protocol.Factory.forProtocol(Echo))
        client = Client()
        yield connectProtocol(client_endpoint_for(port.getHost().port), client)
        client.transport.write(PAYLOAD)
        received = yield client.done
        assert received == PAYLOAD, "echo differs"
        client.transport.loseConnection()
        yield port.stopListening()
        return len(received)

    @defer.inlineCallbacks
    def main():
        try:
            tcp = yield echo(
                TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
                lambda port: TCP4ClientEndpoint(reactor, "127.0.0.1", port),
            )
            with open(sys.argv[2]) as c, open(sys.argv[3]) as k, open(sys.argv[4]) as ca:
                server_cert = ssl.PrivateCertificate.loadPEM(c.read() + k.read())
                authority = ssl.Certificate.loadPEM(ca.read())
            client_options = ssl.optionsForClientTLS("localhost", trustRoot=authority)
            tls = yield echo(
                SSL4ServerEndpoint(reactor, 0, server_cert.options(), interface="127.0.0.1"),
                lambda port: SSL4ClientEndpoint(reactor, "127.0.0.1", port, client_options),
            )
            child = Child()
            reactor.spawnProcess(child, sys.executable, [sys.executable, "-c",
                "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"])
            code = yield child.ended
            assert code == 0 and child.out == PAYLOAD[::-1], (code, len(child.out))
            print("tcp", tcp, "tls", tls, "process", len(child.out), type(loop).__module__)
        finally:
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    """
)


def test_twisted_asyncio_reactor_tcp_tls_process(loop_kind):
    pytest.importorskip("twisted")
    pytest.importorskip("OpenSSL", reason="Twisted's TLS needs pyOpenSSL (twisted[tls])")
    pytest.importorskip("service_identity", reason="Twisted's TLS needs service_identity")
    from _tlskit import certs

    paths = certs()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _TWISTED_SCRIPT,
            loop_kind,
            paths.server_pem,
            paths.server_key,
            paths.ca_pem,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    module = "ferroloop" if loop_kind == "ferroloop" else "asyncio"
    words = done.stdout.split()
    assert words[:6] == ["tcp", "256000", "tls", "256000", "process", "256000"], words
    assert words[6].startswith(module)


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
