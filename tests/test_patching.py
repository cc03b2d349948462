"""Test suites patch transports: ``transport.write = fake`` (uvicorn's and aiohttp's do).

asyncio's transports are plain Python objects, so an attribute assigned on one shadows the
method for Python code that calls it, and deleting it brings the method back. Each kind of
transport is tried: TCP, TLS, UDP, and both ends of a pipe.
"""

import asyncio
import gc
import os
import socket
import weakref

from _netkit import Echo, Recorder, connected, run
from _tlskit import tls_connected


def patch_and_restore(transport, name, *args):
    """Shadow transport.<name> with a recorder, call it as Python code would, then delete
    the shadow: the method must be back. Returns the arguments the recorder saw."""
    calls = []
    original = getattr(transport, name)
    setattr(transport, name, lambda *a: calls.append(a))
    assert name in vars(transport)
    getattr(transport, name)(*args)
    assert calls == [args]
    delattr(transport, name)
    assert getattr(transport, name) == original
    return calls


def test_tcp_transport_write_can_be_patched(loop):
    async def main():
        async with connected(loop, server=Echo) as (client, _server):
            patch_and_restore(client.transport, "write", b"swallowed")
            client.transport.marker = "any attribute"
            assert client.transport.marker == "any attribute"
            client.transport.write(b"sent")  # the method again
            assert await client.received(4) == b"sent"

    run(loop, main())


def test_tls_transport_write_can_be_patched(loop):
    async def main():
        async with tls_connected(loop, server=Echo) as (client, _server):
            patch_and_restore(client.transport, "write", b"swallowed")
            patch_and_restore(client.transport, "is_closing")
            client.transport.write(b"sent")
            assert await client.received(4) == b"sent"

    run(loop, main())


def test_datagram_transport_sendto_can_be_patched(loop):
    async def main():
        received = loop.create_future()

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.set_result(data)

        server, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
        address = server.get_extra_info("sockname")
        client, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=address
        )
        try:
            patch_and_restore(client, "sendto", b"swallowed")
            client.sendto(b"sent")
            assert await received == b"sent"
        finally:
            client.close()
            server.close()

    run(loop, main())


def test_pipe_transports_can_be_patched(loop):
    async def main():
        rfd, wfd = os.pipe()
        with open(rfd, "rb", buffering=0) as r, open(wfd, "wb", buffering=0) as w:
            reader, reading = await loop.connect_read_pipe(Recorder, r)
            writer, _ = await loop.connect_write_pipe(asyncio.Protocol, w)
            try:
                patch_and_restore(reader, "pause_reading")
                patch_and_restore(writer, "write", b"swallowed")
                writer.write(b"sent")
                assert await reading.received(4) == b"sent"
            finally:
                writer.close()
                reader.close()
                await reading.lost

    run(loop, main())


def test_a_cycle_through_a_patched_attribute_is_collected(loop):
    # The instance __dict__ is visible to the cyclic GC: transport -> dict -> closure ->
    # transport is freed once the transport is closed and dropped.
    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        transport.write = lambda data, t=transport: t.get_write_buffer_size()
        gone = weakref.ref(transport)
        transport.close()
        await asyncio.sleep(0)  # connection_lost runs
        b.close()
        return gone

    gone = run(loop, main())
    gc.collect()
    assert gone() is None


def public_names(cls):
    return {n for n in dir(cls) if not n.startswith("_")}


def test_server_and_transports_have_asyncio_public_names(loop):
    # Every public name of asyncio's own class on the running Python, looked up one by one
    # (dir() of our Rust transports lists their __class__'s names, not theirs).
    from asyncio import base_events, selector_events, sslproto, unix_events

    async def main():
        objects = []
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        objects.append((server, base_events.Server))
        async with connected(loop) as (client, _server):
            objects.append((client.transport, selector_events._SelectorSocketTransport))
            async with tls_connected(loop) as (tls_client, _tls_server):
                objects.append((tls_client.transport, sslproto._SSLProtocolTransport))
                rfd, wfd = os.pipe()
                with open(rfd, "rb", buffering=0) as r, open(wfd, "wb", buffering=0) as w:
                    reader, reading = await loop.connect_read_pipe(Recorder, r)
                    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, w)
                    objects.append((reader, unix_events._UnixReadPipeTransport))
                    objects.append((writer, unix_events._UnixWritePipeTransport))
                    missing = {
                        cls.__name__: sorted(n for n in public_names(cls) if not hasattr(obj, n))
                        for obj, cls in objects
                    }
                    assert client.transport.max_size == 256 * 1024
                    writer.close()
                    reader.close()
                    await reading.lost
        server.close()
        await server.wait_closed()
        return missing

    missing = run(loop, main())
    assert missing == {name: [] for name in missing}


def test_tls_transport_private_attributes_libraries_read(loop):
    # aiohttp's tests read transport._ssl_protocol._sslcontext; others _app_transport.
    from _tlskit import SERVER_CN, address_of, client_context, tls_serving

    async def main():
        ctx = client_context()
        async with tls_serving(loop, Echo) as server:
            transport, _ = await loop.create_connection(
                Recorder, *address_of(server), ssl=ctx, server_hostname=SERVER_CN
            )
            layer = transport._ssl_protocol
            assert layer._sslcontext is ctx
            assert layer._app_transport is transport
            transport.abort()

    run(loop, main())
