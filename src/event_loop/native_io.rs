//! The loop's side of Rust-owned I/O: registering transports' sockets with the poller, and
//! the registrations of native `sock_*` operations (see `transport.rs` and `sock_ops.rs`).
//! Both use tokens with a marker bit above the fd, so the poll step can tell them from
//! user readers and writers, and both queue `ReadyItem`s instead of Python handles.

use std::os::fd::RawFd;

use mio::Token;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;

use super::{CoreLoop, NATIVE_BIT, SOCK_BIT};
use crate::errors::os_error;
use crate::poller::Side;
use crate::sock_ops::{self, Attempt, OpKind, SockOp, SockOpDone};
use crate::transport::NativeTransport;

impl CoreLoop {
    /// Registers a transport's socket: readable always, writable when asked.
    pub fn transport_register(
        &self,
        py: Python<'_>,
        transport: NativeTransport,
        write: bool,
    ) -> PyResult<()> {
        let fd = transport.fd();
        let mut st = self.state.borrow_mut(py);
        let Some(registry) = st.registry.as_ref() else {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        let interest = if write {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        };
        let token = Token(fd as usize | NATIVE_BIT);
        let mut source = mio::unix::SourceFd(&fd);
        match registry.register(&mut source, token, interest) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                registry.reregister(&mut source, token, interest)
            }
            r => r,
        }
        .map_err(os_error)?;
        let old = st.transports.insert(fd, transport);
        drop(st);
        drop(old);
        Ok(())
    }

    /// Turns a registered transport's writable interest on or off.
    pub fn transport_modify(&self, py: Python<'_>, fd: RawFd, write: bool) -> PyResult<()> {
        let st = self.state.borrow(py);
        let Some(registry) = st.registry.as_ref() else {
            return Ok(());
        };
        let interest = if write {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        };
        registry
            .reregister(
                &mut mio::unix::SourceFd(&fd),
                Token(fd as usize | NATIVE_BIT),
                interest,
            )
            .map_err(os_error)
    }

    /// Forgets a transport's socket (it is about to be closed).
    pub fn transport_unregister(&self, py: Python<'_>, fd: RawFd) {
        let old = {
            let mut st = self.state.borrow_mut(py);
            if let Some(registry) = st.registry.as_ref() {
                let _ = registry.deregister(&mut mio::unix::SourceFd(&fd));
            }
            st.transports.remove(&fd)
        };
        drop(old);
    }

    /// Whether native `sock_*` operations may use `fd`: nobody else registered it.
    pub(super) fn sock_fd_free(&self, py: Python<'_>, fd: RawFd) -> bool {
        let st = self.state.borrow(py);
        st.io.get(fd, Side::Read).is_none()
            && st.io.get(fd, Side::Write).is_none()
            && !st.transports.contains_key(&fd)
    }

    /// Puts `op` in the `side` slot of `fd` and updates the poller. Returns the operation it
    /// replaced, if any (asyncio also lets a later wait replace an earlier one's reader).
    pub(super) fn sock_op_wait(
        &self,
        py: Python<'_>,
        fd: RawFd,
        side: Side,
        op: SockOp,
    ) -> PyResult<Option<SockOp>> {
        let mut st = self.state.borrow_mut(py);
        let st = &mut *st;
        let Some(registry) = st.registry.as_ref() else {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        let waits = st.sock_waits.entry(fd).or_default();
        let was = waits.interest();
        let old = waits.slot(side).replace(op);
        let token = Token(fd as usize | SOCK_BIT);
        let mut source = mio::unix::SourceFd(&fd);
        let r = match (was, waits.interest()) {
            (_, None) => Ok(()),
            (None, Some(i)) => match registry.register(&mut source, token, i) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    registry.reregister(&mut source, token, i)
                }
                r => r,
            },
            (Some(a), Some(b)) if a == b => Ok(()),
            (Some(_), Some(i)) => registry.reregister(&mut source, token, i),
        };
        if let Err(e) = r {
            let new = waits.slot(side).take();
            *waits.slot(side) = old;
            if waits.interest().is_none() {
                st.sock_waits.remove(&fd);
            }
            drop(new);
            return Err(os_error(e));
        }
        Ok(old)
    }

    /// Takes the operation waiting on `fd`/`side` (if `fut` is given, only if it is that
    /// operation's future) and updates the poller.
    pub(super) fn sock_op_take(
        &self,
        py: Python<'_>,
        fd: RawFd,
        side: Side,
        fut: Option<&Bound<'_, PyAny>>,
    ) -> Option<SockOp> {
        let mut st = self.state.borrow_mut(py);
        let st = &mut *st;
        let waits = st.sock_waits.get_mut(&fd)?;
        let slot = waits.slot(side);
        if let Some(f) = fut {
            if !slot.as_ref().is_some_and(|op| op.future().is(f)) {
                return None;
            }
        }
        let op = slot.take()?;
        sync_sock_waits(st, fd);
        Some(op)
    }

    /// The future of a waiting operation completed (usually: was cancelled).
    pub fn sock_op_forget(&self, py: Python<'_>, fd: RawFd, side: Side, fut: &Bound<'_, PyAny>) {
        let op = self.sock_op_take(py, fd, side, Some(fut));
        drop(op);
    }

    /// A turn of the operation waiting on `fd`/`side`: retry, resolve or wait again.
    pub(super) fn run_sock_op(&self, py: Python<'_>, fd: RawFd, side: Side) -> PyResult<()> {
        let mut op = {
            let mut st = self.state.borrow_mut(py);
            match st.sock_waits.get_mut(&fd).and_then(|w| w.slot(side).take()) {
                Some(op) => op,
                None => return Ok(()),
            }
        };
        let outcome = sock_ops::attempt(py, fd, &mut op);
        if let Attempt::Again = outcome {
            let mut st = self.state.borrow_mut(py);
            if let Some(slot) = st.sock_waits.get_mut(&fd).map(|w| w.slot(side)) {
                if slot.is_none() {
                    *slot = Some(op);
                    return Ok(());
                }
            }
            return Ok(());
        }
        // Put the slot's emptiness into the poller, then resolve (which runs Python code).
        sync_sock_waits(&mut self.state.borrow_mut(py), fd);
        sock_ops::resolve(py, &op, outcome)
    }

    /// Makes the future of a native operation and registers the operation.
    pub(super) fn sock_op_start(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        side: Side,
        kind: OpKind,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let fut = CoreLoop::create_future(slf)?;
        let done = SockOpDone {
            event_loop: slf.clone().unbind(),
            fd,
            read: side == Side::Read,
        };
        let done = Py::new(py, done)?.into_any();
        fut.call_method1(intern!(py, "add_done_callback"), (&done,))?;
        let op = SockOp {
            kind,
            fut: fut.clone().unbind(),
            done_cb: Some(done),
        };
        let old = slf.get().sock_op_wait(py, fd, side, op)?;
        drop(old);
        Ok(fut.unbind())
    }

    /// Queues a turn of reading for a transport.
    pub fn push_transport_read(&self, py: Python<'_>, transport: NativeTransport) {
        self.state
            .borrow_mut(py)
            .ready
            .push_back(transport.turn(Side::Read));
    }
}

/// Brings the poller in line with the operations still waiting on `fd` (after one was
/// taken): fewer interests, or none and the fd is forgotten. Errors mean the fd was closed
/// already, which took its registration with it.
fn sync_sock_waits(st: &mut super::State, fd: RawFd) {
    let Some(waits) = st.sock_waits.get_mut(&fd) else {
        return;
    };
    let interest = waits.interest();
    if let Some(registry) = st.registry.as_ref() {
        let mut source = mio::unix::SourceFd(&fd);
        let _ = match interest {
            None => registry.deregister(&mut source),
            Some(i) => registry.reregister(&mut source, Token(fd as usize | SOCK_BIT), i),
        };
    }
    if interest.is_none() {
        st.sock_waits.remove(&fd);
    }
}
