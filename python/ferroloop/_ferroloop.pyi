"""Type stub of the Rust extension (``ferroloop._ferroloop``).

Handles are created by the loop only; their ``__class__`` is asyncio's ``Handle`` /
``TimerHandle``, so the loop's methods are typed as returning those (what ``isinstance`` says).
"""

import asyncio
import contextvars
import os
import socket
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar, final

from typing_extensions import Self, TypeVarTuple, Unpack, disjoint_base

__all__ = [
    "BUILD_PROFILE",
    "CoreLoop",
    "DatagramTransport",
    "Handle",
    "ReadPipeTransport",
    "StreamTransport",
    "TimerHandle",
    "TlsProtocol",
    "TlsTransport",
    "WritePipeTransport",
    "__version__",
    "path_mode_and_inode",
    "sendfile",
    "unlink_path",
]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")
_TaskFactory = Callable[..., asyncio.Future[Any]]

BUILD_PROFILE: str
__version__: str

# The file-system calls of the Unix servers and loop.sendfile (src/fs_ops.rs).
def path_mode_and_inode(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
) -> tuple[int, int]: ...
def unlink_path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None: ...
def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int: ...

@disjoint_base
class Handle:
    _args: tuple[Any, ...] | None
    _callback: Callable[..., object] | None
    _cancelled: bool
    _source_traceback: Any
    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def get_context(self) -> contextvars.Context: ...
    def _run(self, event_loop: Any) -> None: ...

@final
class TimerHandle(Handle):
    _scheduled: bool
    _when: float
    def when(self) -> float: ...

@disjoint_base
class CoreLoop:
    slow_callback_duration: float
    def __new__(cls, *_args: Any, **_kwargs: Any) -> Self: ...
    def time(self) -> float: ...
    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle: ...
    def call_soon_threadsafe(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle: ...
    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle: ...
    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle: ...
    def add_reader(
        self, fd: int | Any, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]
    ) -> None: ...
    def add_writer(
        self, fd: int | Any, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]
    ) -> None: ...
    def remove_reader(self, fd: int | Any) -> bool: ...
    def remove_writer(self, fd: int | Any) -> bool: ...
    def create_future(self) -> asyncio.Future[Any]: ...
    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Task[_T]: ...
    def set_task_factory(self, factory: _TaskFactory | None) -> None: ...
    def get_task_factory(self) -> _TaskFactory | None: ...
    def stop(self) -> None: ...
    def is_running(self) -> bool: ...
    def is_closed(self) -> bool: ...
    def get_debug(self) -> bool: ...
    # Private: for the Python layers of ferroloop.Loop.
    _current_handle: Any  # the running Handle (asyncio's private _source_traceback included)
    _stopping: bool
    _thread_id: int | None
    def _attach_transport(self, transport: Any) -> None: ...
    def _close(self) -> None: ...
    def _get_reader(self, fd: int) -> asyncio.Handle | None: ...
    def _get_writer(self, fd: int) -> asyncio.Handle | None: ...
    def _run(self) -> None: ...
    def _set_debug(self, enabled: bool) -> None: ...
    def _sock_recv(self, sock: socket.socket, fd: int, n: int) -> Any: ...
    def _sock_recv_into(self, sock: socket.socket, fd: int, buf: Any) -> Any: ...
    def _sock_sendall(self, sock: socket.socket, fd: int, data: Any) -> Any: ...
    # The figures behind ``Loop.metrics()`` (``_metrics.LoopMetrics`` fields, with
    # ``slowest`` as tuples and ``lag_buckets`` as pairs).
    def _metrics(self, reset: bool = False) -> dict[str, Any]: ...

# The transports and the TLS protocol are built by the Python layers only (``_transports.py``,
# ``_servers.py``, ...): typed as Any.
StreamTransport: Any
ReadPipeTransport: Any
WritePipeTransport: Any
DatagramTransport: Any
TlsTransport: Any
TlsProtocol: Any
