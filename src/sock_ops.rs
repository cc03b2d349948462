//! Native fast paths of `loop.sock_recv`, `sock_recv_into` and `sock_sendall` (asyncio:
//! `selector_events.BaseSelectorEventLoop.sock_*`).
//!
//! The operation is tried at once with a raw syscall (no `BlockingIOError` is raised and
//! caught when the socket is not ready). Only if it would block is a future made and the fd
//! registered with the poller under a `SOCK_BIT` token; the readiness report queues a turn in
//! the ready queue (so it runs in FIFO order with other callbacks, as asyncio's reader handle
//! does), the turn retries the syscall and resolves the future, and the registration is
//! dropped as soon as no operation waits on the fd. A done-callback on the future drops the
//! operation if the future is cancelled first, so cancelling leaves nothing registered.
//!
//! `Loop` uses these only for plain `socket.socket` objects whose fd has no reader, writer or
//! transport of its own; everything else takes the general path in `_sockets.py`.

use std::os::fd::RawFd;

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};

use crate::attach::SafeCall;
use crate::buffers::RawBuffer;
use crate::errors::{os_error, try_vec};
use crate::event_loop::CoreLoop;
use crate::poller::Side;
use crate::sys::{recv, recv_spare, send, with_scratch, would_block};

/// Reads up to this size go through the per-thread scratch buffer.
const SCRATCH_LIMIT: usize = 256 * 1024;

/// What a waiting operation does when its fd is ready.
pub enum OpKind {
    Recv { n: usize },
    RecvInto { buf: Py<PyAny> },
    SendAll { data: Vec<u8>, pos: usize },
}

/// An operation waiting for readiness: its socket, its future, and the done-callback that
/// drops it if the future is cancelled first (removed again when the operation completes,
/// so a completed operation costs no extra loop callback).
pub struct SockOp {
    pub kind: OpKind,
    /// The socket object: each retry checks that it still owns the fd number (it may have
    /// been closed, and the number given to another socket, while the operation waited).
    pub sock: Py<PyAny>,
    pub fut: Py<PyAny>,
    pub done_cb: Option<Py<PyAny>>,
}

impl SockOp {
    pub fn future(&self) -> &Py<PyAny> {
        &self.fut
    }
}

/// `sock.fileno() == fd`: the socket object is open and still has that fd.
fn owns_fd(py: Python<'_>, sock: &Py<PyAny>, fd: RawFd) -> bool {
    sock.bind(py)
        .safe_method0(intern!(py, "fileno"))
        .and_then(|n| n.extract::<RawFd>())
        .is_ok_and(|n| n == fd)
}

/// What one attempt of an operation came to.
pub enum Attempt {
    /// Would block: wait for readiness.
    Again,
    Done(Py<PyAny>),
    Failed(PyErr),
}

/// `recv(fd, n)` as bytes (an empty bytes object at EOF). A buffer of `n` bytes that
/// cannot be had is `MemoryError`, as `socket.recv` gives.
fn recv_bytes(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<std::io::Result<Py<PyAny>>> {
    if n <= SCRATCH_LIMIT {
        return Ok(with_scratch(n, |buf| {
            recv(fd, buf).map(|len| PyBytes::new(py, &buf[..len]).into_any().unbind())
        }));
    }
    let mut data = try_vec(n)?;
    Ok(recv_spare(fd, &mut data).map(|_| PyBytes::new(py, &data).into_any().unbind()))
}

fn recv_into(
    py: Python<'_>,
    fd: RawFd,
    buf: &Bound<'_, PyAny>,
) -> PyResult<std::io::Result<usize>> {
    let _ = py;
    // Any writable C-contiguous buffer, as its raw bytes; no Python code runs while it is
    // borrowed.
    let mut pybuf = RawBuffer::writable(buf, "recv_into() argument 1")?;
    let slice = pybuf.as_mut_slice();
    if slice.is_empty() {
        // `socket.recv_into` of an empty buffer returns 0 without a syscall.
        return Ok(Ok(0));
    }
    Ok(recv(fd, slice))
}

fn io_attempt<T>(r: std::io::Result<T>, done: impl FnOnce(T) -> Py<PyAny>) -> Attempt {
    match r {
        Ok(v) => Attempt::Done(done(v)),
        Err(e) if would_block(&e) => Attempt::Again,
        Err(e) => Attempt::Failed(os_error(e)),
    }
}

/// One try of `op` on `fd`; a send that made progress but is not done updates `op`. A
/// socket closed meanwhile fails with EBADF (as its own methods would), never touching
/// whatever file has the number now.
pub fn attempt(py: Python<'_>, fd: RawFd, op: &mut SockOp) -> Attempt {
    if !owns_fd(py, &op.sock, fd) {
        return Attempt::Failed(os_error(std::io::Error::from_raw_os_error(libc::EBADF)));
    }
    match &mut op.kind {
        OpKind::Recv { n } => match recv_bytes(py, fd, *n) {
            Ok(r) => io_attempt(r, |b| b),
            Err(e) => Attempt::Failed(e),
        },
        OpKind::RecvInto { buf } => match recv_into(py, fd, buf.bind(py)) {
            Ok(r) => io_attempt(r, |n| {
                n.into_pyobject(py)
                    .map(|v| v.into_any().unbind())
                    .unwrap_or_else(|_| py.None())
            }),
            Err(e) => Attempt::Failed(e),
        },
        OpKind::SendAll { data, pos } => loop {
            match send(fd, &data[*pos..]) {
                Ok(n) => {
                    *pos += n;
                    if *pos == data.len() {
                        return Attempt::Done(py.None());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => return Attempt::Again,
                Err(e) => return Attempt::Failed(os_error(e)),
            }
        },
    }
}

/// Resolves the operation's future with what an attempt produced, unless it is already
/// done (cancelled). Its done-callback is removed first: the operation is over.
pub fn resolve(py: Python<'_>, op: &SockOp, outcome: Attempt) -> PyResult<()> {
    let fut = op.fut.bind(py);
    if let Some(cb) = &op.done_cb {
        fut.safe_method1(intern!(py, "remove_done_callback"), cb)?;
    }
    if fut.safe_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    match outcome {
        Attempt::Again => Ok(()),
        Attempt::Done(v) => fut.safe_method1(intern!(py, "set_result"), v).map(drop),
        Attempt::Failed(e) => fut
            .safe_method1(intern!(py, "set_exception"), e.into_value(py))
            .map(drop),
    }
}

/// Done-callback of a waiting operation's future: drops the operation if it is still the
/// one waiting on that fd and side (the future was cancelled before the socket was ready).
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SockOpDone {
    pub event_loop: Py<CoreLoop>,
    pub fd: RawFd,
    pub read: bool,
}

#[pymethods]
impl SockOpDone {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)
    }

    fn __call__(&self, py: Python<'_>, fut: &Bound<'_, PyAny>) {
        let side = if self.read { Side::Read } else { Side::Write };
        self.event_loop
            .bind(py)
            .get()
            .sock_op_forget(py, self.fd, side, fut);
    }
}

/// Whether `sock` is in blocking mode (`gettimeout()` is not 0): asyncio calls such a
/// socket's own methods, which wait (without the interpreter lock) as the socket's timeout
/// says, so the native path hands it over to that general path instead of waiting itself.
pub fn is_blocking(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let timeout = sock.safe_method0(intern!(sock.py(), "gettimeout"))?;
    Ok(timeout.is_none() || timeout.extract::<f64>()? != 0.0)
}

/// Validates `n` for `sock_recv` as `socket.recv` does.
pub fn recv_size(n: isize) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| PyValueError::new_err("negative buffersize in recv"))
}

/// The first try of each operation, before any future exists.
pub fn first_recv(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Py<PyAny>>> {
    if n == 0 {
        // `socket.recv(0)` returns b"" without a syscall.
        return Ok(Some(PyBytes::new(py, b"").into_any().unbind()));
    }
    match recv_bytes(py, fd, n)? {
        Ok(b) => Ok(Some(b)),
        Err(e) if would_block(&e) => Ok(None),
        Err(e) => Err(os_error(e)),
    }
}

pub fn first_recv_into(
    py: Python<'_>,
    fd: RawFd,
    buf: &Bound<'_, PyAny>,
) -> PyResult<Option<usize>> {
    match recv_into(py, fd, buf)? {
        Ok(n) => Ok(Some(n)),
        Err(e) if would_block(&e) => Ok(None),
        Err(e) => Err(os_error(e)),
    }
}

/// Sends what it can of `data`; returns how much was sent. Empty data is sent too (one
/// syscall), so a closed or broken socket says so, as `socket.send(b"")` does.
pub fn first_send(fd: RawFd, data: &[u8]) -> PyResult<usize> {
    let mut pos = 0;
    loop {
        match send(fd, &data[pos..]) {
            Ok(n) => pos += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(os_error(e)),
        }
        if pos >= data.len() {
            break;
        }
    }
    Ok(pos)
}
