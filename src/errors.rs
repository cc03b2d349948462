//! Rust I/O errors as Python exceptions, and which exceptions escape the loop.
//!
//! `OSError(errno, strerror)` is what CPython raises for a failed syscall; its constructor
//! picks the matching subclass (`ConnectionResetError`, `BrokenPipeError`, ...) from the
//! errno, and sets `.errno` and `.strerror`, exactly as `socket` and `os` do.

use std::ffi::CStr;
use std::io;

use pyo3::exceptions::{PyKeyboardInterrupt, PyMemoryError, PyOSError, PySystemExit};
use pyo3::{PyErr, Python};

/// A `Vec` with room for `n` bytes, or `MemoryError`: for sizes that come from the caller
/// (an allocation failure must not abort the process).
pub fn try_vec(n: usize) -> Result<Vec<u8>, PyErr> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| PyMemoryError::new_err(()))?;
    Ok(v)
}

/// A copy of `data`, or `MemoryError` (see `try_vec`).
pub fn try_copy(data: &[u8]) -> Result<Vec<u8>, PyErr> {
    let mut v = try_vec(data.len())?;
    v.extend_from_slice(data);
    Ok(v)
}

/// `KeyboardInterrupt` and `SystemExit` propagate out of the loop; every other exception of
/// a callback is reported to the exception handler.
pub fn is_base_exit(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyKeyboardInterrupt>(py) || e.is_instance_of::<PySystemExit>(py)
}

/// The C library's message for `errno`, as `os.strerror` gives it.
pub fn strerror(errno: i32) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a writable buffer of the length we pass; the XSI `strerror_r`
    // NUL-terminates what it writes on success.
    let rc = unsafe { libc::strerror_r(errno, buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        if let Ok(s) = CStr::from_bytes_until_nul(&buf) {
            return s.to_string_lossy().into_owned();
        }
    }
    format!("Unknown error {errno}")
}

/// Converts an `io::Error` into the `OSError` subclass CPython would raise.
pub fn os_error(e: io::Error) -> PyErr {
    match e.raw_os_error() {
        Some(code) => PyOSError::new_err((code, strerror(code))),
        None => PyOSError::new_err(e.to_string()),
    }
}
