//! Readers and writers, and the poll step: the fd registrations of `add_reader`/
//! `add_writer` (asyncio: `BaseSelectorEventLoop._add_reader` and friends, selectors'
//! `_fileobj_to_fd`), and steps 1 and 2 of an iteration (`poll_io`), which turns readiness
//! into ready items: reader/writer handles, transport turns and native `sock_*` wake-ups.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pyo3::exceptions::{
    PyAttributeError, PyOverflowError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

use super::{
    monotonic, release_timers, repr, CoreLoop, FdOwner, ReadyItem, State, BUSY_POLL_INTERVAL,
    NATIVE_BIT, WAKER_TOKEN,
};
use crate::attach;
use crate::attach::SafeCall;
use crate::errors::os_error;
use crate::handles::{Args, Handle};
use crate::poller::{Ready, Side};
use crate::timers::wait_duration;

/// `selectors._fileobj_to_fd`: an int, or `int(obj.fileno())`; an `AttributeError`,
/// `TypeError` or `ValueError` from that means an invalid file object, anything else
/// (`OSError`, `KeyboardInterrupt`...) propagates as is. A number too large for an fd is
/// valid here (as `i64::MAX` when beyond it): registering it fails (OverflowError, as
/// epoll's does), and looking it up finds nothing.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    let py = obj.py();
    let number = if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else {
        let int = py.get_type::<PyInt>();
        match obj
            .safe_method0(intern!(py, "fileno"))
            .and_then(|f| int.as_any().safe_call1(f))
        {
            Ok(n) => n,
            Err(e)
                if e.is_instance_of::<PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py) =>
            {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    repr(obj)
                )));
            }
            Err(e) => return Err(e),
        }
    };
    let fd = match number.extract::<i64>() {
        Ok(fd) => fd,
        // Beyond 64 bits: negative is invalid, positive is a number no fd has.
        Err(_) if number.lt(0)? => -1,
        Err(_) => return Ok(i64::MAX),
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {}",
            number.str()?
        )));
    }
    Ok(fd)
}

impl CoreLoop {
    pub(super) fn set_io(
        &self,
        py: Python<'_>,
        fd: RawFd,
        side: Side,
        handle: Option<Py<Handle>>,
    ) -> PyResult<Option<Py<Handle>>> {
        let mut st = self.state.borrow_mut(py);
        let State { io, registry, .. } = &mut *st;
        let Some(registry) = registry.as_ref() else {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        io.set(registry, fd, side, handle).map_err(os_error)
    }

    pub(super) fn add_io(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        side: Side,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let fd = RawFd::try_from(fileobj_to_fd(fd)?)
            .map_err(|_| PyOverflowError::new_err("Python int too large to convert to C int"))?;
        self.ensure_fd_no_transport(py, fd)?;
        self.check_closed()?;
        let handle = self.new_handle(py, callback, Args::from_tuple(args), None, true)?;
        let old = self.set_io(py, fd, side, Some(handle))?;
        if let Some(old) = old {
            old.bind(py).safe_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    /// asyncio's `_ensure_fd_no_transport`: an fd owned by an open transport is off limits.
    pub(super) fn ensure_fd_no_transport(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let transport = self
            .state
            .borrow(py)
            .transports
            .get(&fd)
            .and_then(|t| t.transport(py));
        if let Some(t) = transport {
            if !t.is_closing(py) {
                return Err(PyRuntimeError::new_err(format!(
                    "File descriptor {fd} is used by transport {}",
                    repr(t.as_any().bind(py))
                )));
            }
        }
        Ok(())
    }

    pub(super) fn remove_io(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        side: Side,
    ) -> PyResult<bool> {
        let Ok(fd) = RawFd::try_from(fileobj_to_fd(fd)?) else {
            return Ok(false);
        };
        self.ensure_fd_no_transport(py, fd)?;
        if self.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let registered = self.state.borrow(py).io.get(fd, side).is_some();
        if !registered {
            return Ok(false);
        }
        match self.set_io(py, fd, side, None)? {
            Some(old) => {
                old.bind(py).safe_method0(intern!(py, "cancel"))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Steps 1 and 2 of an iteration: compute the wait, poll, queue what became ready.
    /// `clock`: the time timers are compared with, given the monotonic clock's reading
    /// that ended the last batch (that reading, or an overridden clock's time).
    #[inline]
    pub(super) fn poll_io(&self, py: Python<'_>, clock: impl Fn(f64) -> f64) -> PyResult<()> {
        let (timeout, pruned) = {
            let mut st = self.state.borrow_mut(py);
            st.metrics.iterations += 1;
            // The clock as the last batch ended (read there; see `run_ready`).
            let now = st.metrics.mark;
            // A plain load first: the exchange is an atomic read-modify-write, and most
            // iterations have nothing to take.
            if self.timers_cancelled.load(Ordering::Relaxed) > 0 {
                for _ in 0..self.timers_cancelled.swap(0, Ordering::Relaxed) {
                    st.timers.note_cancelled();
                }
            }
            let pruned = st.timers.prune();
            let State {
                io,
                registry,
                ready,
                timers,
                ..
            } = &mut *st;
            if let Some(registry) = registry.as_ref() {
                if io.has_rearm() {
                    io.rearm(registry);
                }
            }
            let stopping = self.stopping.load(Ordering::Relaxed);
            let timeout = if !ready.is_empty() || stopping {
                if !stopping && now - st.last_poll < BUSY_POLL_INTERVAL {
                    drop(st);
                    release_timers(py, pruned);
                    return Ok(());
                }
                st.last_poll = now;
                Some(Duration::ZERO)
            } else {
                let now = clock(now);
                timers.next_when().map(|when| wait_duration(when - now))
            };
            (timeout, pruned)
        };
        release_timers(py, pruned);

        let mut guard = self
            .poll
            .lock()
            .map_err(|_| PyRuntimeError::new_err("event loop poller is unusable"))?;
        let Some((poll, events)) = guard.as_mut() else {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        let result = if timeout == Some(Duration::ZERO) {
            poll.poll(events, timeout)
        } else {
            self.sleeping.store(true, Ordering::SeqCst);
            let r = attach::detach(py, || poll.poll(events, timeout));
            self.sleeping.store(false, Ordering::SeqCst);
            self.wake_pending.store(false, Ordering::SeqCst);
            // This poll counts for the busy-poll interval too.
            let now = monotonic();
            let mut st = self.state.borrow_mut(py);
            st.last_poll = now;
            st.metrics.waited(now);
            r
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                events.clear();
                // A signal arrived: run Python's handlers now (Ctrl+C raises here).
                py.check_signals()?;
            }
            Err(e) => return Err(os_error(e)),
        }
        if !events.is_empty() {
            let mut st = self.state.borrow_mut(py);
            let State {
                io,
                ready,
                transports,
                sock_waits,
                metrics,
                ..
            } = &mut *st;
            let mut reports = 0;
            for ev in events.iter() {
                let token = ev.token();
                if token == WAKER_TOKEN {
                    continue;
                }
                reports += 1;
                if token.0 & NATIVE_BIT != 0 {
                    let r = Ready::from_event(ev);
                    let fd = (token.0 & !NATIVE_BIT) as RawFd;
                    if let Some(FdOwner::Polled(t)) = transports.get(&fd) {
                        if r.hangup {
                            t.note_hangup(py);
                        }
                        if r.readable {
                            ready.push_back(t.clone_ref(py).turn(Side::Read));
                        }
                        if r.writable {
                            ready.push_back(t.clone_ref(py).turn(Side::Write));
                        }
                    }
                    continue;
                }
                let r = Ready::from_event(ev);
                io.dispatch(r, |h| ready.push_back(ReadyItem::Handle(h.clone_ref(py))));
                // Native `sock_*` waits share the fd's registration (see `SockWaits`).
                if !sock_waits.is_empty() {
                    if let Some(w) = sock_waits.get(&r.fd) {
                        if r.readable && w.read.is_some() {
                            ready.push_back(ReadyItem::Sock(r.fd, Side::Read));
                        }
                        if r.writable && w.write.is_some() {
                            ready.push_back(ReadyItem::Sock(r.fd, Side::Write));
                        }
                    }
                }
            }
            metrics.io_events += reports;
        }
        Ok(())
    }
}
