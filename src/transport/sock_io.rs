//! How a transport reaches its socket: raw syscalls on the fd, or the socket object's own
//! methods.
//!
//! asyncio's transports call the socket object's methods (`sock.recv`, `sock.send`, ...).
//! ferroloop makes the syscalls itself, which is only the same thing while (a) the class
//! does not override those methods, and (b) the socket object still holds the fd.
//!
//! (a) is decided once, when the transport is made: a socket whose class (or instance)
//! overrides one of the methods the transport would call (test doubles, instrumentation)
//! gets `Access::Methods`, and every read and write goes through those methods.
//!
//! (b) can change at any time: the caller may `close()` or `detach()` the socket it handed
//! over, and the number may then be reused by another connection. So each syscall is made
//! on the fd the socket object holds at that moment, as `sock.send` does: for a
//! `_socket.socket` that is one load from the object (CPython's `PySocketSockObject` starts
//! with its `SOCKET_T sock_fd` right after the object header; checked against `fileno()`
//! when the transport is made). A closed or detached socket object holds -1, and the
//! syscall fails with `EBADF`, which is what asyncio's `sock.send`/`sock.recv` raise.
//!
//! Pipes and character devices keep using the fd they were given (`Access::Fd`), as
//! asyncio's pipe transports do.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::attach::SafeCall;
use crate::errors::os_error;

/// How I/O on the transport's fd is done.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Syscalls on the fd, while the `_socket.socket` object still holds it.
    Raw,
    /// The socket object's own methods.
    Methods,
    /// Syscalls on the fd as given (pipes, devices).
    Fd,
}

/// An I/O failure: an OS error of a syscall, or whatever a socket method raised.
pub enum IoErr {
    Os(std::io::Error),
    Py(PyErr),
}

impl From<std::io::Error> for IoErr {
    fn from(e: std::io::Error) -> Self {
        IoErr::Os(e)
    }
}

impl IoErr {
    /// Not ready: try again on the next readiness report (`BlockingIOError`,
    /// `InterruptedError`, as asyncio's transports treat them).
    pub fn would_block(&self, py: Python<'_>) -> bool {
        match self {
            IoErr::Os(e) => crate::sys::would_block(e),
            IoErr::Py(e) => {
                e.is_instance_of::<PyBlockingIOError>(py)
                    || e.is_instance_of::<PyInterruptedError>(py)
            }
        }
    }

    pub fn into_pyerr(self) -> PyErr {
        match self {
            IoErr::Os(e) => os_error(e),
            IoErr::Py(e) => e,
        }
    }
}

/// What a socket method's result means for the transport.
pub fn py_io<T>(r: PyResult<T>) -> Result<T, IoErr> {
    r.map_err(IoErr::Py)
}

pub fn ebadf() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EBADF)
}

fn socket_types(py: Python<'_>) -> PyResult<(&Bound<'_, PyType>, &Bound<'_, PyType>)> {
    static BASE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static PLAIN: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let base = BASE.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("_socket")?
                .getattr("socket")?
                .cast_into::<PyType>()?
                .unbind(),
        )
    })?;
    let plain = PLAIN.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("socket")?
                .getattr("socket")?
                .cast_into::<PyType>()?
                .unbind(),
        )
    })?;
    Ok((base.bind(py), plain.bind(py)))
}

/// The fd a `_socket.socket` object holds now (-1 once closed or detached).
///
/// # Safety
/// `obj` must be a live instance of `_socket.socket` or a subclass (its C layout starts
/// with `PySocketSockObject`), and the caller attached.
#[inline]
unsafe fn held_fd(obj: *mut ffi::PyObject) -> RawFd {
    // SAFETY: per the contract, `obj` points to a `PySocketSockObject`, whose first field
    // after the object header is `SOCKET_T sock_fd` (a C `int` on POSIX), at an offset
    // aligned for it.
    unsafe {
        let field = obj
            .cast::<u8>()
            .add(std::mem::size_of::<ffi::PyObject>())
            .cast::<libc::c_int>();
        field.read()
    }
}

/// Whether `sock`'s class or instance replaces one of `methods` of `_socket.socket`.
fn overrides(
    py: Python<'_>,
    sock: &Bound<'_, PyAny>,
    base: &Bound<'_, PyType>,
    methods: &[&str],
) -> PyResult<bool> {
    let cls = sock.get_type();
    for name in methods {
        // (a method this platform's sockets lack is not called either)
        if let Ok(original) = base.getattr(*name) {
            if !cls.getattr(*name)?.is(&original) {
                return Ok(true);
            }
        }
    }
    if let Ok(dict) = sock.getattr(intern!(py, "__dict__")) {
        for name in methods {
            if dict.contains(*name)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Decides, once, how a transport does I/O on `sock` (whose `fileno()` was `fd`):
/// `methods` are the socket methods asyncio's transport of that kind calls.
pub fn choose(
    py: Python<'_>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    pipe: bool,
    methods: &[&str],
) -> PyResult<Access> {
    if pipe {
        return Ok(Access::Fd);
    }
    let (base, plain) = socket_types(py)?;
    let cls = sock.get_type();
    let plain_class = cls.is(plain) || cls.is(base);
    if !plain_class && (!sock.is_instance(base)? || overrides(py, sock, base, methods)?) {
        return Ok(Access::Methods);
    }
    // SAFETY: `sock` is a `_socket.socket` (checked above), alive (bound), and we are
    // attached.
    if unsafe { held_fd(sock.as_ptr()) } != fd {
        // Not the layout we know (a future CPython): the methods are always right.
        return Ok(Access::Methods);
    }
    Ok(Access::Raw)
}

/// The fd the socket object holds now, -1 once it is closed (or the transport let go of
/// it): what a syscall is made on (Raw access only; see `choose`).
#[inline]
pub fn current_fd(sock: Option<&Py<PyAny>>) -> RawFd {
    match sock {
        // SAFETY: with `Access::Raw`, `choose` checked that the object is a
        // `_socket.socket`; the transport's reference keeps it alive, and callers are
        // attached (they hold a borrow of state taken with a `Python` token).
        Some(s) => unsafe { held_fd(s.as_ptr()) },
        None => -1,
    }
}

/// Whether the socket (or pipe) object still holds `fd`, for any access. Calls
/// `fileno()` for `Access::Methods` (the caller must hold no borrow of its state).
pub fn holds(py: Python<'_>, access: Access, sock: Option<&Py<PyAny>>, fd: RawFd) -> bool {
    match access {
        Access::Fd => sock.is_some(),
        Access::Raw => current_fd(sock) == fd,
        Access::Methods => sock.is_some_and(|s| {
            s.bind(py)
                .safe_method0(intern!(py, "fileno"))
                .and_then(|n| n.extract::<i64>())
                .is_ok_and(|n| n == i64::from(fd))
        }),
    }
}
