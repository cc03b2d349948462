//! File-system and file-descriptor calls the loop makes on its own behalf: `sendfile(2)` for
//! `loop.sendfile`/`sock_sendfile`, and `stat(2)`/`unlink(2)` for Unix socket files (a stale
//! file before binding, the server's own file after closing).
//!
//! asyncio makes these calls through `os`, and blocking-call detectors (blockbuster and the
//! like, which wrap `os.stat`, `os.sendfile`, ... and exempt asyncio's own functions by file
//! name) let them pass. Made here, no Python-level wrapper sees them. Each detaches from the
//! interpreter around the syscall (a disk read or a slow file system can block it) and
//! raises the `OSError` the `os` function would, with the same subclass, errno and filename.

use std::ffi::CString;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::attach::{self, SafeCall};
use crate::errors::strerror;

/// A path given as `str`, `bytes` or an `os.PathLike`, as the bytes the kernel gets
/// (`os.fsencode`'s encoding).
fn fs_path(path: &Bound<'_, PyAny>) -> PyResult<CString> {
    let os = path.py().import("os")?;
    let fspath = os.getattr("fspath")?.safe_call1(path)?;
    let bytes: Vec<u8> = if let Ok(b) = fspath.cast::<PyBytes>() {
        b.as_bytes().to_vec()
    } else if fspath.is_instance_of::<PyString>() {
        let encoded = os.getattr("fsencode")?.safe_call1(&fspath)?;
        encoded.cast::<PyBytes>()?.as_bytes().to_vec()
    } else {
        return Err(PyTypeError::new_err(
            "expected str, bytes or os.PathLike object",
        ));
    };
    CString::new(bytes).map_err(|_| PyValueError::new_err("embedded null byte"))
}

/// `OSError(errno, strerror, filename)`, as `os.stat(filename)` raises it.
fn path_error(errno: i32, path: &Bound<'_, PyAny>) -> PyErr {
    PyOSError::new_err((errno, strerror(errno), path.clone().unbind()))
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `(st_mode, st_ino)` of path, following symbolic links (`os.stat`).
#[pyfunction]
pub fn path_mode_and_inode(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<(u32, u64)> {
    let c_path = fs_path(path)?;
    let result = attach::detach(py, || {
        // SAFETY: an all-zero `stat` is a valid value of the plain C struct, filled in by
        // the kernel on success.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `c_path` is a NUL-terminated string alive for the call; `st` is a
        // writable `stat`.
        let rc = unsafe { libc::stat(c_path.as_ptr(), &mut st) };
        if rc == 0 {
            Ok((st.st_mode, st.st_ino))
        } else {
            Err(last_errno())
        }
    });
    result.map_err(|errno| path_error(errno, path))
}

/// `os.unlink(path)`.
#[pyfunction]
pub fn unlink_path(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<()> {
    let c_path = fs_path(path)?;
    // SAFETY: `c_path` is a NUL-terminated string alive for the call.
    let rc = attach::detach(py, || unsafe { libc::unlink(c_path.as_ptr()) });
    if rc == 0 {
        Ok(())
    } else {
        Err(path_error(last_errno(), path))
    }
}

/// `os.sendfile(out_fd, in_fd, offset, count)` on Linux: up to count bytes of in_fd from
/// offset to out_fd; the number sent (0 at end of file). EINTR runs the signal handlers and
/// retries, as `os` functions do.
#[pyfunction]
pub fn sendfile(
    py: Python<'_>,
    out_fd: i32,
    in_fd: i32,
    offset: i64,
    count: usize,
) -> PyResult<usize> {
    loop {
        let result = attach::detach(py, || {
            let mut off: libc::off_t = offset;
            // SAFETY: plain fds the caller owns (an invalid one gives EBADF); `off` is a
            // writable `off_t` the kernel advances (the file's own position is untouched).
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut off, count) };
            if n < 0 {
                Err(last_errno())
            } else {
                Ok(n as usize)
            }
        });
        match result {
            Ok(n) => return Ok(n),
            Err(libc::EINTR) => py.check_signals()?,
            Err(errno) => return Err(PyOSError::new_err((errno, strerror(errno)))),
        }
    }
}
