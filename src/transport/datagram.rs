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
//! tuples are converted in Rust (the last few peers' tuples are kept: see `PeerCache`);
//! anything else (host names, Unix paths) goes through the socket object's own
//! `sendto`/`recvfrom`, as does everything for a socket whose class overrides those methods
//! (see `sock_io`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use pyo3::exceptions::{PyNotImplementedError, PyOSError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::finalize::Finalize;
use super::sock_io::{self, Access};
use super::{
    call_flow_control, close, connection_lost, copy_context, fatal_error, force_close, in_context,
    is_base_exit, set_interest, Common, NativeTransport, Transport,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use crate::attach::SafeCall;
use crate::buffers::RawBuffer;
use crate::errors::{os_error, try_copy};
use crate::event_loop::CoreLoop;
use crate::gil_cell::GilCell;
use crate::poller::Side;
use crate::sys::{recvfrom, sendto, with_scratch, would_block, RawAddr};
use std::cell::{Ref, RefMut};

/// The largest datagram read (asyncio's `max_size`).
const MAX_DATAGRAM: usize = 256 * 1024;
/// Datagrams delivered per turn before yielding to the rest of the loop.
const MAX_BATCH: usize = 32;
/// Socket methods asyncio's datagram transport calls (see `sock_io`).
const SOCKET_METHODS: &[&str] = &["recvfrom", "sendto", "send"];

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
    /// `pause_reading()` was called.
    paused: bool,
    peers: PeerCache,
}

/// How many peers' addresses `PeerCache` keeps.
const PEER_CACHE_SIZE: usize = 16;

/// The Python tuples of the last few peers' addresses (a raw socket's): a datagram from one
/// of them is delivered with the tuple made for the previous one (no formatting), and
/// `sendto` to that same tuple object, the usual reply, converts it by identity (no parsing).
/// The tuples hold a str and ints: no cycle can pass through them.
#[derive(Default)]
struct PeerCache {
    entries: Vec<(SocketAddr, Py<PyAny>)>,
    /// The entry the next new peer replaces once the cache is full.
    next: usize,
}

impl PeerCache {
    /// The tuple kept for `addr`, if it is among the last peers'.
    fn tuple(&self, py: Python<'_>, addr: &SocketAddr) -> Option<Py<PyAny>> {
        self.entries
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, t)| t.clone_ref(py))
    }

    /// Keeps `tuple` as the one for `addr`; returns the tuple it replaces, if any.
    fn insert(&mut self, addr: SocketAddr, tuple: Py<PyAny>) -> Option<Py<PyAny>> {
        if self.entries.len() < PEER_CACHE_SIZE {
            self.entries.push((addr, tuple));
            return None;
        }
        let old = std::mem::replace(&mut self.entries[self.next], (addr, tuple));
        self.next = (self.next + 1) % PEER_CACHE_SIZE;
        Some(old.1)
    }

    /// The address of a tuple this cache made (the same object, not an equal one).
    fn address_of(&self, obj: &Bound<'_, PyAny>) -> Option<SocketAddr> {
        self.entries
            .iter()
            .find(|(_, t)| t.as_ptr() == obj.as_ptr())
            .map(|(a, _)| *a)
    }
}

#[pyclass(frozen, weakref, dict, module = "ferroloop._ferroloop")]
pub struct DatagramTransport {
    fd: RawFd,
    /// The socket is AF_INET or AF_INET6 and reached by syscalls (addresses convert in
    /// Rust); else everything goes through the socket object's methods.
    raw: bool,
    /// `extra['peername']` is set: send with `send`, not `sendto`.
    connected: bool,
    state: GilCell<State>,
}

/// A numeric `(host, port[, flowinfo, scope_id])` tuple as a raw address.
fn raw_addr(addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
    let t = addr.cast::<PyTuple>().ok()?;
    let host = t.get_item(0).ok()?;
    let ip: IpAddr = host.cast::<PyString>().ok()?.to_str().ok()?.parse().ok()?;
    let port: u16 = t.get_item(1).ok()?.extract().ok()?;
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
    /// An `OSError`, for `error_received`.
    Error(PyErr),
    /// Anything else a socket method raised: fatal to the transport.
    Fatal(PyErr),
}

impl Finalize for DatagramTransport {
    /// asyncio's `__del__` (see `Common::close_unclosed`).
    fn finalize(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        let owns_socket = this
            .state
            .try_borrow_for_gc()
            .is_some_and(|st| st.c.sock.is_some());
        if !owns_socket {
            return;
        }
        let repr = this.__repr__(py);
        let unclosed = this.state.try_borrow_mut_for_gc().and_then(|mut st| {
            let sock = st.c.sock.take()?;
            Some((sock, st.c.event_loop.clone_ref(py), None))
        });
        if let Some(unclosed) = unclosed {
            Common::close_unclosed(slf.as_any(), this.fd, &repr, unclosed);
        }
    }
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
        st.queue = VecDeque::new();
        st.queued = 0;
    }
    fn holds_fd(&self, py: Python<'_>) -> bool {
        let access = if self.raw {
            Access::Raw
        } else {
            Access::Methods
        };
        sock_io::holds(py, access, self.sock_obj(py).as_ref(), self.fd)
    }
}

impl DatagramTransport {
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).c.closing
    }

    /// The fd for a syscall: the one the socket object holds now (-1, so `EBADF`, once the
    /// caller closed it; see `sock_io`). For raw access only.
    #[inline]
    fn io_fd(&self, py: Python<'_>) -> RawFd {
        sock_io::current_fd(self.state.borrow(py).c.sock.as_ref())
    }

    fn receive(slf: &Bound<'_, Self>) -> PyResult<Received> {
        let py = slf.py();
        let this = slf.get();
        if !this.raw {
            // Unix datagram sockets (the socket object knows how to spell the address), or
            // a class overriding `recvfrom`.
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
                Err(e) if is_base_exit(py, &e) => Err(e),
                Err(e) => Ok(Received::Fatal(e)),
            };
        }
        let got = with_scratch(MAX_DATAGRAM, |buf| {
            recvfrom(this.io_fd(py), buf).map(|(n, addr)| (PyBytes::new(py, &buf[..n]), addr))
        });
        match got {
            Ok((data, addr)) => {
                let addr = match addr.to_socket_addr() {
                    Some(a) => this.peer_tuple(py, a)?,
                    None => py.None(),
                };
                Ok(Received::Datagram(data.into_any().unbind(), addr))
            }
            Err(e) if would_block(&e) => Ok(Received::Again),
            Err(e) => Ok(Received::Error(os_error(e))),
        }
    }

    /// The Python form of a peer's address: the tuple kept for it, or a new one kept.
    fn peer_tuple(&self, py: Python<'_>, addr: SocketAddr) -> PyResult<Py<PyAny>> {
        if let Some(t) = self.state.borrow(py).peers.tuple(py, &addr) {
            return Ok(t);
        }
        // Made outside the borrow: allocating may start a collection, and its finalizers
        // may use this transport.
        let t = py_addr(py, &addr)?.unbind();
        let replaced = self
            .state
            .borrow_mut(py)
            .peers
            .insert(addr, t.clone_ref(py));
        drop(replaced);
        Ok(t)
    }

    /// A readable turn: deliver up to a batch of datagrams.
    pub fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (context, protocol) = {
            let st = this.state.borrow(py);
            if st.c.conn_lost > 0 || st.c.closing || !st.c.registered || st.paused {
                return Ok(());
            }
            // (as `Bound`s: dropping them needs no check of the interpreter lock)
            (
                st.c.context.bind(py).clone(),
                st.c.protocol.bind(py).clone(),
            )
        };
        let result = in_context(py, context.as_unbound(), || {
            for _ in 0..MAX_BATCH {
                let (method, args) = match Self::receive(slf)? {
                    Received::Again => return Ok(false),
                    Received::Fatal(e) => {
                        fatal_error(slf, e, "Fatal read error on datagram transport")?;
                        return Ok(false);
                    }
                    Received::Datagram(data, addr) => (
                        intern!(py, "datagram_received"),
                        PyTuple::new(py, [data, addr])?,
                    ),
                    Received::Error(e) => (
                        intern!(py, "error_received"),
                        PyTuple::new(py, [e.into_value(py).into_any()])?,
                    ),
                };
                if let Err(e) = protocol.safe_method(method, args, None) {
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
                if st.c.conn_lost > 0 || st.c.closing || st.paused {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        // Another turn after a full batch; also if KeyboardInterrupt or SystemExit escaped
        // the protocol: running the loop again must deliver what is left (asyncio's reader
        // stays registered), and no new edge will say it is there.
        if !matches!(result, Ok(false)) {
            Self::push_turn(slf, Side::Read);
        }
        result.map(drop)
    }

    fn push_turn(slf: &Bound<'_, Self>, side: Side) {
        let py = slf.py();
        let t = NativeTransport::Datagram(slf.clone().unbind());
        slf.get()
            .loop_of(py)
            .bind(py)
            .get()
            .push_transport_turn(py, t, side);
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
            Dest::Peer if this.raw => sendto(this.io_fd(py), data, None),
            Dest::Raw(a) => sendto(this.io_fd(py), data, Some(a)),
            // asyncio's connected endpoint calls `sock.send(data)`.
            Dest::Peer => return Self::send_by_method(slf, data, None),
            Dest::Py(addr) => return Self::send_by_method(slf, data, Some(addr)),
        };
        match result {
            Ok(_) => Ok(true),
            Err(e) if would_block(&e) => Ok(false),
            Err(e) => Err(os_error(e)),
        }
    }

    /// `sock.send(data)` (no address) or `sock.sendto(data, addr)`.
    fn send_by_method(
        slf: &Bound<'_, Self>,
        data: &[u8],
        addr: Option<&Py<PyAny>>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let Some(sock) = slf.get().sock_obj(py) else {
            return Ok(true);
        };
        let (sock, data) = (sock.bind(py), PyBytes::new(py, data));
        let sent = match addr {
            None => sock.safe_method1(intern!(py, "send"), data),
            Some(addr) => sock.safe_method(intern!(py, "sendto"), (data, addr), None),
        };
        match sent {
            Ok(_) => Ok(true),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) => Ok(false),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) => Ok(false),
            Err(e) => Err(e),
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
            st.c.context.bind(py).clone()
        };
        let result = in_context(py, context.as_unbound(), || {
            loop {
                let item = {
                    let mut st = this.state.borrow_mut(py);
                    if st.c.conn_lost > 0 {
                        // (closed by a socket method or error_received meanwhile)
                        return Ok(());
                    }
                    let item = st.queue.pop_front();
                    if let Some((data, _)) = &item {
                        st.queued -= data.len();
                    }
                    item
                };
                let Some((data, dest)) = item else { break };
                match Self::send_one(slf, &data, &dest) {
                    Ok(true) => {}
                    Ok(false) => {
                        let mut st = this.state.borrow_mut(py);
                        st.queued += data.len();
                        st.queue.push_front((data, dest));
                        break;
                    }
                    Err(e) => {
                        Self::send_failed(slf, e)?;
                        // asyncio goes on at the next writable report, and none comes
                        // for a socket that stays writable: another turn.
                        if this.has_queued(py) {
                            Self::push_turn(slf, Side::Write);
                        }
                        return Ok(());
                    }
                }
            }
            // resume_writing() may send (queue) more or close: decide from the state after
            // it, and finish this turn even if it raises KeyboardInterrupt or SystemExit.
            let resumed = Self::flow_control(slf, false);
            let (empty, closing) = {
                let st = this.state.borrow(py);
                if st.c.conn_lost > 0 {
                    return resumed;
                }
                (st.queue.is_empty(), st.c.closing)
            };
            if empty {
                set_interest(this, py, true, false)?;
                if closing {
                    DatagramTransport::_call_connection_lost(slf, None)?;
                }
            }
            resumed
        });
        if result.is_err() && this.has_queued(py) {
            // KeyboardInterrupt or SystemExit escaped: running the loop again goes on.
            Self::push_turn(slf, Side::Write);
        }
        result
    }

    /// Datagrams wait in the queue of a transport still open.
    fn has_queued(&self, py: Python<'_>) -> bool {
        let st = self.state.borrow(py);
        st.c.conn_lost == 0 && !st.queue.is_empty()
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
        let inet = family == libc::AF_INET || family == libc::AF_INET6;
        let access = sock_io::choose(py, &sock, fd, false, SOCKET_METHODS)?;
        Ok(DatagramTransport {
            fd,
            raw: inet && access == Access::Raw,
            connected,
            state: GilCell::new(State {
                c: Common::new(event_loop, sock, protocol, extra, copy_context(py)?),
                address: address.filter(|a| !a.is_none()).map(Bound::unbind),
                queue: VecDeque::new(),
                queued: 0,
                paused: false,
                peers: PeerCache::default(),
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

    fn is_reading(&self, py: Python<'_>) -> bool {
        let st = self.state.borrow(py);
        !st.c.closing && !st.paused
    }

    fn pause_reading(&self, py: Python<'_>) {
        let mut st = self.state.borrow_mut(py);
        if !st.c.closing {
            st.paused = true;
        }
    }

    fn resume_reading(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let event_loop = {
            let mut st = slf.get().state.borrow_mut(py);
            if st.c.closing || !st.paused {
                return;
            }
            st.paused = false;
            if !st.c.registered {
                return;
            }
            st.c.event_loop.clone_ref(py)
        };
        // Datagrams may have arrived while paused, with no new edge to report them.
        event_loop
            .bind(py)
            .get()
            .push_transport_read(py, NativeTransport::Datagram(slf.clone().unbind()));
    }

    // asyncio's datagram transport inherits these from `WriteTransport`, unimplemented.
    #[pyo3(signature = (data))]
    fn write(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let _ = data;
        Err(PyNotImplementedError::new_err(()))
    }

    /// (asyncio's joins the items, then calls `write`.)
    #[pyo3(signature = (list_of_data))]
    fn writelines(&self, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = list_of_data.py();
        PyBytes::new(py, b"").safe_method1(intern!(py, "join"), list_of_data)?;
        Err(PyNotImplementedError::new_err(()))
    }

    fn write_eof(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    fn can_write_eof(&self) -> PyResult<bool> {
        Err(PyNotImplementedError::new_err(()))
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // `bytes` are used in place; another buffer is copied (it may change meanwhile), as
        // its raw bytes whatever its item format.
        let mut not_contiguous = None;
        let payload: Cow<'_, [u8]> = if let Ok(b) = data.cast::<PyBytes>() {
            Cow::Borrowed(b.as_bytes())
        } else if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            match RawBuffer::readable(data) {
                Ok(buf) => Cow::Owned(try_copy(buf.as_slice())?),
                Err(e) => {
                    // asyncio's `sock.sendto(data)` refuses it (fatal: BufferError); a
                    // datagram that has to wait in the queue is kept as `bytes(data)`.
                    not_contiguous = Some(e);
                    let copy = data.safe_method0(intern!(py, "tobytes"))?;
                    Cow::Owned(try_copy(copy.cast::<PyBytes>()?.as_bytes())?)
                }
            }
        } else {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not '{}'",
                data.get_type().name()?
            )));
        };
        let bytes: &[u8] = &payload;
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
                Some(a) if this.raw => {
                    let known = this.state.borrow(py).peers.address_of(a);
                    match known
                        .map(|sa| RawAddr::from_socket_addr(&sa))
                        .or_else(|| raw_addr(a))
                    {
                        Some(raw) => Dest::Raw(raw),
                        None => Dest::Py(a.clone().unbind()),
                    }
                }
                Some(a) => Dest::Py(a.clone().unbind()),
                None => Dest::Py(py.None()),
            }
        };
        let idle = this.state.borrow(py).queue.is_empty();
        if idle {
            if let Some(e) = not_contiguous {
                return Self::send_failed(slf, e);
            }
            match Self::send_one(slf, bytes, &dest) {
                Ok(true) => return Ok(()),
                Ok(false) => set_interest(this, py, true, true)?,
                Err(e) => return Self::send_failed(slf, e),
            }
        }
        let len = bytes.len();
        let data = match payload {
            Cow::Owned(v) => v,
            Cow::Borrowed(b) => try_copy(b)?,
        };
        {
            let mut st = this.state.borrow_mut(py);
            st.queued += len;
            st.queue.push_back((data, dest));
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

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow_for_gc() {
            st.c.traverse(&visit)?;
            visit.call(&st.address)?;
            for (_, dest) in st.queue.iter() {
                if let Dest::Py(addr) = dest {
                    visit.call(addr)?;
                }
            }
        }
        Ok(())
    }

    /// Breaks cycles through the transport; a socket still owned is closed when it dies.
    fn __clear__(&self) {
        Python::attach(|py| {
            let protocol = match self.state.try_borrow_mut_for_gc() {
                Some(mut st) => st.c.take_protocol(py),
                None => return,
            };
            drop(protocol);
        });
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
