"""Datagram endpoints: ``create_datagram_endpoint`` (UDP, and Unix datagram sockets).

``DatagramMixin`` checks the arguments, resolves the addresses, creates, binds and connects
the socket, and hands it to ``loop._make_datagram_transport()``, which builds the transport
(asyncio's ``_SelectorDatagramTransport`` contract: ``connection_made`` scheduled, then
reading, then the waiter).

Behaviour follows CPython 3.11's ``asyncio/base_events.py``, with 3.10's ``reuse_address``
and 3.12's socket type check gated on the running version; the code is our own.
"""

from __future__ import annotations

import socket
import sys
import warnings

from ._format import logger
from ._servers import _remove_stale_unix_socket, _set_reuseport
from ._typing import LoopAPI

_PY311 = sys.version_info >= (3, 11)
_PY312 = sys.version_info >= (3, 12)

_AF_UNIX = getattr(socket, "AF_UNIX", None)
_EMPTY = "getaddrinfo() returned empty list"
_UNSET = object()  # 3.10: reuse_address not passed


def _check_datagram_socket(sock) -> None:
    if _PY312:  # 3.12 accepts any socket type but a stream (SOCK_SEQPACKET, SOCK_RAW, ...)
        if sock.type == socket.SOCK_STREAM:
            raise ValueError(f"A datagram socket was expected, got {sock!r}")
    elif sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")


def _is_host_port(addr) -> bool:
    return isinstance(addr, tuple) and len(addr) == 2


def _not_host_port():
    # 3.10 asserted this; 3.11 made it a TypeError.
    return (TypeError if _PY311 else AssertionError)("2-tuple is expected")


class DatagramMixin(LoopAPI):
    """``create_datagram_endpoint``."""

    if _PY311:

        async def create_datagram_endpoint(
            self,
            protocol_factory,
            local_addr=None,
            remote_addr=None,
            *,
            family=0,
            proto=0,
            flags=0,
            reuse_port=None,
            allow_broadcast=None,
            sock=None,
        ):
            """Create a datagram endpoint; return (transport, protocol).

            3.11 removed ``reuse_address``: passing it is a TypeError, as on asyncio.
            """
            return await self._create_datagram_endpoint(
                protocol_factory,
                local_addr,
                remote_addr,
                family,
                proto,
                flags,
                _UNSET,
                reuse_port,
                allow_broadcast,
                sock,
            )

    else:

        async def create_datagram_endpoint(
            self,
            protocol_factory,
            local_addr=None,
            remote_addr=None,
            *,
            family=0,
            proto=0,
            flags=0,
            reuse_address=_UNSET,
            reuse_port=None,
            allow_broadcast=None,
            sock=None,
        ):
            """Create a datagram endpoint; return (transport, protocol)."""
            return await self._create_datagram_endpoint(
                protocol_factory,
                local_addr,
                remote_addr,
                family,
                proto,
                flags,
                reuse_address,
                reuse_port,
                allow_broadcast,
                sock,
            )

    async def _create_datagram_endpoint(
        self,
        protocol_factory,
        local_addr,
        remote_addr,
        family,
        proto,
        flags,
        reuse_address,
        reuse_port,
        allow_broadcast,
        sock,
    ):
        # asyncio's argument checks, in asyncio's order.
        if sock is not None:
            _check_datagram_socket(sock)
            if any((local_addr, remote_addr, family, proto, flags, reuse_port, allow_broadcast)):
                opts = {
                    "local_addr": local_addr,
                    "remote_addr": remote_addr,
                    "family": family,
                    "proto": proto,
                    "flags": flags,
                }
                if reuse_address is not _UNSET:  # 3.10 (asyncio 3.10 also lists it when unset)
                    opts["reuse_address"] = reuse_address
                opts.update(reuse_port=reuse_port, allow_broadcast=allow_broadcast)
                problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
                raise ValueError(
                    "socket modifier keyword arguments can not be used "
                    f"when sock is specified. ({problems})"
                )
            sock.setblocking(False)
            r_addr = None
            owned = False
        else:
            pairs = await self._datagram_address_pairs(
                local_addr, remote_addr, family, proto, flags
            )
            if reuse_address is not _UNSET:  # 3.10 only (bpo-37228)
                if reuse_address:
                    raise ValueError(
                        "Passing `reuse_address=True` is no longer supported, as the usage "
                        "of SO_REUSEPORT in UDP poses a significant security concern."
                    )
                warnings.warn(
                    "The *reuse_address* parameter has been deprecated as of 3.5.10 and is "
                    "scheduled for removal in 3.11.",
                    DeprecationWarning,
                    stacklevel=3,  # the caller of create_datagram_endpoint()
                )
            sock, r_addr = await self._open_datagram_socket(
                pairs, local_addr, remote_addr, reuse_port, allow_broadcast
            )
            owned = True

        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            transport = self._make_datagram_transport(sock, protocol, r_addr, waiter)
        except BaseException:
            if owned:  # asyncio leaks it here
                sock.close()
            raise
        if self.get_debug():
            if local_addr:
                logger().info(
                    "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                    local_addr,
                    remote_addr,
                    transport,
                    protocol,
                )
            else:
                logger().debug(
                    "Datagram endpoint remote_addr=%r created: (%r, %r)",
                    remote_addr,
                    transport,
                    protocol,
                )
        try:
            await waiter  # connection_made() has run
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def _datagram_address_pairs(self, local_addr, remote_addr, family, proto, flags):
        """The sockets to try, in order: [((family, proto), (local address, remote address))]."""
        if not (local_addr or remote_addr):
            if family == 0:
                raise ValueError("unexpected address family")
            return [((family, proto), (None, None))]

        if _AF_UNIX is not None and family == _AF_UNIX:
            for addr in (local_addr, remote_addr):
                if addr is not None and not isinstance(addr, str):
                    raise TypeError("string is expected")
            if local_addr and local_addr[0] not in (0, "\x00"):  # not in the abstract namespace
                _remove_stale_unix_socket(local_addr)
            return [((family, proto), (local_addr, remote_addr))]

        # asyncio checks and resolves local_addr, then remote_addr: a malformed remote_addr
        # is reported after local_addr's resolution error, if any.
        addresses, indices = [], []  # the addresses given, and their slot (0 local, 1 remote)
        for idx, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            if not _is_host_port(addr):
                if addresses:
                    await self._resolve_all(
                        addresses,
                        [_EMPTY],
                        family=family,
                        proto=proto,
                        flags=flags,
                        type_=socket.SOCK_DGRAM,
                    )
                raise _not_host_port()
            addresses.append(addr)
            indices.append(idx)
        resolved = await self._resolve_all(
            addresses,
            [_EMPTY] * len(addresses),
            family=family,
            proto=proto,
            flags=flags,
            type_=socket.SOCK_DGRAM,
        )
        # Group by (family, proto), in the order first seen; like asyncio, the last address
        # of a group wins its slot.
        groups = {}
        for idx, infos in zip(indices, resolved, strict=True):
            for fam, _, pro, _, address in infos:
                groups.setdefault((fam, pro), [None, None])[idx] = address
        # Each address given needs one of its family and protocol in the group.
        pairs = [
            (key, pair)
            for key, pair in groups.items()
            if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))
        ]
        if not pairs:
            raise ValueError("can not get address information")
        return pairs

    async def _open_datagram_socket(
        self, pairs, local_addr, remote_addr, reuse_port, allow_broadcast
    ):
        """Create, bind and connect a socket for the first pair that works: (sock, r_addr).

        If none does, the first pair's OSError is raised; other errors are raised at once.
        """
        exceptions = []
        try:
            for (family, proto), (local_address, remote_address) in pairs:
                sock = None
                try:
                    sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                    if reuse_port:
                        _set_reuseport(sock)
                    if allow_broadcast:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    sock.setblocking(False)
                    if local_addr:
                        sock.bind(local_address)
                    if not remote_addr:
                        return sock, None
                    if not allow_broadcast:  # a broadcast endpoint sends to it, unconnected
                        await self.sock_connect(sock, remote_address)
                    return sock, remote_address
                except BaseException as exc:
                    if sock is not None:
                        sock.close()
                    if not isinstance(exc, OSError):
                        raise
                    exceptions.append(exc)
            raise exceptions[0]
        finally:
            exceptions = None  # the traceback holds this frame: break the cycle
