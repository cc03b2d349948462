"""Stream connections and servers: ``create_connection``, ``create_server``, ``Server``...

``NetworkMixin`` resolves addresses, creates, binds and connects sockets, accepts
connections, and hands each connected socket to ``loop._make_socket_transport()``, which
builds the transport. ``Server`` is asyncio's ``Server``: listening sockets, serving state,
and a count of the connections still attached to it.

Behaviour follows CPython 3.11's ``asyncio/base_events.py``, ``selector_events.py`` and
``unix_events.py``, with the later versions' changes gated on the running version; the code
is our own. With ``ssl=``, ``loop._make_ssl_transport()`` puts the TLS layer (Rust
``TlsProtocol``) between the socket's transport and the protocol.
"""

from __future__ import annotations

import asyncio
import builtins
import collections.abc
import contextlib
import contextvars
import errno
import itertools
import os
import socket
import stat
import sys
import weakref
from asyncio.trsock import TransportSocket

from . import _ferroloop
from ._format import logger
from ._sockets import _check_ssl, _numeric_addrinfo
from ._typing import LoopAPI

_ExceptionGroup = getattr(builtins, "ExceptionGroup", None)
_PY312_1 = sys.version_info >= (3, 12, 1)
_PY313 = sys.version_info >= (3, 13)
_PY314 = sys.version_info >= (3, 14)

_ACCEPT_RETRY_DELAY = 1  # seconds (asyncio's constants.ACCEPT_RETRY_DELAY)
# accept() errors that mean "out of resources": stop accepting for a while, then retry.
_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# create_unix_server's cleanup_socket when not given (3.13+: True; before, no such parameter).
_CLEANUP_SOCKET_DEFAULT = object()


def _check_no_ssl_timeouts(ssl, handshake_timeout, shutdown_timeout) -> None:
    # ``ssl`` is what the caller's check tests: ``bool(ssl)`` or ``ssl is not None``.
    if handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


def _check_stream_socket(sock, unix=False) -> None:
    if sock.type != socket.SOCK_STREAM or (unix and sock.family != socket.AF_UNIX):
        kind = "UNIX Domain Stream Socket" if unix else "Stream Socket"
        raise ValueError(f"A {kind} was expected, got {sock!r}")


def _unix_path(path, sock, missing: str):
    """path as a str, or None when a Unix stream sock is given instead (asyncio's checks;
    ``missing`` is the message when neither is)."""
    if path is not None:
        if sock is not None:
            raise ValueError("path and sock can not be specified at the same time")
        return os.fspath(path)
    if sock is None:
        raise ValueError(missing)
    _check_stream_socket(sock, unix=True)
    return None


def _bind_error_text(exc) -> str:
    return str(exc).lower() if _PY313 else exc.strerror.lower()


def _remove_stale_unix_socket(path) -> None:
    """Remove the socket file an earlier server left at path, as asyncio does before binding
    a Unix socket (stream servers, datagram local addresses).

    The stat and unlink are made in Rust: blocking-call detectors (blockbuster) wrap
    ``os.stat``/``os.remove`` and exempt only asyncio's own callers.
    """
    try:
        mode, _ = _ferroloop.path_mode_and_inode(path)
        if stat.S_ISSOCK(mode):
            _ferroloop.unlink_path(path)
    except FileNotFoundError:
        pass
    except OSError as err:  # the directory may only allow creating it
        logger().error("Unable to check or remove stale UNIX socket %r: %r", path, err)


def _set_reuseport(sock) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        )


def _interleave(infos, first_family_count=1):
    """Reorder addrinfos so that families alternate, the first family leading by
    ``first_family_count`` (RFC 8305's "First Address Family Count")."""
    by_family = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    groups = list(by_family.values())
    lead = max(first_family_count - 1, 0)
    head, groups[0] = groups[0][:lead], groups[0][lead:]
    rest = itertools.chain.from_iterable(itertools.zip_longest(*groups))
    return head + [info for info in rest if info is not None]


def _connect_error(exceptions) -> OSError:
    # One error: itself; several with the same text: the first; else a combined OSError.
    if len(exceptions) == 1 or all(str(e) == str(exceptions[0]) for e in exceptions):
        return exceptions[0]
    return OSError(f"Multiple exceptions: {', '.join(str(e) for e in exceptions)}")


class NetworkMixin(LoopAPI):
    """``create_connection``, ``create_server`` and their Unix and accepted-socket variants."""

    # -- the transport -------------------------------------------------------------------

    async def _create_connection_transport(
        self,
        sock,
        protocol_factory,
        owned=False,
        ssl=None,
        server_hostname=None,
        server_side=False,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        # owned: sock was created here, not passed in: close it if no transport takes it.
        # The waiter is done once connection_made() has run (after the TLS handshake).
        sock.setblocking(False)
        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            if ssl:
                transport = self._make_ssl_transport(
                    sock,
                    protocol,
                    None if isinstance(ssl, bool) else ssl,
                    waiter,
                    server_side=server_side,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout,
                )
            else:
                transport = self._make_socket_transport(sock, protocol, waiter)
        except BaseException:
            if owned:
                sock.close()
            raise
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    # -- address resolution --------------------------------------------------------------

    async def _resolve_all(
        self, addresses, errors, *, family, proto, flags, type_=socket.SOCK_STREAM
    ):
        """addrinfo lists for several (host, port, ...) addresses of socket type type_,
        looked up in parallel.

        Numeric addresses are resolved inline. The first failure in argument order is raised;
        an empty result for ``addresses[i]`` raises ``OSError(errors[i])``.
        """
        results = []
        lookups = {}  # index in results -> getaddrinfo() coroutine
        for i, address in enumerate(addresses):
            host, port = address[:2]
            info = _numeric_addrinfo(host, port, family, type_, proto, *address[2:])
            results.append(None if info is None else [info])
            if info is None:
                lookups[i] = self.getaddrinfo(
                    host, port, family=family, type=type_, proto=proto, flags=flags
                )
        if len(lookups) == 1:  # no task needed
            ((i, lookup),) = lookups.items()
            results[i] = await lookup
        elif lookups:
            resolved = await asyncio.gather(*lookups.values(), return_exceptions=True)
            for i, infos in zip(lookups, resolved, strict=True):
                results[i] = infos
        for infos, error in zip(results, errors, strict=True):
            if isinstance(infos, BaseException):
                raise infos
            if not infos:
                raise OSError(error)
        return results

    # -- connecting ----------------------------------------------------------------------

    async def create_connection(
        self,
        protocol_factory,
        host=None,
        port=None,
        *,
        ssl=None,
        family=0,
        proto=0,
        flags=0,
        sock=None,
        local_addr=None,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        happy_eyeballs_delay=None,
        interleave=None,
        all_errors=False,
    ):
        """Connect to a TCP server; return (transport, protocol)."""
        # asyncio's argument checks, in asyncio's order.
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        _check_no_ssl_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _check_ssl(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
        elif sock is None:
            raise ValueError("host and port was not specified and no sock specified")
        else:
            # AF_UNIX is allowed too, as long as it is a stream.
            _check_stream_socket(sock)

        if sock is None:
            if happy_eyeballs_delay is not None and interleave is None:
                interleave = 1  # happy eyeballs alternates families by default
            addresses, empty = [(host, port)], ["getaddrinfo() returned empty list"]
            if local_addr is not None:
                addresses.append(local_addr)
                empty.append(empty[0])
            infos, *local = await self._resolve_all(
                addresses, empty, family=family, proto=proto, flags=flags
            )
            laddr_infos = local[0] if local else None
            if interleave:
                infos = _interleave(infos, interleave)
            exceptions = []  # one list per attempt: its OSErrors
            if happy_eyeballs_delay is None:
                for info in infos:
                    try:
                        sock = await self._connect_sock(exceptions, info, laddr_infos)
                        break
                    except OSError:
                        continue
            else:
                sock = await self._race_connect(
                    exceptions, infos, laddr_infos, happy_eyeballs_delay
                )
            if sock is None:
                exceptions = [exc for attempt in exceptions for exc in attempt]
                try:
                    if all_errors and _ExceptionGroup is not None:  # 3.11+
                        raise _ExceptionGroup("create_connection failed", exceptions)
                    raise _connect_error(exceptions)
                finally:
                    exceptions = None  # the traceback holds this frame: break the cycle
        transport, protocol = await self._create_connection_transport(
            sock,
            protocol_factory,
            host is not None or port is not None,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            logger().debug(
                "%r connected to %s:%r: (%r, %r)",
                transport.get_extra_info("socket"),
                host,
                port,
                transport,
                protocol,
            )
        return transport, protocol

    async def _connect_sock(self, exceptions, addr_info, laddr_infos=None):
        """Create a socket for addr_info, bind it to a local address of its family (if
        laddr_infos is given) and connect it. Its OSErrors go in a new list in exceptions."""
        errors = []
        exceptions.append(errors)
        family, type_, proto, _, address = addr_info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if laddr_infos is not None:
                for lfamily, _, _, _, laddr in laddr_infos:
                    if lfamily != family:
                        continue
                    try:
                        sock.bind(laddr)
                        break
                    except OSError as exc:
                        msg = f"error while attempting to bind on address {laddr!r}: "
                        errors.append(OSError(exc.errno, msg + _bind_error_text(exc)))
                else:
                    if errors:
                        raise errors.pop()  # re-recorded below
                    raise OSError(f"no matching local address with {family=} found")
            await self.sock_connect(sock, address)
            return sock
        except BaseException as exc:
            if isinstance(exc, OSError):
                errors.append(exc)
            if sock is not None:
                sock.close()
            raise
        finally:
            exceptions = errors = None  # break exception -> frame -> list cycles

    async def _race_connect(self, exceptions, infos, laddr_infos, delay):
        """Happy eyeballs (RFC 8305): return the first socket that connects, or None.

        Attempt k+1 starts when attempt k fails or ``delay`` seconds after it started,
        whichever is first. Once one connects, the others are cancelled, and a socket that
        connected too late to win is closed.
        """
        running = set()

        def winner(done):
            sock = error = None
            for task in done:
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is None:
                    if sock is None:
                        sock = task.result()
                    else:
                        task.result().close()
                elif not isinstance(exc, OSError) and error is None:
                    error = exc  # not a connection failure: re-raised unless one won
            if sock is None and error is not None:
                raise error
            return sock

        try:
            for info in infos:
                latest = self.create_task(self._connect_sock(exceptions, info, laddr_infos))
                running.add(latest)
                deadline = self.time() + delay
                while not latest.done() and (timeout := deadline - self.time()) > 0:
                    done, running = await asyncio.wait(
                        running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    if (sock := winner(done)) is not None:
                        return sock
            while running:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                if (sock := winner(done)) is not None:
                    return sock
            return None
        finally:
            for task in running:
                if not task.done():
                    task.cancel()  # _connect_sock closes its socket
                elif not task.cancelled() and task.exception() is None:
                    task.result().close()  # connected as we were being cancelled

    async def create_unix_connection(
        self,
        protocol_factory,
        path=None,
        *,
        ssl=None,
        sock=None,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Connect to a Unix socket server; return (transport, protocol)."""
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            _check_no_ssl_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        path = _unix_path(path, sock, "no path and sock were specified")

        if path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        return await self._create_connection_transport(
            sock,
            protocol_factory,
            path is not None,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def connect_accepted_socket(
        self,
        protocol_factory,
        sock,
        *,
        ssl=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Wrap an already-accepted connection in a transport; return (transport, protocol)."""
        _check_stream_socket(sock)
        _check_no_ssl_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        _check_ssl(sock)
        transport, protocol = await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl=ssl,
            server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            sock = transport.get_extra_info("socket")
            logger().debug("%r handled: (%r, %r)", sock, transport, protocol)
        return transport, protocol

    # -- serving -------------------------------------------------------------------------

    async def create_server(
        self,
        protocol_factory,
        host=None,
        port=None,
        *,
        family=socket.AF_UNSPEC,
        flags=socket.AI_PASSIVE,
        sock=None,
        backlog=100,
        ssl=None,
        reuse_address=None,
        reuse_port=None,
        keep_alive=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        start_serving=True,
    ):
        """Listen on host(s) and port (or on sock); return a Server.

        host may be a sequence of hosts; each address they resolve to is bound once.
        """
        if keep_alive is not None and not _PY313:
            raise TypeError("create_server() got an unexpected keyword argument 'keep_alive'")
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        _check_no_ssl_timeouts(ssl is not None, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _check_ssl(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
        elif sock is None:
            raise ValueError("Neither host/port nor sock were specified")
        else:
            _check_stream_socket(sock)

        if sock is not None:
            sockets = [sock]
        else:
            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            if host == "":
                hosts = [None]
            elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
                hosts = [host]
            else:
                hosts = list(host)
            errors = [f"getaddrinfo({h!r}) returned empty list" for h in hosts]
            resolved = await self._resolve_all(
                [(h, port) for h in hosts], errors, family=family, proto=0, flags=flags
            )
            infos = list(dict.fromkeys(itertools.chain.from_iterable(resolved)))  # bind once
            sockets = self._bind_server_sockets(infos, reuse_address, reuse_port, keep_alive)
        for sock in sockets:
            sock.setblocking(False)

        server = Server(
            self,
            sockets,
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)  # let the readers be registered
        if self.get_debug():
            logger().info("%r is serving", server)
        return server

    def _bind_server_sockets(self, infos, reuse_address, reuse_port, keep_alive):
        sockets = []
        try:
            for af, socktype, proto, _, address in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:  # assume a family/type/protocol the system lacks
                    if self.get_debug():
                        logger().warning(
                            "create_server() failed to create socket.socket(%r, %r, %r)",
                            af,
                            socktype,
                            proto,
                            exc_info=True,
                        )
                    continue
                sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                if reuse_port:
                    _set_reuseport(sock)
                if keep_alive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                if af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    # One socket per family: no dual-stack (Linux's default) IPv6 socket.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    sock.bind(address)
                except OSError as exc:
                    msg = (
                        f"error while attempting to bind on address {address!r}: "
                        f"{_bind_error_text(exc)}"
                    )
                    if _PY313 and exc.errno == errno.EADDRNOTAVAIL:
                        # 3.13: assume the family is not enabled; skip the address.
                        sockets.pop().close()
                        if self.get_debug():
                            logger().warning(msg)
                        continue
                    raise OSError(exc.errno, msg) from None
            if _PY313 and not sockets:
                addresses = [info[4] for info in infos]
                raise OSError(f"could not bind on any address out of {addresses!r}")
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    async def create_unix_server(
        self,
        protocol_factory,
        path=None,
        *,
        sock=None,
        backlog=100,
        ssl=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        start_serving=True,
        cleanup_socket=_CLEANUP_SOCKET_DEFAULT,
    ):
        """Listen on a Unix socket path (or on sock); return a Server.

        3.13+: closing the server removes the socket file (unless cleanup_socket is false)
        if it is still the one the server bound.
        """
        if cleanup_socket is _CLEANUP_SOCKET_DEFAULT:
            cleanup_socket = _PY313
        elif not _PY313:
            raise TypeError(
                "create_unix_server() got an unexpected keyword argument 'cleanup_socket'"
            )
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        _check_no_ssl_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        path = _unix_path(path, sock, "path was not specified, and no sock specified")

        if path is not None:
            # Before the socket exists: nothing to leak if this raises.
            if path and path[0] not in (0, "\x00"):  # not in the abstract namespace
                _remove_stale_unix_socket(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    msg = f"Address {path!r} is already in use"
                    raise OSError(errno.EADDRINUSE, msg) from None
                raise
            except BaseException:
                sock.close()
                raise
        if cleanup_socket:
            bound = sock.getsockname()
            if bound and bound[0] not in (0, "\x00"):  # not in the abstract namespace
                with contextlib.suppress(FileNotFoundError):
                    _, inode = _ferroloop.path_mode_and_inode(bound)
                    self._unix_server_sockets[sock] = inode
        sock.setblocking(False)

        server = Server(
            self,
            [sock],
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)  # let the reader be registered
        return server

    # -- accepting (called by Server) ----------------------------------------------------

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        # asyncio's signature: Server calls it.
        tls = None
        if sslcontext is not None:
            tls = (sslcontext, ssl_handshake_timeout, ssl_shutdown_timeout)
        fd = sock.fileno()
        self.add_reader(fd, self._accept_connection, protocol_factory, sock, server, backlog, tls)

    def _stop_serving(self, sock) -> None:
        # A Unix server's socket file to remove once closed (3.13+), unless replaced since.
        inode = self._unix_server_sockets.pop(sock, None)
        path = sock.getsockname() if inode is not None else None
        self.remove_reader(sock.fileno())
        sock.close()
        if path is not None:
            try:
                if _ferroloop.path_mode_and_inode(path)[1] == inode:
                    _ferroloop.unlink_path(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger().error("Unable to clean up listening UNIX socket %r: %r", path, err)

    def _accept_connection(self, protocol_factory, sock, server, backlog, tls=None) -> None:
        # The listening socket's reader. Several connections may be waiting: accept up to
        # backlog of them per readiness event. tls: (context, handshake and shutdown
        # timeouts) of a TLS server.
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                if self.get_debug():
                    logger().debug("%r got a new connection from %r: %r", server, addr, conn)
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none left
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise  # reported by the loop as a callback error; the reader stays
                # Out of fds or memory: the socket would stay readable and spin the loop.
                # Stop accepting and try again in a while. (asyncio goes on trying the
                # rest of the backlog first, reporting each failure; once is enough.)
                self.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": TransportSocket(sock),
                    }
                )
                self.remove_reader(sock.fileno())
                self.call_later(
                    _ACCEPT_RETRY_DELAY,
                    self._resume_accepting,
                    protocol_factory,
                    sock,
                    server,
                    backlog,
                    tls,
                )
                return
            extra = {"peername": addr}
            if tls is not None:
                # The handshake is awaited in a task, as asyncio does for every connection.
                self.create_task(
                    self._serve_tls_connection(protocol_factory, conn, extra, server, *tls)
                )
                continue
            # Each connection's callbacks run in their own copy of the context, as they
            # would in the task asyncio creates for each connection.
            contextvars.copy_context().run(
                self._serve_connection, protocol_factory, conn, extra, server
            )

    def _resume_accepting(self, protocol_factory, sock, server, backlog, tls) -> None:
        if sock.fileno() != -1:  # not closed meanwhile (Server.close())
            context, handshake_timeout, shutdown_timeout = tls or (None, None, None)
            self._start_serving(
                protocol_factory,
                sock,
                context,
                server,
                backlog,
                handshake_timeout,
                shutdown_timeout,
            )

    def _serve_connection(self, protocol_factory, conn, extra, server) -> None:
        protocol = transport = None
        try:
            protocol = protocol_factory()
            transport = self._make_socket_transport(conn, protocol, extra=extra, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            self._report_serve_error(exc, protocol, None)

    async def _serve_tls_connection(
        self, protocol_factory, conn, extra, server, sslcontext, handshake_timeout, shutdown_timeout
    ):
        protocol = transport = None
        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            transport = self._make_ssl_transport(
                conn,
                protocol,
                sslcontext,
                waiter,
                server_side=True,
                extra=extra,
                server=server,
                ssl_handshake_timeout=handshake_timeout,
                ssl_shutdown_timeout=shutdown_timeout,
            )
            try:
                await waiter
            except BaseException:
                transport.close()
                waiter = None  # the exception's traceback would keep the TLS layer alive
                raise
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            self._report_serve_error(exc, protocol, transport)

    def _report_serve_error(self, exc, protocol, transport) -> None:
        # Like asyncio, this is reported in debug mode only; the server goes on.
        if self.get_debug():
            context = {
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
            }
            if protocol is not None:
                context["protocol"] = protocol
            if transport is not None:
                context["transport"] = transport
            self.call_exception_handler(context)


class Server(asyncio.AbstractServer):
    """asyncio's ``Server``: listening sockets and the connections accepted on them."""

    def __init__(
        self,
        loop,
        sockets,
        protocol_factory,
        ssl_context,
        backlog,
        ssl_handshake_timeout,
        ssl_shutdown_timeout=None,
    ):
        self._loop = loop
        self._sockets = sockets  # None once closed
        self._active_count = 0  # transports attached and not yet detached
        self._clients = weakref.WeakSet() if _PY313 else None  # for close/abort_clients
        self._waiters = []  # wait_closed() futures; None once woken up
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._serving_forever_fut = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sockets={self.sockets!r}>"

    # Called by each transport: once when it is made, once after connection_lost().
    # (asyncio 3.11 passes no argument, 3.13 the transport.)
    def _attach(self, transport=None) -> None:
        assert self._sockets is not None
        self._active_count += 1
        if self._clients is not None and transport is not None:
            self._clients.add(transport)

    def _detach(self, transport=None) -> None:
        assert self._active_count > 0
        self._active_count -= 1
        if self._clients is not None and transport is not None:
            self._clients.discard(transport)
        if self._active_count == 0 and self._sockets is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _start_serving(self) -> None:
        if self._serving:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._loop._start_serving(
                self._protocol_factory,
                sock,
                self._ssl_context,
                self,
                self._backlog,
                self._ssl_handshake_timeout,
                self._ssl_shutdown_timeout,
            )

    def get_loop(self):
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    @property
    def sockets(self):
        """The listening sockets, wrapped so they cannot be closed or reconfigured."""
        if self._sockets is None:
            return ()
        return tuple(TransportSocket(s) for s in self._sockets)

    def close(self) -> None:
        """Stop listening and close the listening sockets; connections stay open."""
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for sock in sockets:
            self._loop._stop_serving(sock)
        self._serving = False
        if self._serving_forever_fut is not None and not self._serving_forever_fut.done():
            self._serving_forever_fut.cancel()
            self._serving_forever_fut = None
        if self._active_count == 0:
            self._wakeup()

    if _PY313:

        def close_clients(self) -> None:
            for transport in self._clients.copy():
                transport.close()

        def abort_clients(self) -> None:
            for transport in self._clients.copy():
                transport.abort()

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)  # let the readers be registered

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                if _PY314:
                    # 3.14 closes the connections too, so that a hanging client cannot
                    # keep wait_closed() (and Ctrl+C of the server) waiting.
                    self.close_clients()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self) -> None:
        """Wait until the server is closed (3.12.1+: and its connections are all gone).

        3.11 returns at once if the server is closed already, even with connections left.
        """
        if self._waiters is None or (not _PY312_1 and self._sockets is None):
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter
