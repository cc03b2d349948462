//! `GilCell`: interior mutability for state that is only touched while attached to the
//! interpreter.
//!
//! Discussion: the loop's queues are touched from Python calls (`call_soon`, `add_reader`,
//! `call_soon_threadsafe` from any thread) and from the loop itself, always with the
//! interpreter lock held. On GIL builds of CPython the lock already serializes those
//! accesses, so a `Mutex` would only add atomic operations to the hottest paths. A
//! `RefCell` keeps re-entrancy honest: a borrow is never held across a call into Python
//! (nor across dropping a Python object, whose `__del__` may call back into the loop); if
//! that rule were broken the result is a Python exception from PyO3's panic guard, never
//! undefined behaviour. A free-threaded build would need a real lock here.

use std::cell::{Ref, RefCell, RefMut};

use pyo3::Python;

pub struct GilCell<T>(RefCell<T>);

// SAFETY: every access goes through a method that takes a `Python<'_>` token, i.e. proof
// that the calling thread is attached to the interpreter. On GIL builds (the only ones this
// module is built for) at most one thread is attached at a time, and attaching/detaching
// are full memory barriers, so the `RefCell` is never accessed concurrently. The values
// inside are only ever dropped or moved on attached threads for the same reason.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        GilCell(RefCell::new(value))
    }

    #[inline]
    pub fn borrow_mut<'a>(&'a self, _py: Python<'_>) -> RefMut<'a, T> {
        self.0.borrow_mut()
    }

    #[inline]
    pub fn borrow<'a>(&'a self, _py: Python<'_>) -> Ref<'a, T> {
        self.0.borrow()
    }

    /// For `__traverse__`, which runs attached but without a token: `None` if the value
    /// is borrowed right now (then nothing is visited, which only delays collection).
    pub fn try_borrow_for_gc(&self) -> Option<Ref<'_, T>> {
        self.0.try_borrow().ok()
    }

    /// For `__clear__`, finalizers and the other paths that run without a token or must not
    /// fail: `None` if the value is borrowed right now.
    pub fn try_borrow_mut_for_gc(&self) -> Option<RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }
}
