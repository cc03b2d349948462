//! Step 4 of an iteration: running the callbacks that were ready when it began, and
//! what `loop.metrics()` learns from it (the figures are in `crate::metrics`).
//!
//! Discussion: outside debug mode callbacks are not timed one by one (see
//! `crate::metrics`); the batch is, by the one clock reading that ends it. When an
//! iteration's busy time reaches `slow_callback_duration` and it ran one callback, that
//! callback is the slow one and is named; when it ran several, the entry says how many and
//! names none. Debug mode times each callback, logs the slow ones as asyncio does, and
//! names them with the line that scheduled them. Naming calls Python
//! (`_format.describe_slow`), only for an entry that makes the list of the slowest.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::{monotonic, CoreLoop, ReadyItem};
use crate::attach::SafeCall;
use crate::handles::{format_module, Handle};
use crate::metrics::Slow;
use crate::poller::Side;
use crate::transport::{turn_failed, DatagramTransport, StreamTransport};

/// A callback that just ran, as far as naming it goes: what it was, borrowed from where
/// the loop holds it.
#[derive(Clone, Copy)]
pub(super) enum Subject<'a, 'py> {
    /// A handle's callable, or (debug mode) the handle.
    Callback(&'a Bound<'py, PyAny>),
    /// A Rust transport's read or write turn.
    Transport(&'a Bound<'py, PyAny>, Side),
    /// A native `sock_*` operation's turn.
    Sock(RawFd, Side),
}

impl Subject<'_, '_> {
    /// `_format.describe_slow(...)`: an entry naming it and, for a handle in debug mode,
    /// where it was scheduled. A failure (a `repr` that raises) gives a generic
    /// description: metrics never raise.
    fn describe(self, py: Python<'_>, duration: f64, at: f64) -> Slow {
        let described = match self {
            Subject::Callback(c) => describe_slow(c, None),
            Subject::Transport(t, side) => describe_slow(t, Some(side)),
            Subject::Sock(fd, side) => {
                let Ok(fd) = fd.into_pyobject(py);
                describe_slow(fd.as_any(), Some(side))
            }
        };
        let (description, source) = match described {
            Ok((d, s)) => (Some(d), s),
            Err(_) => (Some("<callback>".to_owned()), None),
        };
        Slow {
            duration,
            at,
            callbacks: 1,
            description,
            source,
        }
    }
}

fn describe_slow(
    subject: &Bound<'_, PyAny>,
    side: Option<Side>,
) -> PyResult<(String, Option<String>)> {
    let py = subject.py();
    let side = side.map(|s| match s {
        Side::Read => "read",
        Side::Write => "write",
    });
    format_module(py)?
        .safe_method(intern!(py, "describe_slow"), (subject, side), None)?
        .extract()
}

impl CoreLoop {
    /// Step 4: run the handles that are ready now, and only those. Then the clock is read,
    /// once (`batch_done`).
    pub(super) fn run_ready(&self, slf: &Bound<'_, CoreLoop>) -> PyResult<()> {
        let py = slf.py();
        let (ntodo, one_turn) = {
            let st = self.state.borrow(py);
            let one_turn =
                st.ready.len() == 1 && !matches!(st.ready.front(), Some(ReadyItem::Handle(_)));
            (st.ready.len(), one_turn)
        };
        let debug = self.debug.load(Ordering::Relaxed);
        if one_turn && !debug {
            return self.run_one_turn(slf);
        }
        // The callable of a handle that runs alone, to name it if the iteration turns out
        // slow (a one-shot handle lets go of it when it runs).
        let alone = ntodo == 1 && !debug;
        let mut callback = None;
        let mut ran = 0;
        let mut slow_seen = false;
        for _ in 0..ntodo {
            let Some(item) = self.state.borrow_mut(py).ready.pop_front() else {
                break;
            };
            if alone {
                if let ReadyItem::Handle(h) = &item {
                    callback = h.get().callback_object(py);
                }
            }
            let counted = (&mut ran, &mut slow_seen);
            self.run_item(slf, item, debug, counted)
                .inspect_err(|_| self.state.borrow_mut(py).metrics.callbacks += ran)?;
        }
        self.batch_done(py, ran, callback.as_ref().map(Subject::Callback), slow_seen);
        Ok(())
    }

    /// `run_ready` for a batch of one turn of native I/O outside debug mode: if the
    /// iteration turns out slow, this turn was the slow one, and is named while the
    /// transport is still at hand.
    ///
    /// Discussion: inlining matters here (measured with callgrind). A handle's recycling
    /// (with its free-list push) is worth inlining into the loop, and LLVM does so while
    /// it is called from one place: keep `Handle::recycle` called from `run_item` alone
    /// (called from two, it cost `call_soon` 1 % more instructions). Shapes of this path
    /// that were not inlined into `run_ready` cost an echo round trip 1 to 4 % more.
    #[inline(always)]
    fn run_one_turn(&self, slf: &Bound<'_, CoreLoop>) -> PyResult<()> {
        let py = slf.py();
        let Some(item) = self.state.borrow_mut(py).ready.pop_front() else {
            return Ok(());
        };
        match item {
            ReadyItem::Stream(t, side) => {
                let t = t.into_bound(py);
                match side {
                    Side::Read => StreamTransport::on_readable(&t),
                    Side::Write => StreamTransport::on_writable(&t),
                }
                .or_else(|e| turn_failed(&t, side, e))?;
                self.batch_done(py, 1, Some(Subject::Transport(t.as_any(), side)), false);
            }
            ReadyItem::Datagram(t, side) => {
                let t = t.into_bound(py);
                match side {
                    Side::Read => DatagramTransport::on_readable(&t),
                    Side::Write => DatagramTransport::on_writable(&t),
                }
                .or_else(|e| turn_failed(&t, side, e))?;
                self.batch_done(py, 1, Some(Subject::Transport(t.as_any(), side)), false);
            }
            ReadyItem::Sock(fd, side) => {
                self.run_sock_op(py, fd, side)?;
                self.batch_done(py, 1, Some(Subject::Sock(fd, side)), false);
            }
            // Not queued: `run_ready` looked (and no Python code ran since).
            ReadyItem::Handle(h) => {
                Handle::run(h.bind(py), slf.as_any())?;
                self.batch_done(py, 1, None, false);
            }
        }
        Ok(())
    }

    /// Runs one entry of the ready queue; counts it in `ran` unless it is a cancelled
    /// handle, and (debug mode) notes in `slow_seen` that it was slow.
    #[inline(always)]
    fn run_item(
        &self,
        slf: &Bound<'_, CoreLoop>,
        item: ReadyItem,
        debug: bool,
        (ran, slow_seen): (&mut u64, &mut bool),
    ) -> PyResult<()> {
        let py = slf.py();
        match item {
            ReadyItem::Handle(h) => {
                let handle = h.into_bound(py);
                *ran += u64::from(!handle.get().is_cancelled());
                if debug {
                    *slow_seen |= self.run_debug(slf, handle)?;
                } else {
                    let result = Handle::run(&handle, slf.as_any());
                    Handle::recycle(handle);
                    result?;
                }
                return Ok(());
            }
            _ if debug => *slow_seen |= self.run_turn_debug(slf, item)?,
            _ => self.run_turn(py, item)?,
        }
        *ran += 1;
        Ok(())
    }

    /// A turn of native I/O (a handle is not one: it is left alone). What a transport's
    /// turn lets escape goes to the exception handler (`turn_failed`).
    #[inline(always)]
    fn run_turn(&self, py: Python<'_>, item: ReadyItem) -> PyResult<()> {
        match item {
            ReadyItem::Stream(t, side) => {
                let t = t.bind(py);
                match side {
                    Side::Read => StreamTransport::on_readable(t),
                    Side::Write => StreamTransport::on_writable(t),
                }
                .or_else(|e| turn_failed(t, side, e))
            }
            ReadyItem::Datagram(t, side) => {
                let t = t.bind(py);
                match side {
                    Side::Read => DatagramTransport::on_readable(t),
                    Side::Write => DatagramTransport::on_writable(t),
                }
                .or_else(|e| turn_failed(t, side, e))
            }
            ReadyItem::Sock(fd, side) => self.run_sock_op(py, fd, side),
            ReadyItem::Handle(_) => Ok(()),
        }
    }

    /// The batch has run: reads the clock (the iteration's end, and the next poll's
    /// "now": see `crate::metrics`), counts, and notes a slow iteration. `alone`: what
    /// ran, if it was the batch's one callback.
    #[inline(always)]
    fn batch_done(
        &self,
        py: Python<'_>,
        ran: u64,
        alone: Option<Subject<'_, '_>>,
        slow_seen: bool,
    ) {
        let now = monotonic();
        let (span, threshold) = {
            let mut st = self.state.borrow_mut(py);
            st.metrics.callbacks += ran;
            (st.metrics.worked(now), st.slow_callback_duration)
        };
        // (A NaN threshold is never reached.)
        if span >= threshold {
            self.slow_iteration(py, (span, now), ran, alone, slow_seen);
        }
    }

    /// A handle's run in debug mode: timed, and known as the current handle meanwhile.
    /// Returns whether it was slow.
    #[inline(never)]
    fn run_debug(&self, slf: &Bound<'_, CoreLoop>, handle: Bound<'_, Handle>) -> PyResult<bool> {
        let py = slf.py();
        self.state.borrow_mut(py).current = Some(handle.clone().unbind());
        let t0 = monotonic();
        let result = Handle::run(&handle, slf.as_any());
        let dt = monotonic() - t0;
        let current = self.state.borrow_mut(py).current.take();
        drop(current);
        let slow = match result {
            Ok(()) => self.note_if_slow(slf, Subject::Callback(handle.as_any()), dt),
            Err(e) => Err(e),
        };
        // Debug-mode handles are tracked from the start; one made before debug mode was
        // turned on is made visible if someone else keeps it (see `Handle`). Not
        // `Handle::recycle`, which stays called from one place (see `run_one_turn`).
        Handle::release(&handle);
        slow
    }

    /// A turn of native I/O in debug mode: timed. Returns whether it was slow.
    #[inline(never)]
    fn run_turn_debug(&self, slf: &Bound<'_, CoreLoop>, item: ReadyItem) -> PyResult<bool> {
        let py = slf.py();
        let (object, fd, side) = match &item {
            ReadyItem::Handle(_) => return Ok(false),
            ReadyItem::Stream(t, side) => (Some(t.bind(py).clone().into_any()), -1, *side),
            ReadyItem::Datagram(t, side) => (Some(t.bind(py).clone().into_any()), -1, *side),
            ReadyItem::Sock(fd, side) => (None, *fd, *side),
        };
        let t0 = monotonic();
        self.run_turn(py, item)?;
        let dt = monotonic() - t0;
        let subject = match &object {
            Some(t) => Subject::Transport(t, side),
            None => Subject::Sock(fd, side),
        };
        self.note_if_slow(slf, subject, dt)
    }

    /// An iteration was busy for `span` seconds (ending at `now`), at least
    /// `slow_callback_duration`: counted, and listed if among the slowest.
    #[cold]
    #[inline(never)]
    fn slow_iteration(
        &self,
        py: Python<'_>,
        (span, now): (f64, f64),
        ran: u64,
        alone: Option<Subject<'_, '_>>,
        slow_seen: bool,
    ) {
        let admitted = {
            let mut st = self.state.borrow_mut(py);
            let m = &mut st.metrics;
            m.slow_iterations += 1;
            if alone.is_some() {
                m.slow_callbacks += 1;
            }
            !slow_seen && m.slowest.admits(span)
        };
        if admitted {
            let entry = match alone {
                Some(s) => s.describe(py, span, now),
                None => Slow {
                    duration: span,
                    at: now,
                    callbacks: ran,
                    description: None,
                    source: None,
                },
            };
            self.state.borrow_mut(py).metrics.slowest.insert(entry);
        }
    }

    /// A callback (a handle, or a turn of native I/O) timed in debug mode ran for
    /// `seconds`: if that is `slow_callback_duration` or more, it is logged (as asyncio
    /// does), counted and maybe listed. Returns whether it was slow.
    fn note_if_slow(
        &self,
        slf: &Bound<'_, CoreLoop>,
        subject: Subject<'_, '_>,
        seconds: f64,
    ) -> PyResult<bool> {
        let py = slf.py();
        let admitted = {
            let mut st = self.state.borrow_mut(py);
            // (A NaN threshold is never reached.)
            let slow = seconds >= st.slow_callback_duration;
            if !slow {
                return Ok(false);
            }
            st.metrics.slow_callbacks += 1;
            st.metrics.slowest.admits(seconds)
        };
        let now = monotonic();
        let entry = subject.describe(py, seconds, now);
        let logged = match (subject, &entry.description) {
            // asyncio's message names the handle.
            (Subject::Callback(handle), _) => handle.clone(),
            (_, Some(d)) => PyString::new(py, d).into_any(),
            (_, None) => PyString::new(py, "<callback>").into_any(),
        };
        slf.safe_method(intern!(py, "_log_slow_callback"), (logged, seconds), None)?;
        if admitted {
            self.state.borrow_mut(py).metrics.slowest.insert(entry);
        }
        Ok(true)
    }
}
