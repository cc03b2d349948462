//! The write side of a stream transport: `write`/`writelines`, the buffer and its flush on
//! writable readiness, flow control (`pause_writing`/`resume_writing`), and half-closing.

use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use super::{Access, Kind, StreamTransport};
use crate::attach::SafeCall;
use crate::buffers::RawBuffer;
use crate::poller::Side;
use crate::sys::{would_block, writev};
use crate::transport::sock_io::{py_io, IoErr};
use crate::transport::{
    call_flow_control, fatal_error, force_close, in_context, is_base_exit, set_interest,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};

/// Why a write did not go through.
enum WriteError {
    Io(IoErr),
    /// The buffer could not grow; `sent`: part of the data had gone out already.
    NoMemory {
        sent: bool,
    },
}

impl StreamTransport {
    /// `sock.send(data)` (asyncio's first try of a write).
    fn method_send(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> Result<usize, IoErr> {
        let sock = self.method_sock(py)?;
        py_io(
            sock.safe_method1(intern!(py, "send"), data)
                .and_then(|n| n.extract()),
        )
    }

    /// How asyncio's transport sends its buffer: `sock.sendmsg([data])` since 3.12,
    /// `sock.send(data)` before.
    fn method_send_buffered(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyBytes>,
    ) -> Result<usize, IoErr> {
        if py.version_info() < (3, 12) {
            return self.method_send(py, data);
        }
        let sock = self.method_sock(py)?;
        py_io(
            sock.safe_method1(intern!(py, "sendmsg"), (data,))
                .and_then(|n| n.extract()),
        )
    }

    /// Sends buffered data, run from the loop's ready queue on writable readiness.
    pub fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let context = {
            let st = this.state.borrow(py);
            if st.c.conn_lost > 0 || st.buffered() == 0 {
                return Ok(());
            }
            st.c.context.bind(py).clone()
        };
        let result = in_context(py, context.as_unbound(), || Self::flush(slf));
        if result.is_err() && this.state.borrow(py).buffered() > 0 {
            // KeyboardInterrupt or SystemExit escaped (a socket method, error_received...):
            // asyncio's writer stays registered, so running the loop again goes on
            // writing; here, no new edge will say the socket is still writable.
            Self::push_turn(slf, Side::Write);
        }
        result
    }

    pub(super) fn flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = if this.access == Access::Methods {
            let data = PyBytes::new(py, this.state.borrow(py).buffer.pending());
            this.method_send_buffered(py, &data)
        } else {
            let st = this.state.borrow(py);
            this.sys_write(this.io_fd(&st), st.buffer.pending())
                .map_err(IoErr::Os)
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if e.would_block(py) => return Ok(()),
            Err(e) => {
                let err = e.into_pyerr();
                if is_base_exit(py, &err) {
                    return Err(err);
                }
                let waiter = {
                    let mut st = this.state.borrow_mut(py);
                    st.buffer.clear();
                    st.empty_waiter.as_ref().map(|w| w.clone_ref(py))
                };
                set_interest(this, py, true, false)?;
                if let Some(w) = waiter {
                    let value = err.clone_ref(py).into_value(py);
                    w.bind(py)
                        .safe_method1(intern!(py, "set_exception"), value)?;
                }
                let msg = format!("Fatal write error on {} transport", this.kind.noun());
                return fatal_error(slf, err, &msg);
            }
        };
        {
            let mut st = this.state.borrow_mut(py);
            if st.c.conn_lost > 0 {
                // (a socket method closed the transport meanwhile)
                return Ok(());
            }
            st.buffer.consume(n);
        }
        // resume_writing() may write (the TLS layer does) or close: what to do next is
        // decided from the state after it. If it raises KeyboardInterrupt or SystemExit,
        // this write turn still finishes before the exception goes on.
        let resumed = Self::maybe_resume_protocol(slf);
        let (empty, closing, eof) = {
            let st = this.state.borrow(py);
            if st.c.conn_lost > 0 {
                return resumed;
            }
            (st.buffered() == 0, st.c.closing, st.eof)
        };
        if empty {
            set_interest(this, py, true, false)?;
            let waiter = this
                .state
                .borrow(py)
                .empty_waiter
                .as_ref()
                .map(|w| w.clone_ref(py));
            if let Some(w) = waiter {
                let w = w.bind(py);
                if !w.safe_method0(intern!(py, "done"))?.is_truthy()? {
                    w.safe_method1(intern!(py, "set_result"), py.None())?;
                }
            }
            if closing {
                Self::call_connection_lost_now(slf, None)?;
            } else if eof {
                if let Err(e) = Self::shutdown_write(slf) {
                    if is_base_exit(py, &e) {
                        return Err(e);
                    }
                    let msg = format!("Fatal write error on {} transport", this.kind.noun());
                    fatal_error(slf, e, &msg)?;
                }
            }
        }
        resumed
    }

    /// `shutdown(SHUT_WR)` of the socket (a peer already gone is not an error).
    pub(super) fn shutdown_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = if this.access == Access::Methods {
            this.method_sock(py).and_then(|sock| {
                py_io(sock.safe_method1(intern!(py, "shutdown"), libc::SHUT_WR)).map(drop)
            })
        } else {
            let fd = this.io_fd_now(py);
            // SAFETY: shuts down the write side of the socket the transport's socket object
            // holds (read just above; no Python code ran since), or fails on -1.
            if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
                Err(IoErr::Os(std::io::Error::last_os_error()))
            } else {
                Ok(())
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(IoErr::Os(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            Err(IoErr::Py(e))
                if e.value(py)
                    .getattr(intern!(py, "errno"))
                    .and_then(|n| n.extract::<i32>())
                    .is_ok_and(|n| n == libc::ENOTCONN) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into_pyerr()),
        }
    }

    pub(super) fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flow_control(slf, true)
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flow_control(slf, false)
    }

    fn flow_control(slf: &Bound<'_, Self>, pause: bool) -> PyResult<()> {
        let py = slf.py();
        let (event_loop, protocol) = {
            let mut st = slf.get().state.borrow_mut(py);
            let size = st.buffered();
            let due = if pause {
                st.c.flow.pause_due(size)
            } else {
                st.c.flow.resume_due(size)
            };
            if !due {
                return Ok(());
            }
            (st.c.event_loop.clone_ref(py), st.c.protocol.clone_ref(py))
        };
        let name = if pause {
            "pause_writing"
        } else {
            "resume_writing"
        };
        call_flow_control(event_loop.bind(py).as_any(), slf.as_any(), &protocol, name)
    }

    fn call_connection_lost_now(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        StreamTransport::_call_connection_lost(slf, exc)
    }

    /// `write` of a byte slice (also how a TLS layer above hands over its records).
    pub(crate) fn write_bytes(slf: &Bound<'_, Self>, data: &[u8]) -> PyResult<()> {
        if !Self::write_allowed(slf, data.is_empty())? {
            return Ok(());
        }
        let outcome = slf.get().send_or_buffer(slf.py(), data);
        Self::after_write(slf, outcome)
    }

    /// asyncio's checks before a write. `Ok(false)`: drop the data silently (nothing to
    /// send, or the connection is lost, counting such writes and warning as asyncio does).
    pub(super) fn write_allowed(slf: &Bound<'_, Self>, empty: bool) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let mut st = this.state.borrow_mut(py);
        if st.eof {
            return Err(PyRuntimeError::new_err(
                "Cannot call write() after write_eof()",
            ));
        }
        if st.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err(
                "unable to write; sendfile is in progress",
            ));
        }
        if empty {
            return Ok(false);
        }
        // A pipe also refuses writes once closing (asyncio's pipe transport does).
        if st.c.conn_lost > 0 || (this.kind != Kind::Socket && st.c.closing) {
            st.c.conn_lost += 1;
            let warn = st.c.conn_lost > LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            drop(st);
            if warn {
                let message = match this.kind {
                    Kind::Socket => "socket.send() raised exception.",
                    _ => "pipe closed by peer or os.write(pipe, data) raised exception.",
                };
                crate::handles::format_module(py)?
                    .safe_method0(intern!(py, "logger"))?
                    .safe_method1(intern!(py, "warning"), message)?;
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends what the socket takes now and buffers the rest; `Ok(true)` if something was
    /// buffered. Through raw syscalls no Python code runs here, so `data` may point into a
    /// mutable buffer; the socket methods are given (and the buffer takes from) a copy.
    fn send_or_buffer(&self, py: Python<'_>, data: &[u8]) -> Result<bool, WriteError> {
        if self.access == Access::Methods {
            let idle = self.state.borrow(py).buffered() == 0;
            let copy = PyBytes::new(py, data);
            let data = copy.as_bytes();
            let sent = if idle {
                match self.method_send(py, &copy) {
                    Ok(n) if n >= data.len() => return Ok(false),
                    Ok(n) => n,
                    Err(e) if e.would_block(py) => 0,
                    Err(e) => return Err(WriteError::Io(e)),
                }
            } else {
                0
            };
            return self.buffer_rest(py, &data[sent..], sent > 0);
        }
        let mut sent = 0;
        let (idle, fd) = {
            let st = self.state.borrow(py);
            (st.buffered() == 0, self.io_fd(&st))
        };
        if idle {
            match self.sys_write(fd, data) {
                Ok(n) if n == data.len() => return Ok(false),
                Ok(n) => sent = n,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(WriteError::Io(IoErr::Os(e))),
            }
        }
        self.buffer_rest(py, &data[sent..], sent > 0)
    }

    fn buffer_rest(&self, py: Python<'_>, rest: &[u8], sent: bool) -> Result<bool, WriteError> {
        match self.state.borrow_mut(py).buffer.extend(rest) {
            Ok(()) => Ok(true),
            Err(_) => Err(WriteError::NoMemory { sent }),
        }
    }

    /// What follows a write: a failure is fatal; buffered data wants writable readiness and
    /// may pause the protocol. A buffer that cannot grow raises `MemoryError` (the data is
    /// not taken); if part of the data had gone out, the stream is broken and is aborted.
    fn after_write(slf: &Bound<'_, Self>, outcome: Result<bool, WriteError>) -> PyResult<()> {
        let this = slf.get();
        match outcome {
            Ok(false) => Ok(()),
            Ok(true) => {
                set_interest(this, slf.py(), true, true)?;
                Self::maybe_pause_protocol(slf)
            }
            Err(WriteError::Io(e)) => Self::io_failed(slf, e, "write"),
            Err(WriteError::NoMemory { sent }) => {
                let py = slf.py();
                let err = PyMemoryError::new_err(());
                if sent {
                    force_close(slf, Some(err.clone_ref(py).into_value(py).into_any()))?;
                }
                Err(err)
            }
        }
    }

    /// `writelines` for a socket reached through its methods: asyncio's since 3.12 buffers
    /// everything and sends the buffer (`sendmsg`); before, it joins the data and writes it.
    fn writelines_through_methods(
        slf: &Bound<'_, Self>,
        items: &[Bound<'_, PyAny>],
    ) -> PyResult<()> {
        let py = slf.py();
        let joined = PyBytes::new(py, b"").safe_method1(intern!(py, "join"), items)?;
        if py.version_info() < (3, 12) {
            return Self::write_object(slf, &joined);
        }
        let data = joined.cast::<PyBytes>()?.as_bytes();
        if !Self::write_allowed(slf, data.is_empty())? {
            return Ok(());
        }
        let this = slf.get();
        let outcome = this.buffer_rest(py, data, false);
        if let Err(e) = outcome {
            return Self::after_write(slf, Err(e));
        }
        Self::flush(slf)?;
        if this.state.borrow(py).buffered() > 0 {
            Self::after_write(slf, Ok(true))?;
        }
        Ok(())
    }

    /// `transport.write(data)`.
    pub(super) fn write_object(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if let Ok(b) = data.cast::<PyBytes>() {
            return Self::write_bytes(slf, b.as_bytes());
        }
        if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            // Any C-contiguous buffer, whatever its item format, as its raw bytes.
            let buf = match RawBuffer::readable(data) {
                Ok(b) => b,
                Err(e) => {
                    // Not contiguous: asyncio's `sock.send(data)` fails with this
                    // BufferError, which is fatal to the transport.
                    if !Self::write_allowed(slf, data.len()? == 0)? {
                        return Ok(());
                    }
                    return Self::io_failed(slf, IoErr::Py(e), "write");
                }
            };
            if !Self::write_allowed(slf, buf.len() == 0)? {
                return Ok(());
            }
            // No Python code runs while the slice is borrowed (see `send_or_buffer`).
            let outcome = slf.get().send_or_buffer(py, buf.as_slice());
            drop(buf);
            return Self::after_write(slf, outcome);
        }
        Err(PyTypeError::new_err(format!(
            "data argument must be a bytes-like object, not {:?}",
            data.get_type().name()?.to_string()
        )))
    }

    /// Writes a sequence of bytes-like objects. With nothing buffered and only `bytes`
    /// items, they go out in one vectored write (no joined copy); what the socket does not
    /// take is buffered as `write` would.
    pub(super) fn write_sequence(
        slf: &Bound<'_, Self>,
        list_of_data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let items: Vec<Bound<'_, PyAny>> = list_of_data.try_iter()?.collect::<PyResult<_>>()?;
        if this.access == Access::Methods {
            return Self::writelines_through_methods(slf, &items);
        }
        let idle = {
            let st = this.state.borrow(py);
            st.buffered() == 0
                && !st.eof
                && st.empty_waiter.is_none()
                && st.c.conn_lost == 0
                && !st.c.closing
        };
        let all_bytes: Option<Vec<&[u8]>> = items
            .iter()
            .map(|i| i.cast::<PyBytes>().ok().map(|b| b.as_bytes()))
            .collect();
        let (Some(slices), true) = (all_bytes, idle && items.len() <= 1024) else {
            let joined = PyBytes::new(py, b"").safe_method1(intern!(py, "join"), &items)?;
            return Self::write_object(slf, &joined);
        };
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let sent = match writev(this.io_fd_now(py), &slices) {
            Ok(n) => n,
            Err(e) if would_block(&e) => 0,
            Err(_) => {
                // `write_bytes` meets the error again and reports it.
                let joined = PyBytes::new(py, b"").safe_method1(intern!(py, "join"), &items)?;
                return Self::write_object(slf, &joined);
            }
        };
        if sent == total {
            return Ok(());
        }
        let outcome = {
            let mut st = this.state.borrow_mut(py);
            match st.buffer.reserve(total - sent) {
                Err(_) => Err(WriteError::NoMemory { sent: sent > 0 }),
                Ok(()) => {
                    let mut skip = sent;
                    for s in slices {
                        if skip >= s.len() {
                            skip -= s.len();
                        } else {
                            // (room was made above: this cannot fail)
                            let _ = st.buffer.extend(&s[skip..]);
                            skip = 0;
                        }
                    }
                    Ok(true)
                }
            }
        };
        Self::after_write(slf, outcome)
    }
}
