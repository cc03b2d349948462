//! asyncio's transport `__del__` for the Rust transports, as their `tp_finalize`.
//!
//! Discussion: a transport that dies while it still owns its socket warns
//! (`ResourceWarning: unclosed transport ...`) and closes the socket, as asyncio's do in
//! `__del__`. PyO3 has no `__del__`, and a Rust `Drop` would be too late: in a collected
//! cycle it runs after the collector cleared the objects it needs (the socket object, the
//! server), and it could not name the transport as the warning's source. So the types get a
//! `tp_finalize`, which the collector runs before it clears anything, and a `tp_dealloc`
//! that runs it first when the last reference goes (`PyObject_CallFinalizerFromDealloc`,
//! which also handles a finalizer that resurrects the object), as CPython does for classes
//! with `__del__`. The slots are replaced once, at module initialisation, before any
//! instance exists (as `freelist` does for the handles' allocator).

use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;

/// A transport with asyncio's `__del__`.
pub trait Finalize: pyo3::PyClass {
    /// Runs with the object alive, and no exception set.
    fn finalize(slf: &Bound<'_, Self>);
}

/// The original deallocator of the type installed with index `K`.
static DEALLOC: [OnceLock<ffi::destructor>; 3] =
    [OnceLock::new(), OnceLock::new(), OnceLock::new()];

unsafe extern "C" fn finalize<T: Finalize>(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls `tp_finalize` on an attached thread, with a live object of the
    // type it was installed on (the types are not subclassable).
    let py = unsafe { Python::assume_attached() };
    // SAFETY: as above; the borrow lasts for this call, during which the caller keeps the
    // object alive.
    let slf = unsafe { Borrowed::from_ptr(py, obj).cast_unchecked::<T>() };
    // `tp_finalize` must leave the exception state as it found it.
    let raised = PyErr::take(py);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T::finalize(&slf)));
    if let Some(e) = raised {
        e.restore(py);
    }
}

unsafe extern "C" fn dealloc<const K: usize>(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls `tp_dealloc` on an attached thread once the reference count is
    // zero; this runs the type's finalizer (unless the collector did already) and returns
    // non-zero if the finalizer resurrected the object, which must then live on.
    if unsafe { ffi::PyObject_CallFinalizerFromDealloc(obj) } != 0 {
        return;
    }
    if let Some(original) = DEALLOC[K].get() {
        // SAFETY: the deallocator PyO3 installed for this type, called as CPython would.
        unsafe { original(obj) }
    }
}

/// Gives `T` a finalizer, with `DEALLOC[K]` keeping its original deallocator.
fn install<T: Finalize, const K: usize>(py: Python<'_>) {
    let ty = T::type_object_raw(py);
    // SAFETY: attached; `ty` is the live type object PyO3 created, never deallocated. Its
    // slots are read at each deallocation and collection, and no instance exists yet.
    unsafe {
        if let Some(original) = (*ty).tp_dealloc {
            if DEALLOC[K].set(original).is_ok() {
                (*ty).tp_dealloc = Some(dealloc::<K>);
                (*ty).tp_finalize = Some(finalize::<T>);
            }
        }
    }
}

/// Installs the finalizers of the transport types.
pub fn install_transport_finalizers(py: Python<'_>) {
    install::<super::StreamTransport, 0>(py);
    install::<super::DatagramTransport, 1>(py);
    install::<super::TlsTransport, 2>(py);
}
