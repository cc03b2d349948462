//! The loop's side of Rust-owned I/O: registering transports' sockets with the poller, and
//! the registrations of native `sock_*` operations (see `transport.rs` and `sock_ops.rs`).
//! Both use tokens with a marker bit above the fd, so the poll step can tell them from
//! user readers and writers, and both queue `ReadyItem`s instead of Python handles.

use std::os::fd::RawFd;

use mio::Token;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;

use super::{CoreLoop, FdOwner, SockWaits, State, NATIVE_BIT};
use crate::attach::SafeCall;
use crate::errors::os_error;
use crate::handles::Handle;
use crate::poller::{FdMap, IoMap, Side};
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
        let interest = if write {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        };
        let replaced = {
            let mut st = self.state.borrow_mut(py);
            let st = &mut *st;
            let Some(registry) = st.registry.as_ref() else {
                return Err(PyRuntimeError::new_err("Event loop is closed"));
            };
            let token = Token(fd as usize | NATIVE_BIT);
            let mut source = mio::unix::SourceFd(&fd);
            let idle = forget_sock_registration(&mut st.io, &mut st.sock_waits, fd);
            match registry.register(&mut source, token, interest) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    registry.reregister(&mut source, token, interest)
                }
                r => r,
            }
            .map_err(os_error)?;
            (st.transports.insert(fd, FdOwner::Polled(transport)), idle)
        };
        // Dropped once the state is free: the old transport's release may run Python code.
        drop(replaced);
        Ok(())
    }

    /// Turns a registered transport's writable interest on or off: `owner` (its
    /// `Transport::identity`) must be the transport registered for `fd`, else the fd
    /// number is another transport's now and nothing is done.
    pub fn transport_modify(
        &self,
        py: Python<'_>,
        owner: *const (),
        fd: RawFd,
        write: bool,
    ) -> PyResult<()> {
        let st = self.state.borrow(py);
        let Some(registry) = st.registry.as_ref() else {
            return Ok(());
        };
        if !st.transports.get(&fd).is_some_and(|t| t.is_at(py, owner)) {
            return Ok(());
        }
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

    /// Forgets a transport's socket (it is about to be closed), if `owner` is the
    /// transport registered for `fd`. `held`: its socket object still holds the fd; if not
    /// (closed by its owner), the kernel already dropped the registration and the number
    /// may be registered for another socket now, which must not be touched.
    pub fn transport_unregister(&self, py: Python<'_>, owner: *const (), fd: RawFd, held: bool) {
        let old = {
            let mut st = self.state.borrow_mut(py);
            if !st.transports.get(&fd).is_some_and(|t| t.is_at(py, owner)) {
                return;
            }
            if let (Some(registry), true) = (st.registry.as_ref(), held) {
                let _ = registry.deregister(&mut mio::unix::SourceFd(&fd));
            }
            let st = &mut *st;
            (
                st.transports.remove(&fd),
                forget_sock_registration(&mut st.io, &mut st.sock_waits, fd),
            )
        };
        drop(old);
    }

    /// A transport dies unclosed (see `transport::finalize`): forget its record, so the fd
    /// is free for others. Skipped if the state is borrowed (a dead record counts as none
    /// anyway).
    pub fn forget_transport(&self, py: Python<'_>, fd: RawFd, transport: &Bound<'_, PyAny>) {
        let forgotten = {
            let Some(mut st) = self.state.try_borrow_mut_for_gc() else {
                return;
            };
            match st.transports.get(&fd) {
                Some(owner) if owner.is(py, transport) => st.transports.remove(&fd),
                _ => None,
            }
        };
        drop(forgotten);
    }

    /// Whether native `sock_*` operations may use `fd`: nobody else registered it.
    pub(super) fn sock_fd_free(&self, py: Python<'_>, fd: RawFd) -> bool {
        let st = self.state.borrow(py);
        !st.io.has_handles(fd) && st.transports.get(&fd).is_none_or(|owner| owner.is_dead(py))
    }

    /// Puts `op` in the `side` slot of `fd` and makes sure the poller reports `side` (see
    /// `SockWaits`). Returns the operation it replaced, if any (asyncio also lets a later
    /// wait replace an earlier one's reader).
    /// Whether a native operation on `sock` that must wait goes to the general path
    /// instead: `sock` is in blocking mode (see `sock_ops::is_blocking`). Asked once per
    /// socket object and fd: a socket whose earlier waits registered the fd is known to be
    /// non-blocking (one switched to blocking mode since then keeps waiting in the loop,
    /// which never blocks it either).
    pub(super) fn sock_hand_over(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
    ) -> PyResult<bool> {
        let owned = self
            .state
            .borrow(py)
            .sock_waits
            .get(&fd)
            .is_some_and(|w| w.is_owned_by(sock));
        Ok(!owned && sock_ops::is_blocking(sock)?)
    }

    pub(super) fn sock_op_wait(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        side: Side,
        op: SockOp,
    ) -> PyResult<Option<SockOp>> {
        let owned = self
            .state
            .borrow(py)
            .sock_waits
            .get(&fd)
            .is_some_and(|w| w.is_owned_by(sock));
        // Made before the state is borrowed: allocating may start a collection.
        let new_owner = if owned {
            None
        } else {
            Some(PyWeakrefReference::new(sock)?.into_any().unbind())
        };
        let mut st = self.state.borrow_mut(py);
        let State {
            registry,
            sock_waits,
            io,
            ..
        } = &mut *st;
        let Some(registry) = registry.as_ref() else {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        let waits = sock_waits.entry(fd).or_default();
        let replaced_owner = new_owner.map(|w| waits.owner.replace(w));
        let old = waits.slot(side).replace(op);
        // Every waiting operation's side (the other side's too: it may belong to another
        // socket object with this fd), and what the same socket registered before.
        let mut wanted = waits.interest().unwrap_or(side.interest());
        let registered = io.native(fd);
        if owned {
            if let Some(r) = registered {
                if covers(r, wanted) {
                    return Ok(old);
                }
                wanted = r | wanted;
            }
        }
        // Another socket object: whatever this fd number was registered for may belong
        // to a socket closed since, so the kernel is told again.
        match io.set_native(registry, fd, Some(wanted), !owned) {
            Ok(()) => {
                drop(st);
                drop(replaced_owner);
                Ok(old)
            }
            Err(e) => {
                let new = waits.slot(side).take();
                *waits.slot(side) = old;
                let owner = replaced_owner.map(|o| std::mem::replace(&mut waits.owner, o));
                drop(st);
                drop((new, owner));
                Err(os_error(e))
            }
        }
    }

    /// Takes the operation waiting on `fd`/`side` (if `fut` is given, only if it is that
    /// operation's future). The fd stays registered (see `SockWaits`).
    pub(super) fn sock_op_take(
        &self,
        py: Python<'_>,
        fd: RawFd,
        side: Side,
        fut: Option<&Bound<'_, PyAny>>,
    ) -> Option<SockOp> {
        let mut st = self.state.borrow_mut(py);
        let slot = st.sock_waits.get_mut(&fd)?.slot(side);
        if let Some(f) = fut {
            if !slot.as_ref().is_some_and(|op| op.future().is(f)) {
                return None;
            }
        }
        slot.take()
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
        sock_ops::resolve(py, &op, outcome)
    }

    /// Makes the future of a native operation and registers the operation.
    pub(super) fn sock_op_start(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
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
        fut.safe_method1(intern!(py, "add_done_callback"), &done)?;
        let op = SockOp {
            kind,
            sock: sock.clone().unbind(),
            fut: fut.clone().unbind(),
            done_cb: Some(done),
        };
        let old = slf.get().sock_op_wait(py, sock, fd, side, op)?;
        drop(old);
        Ok(fut.unbind())
    }

    /// Queues a turn of reading for a transport.
    pub fn push_transport_read(&self, py: Python<'_>, transport: NativeTransport) {
        self.push_transport_turn(py, transport, Side::Read);
    }

    /// Queues a turn of reading or writing for a transport.
    pub fn push_transport_turn(&self, py: Python<'_>, transport: NativeTransport, side: Side) {
        self.state
            .borrow_mut(py)
            .ready
            .push_back(transport.turn(side));
    }
}

/// A transport takes `fd` over, or lets it go: what the native `sock_*` operations
/// registered is no longer there. An idle entry is removed and returned, to be dropped once
/// the state is no longer borrowed.
pub(super) fn forget_sock_registration(
    io: &mut IoMap<Py<Handle>>,
    sock_waits: &mut FdMap<SockWaits>,
    fd: RawFd,
) -> Option<SockWaits> {
    io.forget_native(fd);
    if sock_waits.get(&fd)?.interest().is_some() {
        return None;
    }
    sock_waits.remove(&fd)
}

/// Whether a registration for `registered` reports everything in `wanted`.
fn covers(registered: mio::Interest, wanted: mio::Interest) -> bool {
    (registered.is_readable() || !wanted.is_readable())
        && (registered.is_writable() || !wanted.is_writable())
}
