"""Low-level socket operations: ``loop.sock_recv()``, ``sock_sendall()``, ``sock_connect()``...

Each operation tries its system call at once and only when that would block creates a future
and registers a reader or writer that retries the call each time the socket is ready. The
registration is removed when the future completes, however it completes (cancellation
included), unless a later operation on the same fd has replaced it meanwhile.

Behaviour follows CPython's ``asyncio/selector_events.py`` (and ``base_events.py`` and
``unix_events.py`` for ``sock_sendfile``); the code is our own.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import sys
from asyncio.exceptions import SendfileNotAvailableError

from . import _ferroloop
from ._typing import LoopAPI

try:
    import ssl
except ImportError:  # Python built without OpenSSL
    ssl = None

# Returned by an attempt that made progress but is not finished: keep waiting.
_AGAIN = object()

# Read size of the sock_sendfile() fallback (asyncio's SENDFILE_FALLBACK_READBUFFER_SIZE).
_FALLBACK_CHUNK = 256 * 1024
# From 3.14, sendfile leaves the file at offset + bytes sent however it ends (even when nothing
# was sent), and the fallbacks seek to the offset first even when it is 0.
SENDFILE_ALWAYS_SEEKS = sys.version_info >= (3, 14)

_READ, _WRITE = False, True


# The Rust fast paths make the syscalls a plain socket's methods make; a subclass or a
# stand-in (tests swap methods on mocks) takes the general path, which calls its methods.
_PLAIN_SOCKET = socket.socket


def _check_ssl(sock) -> None:
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


# -- the attempts retried while an operation waits -------------------------------------------
# Each takes the socket and raises BlockingIOError/InterruptedError when it must wait again.


def _call(sock, method, *args):
    # Look the method up on every attempt, as asyncio does: a test may swap a mock's method
    # while an operation waits.
    return getattr(sock, method)(*args)


def _send_rest(sock, view, sent):
    # sent: a one-item list, the number of bytes of view already sent.
    sent[0] += sock.send(view[sent[0] :])
    return None if sent[0] == len(view) else _AGAIN


def _accept(sock):
    conn, address = sock.accept()
    conn.setblocking(False)
    return conn, address


def _connect_result(sock, address):
    # The socket became writable: the connection attempt is over, SO_ERROR says how it went.
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"Connect call failed {address}")


def _sendfile_some(sock, fileno, offset, count, blocksize, sent):
    # One os.sendfile() call; sent: a one-item list, the bytes sent so far.
    total = sent[0]
    if count:
        blocksize = count - total
        if blocksize <= 0:
            return total
    try:
        # In Rust, not os.sendfile: blocking-call detectors wrap that and exempt only asyncio.
        n = _ferroloop.sendfile(sock.fileno(), fileno, offset + total, blocksize)
    except (BlockingIOError, InterruptedError):
        raise
    except OSError as exc:
        if total == 0:
            # Nothing sent yet: the file may not support sendfile (not mmap-able); let the
            # caller fall back on plain send().
            raise SendfileNotAvailableError("os.sendfile call failed") from exc
        if exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
            # The peer went away mid-transfer: report it the same way on every POSIX system.
            raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
        raise
    if n == 0:  # end of file
        return total
    sent[0] = total + n
    return _AGAIN


# -- address resolution ----------------------------------------------------------------------


def _numeric_addrinfo(host, port, family, type_, proto, flowinfo=0, scopeid=0):
    """The addrinfo tuple of an already-numeric (host, port), or None if it needs resolving.

    Saves a getaddrinfo() call for addresses the caller has resolved already, and keeps
    an IPv6 address's flowinfo and scope id (asyncio: ``base_events._ipaddr_info``).
    """
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    if type_ == socket.SOCK_STREAM:
        proto = socket.IPPROTO_TCP
    elif type_ == socket.SOCK_DGRAM:
        proto = socket.IPPROTO_UDP
    else:
        return None
    if port is None or port == "" or port == b"":
        port = 0
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):  # a service name such as "http"
            return None
    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:  # inet_pton() rejects a scope suffix ("fe80::1%eth0")
        return None
    families = (socket.AF_INET, socket.AF_INET6) if family == socket.AF_UNSPEC else (family,)
    for af in families:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        address = (host, port, flowinfo, scopeid) if af == socket.AF_INET6 else (host, port)
        return af, type_, proto, "", address
    return None


class SocketOpsMixin(LoopAPI):
    """``loop.sock_*``: coroutines over non-blocking sockets, on the loop's readers/writers."""

    def _check_socket(self, sock) -> None:
        _check_ssl(sock)
        self._check_nonblocking(sock)

    def _check_nonblocking(self, sock) -> None:
        # asyncio checks this in debug mode only.
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _sock_wait(self, sock, writer, attempt, *args):
        """A future for ``attempt(*args)``, retried each time sock is readable (writable).

        The retry is registered as the fd's reader (writer), replacing any other one as
        ``add_reader`` does, and unregistered when the future completes if it is still
        the one registered.
        """
        fut = self.create_future()
        fd = sock.fileno()
        # Hook: refuse an fd owned by a transport (asyncio: _ensure_fd_no_transport(fd)).
        if writer:
            self.add_writer(fd, self._sock_retry, fut, attempt, *args)
            handle = self._get_writer(fd)
        else:
            self.add_reader(fd, self._sock_retry, fut, attempt, *args)
            handle = self._get_reader(fd)
        fut.add_done_callback(functools.partial(self._sock_unregister, fd, writer, handle))
        return fut

    def _sock_retry(self, fut, attempt, *args) -> None:
        # Reader/writer callback of _sock_wait().
        if fut.done():  # cancelled; the done callback is about to unregister us
            return
        try:
            result = attempt(*args)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut = None  # the exception's traceback holds this frame: break the cycle
        else:
            if result is not _AGAIN:
                fut.set_result(result)

    def _sock_unregister(self, fd, writer, handle, fut) -> None:
        # Identity, not just presence: a later operation on the fd may own the slot now.
        if writer:
            if self._get_writer(fd) is handle:
                self.remove_writer(fd)
        elif self._get_reader(fd) is handle:
            self.remove_reader(fd)

    # -- receiving -------------------------------------------------------------------------

    async def sock_recv(self, sock, n):
        """Receive up to n bytes from sock."""
        if type(sock) is _PLAIN_SOCKET:  # fast path; cannot be an SSLSocket
            self._check_nonblocking(sock)
            result = self._sock_recv(sock, sock.fileno(), n)
            if result is not NotImplemented:
                return result if type(result) is bytes else await result
        self._check_socket(sock)
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_wait(sock, _READ, _call, sock, "recv", n)

    async def sock_recv_into(self, sock, buf):
        """Receive into the writable buffer buf; return the number of bytes received."""
        if type(sock) is _PLAIN_SOCKET:  # fast path; cannot be an SSLSocket
            self._check_nonblocking(sock)
            result = self._sock_recv_into(sock, sock.fileno(), buf)
            if result is not NotImplemented:
                return result if type(result) is int else await result
        self._check_socket(sock)
        try:
            return sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_wait(sock, _READ, _call, sock, "recv_into", buf)

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to bufsize bytes: return (data, address)."""
        self._check_socket(sock)
        try:
            return sock.recvfrom(bufsize)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_wait(sock, _READ, _call, sock, "recvfrom", bufsize)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into buf: return (number of bytes, address)."""
        self._check_socket(sock)
        if not nbytes:
            nbytes = len(buf)
        try:
            return sock.recvfrom_into(buf, nbytes)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_wait(sock, _READ, _call, sock, "recvfrom_into", buf, nbytes)

    async def sock_accept(self, sock):
        """Accept a connection: return (conn, address), conn non-blocking."""
        self._check_socket(sock)
        try:
            return _accept(sock)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_wait(sock, _READ, _accept, sock)

    # -- sending ---------------------------------------------------------------------------

    async def sock_sendall(self, sock, data):
        """Send all of data, waiting for the socket to drain as needed."""
        if type(sock) is _PLAIN_SOCKET:  # fast path; cannot be an SSLSocket
            self._check_nonblocking(sock)
            result = self._sock_sendall(sock, sock.fileno(), data)
            if result is None:
                return None
            if type(result) is int:
                # A socket in blocking mode took only part of it without waiting: its own
                # send() waits for the rest, as asyncio's does (without the lock).
                data = memoryview(data).cast("B")[result:]
            elif result is not NotImplemented:
                return await result
        self._check_socket(sock)
        try:
            n = sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        view = memoryview(data).cast("B")  # count bytes, whatever the buffer's item size
        if n == len(view):
            return None
        return await self._sock_wait(sock, _WRITE, _send_rest, sock, view, [n])

    async def sock_sendto(self, sock, data, address):
        """Send a datagram to address; return the number of bytes sent."""
        self._check_socket(sock)
        try:
            return sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_wait(sock, _WRITE, _call, sock, "sendto", data, address)

    async def sock_connect(self, sock, address):
        """Connect sock to address, resolving a host name for AF_INET/AF_INET6 sockets."""
        self._check_socket(sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host, port = address[:2]
            info = _numeric_addrinfo(host, port, sock.family, sock.type, sock.proto, *address[2:])
            if info is None:
                infos = await self.getaddrinfo(
                    host, port, family=sock.family, type=sock.type, proto=sock.proto
                )
                info = infos[0]
            address = info[4]
        try:
            return sock.connect(address)
        except (BlockingIOError, InterruptedError):
            # In progress (after EINTR too, the connection goes on in the background):
            # writable means it is over, one way or the other.
            pass
        return await self._sock_wait(sock, _WRITE, _connect_result, sock, address)

    # -- sendfile --------------------------------------------------------------------------

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        """Send a file with os.sendfile() (or read/send when that is unavailable).

        Return the number of bytes sent. The file position ends after the last byte sent.
        """
        self._check_nonblocking(sock)
        _check_ssl(sock)
        self._check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        if not hasattr(os, "sendfile"):
            raise SendfileNotAvailableError("os.sendfile() is not available")
        try:
            fileno = file.fileno()
            fsize = os.fstat(fileno).st_size
        except (AttributeError, OSError) as exc:  # OSError includes io.UnsupportedOperation
            raise SendfileNotAvailableError("not a regular file") from exc
        blocksize = count or fsize
        if not blocksize:
            return 0  # empty file
        sent = [0]
        try:
            try:
                result = _sendfile_some(sock, fileno, offset, count, blocksize, sent)
            except (BlockingIOError, InterruptedError):
                result = _AGAIN
            if result is _AGAIN:
                # Each writable event sends one more chunk (one per loop iteration).
                result = await self._sock_wait(
                    sock, _WRITE, _sendfile_some, sock, fileno, offset, count, blocksize, sent
                )
            return result
        finally:
            # Leave the file position after the last byte sent, whatever happened.
            if sent[0] or SENDFILE_ALWAYS_SEEKS:
                os.lseek(fileno, offset + sent[0], os.SEEK_SET)

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        # Read chunks in the default executor and sock_sendall() them.
        if offset or (SENDFILE_ALWAYS_SEEKS and hasattr(file, "seek")):
            file.seek(offset)
        blocksize = min(count or _FALLBACK_CHUNK, _FALLBACK_CHUNK)
        buf = bytearray(blocksize)
        total = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # end of file
                await self.sock_sendall(sock, view[:read])
                total += read
            return total
        finally:
            if total and hasattr(file, "seek"):
                file.seek(offset + total)

    def _check_sendfile_params(self, sock, file, offset, count) -> None:
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
