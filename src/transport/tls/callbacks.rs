//! The protocol side of `TlsProtocol`: what the transport below calls (`connection_made`,
//! `data_received`, `eof_received`, `connection_lost`, `pause_writing`/`resume_writing`), its
//! constructor, and the callbacks it schedules on the loop (timeouts, deferred reads).

use std::collections::VecDeque;

use pyo3::exceptions::{PyConnectionAbortedError, PyConnectionResetError, PyTimeoutError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};

use crate::attach::SafeCall;
use crate::event_loop::CoreLoop;
use crate::gil_cell::GilCell;

use super::{
    app_reader, logger, self_loop, ssl_errors, timeout_arg, water_marks, AppReader, AppState,
    Phase, Ssl, State, StreamTransport, TlsProtocol, TlsTransport, HANDSHAKE_TIMEOUT,
    READ_HIGH_WATER, SHUTDOWN_TIMEOUT, WRITE_HIGH_WATER,
};

#[pymethods]
impl TlsProtocol {
    /// asyncio's `SSLProtocol(loop, app_protocol, sslcontext, waiter, server_side,
    /// server_hostname, call_connection_made, ssl_handshake_timeout, ssl_shutdown_timeout)`;
    /// `sslcontext` is a real `ssl.SSLContext` (the caller makes the default one).
    #[new]
    #[pyo3(signature = (
        event_loop, app_protocol, sslcontext, waiter=None, server_side=false,
        server_hostname=None, call_connection_made=true, ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, CoreLoop>,
        app_protocol: Bound<'_, PyAny>,
        sslcontext: Bound<'_, PyAny>,
        waiter: Option<Bound<'_, PyAny>>,
        server_side: bool,
        server_hostname: Option<Bound<'_, PyAny>>,
        call_connection_made: bool,
        ssl_handshake_timeout: Option<Bound<'_, PyAny>>,
        ssl_shutdown_timeout: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let handshake_timeout = timeout_arg(
            "ssl_handshake_timeout",
            ssl_handshake_timeout.as_ref(),
            HANDSHAKE_TIMEOUT,
        )?;
        let (shutdown_timeout, _) = timeout_arg(
            "ssl_shutdown_timeout",
            ssl_shutdown_timeout.as_ref(),
            SHUTDOWN_TIMEOUT,
        )?;
        let server_hostname = match server_hostname {
            Some(h) if !server_side && h.is_truthy()? => h.unbind(),
            _ => py.None(),
        };
        let errors = ssl_errors(py)?;
        let incoming = errors.memory_bio.bind(py).safe_call0()?;
        let outgoing = errors.memory_bio.bind(py).safe_call0()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("server_side", server_side)?;
        kwargs.set_item("server_hostname", server_hostname)?;
        let obj = sslcontext.safe_method(
            intern!(py, "wrap_bio"),
            (&incoming, &outgoing),
            Some(&kwargs),
        )?;
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", &sslcontext)?;
        let ssl = Ssl {
            read: obj.getattr(intern!(py, "read"))?.unbind(),
            write: obj.getattr(intern!(py, "write"))?.unbind(),
            feed: incoming.getattr(intern!(py, "write"))?.unbind(),
            drain: outgoing.getattr(intern!(py, "read"))?.unbind(),
            obj: obj.unbind(),
            incoming: incoming.unbind(),
            outgoing: outgoing.unbind(),
        };
        let (in_high, in_low) = water_marks(None, None, READ_HIGH_WATER)?;
        let (out_high, out_low) = water_marks(None, None, WRITE_HIGH_WATER)?;
        Ok(TlsProtocol {
            event_loop: event_loop.unbind(),
            ssl,
            extra: extra.unbind(),
            server_side,
            handshake_timeout,
            shutdown_timeout,
            st: GilCell::new(State {
                phase: Phase::Unwrapped,
                app: if call_connection_made {
                    AppState::Init
                } else {
                    AppState::Made
                },
                app_reader: app_reader(py, &app_protocol)?,
                app_protocol: Some(app_protocol.unbind()),
                app_transport: None,
                app_transport_created: false,
                lower: None,
                lower_native: None,
                waiter: waiter.filter(|w| !w.is_none()).map(Bound::unbind),
                handshake_timer: None,
                shutdown_timer: None,
                handshake_start: None,
                backlog: VecDeque::new(),
                backlog_size: 0,
                conn_lost: 0,
                eof_received: false,
                ssl_writing_paused: false,
                ssl_reading_paused: false,
                app_reading_paused: false,
                app_writing_paused: false,
                in_high,
                in_low,
                out_high,
                out_low,
            }),
        })
    }

    /// The transport the application protocol sees.
    #[getter]
    fn _app_transport(slf: &Bound<'_, Self>) -> PyResult<Option<Py<TlsTransport>>> {
        Self::app_transport(slf)
    }

    /// asyncio's `SSLProtocol._sslcontext` (aiohttp's tests read it): the `SSLContext`.
    #[getter]
    fn _sslcontext(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self
            .extra
            .bind(py)
            .get_item("sslcontext")?
            .map(Bound::unbind))
    }

    /// asyncio's `SSLProtocol._sslobj`: the `SSLObject`, once the handshake is done.
    #[getter]
    fn _sslobj(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self
            .extra
            .bind(py)
            .get_item("ssl_object")?
            .map(Bound::unbind))
    }

    fn connection_made(slf: &Bound<'_, Self>, transport: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let native = transport
            .cast::<StreamTransport>()
            .ok()
            .map(|t| t.clone().unbind());
        let old = {
            let mut st = slf.get().st.borrow_mut(py);
            (
                std::mem::replace(&mut st.lower_native, native),
                st.lower.replace(transport.unbind()),
            )
        };
        drop(old);
        Self::start_handshake(slf)
    }

    fn data_received(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        slf.get().ssl.feed.bind(slf.py()).safe_call1(data)?;
        Self::after_feed(slf)
    }

    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        let this = slf.get();
        this.st.borrow_mut(py).eof_received = true;
        let result = (|| {
            if this.debug(py) {
                logger(py)?.safe_method(intern!(py, "debug"), ("%r received EOF", slf), None)?;
            }
            match this.phase(py) {
                Phase::Handshake => {
                    let e = PyConnectionResetError::new_err(());
                    Self::on_handshake_complete(slf, Some(e))?;
                }
                Phase::Wrapped => {
                    this.set_phase(py, Phase::Flushing)?;
                    if this.st.borrow(py).app_reading_paused {
                        return Ok(Some(true));
                    }
                    Self::do_flush(slf)?;
                }
                Phase::Flushing => {
                    Self::do_write(slf)?;
                    this.set_phase(py, Phase::Shutdown)?;
                    Self::do_shutdown(slf)?;
                }
                Phase::Shutdown => Self::do_shutdown(slf)?,
                Phase::Unwrapped => {}
            }
            Ok(None)
        })();
        if result.is_err() {
            this.lower_call(py, intern!(py, "close"))?;
        }
        result
    }

    #[pyo3(signature = (exc=None))]
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let backlog = std::mem::take(&mut this.st.borrow_mut(py).backlog);
        drop(backlog);
        this.ssl.drain.bind(py).safe_call0()?;
        this.st.borrow_mut(py).conn_lost += 1;
        this.mark_app_transport_closed(py);
        let lost = {
            let mut st = this.st.borrow_mut(py);
            let due =
                st.phase != Phase::Handshake && matches!(st.app, AppState::Made | AppState::Eof);
            if due {
                st.app = AppState::Lost;
            }
            due
        };
        if lost {
            if let Some(protocol) = this.app_protocol(py) {
                let cb = protocol.bind(py).getattr(intern!(py, "connection_lost"))?;
                self_loop(this, py).safe_method(intern!(py, "call_soon"), (cb, &exc), None)?;
            }
        }
        this.set_phase(py, Phase::Unwrapped)?;
        let (lower, native, app_transport, app_protocol, app_reader, hs, sd) = {
            let mut st = this.st.borrow_mut(py);
            // asyncio makes the application transport with the protocol and forgets it
            // here: from now on `_app_transport` is None (`start_tls` on a transport that
            // was closing returns it), even if it was never asked for.
            st.app_transport_created = true;
            (
                st.lower.take(),
                st.lower_native.take(),
                st.app_transport.take(),
                st.app_protocol.take(),
                std::mem::replace(&mut st.app_reader, AppReader::Data),
                st.handshake_timer.take(),
                st.shutdown_timer.take(),
            )
        };
        drop((lower, native, app_transport, app_protocol, app_reader));
        this.wakeup_waiter(py, exc.as_ref())?;
        Self::cancel_timer(py, sd)?;
        Self::cancel_timer(py, hs)
    }

    fn pause_writing(&self, py: Python<'_>) {
        self.st.borrow_mut(py).ssl_writing_paused = true;
    }

    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().st.borrow_mut(slf.py()).ssl_writing_paused = false;
        Self::process_outgoing(slf)
    }

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.phase(slf.py()) != Phase::Handshake {
            return Ok(());
        }
        let msg = format!(
            "SSL handshake is taking longer than {} seconds: aborting the connection",
            this.handshake_timeout.1
        );
        Self::fatal_error(
            slf,
            PyConnectionAbortedError::new_err(msg),
            "Fatal error on transport",
        )
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !matches!(this.phase(py), Phase::Flushing | Phase::Shutdown) {
            return Ok(());
        }
        if let Some(lower) = this.lower(py) {
            let exc = PyTimeoutError::new_err("SSL shutdown timed out").into_value(py);
            lower
                .bind(py)
                .safe_method1(intern!(py, "_force_close"), exc)?;
        }
        Ok(())
    }

    /// Continues where the application's resume_reading (or a full buffer) left off.
    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py()) {
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            _ => Ok(()),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        self.ssl.traverse(&visit)?;
        visit.call(&self.extra)?;
        if let Some(st) = self.st.try_borrow_for_gc() {
            st.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let released = self.st.try_borrow_mut_for_gc().map(|mut st| st.release());
        drop(released);
    }

    pub(super) fn __repr__(&self, py: Python<'_>) -> String {
        let side = if self.server_side { "server" } else { "client" };
        format!(
            "<TlsProtocol {side} state={}>",
            self.st.borrow(py).phase.name()
        )
    }
}
