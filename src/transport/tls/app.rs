//! `TlsTransport`, the transport the application's protocol sees on a TLS connection.

use pyo3::exceptions::{PyNotImplementedError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::{PyTraverseError, PyVisit};

use crate::attach::SafeCall;
use crate::gil_cell::GilCell;

use super::{water_marks, Ssl, TlsProtocol, READ_HIGH_WATER, WRITE_HIGH_WATER};

/// The transport an application protocol sees on a TLS connection (asyncio:
/// `_SSLProtocolTransport`).
#[pyclass(frozen, weakref, dict, module = "ferroloop._ferroloop")]
pub struct TlsTransport {
    /// Released when `close()` is called on a transport already closing (by the peer's
    /// `close_notify`, say), as asyncio does: the application's protocol usually keeps its
    /// transport, and that cycle would keep the TLS layer (and its `SSLContext`) alive until
    /// the connection is lost. A released transport answers as a closed one.
    pub(super) proto: GilCell<Option<Py<TlsProtocol>>>,
    pub(super) closed: GilCell<bool>,
}

impl crate::transport::finalize::Finalize for TlsTransport {
    /// asyncio's `__del__`: a transport never closed warns (the transport below, which owns
    /// the socket, closes it when it dies).
    fn finalize(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let was_closed = match slf.get().closed.try_borrow_mut_for_gc() {
            Some(mut closed) => std::mem::replace(&mut *closed, true),
            None => true,
        };
        if !was_closed {
            crate::transport::warn_unclosed(slf.as_any(), &slf.get().__repr__(py));
        }
    }
}

impl TlsTransport {
    fn proto<'py>(&self, py: Python<'py>) -> Option<Bound<'py, TlsProtocol>> {
        self.proto.borrow(py).as_ref().map(|p| p.bind(py).clone())
    }
}

#[pymethods]
impl TlsTransport {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(proto) = self.proto.try_borrow_for_gc() {
            visit.call(proto.as_ref())?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let released = self
            .proto
            .try_borrow_mut_for_gc()
            .and_then(|mut p| p.take());
        drop(released);
    }

    /// `ferroloop._transports.SSLTransport`, an `asyncio.Transport` subclass named as
    /// asyncio's TLS transports are (code and tests look for "ssl" in the name).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        static CLS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        crate::transport::transports_class(py, &CLS, "SSLTransport")
    }

    /// `loop.start_tls` may wrap this transport again (TLS in TLS).
    #[getter]
    fn _start_tls_compatible(&self) -> bool {
        true
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let default = default.unwrap_or_else(|| py.None());
        let Some(proto) = self.proto(py) else {
            return Ok(default);
        };
        let proto = proto.get();
        if let Some(v) = proto.extra.bind(py).get_item(name)? {
            return Ok(v.unbind());
        }
        match proto.lower(py) {
            Some(lower) => Ok(lower
                .bind(py)
                .safe_method(intern!(py, "get_extra_info"), (name, default), None)?
                .unbind()),
            None => Ok(default),
        }
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        match self.proto(py) {
            Some(proto) => proto.get().set_app_protocol(py, &protocol),
            None => Ok(()),
        }
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.proto(py)?.get().app_protocol(py)
    }

    /// Closed by the application; from 3.14 also while the transport below is closing.
    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        if *self.closed.borrow(py) {
            return Ok(true);
        }
        if py.version_info() < (3, 14) {
            return Ok(false);
        }
        match self.proto(py).and_then(|proto| proto.get().lower(py)) {
            Some(lower) => lower
                .bind(py)
                .safe_method0(intern!(py, "is_closing"))?
                .is_truthy(),
            None => Ok(false),
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if std::mem::replace(&mut *self.closed.borrow_mut(py), true) {
            let released = self.proto.borrow_mut(py).take();
            drop(released);
            return Ok(());
        }
        match self.proto(py) {
            Some(proto) => TlsProtocol::start_shutdown(&proto),
            None => Ok(()),
        }
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self._force_close(py, None)
    }

    /// Closes at once; `exc` reaches the application's `connection_lost` (as in asyncio
    /// 3.12+; 3.11's version of this method fails with a `TypeError`).
    #[pyo3(signature = (exc=None))]
    fn _force_close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        *self.closed.borrow_mut(py) = true;
        match self.proto(py) {
            Some(proto) => proto.get().abort(py, exc.as_ref()),
            None => Ok(()),
        }
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.proto(py)
            .is_some_and(|p| !p.get().st.borrow(py).app_reading_paused)
    }

    fn pause_reading(&self, py: Python<'_>) {
        if let Some(proto) = self.proto(py) {
            proto.get().st.borrow_mut(py).app_reading_paused = true;
        }
    }

    fn resume_reading(&self, py: Python<'_>) -> PyResult<()> {
        let Some(proto) = self.proto(py) else {
            return Ok(());
        };
        if !std::mem::replace(&mut proto.get().st.borrow_mut(py).app_reading_paused, false) {
            return Ok(());
        }
        proto
            .get()
            .call_soon(py, proto.getattr(intern!(py, "_do_read"))?)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let (h, l) = water_marks(high, low, WRITE_HIGH_WATER)?;
        let Some(proto) = self.proto(py) else {
            return Ok(());
        };
        {
            let mut st = proto.get().st.borrow_mut(py);
            st.out_high = h;
            st.out_low = l;
        }
        TlsProtocol::control_app_writing(&proto)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        match self.proto(py) {
            Some(proto) => {
                let st = proto.get().st.borrow(py);
                (st.out_low, st.out_high)
            }
            None => (0, 0),
        }
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        match self.proto(py) {
            Some(proto) => proto.get().write_buffer_size(py),
            None => Ok(0),
        }
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_read_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let (h, l) = water_marks(high, low, READ_HIGH_WATER)?;
        let Some(proto) = self.proto(py) else {
            return Ok(());
        };
        {
            let mut st = proto.get().st.borrow_mut(py);
            st.in_high = h;
            st.in_low = l;
        }
        TlsProtocol::control_ssl_reading(&proto)
    }

    fn get_read_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        match self.proto(py) {
            Some(proto) => {
                let st = proto.get().st.borrow(py);
                (st.in_low, st.in_high)
            }
            None => (0, 0),
        }
    }

    fn get_read_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        match self.proto(py) {
            Some(proto) => Ssl::pending(py, &proto.get().ssl.incoming),
            None => Ok(0),
        }
    }

    /// asyncio's `_SSLProtocolTransport._ssl_protocol` (libraries and tests read its
    /// `_sslcontext`, `_sslobj`, `_app_transport`): the TLS layer; None once released.
    #[getter]
    fn _ssl_protocol(&self, py: Python<'_>) -> Option<Py<TlsProtocol>> {
        self.proto(py).map(Bound::unbind)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.proto(py)
            .is_some_and(|p| p.get().st.borrow(py).app_writing_paused)
    }

    fn write(&self, py: Python<'_>, data: Bound<'_, PyAny>) -> PyResult<()> {
        let ok = data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>();
        if !ok {
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {}",
                data.get_type().name()?
            )));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        match self.proto(py) {
            Some(proto) => TlsProtocol::write_appdata(&proto, vec![data]),
            None => Ok(()),
        }
    }

    fn writelines(&self, py: Python<'_>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let items = list_of_data.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        match self.proto(py) {
            Some(proto) => TlsProtocol::write_appdata(&proto, items),
            None => Ok(()),
        }
    }

    fn write_eof(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let closed = if *self.closed.borrow(py) {
            " closed"
        } else {
            ""
        };
        match self.proto(py) {
            Some(proto) => format!("<TlsTransport{closed} {}>", proto.get().__repr__(py)),
            None => format!("<TlsTransport{closed}>"),
        }
    }
}
