//! The pipe transports (asyncio: `unix_events._UnixReadPipeTransport` and
//! `_UnixWritePipeTransport`): `StreamTransport`s of a pipe kind, as subclasses whose own
//! methods give each direction asyncio's surface. A write pipe's read-side methods raise
//! NotImplementedError (asyncio's derives them from `transports.Transport`); the methods a
//! read pipe lacks in asyncio (`write`, `abort`, the write buffer's) are hidden from it
//! in Python (`_transports.py`), and `__dir__` lists what each has. The I/O itself is the
//! base class's, unchanged.

use pyo3::exceptions::PyNotImplementedError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::event_loop::CoreLoop;
use crate::transport::finalize::Finalize;

use super::StreamTransport;

/// `connect_read_pipe`'s transport.
#[pyclass(extends = StreamTransport, frozen, module = "ferroloop._ferroloop")]
pub struct ReadPipeTransport;

#[pymethods]
impl ReadPipeTransport {
    #[new]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, CoreLoop>,
        pipe: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        extra: Bound<'_, PyDict>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let base = StreamTransport::new(py, event_loop, pipe, protocol, extra, None, "read_pipe")?;
        Ok(PyClassInitializer::from(base).add_subclass(ReadPipeTransport))
    }
}

impl Finalize for ReadPipeTransport {
    fn finalize(slf: &Bound<'_, Self>) {
        StreamTransport::finalize(slf.as_super());
    }
}

impl Finalize for WritePipeTransport {
    fn finalize(slf: &Bound<'_, Self>) {
        StreamTransport::finalize(slf.as_super());
    }
}

/// `connect_write_pipe`'s transport.
#[pyclass(extends = StreamTransport, frozen, module = "ferroloop._ferroloop")]
pub struct WritePipeTransport;

fn not_implemented() -> PyErr {
    PyNotImplementedError::new_err(())
}

#[pymethods]
impl WritePipeTransport {
    /// `watch_peer`: readiness to read means the reader went away (a pipe or a socket; a
    /// character device may have input waiting).
    #[new]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, CoreLoop>,
        pipe: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        extra: Bound<'_, PyDict>,
        watch_peer: bool,
    ) -> PyResult<PyClassInitializer<Self>> {
        let kind = if watch_peer {
            "write_pipe"
        } else {
            "write_device"
        };
        let base = StreamTransport::new(py, event_loop, pipe, protocol, extra, None, kind)?;
        Ok(PyClassInitializer::from(base).add_subclass(WritePipeTransport))
    }

    fn is_reading(&self) -> PyResult<bool> {
        Err(not_implemented())
    }

    fn pause_reading(&self) -> PyResult<()> {
        Err(not_implemented())
    }

    fn resume_reading(&self) -> PyResult<()> {
        Err(not_implemented())
    }
}
