"""loop.getaddrinfo / loop.getnameinfo give the same answers as the socket module.

Only numeric addresses and 'localhost' (answered from /etc/hosts) are looked
up, so no test touches the network.
"""

import asyncio
import socket

import pytest
from _netkit import ipv6_loopback_available

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")

GETADDRINFO_CASES = [
    pytest.param(("127.0.0.1", 80), {}, id="ipv4-numeric"),
    pytest.param(("127.0.0.1", "80"), {}, id="ipv4-str-port"),
    pytest.param(("127.0.0.1", None), {}, id="ipv4-no-port"),
    pytest.param((b"127.0.0.1", 80), {}, id="ipv4-bytes-host"),
    pytest.param(("127.0.0.1", 0), {"type": socket.SOCK_STREAM}, id="ipv4-stream"),
    pytest.param(("127.0.0.1", 53), {"type": socket.SOCK_DGRAM}, id="ipv4-dgram"),
    pytest.param(
        ("127.0.0.1", 80), {"family": socket.AF_INET, "proto": socket.IPPROTO_TCP}, id="ipv4-tcp"
    ),
    pytest.param(("::1", 443), {}, id="ipv6-numeric", marks=needs_ipv6),
    pytest.param(("::1", 443), {"family": socket.AF_INET6}, id="ipv6-family", marks=needs_ipv6),
    pytest.param(("localhost", 80), {}, id="localhost"),
    pytest.param(("localhost", 80), {"type": socket.SOCK_STREAM}, id="localhost-stream"),
    pytest.param(
        ("localhost", 80),
        {"type": socket.SOCK_STREAM, "flags": socket.AI_CANONNAME},
        id="localhost-canonname",
    ),
    pytest.param((None, 0), {"type": socket.SOCK_STREAM, "flags": socket.AI_PASSIVE}, id="passive"),
    pytest.param((None, 8080), {}, id="no-host"),
]


@pytest.mark.parametrize(("args", "kwargs"), GETADDRINFO_CASES)
def test_getaddrinfo_matches_socket_getaddrinfo(loop, args, kwargs):
    expected = socket.getaddrinfo(*args, **kwargs)
    result = loop.run_until_complete(loop.getaddrinfo(*args, **kwargs))
    assert result == expected
    for family, type_, _proto, _canonname, _sockaddr in result:
        assert isinstance(family, socket.AddressFamily)
        assert isinstance(type_, socket.SocketKind)


def test_getaddrinfo_returns_a_list_of_five_tuples(loop):
    result = loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM))
    assert isinstance(result, list)
    assert result == [
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 80))
    ]


def test_getaddrinfo_error_is_socket_gaierror(loop):
    with pytest.raises(socket.gaierror):
        loop.run_until_complete(
            loop.getaddrinfo("not-a-numeric-host", 80, flags=socket.AI_NUMERICHOST)
        )


def test_many_concurrent_getaddrinfo_calls(loop):
    async def main():
        return await asyncio.gather(
            *(loop.getaddrinfo("127.0.0.1", port) for port in range(1000, 1100)),
            *(loop.getaddrinfo("localhost", port) for port in range(1000, 1010)),
        )

    results = loop.run_until_complete(main())
    assert results[:100] == [socket.getaddrinfo("127.0.0.1", p) for p in range(1000, 1100)]
    assert results[100:] == [socket.getaddrinfo("localhost", p) for p in range(1000, 1010)]
    loop.run_until_complete(loop.shutdown_default_executor())


@pytest.mark.parametrize(
    ("sockaddr", "flags"),
    [
        (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
        (("127.0.0.1", 80), socket.NI_NUMERICHOST),
        (("127.0.0.1", 8080), 0),
        pytest.param(("::1", 443, 0, 0), socket.NI_NUMERICHOST, marks=needs_ipv6),
    ],
)
def test_getnameinfo_matches_socket_getnameinfo(loop, sockaddr, flags):
    expected = socket.getnameinfo(sockaddr, flags)
    assert loop.run_until_complete(loop.getnameinfo(sockaddr, flags)) == expected


def test_getnameinfo_numeric(loop):
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    result = loop.run_until_complete(loop.getnameinfo(("127.0.0.1", 8080), flags))
    assert result == ("127.0.0.1", "8080")
