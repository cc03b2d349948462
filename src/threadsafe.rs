//! The handles of `call_soon_threadsafe` (asyncio 3.14+: `events._ThreadSafeHandle`).
//!
//! From Python 3.14, asyncio's `call_soon_threadsafe` returns a handle whose `cancel()` and
//! `cancelled()`, called from another thread while the callback runs, wait until it has
//! finished (asyncio holds a per-handle `RLock` around the run); from the thread running the
//! callback they return at once. ferroloop keeps the running thread in the handle
//! (`HandleRun`) and parks waiting threads, detached from the interpreter, on one
//! process-wide condition variable: waiting is rare, so a lock per handle would cost every
//! `call_soon_threadsafe` for nothing.
//!
//! No lock is needed to close the gap between the loop's cancelled check and the run: both
//! happen while the loop thread holds the interpreter lock, without running Python code in
//! between, so no other thread can cancel there.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// `HandleRun` states besides a running thread's id.
const PLAIN: u64 = 0; // not a thread-safe handle: never waits
const IDLE: u64 = 1; // a thread-safe handle whose callback is not running

/// Per-handle state: `PLAIN`, `IDLE`, or the id of the thread running the callback.
pub struct HandleRun(AtomicU64);

/// Threads waiting in `wait_until_not_running` (the runner notifies only if there are any).
static WAITERS: AtomicUsize = AtomicUsize::new(0);
static DONE_LOCK: Mutex<()> = Mutex::new(());
static DONE: Condvar = Condvar::new();

fn this_thread() -> u64 {
    // SAFETY: pthread_self has no preconditions; its value is the calling thread's handle,
    // non-zero and distinct from every other live thread's (glibc: the thread's descriptor
    // address), so it is never PLAIN or IDLE.
    unsafe { libc::pthread_self() as u64 }
}

/// Whether the running asyncio has thread-safe handles (3.14+, maybe a later 3.13.x).
pub fn asyncio_has_threadsafe_handles(py: Python<'_>) -> bool {
    static HAS: PyOnceLock<bool> = PyOnceLock::new();
    *HAS.get_or_init(py, || {
        py.import("asyncio.events")
            .and_then(|m| m.hasattr("_ThreadSafeHandle"))
            .unwrap_or(false)
    })
}

impl HandleRun {
    pub const fn new() -> HandleRun {
        HandleRun(AtomicU64::new(PLAIN))
    }

    /// Back to a plain handle (a reused one-shot handle).
    #[inline(always)]
    pub fn reset(&self) {
        self.0.store(PLAIN, Ordering::Relaxed);
    }

    pub fn make_threadsafe(&self) {
        self.0.store(IDLE, Ordering::SeqCst);
    }

    #[inline(always)]
    pub fn is_threadsafe(&self) -> bool {
        self.0.load(Ordering::Relaxed) != PLAIN
    }

    /// Marks the callback running on this thread, until the returned guard drops; None for
    /// a plain handle.
    #[inline(always)]
    pub fn start(&self) -> Option<Running<'_>> {
        if self.0.load(Ordering::Relaxed) == PLAIN {
            return None;
        }
        self.0.store(this_thread(), Ordering::SeqCst);
        Some(Running(self))
    }

    /// Returns once the callback is not running on another thread (detached from the
    /// interpreter while waiting, so the callback can finish).
    pub fn wait_until_not_running(&self, py: Python<'_>) {
        let running = self.0.load(Ordering::SeqCst);
        if running == PLAIN || running == IDLE || running == this_thread() {
            return;
        }
        WAITERS.fetch_add(1, Ordering::SeqCst);
        crate::attach::detach(py, || {
            let mut guard = DONE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            // Checked under the lock: `Running::drop` stores IDLE before it takes the lock
            // to notify, so the notification cannot fall between this check and the wait.
            while self.0.load(Ordering::SeqCst) > IDLE {
                guard = DONE.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        });
        WAITERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A thread-safe handle's callback is running (see `HandleRun::start`).
pub struct Running<'a>(&'a HandleRun);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0 .0.store(IDLE, Ordering::SeqCst);
        if WAITERS.load(Ordering::SeqCst) > 0 {
            let _guard = DONE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            DONE.notify_all();
        }
    }
}
