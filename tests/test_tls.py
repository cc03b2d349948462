"""TLS (the ssl= parameters): create_connection/create_server, Unix sockets, accepted
sockets, start_tls and streams. Loopback only; the certificates are made once per session
by _tlskit with the openssl command (the module is skipped without it)."""

import asyncio
import contextlib
import gc
import logging
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
import weakref
from asyncio.trsock import TransportSocket

import pytest
from _netkit import (
    FAR,
    Accepting,
    Echo,
    MiB,
    Recorder,
    address_of,
    close_all,
    connected,
    linger_zero,
    payload,
    poll_once,
    run,
    serving,
)
from _tlskit import (
    CLIENT_CN,
    SERVER_CN,
    certs,
    client_context,
    server_context,
    tls_connected,
    tls_serving,
)

LOCALHOST_SUBJECT = ((("commonName", SERVER_CN),),)
CLIENT_SUBJECT = ((("commonName", CLIENT_CN),),)
# X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
SELF_SIGNED = 18


def skip_asyncio_before_311(loop_kind):
    """Skip the asyncio param on 3.10: its TLS layer predates the 3.11 rewrite of sslproto
    (ssl_shutdown_timeout, the close/EOF sequence, flow control) that ferroloop follows."""
    if loop_kind == "asyncio" and sys.version_info < (3, 11):
        pytest.skip("3.10's asyncio TLS layer predates the 3.11 sslproto that ferroloop follows")


class Events(Recorder):
    """A Recorder that also keeps the order of eof_received() and connection_lost()."""

    def __init__(self):
        super().__init__()
        self.events = []

    def eof_received(self):
        self.events.append("eof")
        return super().eof_received()

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        super().connection_lost(exc)


class Buffered(Recorder, asyncio.BufferedProtocol):
    """A BufferedProtocol receiving into one 64 KiB buffer."""

    size = 64 * 1024

    def __init__(self):
        Recorder.__init__(self)
        self.buf = bytearray(self.size)

    def get_buffer(self, sizehint):
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= self.size
        self.data += self.buf[:nbytes]
        self._wake()


async def echo_through(cp, sp, message):
    """Send message client -> server -> client (sp must be an Echo); check it came back."""
    before = len(cp.data)
    cp.transport.write(message)
    got = await cp.received(before + len(message))
    assert got[before:] == message


# -- handshake -------------------------------------------------------------------------


def test_handshake_and_extra_info(loop):
    sctx, cctx = server_context(), client_context()

    async def main():
        pair = tls_connected(loop, server=Echo, server_ctx=sctx, client_ctx=cctx)
        async with pair as (cp, sp):
            for proto, ctx, server_side in ((cp, cctx, False), (sp, sctx, True)):
                t = proto.transport
                assert isinstance(t, asyncio.Transport)
                assert t.get_protocol() is proto
                assert not t.is_closing()
                sslobj = t.get_extra_info("ssl_object")
                assert isinstance(sslobj, ssl.SSLObject)
                assert sslobj.server_side is server_side
                assert sslobj.version() in ("TLSv1.2", "TLSv1.3")
                assert t.get_extra_info("sslcontext") is ctx
                cipher = t.get_extra_info("cipher")
                assert isinstance(cipher, tuple)
                assert len(cipher) == 3
                assert cipher == sslobj.cipher()
                assert t.get_extra_info("compression") == sslobj.compression()
                sock = t.get_extra_info("socket")
                assert isinstance(sock, TransportSocket)
                assert sock.family == socket.AF_INET
                assert sock.type == socket.SOCK_STREAM
                assert t.get_extra_info("sockname") == sock.getsockname()
                assert t.get_extra_info("peername") == sock.getpeername()
                assert t.get_extra_info("no such key", "dflt") == "dflt"
            assert cp.transport.get_extra_info("ssl_object").server_hostname == SERVER_CN
            peercert = cp.transport.get_extra_info("peercert")
            assert peercert["subject"] == LOCALHOST_SUBJECT
            assert ("DNS", SERVER_CN) in peercert["subjectAltName"]
            assert ("IP Address", "127.0.0.1") in peercert["subjectAltName"]
            # The server asked for no client certificate.
            assert sp.transport.get_extra_info("peercert") is None
            assert cp.transport.get_extra_info("peername") == sp.transport.get_extra_info(
                "sockname"
            )
            assert cp.transport.get_extra_info("cipher") == sp.transport.get_extra_info("cipher")
            await echo_through(cp, sp, b"ping over TLS")
            assert sp.data == b"ping over TLS"

    run(loop, main())


def test_server_hostname_defaults_to_the_host(loop):
    # No server_hostname: asyncio checks the certificate against host, here an IP
    # address that the certificate's subjectAltName lists.
    async def main():
        async with tls_serving(loop, Accepting(Echo)) as server:
            t, cp = await loop.create_connection(
                Recorder, *address_of(server), ssl=client_context()
            )
            assert t.get_extra_info("ssl_object").server_hostname == "127.0.0.1"
            t.write(b"by address")
            assert await cp.received(10) == b"by address"
            t.close()
            assert await cp.lost is None

    run(loop, main())


@pytest.mark.parametrize(
    "untrusted, hostname",
    [(False, "wrong.example"), (True, SERVER_CN)],
    ids=["wrong-hostname", "untrusted-certificate"],
)
def test_handshake_failure_raises_cert_verification_error(loop, untrusted, hostname):
    # On asyncio (not in debug mode) the server side's failed handshake calls neither
    # the exception handler nor the protocol's connection_made().
    accepting = Accepting(Echo)

    async def main():
        async with tls_serving(loop, accepting, server_context(untrusted=untrusted)) as srv:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await loop.create_connection(
                    Recorder, *address_of(srv), ssl=client_context(), server_hostname=hostname
                )
            if untrusted:
                assert info.value.verify_code == SELF_SIGNED
            else:
                assert "Hostname mismatch" in info.value.verify_message
            # The server goes on serving a client that trusts its certificate.
            trusting = client_context(cafile=certs().untrusted_pem if untrusted else None)
            t, cp = await loop.create_connection(
                Recorder, *address_of(srv), ssl=trusting, server_hostname=SERVER_CN
            )
            t.write(b"still serving")
            assert await cp.received(13) == b"still serving"
            made = [p for p in accepting.protocols if p.made.done()]
            assert len(made) == 1, "connection_made() for a failed handshake"
            await close_all(cp, *made)

    run(loop, main())


def test_handshake_timeout_on_the_client(loop):
    # The server is plain TCP: it records the ClientHello and never answers.
    accepting = Accepting(Recorder)

    async def main():
        async with serving(loop, accepting) as srv:
            start = time.monotonic()
            with pytest.raises(ConnectionAbortedError) as info:
                await loop.create_connection(
                    Recorder,
                    *address_of(srv),
                    ssl=client_context(),
                    server_hostname=SERVER_CN,
                    ssl_handshake_timeout=0.2,
                )
            assert time.monotonic() - start >= 0.15
            assert str(info.value) == (
                "SSL handshake is taking longer than 0.2 seconds: aborting the connection"
            )
            sp = await accepting.made()
            assert await sp.lost is None  # the client closed its socket
            assert sp.data[:1] == b"\x16"  # a TLS handshake record: the ClientHello

    run(loop, main())


def test_handshake_timeout_on_the_server(loop):
    # A plain TCP client that never starts the handshake: the server closes the
    # connection after ssl_handshake_timeout, without connection_made().
    accepting = Accepting(Echo)

    async def main():
        async with tls_serving(loop, accepting, ssl_handshake_timeout=0.2) as srv:
            start = time.monotonic()
            _, cp = await loop.create_connection(Events, *address_of(srv))
            assert await cp.lost is None
            assert time.monotonic() - start >= 0.15
            assert cp.events == ["eof", ("lost", None)]
            assert cp.data == b""
            assert not any(p.made.done() for p in accepting.protocols)

    run(loop, main())


def test_garbage_instead_of_a_server_hello(loop):
    class Garbage(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"garbage\r\n" * 10)

    accepting = Accepting(Garbage)

    async def main():
        async with serving(loop, accepting) as srv:
            with pytest.raises(ssl.SSLError) as info:
                await loop.create_connection(
                    Recorder, *address_of(srv), ssl=client_context(), server_hostname=SERVER_CN
                )
            assert type(info.value) is ssl.SSLError
            assert info.value.reason == "WRONG_VERSION_NUMBER"
            sp = await accepting.made()
            await sp.lost  # the client closed its end

    run(loop, main())


def test_alpn(loop):
    sctx = server_context(alpn=["h2", "http/1.1"])
    cctx = client_context(alpn=["http/1.1"])

    async def main():
        async with tls_connected(loop, server_ctx=sctx, client_ctx=cctx) as (cp, sp):
            for t in (cp.transport, sp.transport):
                assert t.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"

    run(loop, main())


def test_client_certificate_accepted(loop):
    sctx = server_context(require_client_cert=True)
    cctx = client_context(with_cert=True)

    async def main():
        pair = tls_connected(loop, server=Echo, server_ctx=sctx, client_ctx=cctx)
        async with pair as (cp, sp):
            peercert = sp.transport.get_extra_info("peercert")
            assert peercert["subject"] == CLIENT_SUBJECT
            assert sp.transport.get_extra_info("ssl_object").getpeercert() == peercert
            await echo_through(cp, sp, b"authenticated")

    run(loop, main())


def test_client_certificate_missing(loop):
    # In TLS 1.3 the client's handshake is over before the server has checked the
    # client's (missing) certificate: create_connection() succeeds, then the server
    # drops the connection. asyncio does not flush the server's alert, so its client
    # sees eof_received() and connection_lost(None); an SSLError would be as good.
    sctx = server_context(require_client_cert=True)
    cctx = client_context()
    for ctx in (sctx, cctx):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    accepting = Accepting(Echo)

    async def main():
        async with tls_serving(loop, accepting, sctx) as srv:
            _, cp = await loop.create_connection(
                Recorder, *address_of(srv), ssl=cctx, server_hostname=SERVER_CN
            )
            exc = await cp.lost
            assert exc is None or isinstance(exc, ssl.SSLError), repr(exc)
            assert cp.data == b""
            assert not any(p.made.done() for p in accepting.protocols)

    run(loop, main())


# -- data ------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", [Recorder, Buffered], ids=["Protocol", "BufferedProtocol"])
def test_large_transfer_both_directions(loop, proto):
    up, down = payload(8 * MiB, 1), payload(8 * MiB, 2)

    async def main():
        async with tls_connected(loop, client=proto, server=proto) as (cp, sp):
            cp.transport.write(up)
            sp.transport.write(down)
            got_up, got_down = await asyncio.gather(sp.received(len(up)), cp.received(len(down)))
            assert got_up == up
            assert got_down == down
            assert cp.transport.get_write_buffer_size() == 0
            assert sp.transport.get_write_buffer_size() == 0

    run(loop, main())


def test_writelines_and_bytes_like_objects(loop):
    async def main():
        async with tls_connected(loop) as (cp, sp):
            cp.transport.write(bytearray(b"ab"))
            cp.transport.write(memoryview(b"xcdx")[1:3])
            cp.transport.write(b"")
            cp.transport.writelines([b"ef", bytearray(b"gh"), memoryview(b"ij")])
            with pytest.raises(TypeError):
                cp.transport.write("text")
            assert await sp.received(10) == b"abcdefghij"

    run(loop, main())


def test_many_concurrent_connections(loop):
    n = 50
    accepting = Accepting(Echo)

    async def client(address, i):
        message = payload(20_000 + i, seed=i)
        transport, proto = await loop.create_connection(
            Recorder, *address, ssl=client_context(), server_hostname=SERVER_CN
        )
        sockname = transport.get_extra_info("sockname")
        transport.write(message)
        assert await proto.received(len(message)) == message
        transport.close()
        assert await proto.lost is None
        return sockname

    async def main():
        async with tls_serving(loop, accepting) as server:
            clients = await asyncio.gather(*(client(address_of(server), i) for i in range(n)))
            assert len(set(clients)) == n
            assert len(accepting.protocols) == n
            for i, proto in enumerate(sorted(accepting.protocols, key=lambda p: len(p.data))):
                assert proto.data == payload(20_000 + i, seed=i)
                assert await proto.lost is None

    run(loop, main())


# -- half-close, close, abort ----------------------------------------------------------


@pytest.mark.parametrize("keep_open", [False, True], ids=["eof-closes", "eof-keep-open"])
def test_no_half_close_and_peer_close_gives_eof_then_lost(loop, loop_kind, caplog, keep_open):
    skip_asyncio_before_311(loop_kind)
    # TLS has no half-close. The peer's close (its close_notify) reaches eof_received()
    # then connection_lost(None); returning true from eof_received() keeps nothing open,
    # asyncio only logs a warning.
    caplog.set_level(logging.WARNING, logger="asyncio")
    client = type("Client", (Events,), {"keep_open": keep_open})

    def warnings():
        message = "returning true from eof_received() has no effect when using ssl"
        return [r for r in caplog.records if r.getMessage() == message]

    async def main():
        async with tls_connected(loop, client=client) as (cp, sp):
            for t in (cp.transport, sp.transport):
                assert not t.can_write_eof()
            with pytest.raises(NotImplementedError):
                cp.transport.write_eof()
            sp.transport.write(b"goodbye")
            sp.transport.close()
            assert await cp.eof == b"goodbye"
            assert await cp.lost is None
            assert cp.events == ["eof", ("lost", None)]
            assert cp.transport.is_closing()
            assert await sp.lost is None
            assert len(warnings()) == (1 if keep_open else 0)

    run(loop, main())


def test_close_then_peer_sees_eof_and_later_writes_are_ignored(loop, loop_kind):
    skip_asyncio_before_311(loop_kind)

    async def main():
        async with tls_connected(loop, server=Events) as (cp, sp):
            t = cp.transport
            t.write(b"last words")
            assert not t.is_closing()
            t.close()
            assert t.is_closing()
            t.write(b"dropped")  # after close(): ignored, no error
            # Again: no error. (asyncio 3.11's second close() drops the transport's link to
            # the TLS layer, so a write after it raises AttributeError: not tested.)
            t.close()
            assert await sp.eof == b"last words"
            assert await sp.lost is None
            assert sp.events == ["eof", ("lost", None)]
            assert await cp.lost is None
            assert t.is_closing()

    run(loop, main())


def test_abort_closes_at_once(loop):
    # abort() sends no close_notify: the peer sees the TCP FIN, which asyncio delivers
    # as eof_received() then connection_lost(None).
    async def main():
        async with tls_connected(loop, server=Events) as (cp, sp):
            t = cp.transport
            t.write(b"x")
            await sp.received(1)
            t.abort()
            assert t.is_closing()
            assert t.get_write_buffer_size() == 0
            t.write(b"dropped")  # after abort(): ignored, no error
            assert await cp.lost is None
            assert await sp.lost is None
            assert sp.events == ["eof", ("lost", None)]
            assert sp.data == b"x"

    run(loop, main())


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_peer_aborts_mid_stream(loop, loop_kind, reset):
    skip_asyncio_before_311(loop_kind)
    # The server aborts while the client has not read everything. A plain FIN (no
    # close_notify) reaches asyncio's client as eof_received() then connection_lost(None);
    # a reset as connection_lost(ConnectionResetError) without eof_received().
    data = payload(8 * MiB)

    async def main():
        async with tls_connected(loop, client=Events) as (cp, sp):
            cp.transport.pause_reading()
            sp.transport.write(data)
            await poll_once()
            if reset:
                linger_zero(sp.transport)
            sp.transport.abort()
            assert await sp.lost is None
            cp.transport.resume_reading()
            exc = await cp.lost
            if reset:
                assert isinstance(exc, ConnectionResetError), repr(exc)
                assert cp.events == [("lost", exc)]
            else:
                assert exc is None
                assert cp.events == ["eof", ("lost", None)]
            assert data.startswith(cp.data)
            assert cp.transport.is_closing()

    run(loop, main())


def test_shutdown_timeout(loop, loop_kind):
    skip_asyncio_before_311(loop_kind)
    # The peer (a blocking ssl socket in a thread) finishes the handshake, then never
    # reads again, so it never answers the client's close_notify.
    release = threading.Event()
    errors = []

    def peer(listener):
        try:
            conn, _ = listener.accept()
            with server_context().wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hi")
                release.wait(FAR)
        except Exception as exc:
            errors.append(exc)

    async def main():
        _, cp = await loop.create_connection(
            Events,
            *listener.getsockname()[:2],
            ssl=client_context(),
            server_hostname=SERVER_CN,
            ssl_shutdown_timeout=0.2,
        )
        assert await cp.received(2) == b"hi"
        start = time.monotonic()
        cp.transport.close()
        exc = await cp.lost
        assert time.monotonic() - start >= 0.15
        assert isinstance(exc, TimeoutError), repr(exc)
        assert str(exc) == "SSL shutdown timed out"
        assert cp.events == [("lost", exc)]

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(FAR)
        thread = threading.Thread(target=peer, args=(listener,), daemon=True)
        thread.start()
        try:
            run(loop, main())
        finally:
            release.set()
            thread.join(FAR)
    assert errors == []


# -- write flow control ----------------------------------------------------------------


def test_write_buffer_limits(loop, loop_kind):
    skip_asyncio_before_311(loop_kind)

    async def main():
        async with tls_connected(loop) as (cp, _):
            t = cp.transport
            # asyncio's defaults for the TLS layer: 512 KiB high, a quarter of it low.
            assert t.get_write_buffer_limits() == (128 * 1024, 512 * 1024)
            t.set_write_buffer_limits(high=4000)
            assert t.get_write_buffer_limits() == (1000, 4000)
            t.set_write_buffer_limits(low=100)
            assert t.get_write_buffer_limits() == (100, 400)
            t.set_write_buffer_limits(high=10, low=10)
            assert t.get_write_buffer_limits() == (10, 10)
            with pytest.raises(ValueError):
                t.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(ValueError):
                t.set_write_buffer_limits(high=10, low=-1)
            assert t.get_write_buffer_size() == 0
            assert cp.paused == []

    run(loop, main())


def test_pause_and_resume_writing(loop):
    low, high, chunk = 64 * 1024, 256 * 1024, payload(64 * 1024, 3)

    async def main():
        async with tls_connected(loop) as (cp, sp):
            cp.transport.pause_reading()
            assert not cp.transport.is_reading()
            t = sp.transport
            t.set_write_buffer_limits(high=high, low=low)
            sent = 0
            while not sp.paused:
                t.write(chunk)
                sent += len(chunk)
                assert sent < 256 * MiB, "pause_writing() never came"
            assert sp.paused == [t.get_write_buffer_size()]
            assert sp.paused[0] >= high
            await poll_once()
            await poll_once()
            assert len(cp.data) < sent
            cp.transport.resume_reading()
            assert cp.transport.is_reading()
            assert await cp.received(sent) == chunk * (sent // len(chunk))
            assert len(sp.paused) == 1
            assert len(sp.resumed) == 1
            assert sp.resumed[0] <= low
            assert t.get_write_buffer_size() == 0

    run(loop, main())


# -- other ways in: Unix sockets, accepted sockets, start_tls --------------------------


def test_unix_socket(loop):
    accepting = Accepting(Echo)

    async def main():
        with tempfile.TemporaryDirectory(prefix="fl") as tmp:
            path = os.path.join(tmp, "s.sock")
            server = await loop.create_unix_server(accepting, path, ssl=server_context())
            try:
                t, cp = await loop.create_unix_connection(
                    Events, path, ssl=client_context(), server_hostname=SERVER_CN
                )
                sp = await accepting.made()
                assert t.get_extra_info("socket").family == socket.AF_UNIX
                assert t.get_extra_info("peercert")["subject"] == LOCALHOST_SUBJECT
                assert sp.transport.get_extra_info("ssl_object").server_side
                await echo_through(cp, sp, payload(MiB))
                t.close()
                assert await cp.lost is None
                assert await sp.lost is None
            finally:
                server.close()
                await server.wait_closed()

    run(loop, main())


def test_connect_accepted_socket(loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)

            async def accept():
                conn, _ = await loop.sock_accept(listener)
                return await loop.connect_accepted_socket(Echo, conn, ssl=server_context())

            (ct, cp), (st, sp) = await asyncio.gather(
                loop.create_connection(
                    Recorder,
                    *listener.getsockname()[:2],
                    ssl=client_context(),
                    server_hostname=SERVER_CN,
                ),
                accept(),
            )
            assert st is sp.transport
            assert st.get_extra_info("ssl_object").server_side
            assert ct.get_extra_info("peercert")["subject"] == LOCALHOST_SUBJECT
            await echo_through(cp, sp, b"over an accepted socket")
            ct.close()
            assert await cp.lost is None
            assert await sp.lost is None

    run(loop, main())


def test_start_tls_on_both_sides(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            cp.transport.write(b"STARTTLS\n")
            assert await sp.received(9) == b"STARTTLS\n"

            async def server_side():
                sp.transport.write(b"OK\n")
                return await loop.start_tls(sp.transport, sp, server_context(), server_side=True)

            async def client_side():
                assert await cp.received(3) == b"OK\n"
                return await loop.start_tls(
                    cp.transport, cp, client_context(), server_hostname=SERVER_CN
                )

            plain = cp.transport, sp.transport
            st, ct = await asyncio.gather(server_side(), client_side())
            assert ct is not plain[0]
            assert st is not plain[1]
            assert ct.get_protocol() is cp
            assert st.get_protocol() is sp
            assert ct.get_extra_info("peercert")["subject"] == LOCALHOST_SUBJECT
            assert st.get_extra_info("ssl_object").server_side
            ct.write(b"secret up")
            st.write(b"secret down")
            assert await sp.received(9 + 9) == b"STARTTLS\nsecret up"
            assert await cp.received(3 + 11) == b"OK\nsecret down"
            ct.close()
            assert await cp.lost is None
            assert await sp.lost is None
            assert plain[0].is_closing()
            assert plain[1].is_closing()

    run(loop, main())


def test_failed_start_tls_leaves_no_cycle_holding_the_transport(loop, loop_kind):
    # The client's start_tls() fails verification. With the garbage collector off, the plain
    # transport must be freed once nothing refers to it: no reference cycle through the
    # exception's traceback may keep it (asyncio 3.14's gh-159049 check).
    if loop_kind == "asyncio" and sys.version_info < (3, 14):
        pytest.skip("asyncio before 3.14 keeps the transport in such a cycle")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            server_context(untrusted=True).wrap_socket(conn, server_side=True)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    transports = []

    async def main():
        transport, protocol = await loop.create_connection(
            asyncio.Protocol, *listener.getsockname()
        )
        transports.append(weakref.ref(transport))
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.start_tls(transport, protocol, client_context(), server_hostname=SERVER_CN)

    with listener:
        gc.collect()
        gc.disable()
        try:
            run(loop, main())
            assert transports[0]() is None
        finally:
            gc.enable()
        thread.join(FAR)


@pytest.mark.skipif(sys.version_info < (3, 14), reason="3.14 bounds this wait")
@pytest.mark.parametrize("close_first", [True, False], ids=["close-then-eof", "eof-only"])
def test_shutdown_timeout_bounds_a_peer_that_sent_eof_and_stopped_reading(loop, close_first):
    # The peer sends EOF (after or before our close()) and never reads what we still have
    # queued: from 3.14, ssl_shutdown_timeout also bounds flushing it on the way out.
    listener = socket.create_server(("127.0.0.1", 0))
    filled = threading.Event()
    done = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with server_context().wrap_socket(conn, server_side=True) as tls:
            filled.wait(FAR)
            tls.shutdown(socket.SHUT_WR)  # EOF, and never a read
            done.wait(FAR)

    class Protocol(asyncio.Protocol):
        def __init__(self):
            self.lost = loop.create_future()
            self.paused = False

        def pause_writing(self):
            self.paused = True

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def main():
        transport, protocol = await loop.create_connection(
            Protocol,
            *listener.getsockname(),
            ssl=client_context(),
            server_hostname=SERVER_CN,
            ssl_shutdown_timeout=0.1,
        )
        try:
            chunk = bytes(1024 * 1024)
            while not protocol.paused:
                transport.write(chunk)
                await asyncio.sleep(0)
            if close_first:
                transport.close()
            filled.set()
            return await protocol.lost
        finally:
            filled.set()
            done.set()
            transport.abort()

    with listener:
        assert isinstance(run(loop, main()), TimeoutError)
        thread.join(FAR)


@contextlib.asynccontextmanager
async def stream_server(handler, **kwargs):
    """asyncio.start_server on 127.0.0.1; on exit, closes it and waits for the handlers."""
    tasks = []

    async def tracked(reader, writer):
        tasks.append(asyncio.current_task())
        await handler(reader, writer)

    async with await asyncio.start_server(tracked, "127.0.0.1", 0, **kwargs) as server:
        yield address_of(server)
    await asyncio.gather(*tasks)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls is new in 3.11")
def test_stream_writer_start_tls(loop):
    async def handler(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_context())
        assert writer.get_extra_info("ssl_object").server_side
        line = await reader.readline()
        writer.write(b"secure " + line)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        async with stream_server(handler) as address:
            reader, writer = await asyncio.open_connection(*address)
            assert writer.get_extra_info("ssl_object") is None
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"OK\n"
            await writer.start_tls(client_context(), server_hostname=SERVER_CN)
            assert writer.get_extra_info("peercert")["subject"] == LOCALHOST_SUBJECT
            assert not writer.can_write_eof()
            writer.write(b"hello\n")
            assert await reader.read() == b"secure hello\n"
            writer.close()
            await writer.wait_closed()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 14), reason="3.14 hands buffered bytes to TLS")
def test_stream_writer_start_tls_with_the_client_hello_already_buffered(loop):
    # The client starts TLS at once: its ClientHello can reach the server's StreamReader
    # before the server calls start_tls(). 3.14 hands those bytes to the TLS layer (gh-142352).
    buffered = []

    async def handler(reader, writer):
        await reader._wait_for_data("test")  # the ClientHello is in the reader's buffer
        buffered.append(len(reader._buffer))
        await writer.start_tls(server_context())
        assert await reader.readline() == b"ping\n"
        writer.write(b"pong\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        async with stream_server(handler) as address:
            reader, writer = await asyncio.open_connection(*address)
            await writer.start_tls(client_context(), server_hostname=SERVER_CN)
            writer.write(b"ping\n")
            assert await reader.readline() == b"pong\n"
            writer.close()
            await writer.wait_closed()

    run(loop, main())
    assert buffered[0] > 0


# -- streams ---------------------------------------------------------------------------


def test_streams_echo_until_the_server_closes(loop):
    async def echo_until_bye(reader, writer):
        try:
            while line := await reader.readline():
                writer.write(line)
                if line == b"bye\n":
                    break
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    async def main():
        async with stream_server(echo_until_bye, ssl=server_context()) as address:
            reader, writer = await asyncio.open_connection(
                *address, ssl=client_context(), server_hostname=SERVER_CN
            )
            assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
            assert writer.get_extra_info("peercert")["subject"] == LOCALHOST_SUBJECT
            assert not writer.can_write_eof()
            lines = [b"line %d\n" % i for i in range(1000)] + [b"bye\n"]
            writer.writelines(lines)
            await writer.drain()
            assert await reader.readline() == lines[0]
            assert await reader.readexactly(len(lines[1])) == lines[1]
            assert await reader.read() == b"".join(lines[2:])  # until the server's close
            assert reader.at_eof()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

    run(loop, main())


def test_streams_server_reads_until_the_client_closes(loop):
    data = payload(MiB)
    got = None

    async def read_all(reader, writer):
        got.set_result(await reader.read())
        writer.close()
        await writer.wait_closed()

    async def main():
        nonlocal got
        got = loop.create_future()
        async with stream_server(read_all, ssl=server_context()) as address:
            _, writer = await asyncio.open_connection(
                *address, ssl=client_context(), server_hostname=SERVER_CN
            )
            writer.write(data)
            writer.close()
            assert writer.is_closing()
            await writer.wait_closed()
            assert await got == data

    run(loop, main())


# -- argument errors -------------------------------------------------------------------


ONLY_WITH_SSL = "{} is only meaningful with ssl"

# name: (call(loop, unconnected socket) -> awaitable, exception type, message)
ARGUMENT_ERRORS = {
    "connection-server_hostname-without-ssl": (
        lambda loop, sock: loop.create_connection(
            Recorder, "127.0.0.1", 1, server_hostname=SERVER_CN
        ),
        ValueError,
        ONLY_WITH_SSL.format("server_hostname"),
    ),
    "connection-handshake_timeout-without-ssl": (
        lambda loop, sock: loop.create_connection(
            Recorder, "127.0.0.1", 1, ssl_handshake_timeout=1
        ),
        ValueError,
        ONLY_WITH_SSL.format("ssl_handshake_timeout"),
    ),
    "connection-shutdown_timeout-without-ssl": (
        lambda loop, sock: loop.create_connection(Recorder, "127.0.0.1", 1, ssl_shutdown_timeout=1),
        ValueError,
        ONLY_WITH_SSL.format("ssl_shutdown_timeout"),
    ),
    "connection-sock-ssl-without-server_hostname": (
        lambda loop, sock: loop.create_connection(Recorder, sock=sock, ssl=client_context()),
        ValueError,
        "You must set server_hostname when using ssl without a host",
    ),
    "server-ssl-True": (
        lambda loop, sock: loop.create_server(Recorder, "127.0.0.1", 0, ssl=True),
        TypeError,
        "ssl argument must be an SSLContext or None",
    ),
    "server-handshake_timeout-without-ssl": (
        lambda loop, sock: loop.create_server(Recorder, "127.0.0.1", 0, ssl_handshake_timeout=1),
        ValueError,
        ONLY_WITH_SSL.format("ssl_handshake_timeout"),
    ),
    "server-shutdown_timeout-without-ssl": (
        lambda loop, sock: loop.create_server(Recorder, "127.0.0.1", 0, ssl_shutdown_timeout=1),
        ValueError,
        ONLY_WITH_SSL.format("ssl_shutdown_timeout"),
    ),
    "unix-connection-server_hostname-without-ssl": (
        lambda loop, sock: loop.create_unix_connection(
            Recorder, "/nonexistent", server_hostname=SERVER_CN
        ),
        ValueError,
        ONLY_WITH_SSL.format("server_hostname"),
    ),
    "unix-connection-ssl-without-server_hostname": (
        lambda loop, sock: loop.create_unix_connection(
            Recorder, "/nonexistent", ssl=client_context()
        ),
        ValueError,
        "you have to pass server_hostname when using ssl",
    ),
    "accepted-socket-handshake_timeout-without-ssl": (
        lambda loop, sock: loop.connect_accepted_socket(Recorder, sock, ssl_handshake_timeout=1),
        ValueError,
        ONLY_WITH_SSL.format("ssl_handshake_timeout"),
    ),
}


@pytest.mark.parametrize("case", ARGUMENT_ERRORS)
def test_argument_errors(loop, loop_kind, case):
    if "shutdown_timeout" in case:
        skip_asyncio_before_311(loop_kind)
    call, exc_type, message = ARGUMENT_ERRORS[case]

    async def main():
        with socket.socket() as sock:
            with pytest.raises(exc_type) as info:
                await call(loop, sock)
            assert str(info.value) == message

    run(loop, main())


def test_start_tls_needs_an_ssl_context(loop):
    async def main():
        async with connected(loop) as (cp, sp):
            with pytest.raises(TypeError):
                await loop.start_tls(cp.transport, cp, object())
            # The transport is untouched.
            cp.transport.write(b"plain")
            assert await sp.received(5) == b"plain"

    run(loop, main())


class Boom(Exception):
    pass


class RaisesOnData(Recorder):
    def data_received(self, data):
        raise Boom("data_received")


class RaisesOnMade(Recorder):
    def connection_made(self, transport):
        super().connection_made(transport)
        raise Boom("connection_made")


@pytest.mark.parametrize(
    "server, message",
    [
        (RaisesOnData, "Fatal error on SSL protocol"),
        (RaisesOnMade, "Fatal error: protocol.buffer_updated() call failed."),
    ],
    ids=["data_received", "connection_made"],
)
def test_protocol_callback_raises(loop, loop_kind, expect_exception_handler, server, message):
    skip_asyncio_before_311(loop_kind)

    # The exception goes to the loop's exception handler and the connection is closed: the
    # client sees it go, the server keeps serving.
    async def main():
        accepting = Accepting(server)
        async with tls_serving(loop, accepting) as srv:
            for _ in range(2):
                _, cp = await loop.create_connection(
                    Recorder, *address_of(srv), ssl=client_context(), server_hostname=SERVER_CN
                )
                cp.transport.write(b"hello")
                await cp.lost
                assert cp.data == b""
        return accepting.protocols

    protocols = run(loop, main())
    assert len(protocols) == 2
    assert len(expect_exception_handler) == 2
    for context in expect_exception_handler:
        assert context["message"] == message
        assert isinstance(context["exception"], Boom)


class ByteByByteTls(asyncio.Protocol):
    """A TLS client doing its own record layer over a plain connection (an SSLObject over
    memory BIOs), writing each byte it produces with a write() of its own, so the server's
    TLS layer gets records in pieces."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(
            self.incoming, self.outgoing, server_hostname=SERVER_CN
        )
        self.transport = None
        self.handshaken = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self._step()

    def _flush(self):
        data = self.outgoing.read()
        for i in range(len(data)):
            self.transport.write(data[i : i + 1])

    def _step(self):
        if not self.handshaken.done():
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                self.handshaken.set_result(None)
        self._flush()

    def data_received(self, data):
        self.incoming.write(data)
        self._step()

    def send(self, data):
        self.tls.write(data)
        self._flush()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_records_arriving_byte_by_byte(loop):
    messages = [b"x", payload(1000, seed=1), payload(40000, seed=2)]

    async def main():
        accepting = Accepting(Recorder)
        async with tls_serving(loop, accepting) as srv:
            _, client = await loop.create_connection(ByteByByteTls, *address_of(srv))
            await client.handshaken
            server = await accepting.made()
            for message in messages:
                client.send(message)
            assert await server.received(sum(map(len, messages))) == b"".join(messages)
            client.transport.abort()
            await client.lost
            await server.lost

    run(loop, main())


def test_garbage_after_the_handshake(loop):
    # A forged application-data record: decryption fails; the connection is lost with the
    # ssl.SSLError (an OSError: not reported to the exception handler).
    async def main():
        accepting = Accepting(Recorder)
        async with tls_serving(loop, accepting) as srv:
            _, client = await loop.create_connection(ByteByByteTls, *address_of(srv))
            await client.handshaken
            server = await accepting.made()
            client.send(b"real data")
            await server.received(9)
            client.transport.write(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
            exc = await server.lost
            assert isinstance(exc, ssl.SSLError)
            assert bytes(server.data) == b"real data"
            await client.lost

    run(loop, main())


def test_start_tls_twice_gives_tls_in_tls(loop, loop_kind):
    skip_asyncio_before_311(loop_kind)  # 3.10's TLS transport cannot be wrapped again

    async def main():
        async with tls_connected(loop) as (cp, sp):

            async def upgrade(server_side):
                if server_side:
                    return await loop.start_tls(
                        sp.transport, sp, server_context(), server_side=True
                    )
                return await loop.start_tls(
                    cp.transport, cp, client_context(), server_hostname=SERVER_CN
                )

            outer = cp.transport, sp.transport
            st, ct = await asyncio.gather(upgrade(True), upgrade(False))
            assert ct.get_extra_info("ssl_object") is not outer[0].get_extra_info("ssl_object")
            message = payload(300_000, seed=3)
            ct.write(message)
            assert await sp.received(len(message)) == message
            st.write(b"inner reply")
            assert await cp.received(11) == b"inner reply"
            ct.close()
            assert await cp.lost is None
            assert await sp.lost is None

    run(loop, main())


def test_close_after_the_peer_closed_releases_the_tls_layer(loop, loop_kind):
    skip_asyncio_before_311(loop_kind)
    # The peer's close_notify starts the shutdown; the application's close() after that
    # lets go of the TLS layer (asyncio does the same), so the client's SSLContext is freed
    # without waiting for the connection to be lost or for the garbage collector, even
    # though the protocol keeps its transport.
    accepting = Accepting(Recorder)

    async def main(server):
        client_ctx = client_context()
        _, cp = await loop.create_connection(
            Recorder, *address_of(server), ssl=client_ctx, server_hostname=SERVER_CN
        )
        sp = await accepting.made()
        sp.transport.close()
        await cp.eof
        cp.transport.close()
        return weakref.ref(client_ctx), cp.lost, sp.lost

    server = run(loop, loop.create_server(accepting, "127.0.0.1", 0, ssl=server_context()))
    gc.disable()
    try:
        ctx_ref, *lost = loop.run_until_complete(main(server))
        assert ctx_ref() is None
    finally:
        gc.enable()
    run(loop, asyncio.gather(*lost))
    server.close()
    run(loop, server.wait_closed())
