//! Bytes-like arguments as raw bytes: the one way transports and native `sock_*` operations
//! look into a caller's buffer.
//!
//! Like `socket.send` (`y*`) and `socket.recv_into` (`w*`), any C-contiguous exporter is
//! taken as its raw bytes whatever its item format (`array('i')`, `memoryview.cast('Q')`,
//! numpy arrays): the request asks for no format, so the exporter hands its bytes over as
//! unsigned bytes. A non-contiguous exporter refuses such a request with `BufferError`
//! (what `socket.send` raises); a writable request that fails is the `TypeError`
//! `recv_into` raises.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;

/// A buffer export of a Python object, released on drop (while still attached: `'py`).
pub struct RawBuffer<'py> {
    // Boxed: the export is filled in place and is not moved while it is held.
    view: Box<ffi::Py_buffer>,
    _py: Python<'py>,
}

impl<'py> RawBuffer<'py> {
    fn get(obj: &Bound<'py, PyAny>, flags: std::os::raw::c_int) -> PyResult<RawBuffer<'py>> {
        // SAFETY: an all-zero `Py_buffer` is a valid "empty" value for
        // `PyObject_GetBuffer` to fill.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: attached (`obj` is bound); `view` points to writable storage for a
        // `Py_buffer` that stays at this address until `PyBuffer_Release` in `drop`.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) } != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(RawBuffer {
            view,
            _py: obj.py(),
        })
    }

    /// The bytes of a bytes-like object, for sending (`socket.send`'s `y*`).
    pub fn readable(obj: &Bound<'py, PyAny>) -> PyResult<RawBuffer<'py>> {
        RawBuffer::get(obj, ffi::PyBUF_SIMPLE)
    }

    /// The bytes of a writable bytes-like object, for receiving into (`socket.recv_into`'s
    /// `w*`); `what` names the argument in the `TypeError`, as CPython's does.
    pub fn writable(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<RawBuffer<'py>> {
        RawBuffer::get(obj, ffi::PyBUF_WRITABLE).map_err(|_| {
            let type_name = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "object".to_owned());
            PyTypeError::new_err(format!(
                "{what} must be read-write bytes-like object, not {type_name}"
            ))
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.view.len as usize
    }

    /// The bytes. The caller must not run Python code while the slice lives (the exporter
    /// could change them; it cannot free or resize them while exported).
    pub fn as_slice(&self) -> &[u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: a successful PyBUF_SIMPLE/PyBUF_WRITABLE request gives `len` contiguous
        // bytes at `buf`, valid until the export is released (in `drop`, after any borrow
        // of `self` ends).
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }

    /// The bytes, writable (only for a buffer from `writable`); same rules as `as_slice`.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        debug_assert!(self.view.readonly == 0);
        if self.len() == 0 {
            return &mut [];
        }
        // SAFETY: as in `as_slice`; a PyBUF_WRITABLE request succeeded only if the memory
        // may be written, and `&mut self` makes this the only slice of it.
        unsafe { std::slice::from_raw_parts_mut(self.view.buf as *mut u8, self.len()) }
    }
}

impl Drop for RawBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: attached (the `'py` lifetime); `view` holds an export obtained by
        // `PyObject_GetBuffer`, released once.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) }
    }
}
