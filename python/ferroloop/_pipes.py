"""Pipe connections: ``loop.connect_read_pipe`` and ``loop.connect_write_pipe``.

``PipesMixin`` checks what it is given (a pipe, a socket or a character device, as asyncio
accepts), makes it non-blocking, and hands it to ``loop._make_read_pipe_transport()`` /
``loop._make_write_pipe_transport()`` (``_transports.py``), which build the transport and
schedule ``connection_made`` and the waiter.

Behaviour follows CPython 3.11's ``asyncio/base_events.py`` and the checks of
``unix_events._UnixReadPipeTransport`` / ``_UnixWritePipeTransport``; the code is our own.
"""

from __future__ import annotations

import os
import stat

from ._format import logger
from ._typing import LoopAPI

# asyncio's messages, word for word (the read side says "pipes/sockets" but accepts
# character devices too).
_READ_PIPE_ERROR = "Pipe transport is for pipes/sockets only."
_WRITE_PIPE_ERROR = "Pipe transport is only for pipes, sockets and character devices"


def _prepare_pipe(pipe, message: str) -> int:
    """Check that ``pipe`` is a pipe, socket or character device; make it non-blocking."""
    fd = pipe.fileno()
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError(message)
    os.set_blocking(fd, False)
    return fd


class PipesMixin(LoopAPI):
    """``connect_read_pipe`` and ``connect_write_pipe``."""

    async def connect_read_pipe(self, protocol_factory, pipe):
        """Wrap the read end of a pipe (or a socket, a PTY...) in a read transport."""
        # asyncio builds the protocol before the transport looks at the pipe.
        protocol = protocol_factory()
        fd = _prepare_pipe(pipe, _READ_PIPE_ERROR)
        return await self._connect_pipe(self._make_read_pipe_transport, "Read", fd, pipe, protocol)

    async def connect_write_pipe(self, protocol_factory, pipe):
        """Wrap the write end of a pipe (or a socket, a PTY...) in a write transport."""
        protocol = protocol_factory()
        fd = _prepare_pipe(pipe, _WRITE_PIPE_ERROR)
        return await self._connect_pipe(
            self._make_write_pipe_transport, "Write", fd, pipe, protocol
        )

    async def _connect_pipe(self, make_transport, side, fd, pipe, protocol):
        waiter = self.create_future()
        transport = make_transport(pipe, protocol, waiter)
        try:
            await waiter  # connection_made() has run
        except BaseException:
            transport.close()
            raise
        if self.get_debug():
            logger().debug("%s pipe %r connected: (%r, %r)", side, fd, transport, protocol)
        return transport, protocol
