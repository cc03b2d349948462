//! Free lists for the objects the loop makes and drops most: `Handle` and `TimerHandle`.
//!
//! Discussion: every `call_soon` makes a handle and every callback run drops one, so
//! allocating them is on the hottest path of the loop. PyO3's `#[pyclass(freelist = N)]`
//! keeps freed objects for reuse behind a `Mutex`: four atomic operations per handle, and
//! 6 % of `call_soon`'s throughput measured against these lists. The interpreter lock
//! already serializes every allocation and deallocation of these objects, so these lists
//! are plain stacks.
//! They are installed as the types' `tp_alloc`/`tp_free` slots, which every allocation
//! of an instance (PyO3's included) goes through; subclasses made in Python get their own
//! slots from `type.__new__` and never reach these.

use std::cell::UnsafeCell;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::PyTypeInfo;

/// How many freed objects a list keeps for reuse.
const CAPACITY: usize = 1024;

struct FreeList {
    /// The type whose instances this list keeps (set once, at module initialisation).
    ty: UnsafeCell<*mut ffi::PyTypeObject>,
    objects: UnsafeCell<Vec<*mut ffi::PyObject>>,
}

// SAFETY: the cells are only touched by `install`, `alloc` and `free`, which run attached to
// the interpreter; on the GIL builds this crate supports (see `gil_cell`) only one thread is
// attached at a time, and attaching and detaching are full memory barriers.
unsafe impl Sync for FreeList {}

impl FreeList {
    const fn new() -> FreeList {
        FreeList {
            ty: UnsafeCell::new(std::ptr::null_mut()),
            objects: UnsafeCell::new(Vec::new()),
        }
    }
}

/// One list per type: `LISTS[K]` serves the type installed with index `K`.
static LISTS: [FreeList; 2] = [FreeList::new(), FreeList::new()];

/// `tp_alloc`: a kept object of exactly the list's type, or a fresh one.
unsafe extern "C" fn alloc<const K: usize>(
    subtype: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    let list = &LISTS[K];
    // SAFETY: called by CPython on an attached thread (see `FreeList`'s `Sync`), which is
    // the only access to the cells at this time.
    let ty = unsafe { *list.ty.get() };
    if nitems == 0 && subtype == ty {
        // SAFETY: as above. The borrow ends before anything below can run Python code
        // (a collection started by `PyType_GenericAlloc` may free handles into this list).
        let kept = unsafe { (*list.objects.get()).pop() };
        if let Some(obj) = kept {
            // SAFETY: `obj` is memory of an instance of `ty` that `free` kept rather than
            // released, so it has the type's size; `PyObject_Init` sets its type (taking a
            // reference to the heap type, which the deallocator gives back) and reference
            // count. PyO3 then writes every field of the instance.
            unsafe { ffi::PyObject_Init(obj, subtype) };
            return obj;
        }
    }
    // SAFETY: the default allocator, with CPython's own arguments; it returns a new
    // reference or NULL with an exception set.
    let obj = unsafe { ffi::PyType_GenericAlloc(subtype, nitems) };
    if !obj.is_null() && subtype == ty {
        // Objects from the list come back untracked (the deallocator untracks them); new
        // ones start that way too. See `Handle` for why handles are not tracked.
        // SAFETY: `obj` is a live object of a GC type (PyO3 classes are); untracking an
        // object is always memory-safe, and the deallocator's untrack checks first.
        unsafe { ffi::PyObject_GC_UnTrack(obj.cast()) };
    }
    obj
}

/// `tp_free`: keeps the memory of an instance of the list's type, up to `CAPACITY`.
unsafe extern "C" fn free<const K: usize>(obj: *mut std::ffi::c_void) {
    let list = &LISTS[K];
    let obj = obj.cast::<ffi::PyObject>();
    // SAFETY: as in `alloc`; `obj` is an instance being deallocated, whose type field is
    // still valid.
    let (ty, objects) = unsafe { (*list.ty.get(), &mut *list.objects.get()) };
    // SAFETY: as above.
    if unsafe { ffi::Py_TYPE(obj) } == ty && objects.len() < CAPACITY {
        objects.push(obj);
        return;
    }
    // SAFETY: the inverse of `PyType_GenericAlloc` for a GC type, which `install` checked.
    unsafe { ffi::PyObject_GC_Del(obj.cast()) }
}

/// Makes `LISTS[K]` the allocator of `T`'s instances.
fn install<T: PyTypeInfo, const K: usize>(py: Python<'_>) -> PyResult<()> {
    let ty = T::type_object_raw(py);
    // SAFETY: attached; `ty` is the live type object, created by PyO3 and never deallocated.
    // Its slots are read at each allocation and deallocation, so replacing them before any
    // instance exists is what CPython itself does for static types. `free` releases
    // memory as that of a GC type, which every PyO3 class is.
    unsafe {
        if ffi::PyType_IS_GC(ty) == 0 {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "ferroloop: free lists are for GC types",
            ));
        }
        *LISTS[K].ty.get() = ty;
        (*LISTS[K].objects.get()).reserve_exact(CAPACITY);
        (*ty).tp_alloc = Some(alloc::<K>);
        (*ty).tp_free = Some(free::<K>);
    }
    Ok(())
}

/// Installs the free lists of the handle types.
pub fn install_handle_free_lists(py: Python<'_>) -> PyResult<()> {
    install::<crate::handles::Handle, 0>(py)?;
    install::<crate::handles::TimerHandle, 1>(py)
}
