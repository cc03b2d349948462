//! The transports' replaced type slots: asyncio's transport `__del__` as their
//! `tp_finalize`, and an allocation that keeps a new transport away from the collector
//! until its fields are written.
//!
//! Discussion: a transport that dies while it still owns its socket warns
//! (`ResourceWarning: unclosed transport ...`) and closes the socket, as asyncio's do in
//! `__del__`. PyO3 has no `__del__`, and a Rust `Drop` would be too late: in a collected
//! cycle it runs after the collector cleared the objects it needs (the socket object, the
//! server), and it could not name the transport as the warning's source. So the types get a
//! `tp_finalize`, which the collector runs before it clears anything, and a `tp_dealloc`
//! that runs it first when the last reference goes (`PyObject_CallFinalizerFromDealloc`,
//! which also handles a finalizer that resurrects the object), as CPython does for classes
//! with `__del__`.
//!
//! The transports have an instance `__dict__` (`#[pyclass(dict)]`), and PyO3 makes an
//! instance through `object.__new__`, which allocates it (`tp_alloc`, tracked by the
//! collector from then on, its fields zeroed) and, on CPython 3.11, creates the `__dict__`
//! right away. Creating the dict can start a collection, which would traverse the new
//! transport before PyO3 has written its fields: `__traverse__` would read zeroed memory as
//! the transport's state (a null `Py` is no valid reference). So the types' `tp_alloc`
//! hands the object out untracked, and it is tracked once its fields are written: by the
//! type's `tp_new` (construction from Python) or by `new_tracked` (from Rust). Every
//! transport is made by one of the two.
//!
//! The slots are replaced once, at module initialisation, before any instance exists (as
//! `freelist` does for the handles' allocator).

use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::PyClassInitializer;

/// A transport with asyncio's `__del__`.
pub trait Finalize: pyo3::PyClass {
    /// Runs with the object alive, and no exception set.
    fn finalize(slf: &Bound<'_, Self>);
}

/// The original slots of the type installed with index `K`.
struct Original {
    dealloc: OnceLock<ffi::destructor>,
    alloc: OnceLock<ffi::allocfunc>,
    new: OnceLock<ffi::newfunc>,
}

impl Original {
    const fn new() -> Original {
        Original {
            dealloc: OnceLock::new(),
            alloc: OnceLock::new(),
            new: OnceLock::new(),
        }
    }
}

static ORIGINAL: [Original; 5] = [
    Original::new(),
    Original::new(),
    Original::new(),
    Original::new(),
    Original::new(),
];

unsafe extern "C" fn finalize<T: Finalize>(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls `tp_finalize` on an attached thread, with a live object of the
    // type it was installed on or of a subclass (the pipe transports' Rust types get their
    // own; a Python subclass shares the layout).
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
    if let Some(original) = ORIGINAL[K].dealloc.get() {
        // SAFETY: the deallocator PyO3 installed for this type, called as CPython would.
        unsafe { original(obj) }
    }
}

/// `tp_alloc`: a new instance, which the collector does not see until `track`.
unsafe extern "C" fn alloc<const K: usize>(
    subtype: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    let Some(original) = ORIGINAL[K].alloc.get() else {
        return std::ptr::null_mut();
    };
    // SAFETY: the allocator the type had (CPython's generic one), called as CPython would;
    // it returns a new reference or NULL with an exception set.
    let obj = unsafe { original(subtype, nitems) };
    if !obj.is_null() {
        // SAFETY: `obj` is a live object of a GC type (the transports traverse); untracking
        // is always memory-safe, and PyO3's deallocator untracks only a tracked object.
        unsafe { ffi::PyObject_GC_UnTrack(obj.cast()) };
    }
    obj
}

/// Shows a transport whose fields are written to the collector.
fn track(obj: *mut ffi::PyObject) {
    // SAFETY: `obj` is a live, fully initialized instance (the callers' contract); tracking
    // an object twice is a fatal error, hence the check.
    unsafe {
        if ffi::PyObject_GC_IsTracked(obj) == 0 {
            ffi::PyObject_GC_Track(obj.cast());
        }
    }
}

/// `tp_new`: PyO3's, then the new transport is tracked.
unsafe extern "C" fn new<const K: usize>(
    subtype: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let Some(original) = ORIGINAL[K].new.get() else {
        return std::ptr::null_mut();
    };
    // SAFETY: PyO3's `tp_new` for this type, called as CPython would; a non-NULL result is
    // a new instance with every field written.
    let obj = unsafe { original(subtype, args, kwds) };
    if !obj.is_null() {
        track(obj);
    }
    obj
}

/// A transport made from Rust (not through its type's `tp_new`), tracked by the collector.
pub fn new_tracked<T: Finalize>(
    py: Python<'_>,
    value: impl Into<PyClassInitializer<T>>,
) -> PyResult<Py<T>> {
    let obj = Py::new(py, value)?;
    track(obj.as_ptr());
    Ok(obj)
}

/// Gives `T` a finalizer and an allocation untracked until initialized, with
/// `ORIGINAL[K]` keeping the slots it replaces.
fn install<T: Finalize, const K: usize>(py: Python<'_>) {
    let ty = T::type_object_raw(py);
    let original = &ORIGINAL[K];
    // SAFETY: attached; `ty` is the live type object PyO3 created, never deallocated. Its
    // slots are read at each allocation, deallocation and collection, and no instance
    // exists yet. Each slot is replaced only if its original was kept.
    unsafe {
        if let Some(dealloc) = (*ty).tp_dealloc {
            if original.dealloc.set(dealloc).is_ok() {
                (*ty).tp_dealloc = Some(self::dealloc::<K>);
                (*ty).tp_finalize = Some(finalize::<T>);
            }
        }
        if let (Some(alloc), Some(new)) = ((*ty).tp_alloc, (*ty).tp_new) {
            if original.alloc.set(alloc).is_ok() && original.new.set(new).is_ok() {
                (*ty).tp_alloc = Some(self::alloc::<K>);
                (*ty).tp_new = Some(self::new::<K>);
            }
        }
    }
}

/// Installs the slots of the transport types. Every transport pyclass is listed, the
/// subclasses too: a type made before this runs inherited its base's original slots.
pub fn install_transport_finalizers(py: Python<'_>) {
    install::<super::StreamTransport, 0>(py);
    install::<super::DatagramTransport, 1>(py);
    install::<super::TlsTransport, 2>(py);
    install::<super::ReadPipeTransport, 3>(py);
    install::<super::WritePipeTransport, 4>(py);
}
