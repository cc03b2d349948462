//! Datagram transports for UDP and Unix datagram sockets (asyncio:
//! `selector_events._SelectorDatagramTransport`).
//!
//! Like the stream transport, it is handed to the protocol directly (`__class__` is
//! `asyncio.DatagramTransport`) and registered once, edge-triggered. A readable report
//! drains the socket: up to `MAX_BATCH` datagrams per turn, each to
//! `protocol.datagram_received(data, addr)`, a socket error to `protocol.error_received(exc)`
//! (the endpoint stays open, as in asyncio); a full batch queues another turn. `sendto`
//! sends at once when nothing is queued, else queues the datagram with its address, with
//! asyncio's flow control over the queued bytes. IPv4/IPv6 addresses given as numeric
//! tuples are converted in Rust; anything else (host names, Unix paths) goes through the
//! socket object's own `sendto`/`recvfrom`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple};

use super::{
    call_flow_control, close, connection_lost, copy_context, fatal_error, force_close, in_context,
    is_base_exit, set_interest, Common, NativeTransport, Transport,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use crate::attach::SafeCall;
use crate::errors::os_error;
use crate::event_loop::CoreLoop;
use crate::gil_cell::GilCell;
use crate::sys::{recvfrom, sendto, with_scratch, would_block, RawAddr};
use std::cell::{Ref, RefMut};

/// The largest datagram read (asyncio's `max_size`).
const MAX_DATAGRAM: usize = 256 * 1024;
/// Datagrams delivered per turn before yielding to the rest of the loop.
const MAX_BATCH: usize = 32;

/// Where a queued datagram goes.
enum Dest {
    /// The connected peer.
    Peer,
    Raw(RawAddr),
    /// An address only the socket object can interpret (a host name, a Unix path).
    Py(Py<PyAny>),
}

struct State {
    c: Common,
    /// `remote_addr` of a connected endpoint.
    address: Option<Py<PyAny>>,
    queue: VecDeque<(Vec<u8>, Dest)>,
    queued: usize,
}

#[pyclass(frozen, weakref, dict, module = "ferroloop._ferroloop")]
pub struct DatagramTransport {
    fd: RawFd,
    /// The socket is AF_INET or AF_INET6 (addresses convert in Rust).
    inet: bool,
    /// `extra['peername']` is set: send with `send`, not `sendto`.
    connected: bool,
    state: GilCell<State>,
}

/// A numeric `(host, port[, flowinfo, scope_id])` tuple as a raw address.
fn raw_addr(addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
    let t = addr.cast::<PyTuple>().ok()?;
    let host: String = t.get_item(0).ok()?.extract().ok()?;
    let port: u16 = t.get_item(1).ok()?.extract().ok()?;
    let ip: IpAddr = host.parse().ok()?;
    let sa = match (ip, t.len()) {
        (IpAddr::V4(v4), 2) => SocketAddr::from((v4, port)),
        (IpAddr::V6(v6), 2) => SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, 0, 0)),
        (IpAddr::V6(v6), 4) => {
            let flow: u32 = t.get_item(2).ok()?.extract().ok()?;
            let scope: u32 = t.get_item(3).ok()?.extract().ok()?;
            SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, flow, scope))
        }
        _ => return None,
    };
    Some(RawAddr::from_socket_addr(&sa))
}

/// The Python form of a received address, as `socket.recvfrom` gives it.
fn py_addr<'py>(py: Python<'py>, addr: &SocketAddr) -> PyResult<Bound<'py, PyAny>> {
    Ok(match addr {
        SocketAddr::V4(a) => (a.ip().to_string(), a.port()).into_pyobject(py)?.into_any(),
        SocketAddr::V6(a) => (a.ip().to_string(), a.port(), a.flowinfo(), a.scope_id())
            .into_pyobject(py)?
            .into_any(),
    })
}

/// What one receive produced.
enum Received {
    Datagram(Py<PyAny>, Py<PyAny>),
    Again,
    Error(PyErr),
}

impl Transport for DatagramTransport {
    fn fd(&self) -> RawFd {
        self.fd
    }
    fn common(&self, py: Python<'_>) -> Ref<'_, Common> {
        Ref::map(self.state.borrow(py), |s| &s.c)
    }
    fn common_mut(&self, py: Python<'_>) -> RefMut<'_, Common> {
        RefMut::map(self.state.borrow_mut(py), |s| &mut s.c)
    }
    fn discard_buffer(&self, py: Python<'_>) {
        let mut st = self.state.borrow_mut(py);
        st.queue.clear();
        st.queued = 0;
    }
}

impl DatagramTransport {
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).c.closing
    }

    fn receive(slf: &Bound<'_, Self>) -> PyResult<Received> {
        let py = slf.py();
        let this = slf.get();
        if !this.inet {
            // Unix datagram sockets: the socket object knows how to spell the address.
            let sock = this.sock_obj(py);
            let Some(sock) = sock else {
                return Ok(Received::Again);
            };
            return match sock
                .bind(py)
                .safe_method1(intern!(py, "recvfrom"), MAX_DATAGRAM)
            {
                Ok(r) => {
                    let (data, addr): (Py<PyAny>, Py<PyAny>) = r.extract()?;
                    Ok(Received::Datagram(data, addr))
                }
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) => {
                    Ok(Received::Again)
                }
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) => {
                    Ok(Received::Again)
                }
                Err(e) if e.is_instance_of::<PyOSError>(py) => Ok(Received::Error(e)),
                Err(e) => Err(e),
            };
        }
        let got = with_scratch(MAX_DATAGRAM, |buf| {
            recvfrom(this.fd, buf).map(|(n, addr)| (PyBytes::new(py, &buf[..n]), addr))
        });
        match got {
            Ok((data, addr)) => {
                let addr = match addr.to_socket_addr() {
                    Some(a) => py_addr(py, &a)?.unbind(),
                    None => py.None(),
                };
                Ok(Received::Datagram(data.into_any().unbind(), addr))
            }
            Err(e) if would_block(&e) => Ok(Received::Again),
            Err(e) => Ok(Received::Error(os_error(e))),
        }
    }

    /// A readable turn: deliver up to a batch of datagrams.
    pub fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (context, protocol) = {
            let st = this.state.borrow(py);
            if st.c.conn_lost > 0 || st.c.closing || !st.c.registered {
                return Ok(());
            }
            (st.c.context.clone_ref(py), st.c.protocol.clone_ref(py))
        };
        let full_batch = in_context(py, &context, || {
            for _ in 0..MAX_BATCH {
                let (method, args) = match Self::receive(slf)? {
                    Received::Again => return Ok(false),
                    Received::Datagram(data, addr) => (
                        intern!(py, "datagram_received"),
                        PyTuple::new(py, [data, addr])?,
                    ),
                    Received::Error(e) => (
                        intern!(py, "error_received"),
                        PyTuple::new(py, [e.into_value(py).into_any()])?,
                    ),
                };
                if let Err(e) = protocol.bind(py).safe_method(method, args, None) {
                    if is_base_exit(py, &e) {
                        return Err(e);
                    }
                    Self::report(
                        slf,
                        e,
                        "Exception in callback DatagramTransport._read_ready()",
                    )?;
                    // More may be waiting, and no new edge will say so: next iteration.
                    return Ok(true);
                }
                let st = this.state.borrow(py);
                if st.c.conn_lost > 0 || st.c.closing {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        if full_batch {
            this.loop_of(py)
                .bind(py)
                .get()
                .push_transport_read(py, NativeTransport::Datagram(slf.clone().unbind()));
        }
        Ok(())
    }

    /// An exception from a protocol callback: to the loop's exception handler.
    fn report(slf: &Bound<'_, Self>, e: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let (event_loop, protocol) = {
            let st = slf.get().state.borrow(py);
            (st.c.event_loop.clone_ref(py), st.c.protocol.clone_ref(py))
        };
        let ctx = PyDict::new(py);
        ctx.set_item("message", message)?;
        ctx.set_item("exception", e.into_value(py))?;
        ctx.set_item("transport", slf)?;
        ctx.set_item("protocol", protocol)?;
        event_loop
            .bind(py)
            .safe_method1(intern!(py, "call_exception_handler"), ctx)?;
        Ok(())
    }

    /// One send attempt: `Ok(true)` sent, `Ok(false)` would block, `Err` failed.
    fn send_one(slf: &Bound<'_, Self>, data: &[u8], dest: &Dest) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let result = match dest {
            Dest::Peer => sendto(this.fd, data, None),
            Dest::Raw(a) => sendto(this.fd, data, Some(a)),
            Dest::Py(addr) => {
                let sock = this.sock_obj(py);
                let Some(sock) = sock else { return Ok(true) };
                return match sock.bind(py).safe_method(
                    intern!(py, "sendto"),
                    (PyBytes::new(py, data), addr),
                    None,
                ) {
                    Ok(_) => Ok(true),
                    Err(e) if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                };
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(e) if would_block(&e) => Ok(false),
            Err(e) => Err(os_error(e)),
        }
    }

    /// A send failed: OSErrors go to `error_received`, anything else is fatal.
    fn send_failed(slf: &Bound<'_, Self>, e: PyErr) -> PyResult<()> {
        let py = slf.py();
        if is_base_exit(py, &e) {
            return Err(e);
        }
        if e.is_instance_of::<PyOSError>(py) {
            let protocol = slf.get().state.borrow(py).c.protocol.clone_ref(py);
            return protocol
                .bind(py)
                .safe_method1(intern!(py, "error_received"), e.into_value(py))
                .map(drop);
        }
        fatal_error(slf, e, "Fatal write error on datagram transport")
    }

    fn flow_control(slf: &Bound<'_, Self>, pause: bool) -> PyResult<()> {
        let py = slf.py();
        let (event_loop, protocol) = {
            let mut st = slf.get().state.borrow_mut(py);
            let size = st.queued;
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

    /// A writable turn: send queued datagrams until the socket would block.
    pub fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let context = {
            let st = this.state.borrow(py);
            if st.c.conn_lost > 0 || st.queue.is_empty() {
                return Ok(());
            }
            st.c.context.clone_ref(py)
        };
        in_context(py, &context, || {
            loop {
                let item = this.state.borrow_mut(py).queue.pop_front();
                let Some((data, dest)) = item else { break };
                this.state.borrow_mut(py).queued -= data.len();
                match Self::send_one(slf, &data, &dest) {
                    Ok(true) => {}
                    Ok(false) => {
                        let mut st = this.state.borrow_mut(py);
                        st.queued += data.len();
                        st.queue.push_front((data, dest));
                        break;
                    }
                    Err(e) => return Self::send_failed(slf, e),
                }
            }
            Self::flow_control(slf, false)?;
            let (empty, closing) = {
                let st = this.state.borrow(py);
                (st.queue.is_empty(), st.c.closing)
            };
            if empty {
                set_interest(this, py, true, false)?;
                if closing {
                    return DatagramTransport::_call_connection_lost(slf, None);
                }
            }
            Ok(())
        })
    }
}

#[pymethods]
impl DatagramTransport {
    /// A transport for a non-blocking datagram socket; `address` is the connected peer's
    /// address (`remote_addr`), if any. The caller schedules `connection_made`, the start of
    /// reading and the waiter, as for stream transports.
    #[new]
    #[pyo3(signature = (event_loop, sock, protocol, extra, address=None))]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, CoreLoop>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        extra: Bound<'_, PyDict>,
        address: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.safe_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err("the socket is closed"));
        }
        let family: i32 = sock.getattr(intern!(py, "family"))?.extract()?;
        let connected = match extra.get_item("peername")? {
            Some(p) => p.is_truthy()?,
            None => false,
        };
        Ok(DatagramTransport {
            fd,
            inet: family == libc::AF_INET || family == libc::AF_INET6,
            connected,
            state: GilCell::new(State {
                c: Common::new(event_loop, sock, protocol, extra, copy_context(py)?),
                address: address.filter(|a| !a.is_none()).map(Bound::unbind),
                queue: VecDeque::new(),
                queued: 0,
            }),
        })
    }

    /// `ferroloop._transports.DatagramTransport`, a subclass of both `asyncio.Transport`
    /// (what asyncio's own datagram transport is) and `asyncio.DatagramTransport`, so
    /// `isinstance` checks for either pass (see `Handle.__class__` for why `__class__`).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        static CLS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        super::transports_class(py, &CLS, "DatagramTransport")
    }

    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (event_loop, want_write) = {
            let mut st = this.state.borrow_mut(py);
            if st.c.registered || st.c.closing || st.c.conn_lost > 0 {
                return Ok(());
            }
            st.c.registered = true;
            st.c.want_write = !st.queue.is_empty();
            (st.c.event_loop.clone_ref(py), st.c.want_write)
        };
        let core = event_loop.bind(py).get();
        let me = NativeTransport::Datagram(slf.clone().unbind());
        if let Err(e) = core.transport_register(py, me.clone_ref(py), want_write) {
            this.state.borrow_mut(py).c.registered = false;
            return Err(e);
        }
        core.push_transport_read(py, me);
        Ok(())
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // `bytes` are used in place; a mutable buffer is copied (it may change meanwhile).
        let copied: Vec<u8>;
        let bytes: &[u8] = if let Ok(b) = data.cast::<PyBytes>() {
            b.as_bytes()
        } else if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            copied = pyo3::buffer::PyBuffer::<u8>::get(data)?.to_vec(py)?;
            &copied
        } else {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not '{}'",
                data.get_type().name()?
            )));
        };
        // 3.13+ sends an empty datagram; 3.12 and older send nothing.
        if bytes.is_empty() && py.version_info() < (3, 13) {
            return Ok(());
        }
        let mut addr = addr.filter(|a| !a.is_none());
        // Compared outside the borrow: `__eq__` is Python code that may use this transport.
        let address = this
            .state
            .borrow(py)
            .address
            .as_ref()
            .map(|a| a.clone_ref(py));
        if let Some(address) = address {
            let address = address.into_bound(py);
            if let Some(a) = &addr {
                if !a.eq(&address)? {
                    return Err(PyValueError::new_err(format!(
                        "Invalid address: must be None or {}",
                        address.str()?
                    )));
                }
            }
            addr = Some(address);
            let mut st = this.state.borrow_mut(py);
            if st.c.conn_lost > 0 {
                st.c.conn_lost += 1;
                let warn = st.c.conn_lost > LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                drop(st);
                if warn {
                    crate::handles::format_module(py)?
                        .safe_method0(intern!(py, "logger"))?
                        .safe_method1(intern!(py, "warning"), "socket.send() raised exception.")?;
                }
                return Ok(());
            }
        }
        let dest = if this.connected {
            Dest::Peer
        } else {
            match &addr {
                Some(a) if this.inet => match raw_addr(a) {
                    Some(raw) => Dest::Raw(raw),
                    None => Dest::Py(a.clone().unbind()),
                },
                Some(a) => Dest::Py(a.clone().unbind()),
                None => Dest::Py(py.None()),
            }
        };
        let idle = this.state.borrow(py).queue.is_empty();
        if idle {
            match Self::send_one(slf, bytes, &dest) {
                Ok(true) => return Ok(()),
                Ok(false) => set_interest(this, py, true, true)?,
                Err(e) => return Self::send_failed(slf, e),
            }
        }
        {
            let mut st = this.state.borrow_mut(py);
            st.queued += bytes.len();
            st.queue.push_back((bytes.to_vec(), dest));
        }
        Self::flow_control(slf, true)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let queued = slf.get().state.borrow(slf.py()).queued;
        close(slf, queued)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        force_close(slf, None)
    }

    #[pyo3(name = "is_closing")]
    fn py_is_closing(&self, py: Python<'_>) -> bool {
        self.is_closing(py)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Py<PyAny>) {
        let old = {
            let mut st = self.state.borrow_mut(py);
            st.c.protocol_connected = true;
            std::mem::replace(&mut st.c.protocol, protocol)
        };
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.state.borrow(py).c.protocol.clone_ref(py)
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        // The lookup hashes `name` (Python code): not while the state is borrowed.
        let extra = self.state.borrow(py).c.extra.clone_ref(py);
        Common::lookup_extra(py, &extra, name, default)
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.state.borrow(py).c.extra.clone_ref(py)
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .address
            .as_ref()
            .map(|a| a.clone_ref(py))
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.borrow(py).queued
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let py = slf.py();
        slf.get()
            .state
            .borrow_mut(py)
            .c
            .flow
            .set_limits(high, low)?;
        Self::flow_control(slf, true)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        let st = self.state.borrow(py);
        (st.c.flow.low, st.c.flow.high)
    }

    #[pyo3(signature = (exc=None))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        connection_lost(slf, exc).map(drop)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let st = self.state.borrow(py);
        let status = if st.c.sock.is_none() {
            " closed"
        } else if st.c.closing {
            " closing"
        } else {
            ""
        };
        format!(
            "<DatagramTransport{status} fd={} bufsize={}>",
            self.fd, st.queued
        )
    }
}
