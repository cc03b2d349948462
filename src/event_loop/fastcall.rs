//! `call_soon` as a raw vectorcall (`METH_FASTCALL | METH_KEYWORDS`) method.
//!
//! Discussion: `call_soon` is the loop's hottest entry point: every task step
//! (`loop.call_soon(step, context=ctx)`) and every future completion goes through it, with a
//! keyword argument. PyO3's generated wrapper builds a tuple for `*args` and parses keywords
//! generically; this one reads the argument vector directly, keeps zero or one extra
//! argument without a tuple, and accepts exactly asyncio's keyword, `context`. It replaces
//! the PyO3-generated `call_soon` on the class at module initialisation; the PyO3 method
//! stays as the documented signature and for `CoreLoop.call_soon(loop, ...)` lookups made
//! before that.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use super::CoreLoop;
use crate::handles::Args;

/// The body of the fast `call_soon`.
fn call_soon(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: CPython passes the bound instance as a borrowed reference.
    let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
    // SAFETY: a method descriptor checks that `self` is an instance of the type it was made
    // for (`CoreLoop`, or a subclass) before calling its function.
    let this = unsafe { slf.cast_unchecked::<CoreLoop>() };
    let nargs = usize::try_from(nargs).unwrap_or(0);
    let nkw = if kwnames.is_null() {
        0
    } else {
        // SAFETY: `kwnames` is a tuple of keyword names when not NULL.
        unsafe { ffi::PyTuple_GET_SIZE(kwnames) as usize }
    };
    let argv: &[*mut ffi::PyObject] = if nargs + nkw == 0 {
        &[]
    } else {
        // SAFETY: vectorcall passes `nargs` positional values followed by one value per
        // keyword name, all borrowed references valid for the call.
        unsafe { std::slice::from_raw_parts(args, nargs + nkw) }
    };
    // SAFETY: (the `from_borrowed_ptr` calls below) each pointer comes from `argv`.
    let borrowed = |p: *mut ffi::PyObject| unsafe { Bound::from_borrowed_ptr(py, p) };
    let mut context = None;
    if nkw > 0 {
        // SAFETY: checked non-NULL above; a borrowed tuple reference.
        let names = unsafe { Bound::from_borrowed_ptr(py, kwnames) };
        let names = names.cast::<PyTuple>()?;
        for (i, name) in names.iter().enumerate() {
            if name.cast::<PyString>()?.to_str()? != "context" {
                return Err(PyTypeError::new_err(format!(
                    "call_soon() got an unexpected keyword argument '{name}'"
                )));
            }
            let value = borrowed(argv[nargs + i]);
            context = (!value.is_none()).then_some(value);
        }
    }
    let Some((&callback, rest)) = argv[..nargs].split_first() else {
        return Err(PyTypeError::new_err(
            "call_soon() missing 1 required positional argument: 'callback'",
        ));
    };
    let args = match rest {
        [] => Args::Empty,
        [one] => Args::One(borrowed(*one).unbind()),
        many => Args::from_tuple(PyTuple::new(py, many.iter().map(|&p| borrowed(p)))?),
    };
    let handle = this
        .get()
        .call_soon_inner(py, borrowed(callback), args, context)?;
    Ok(handle.into_ptr())
}

unsafe extern "C" fn call_soon_vectorcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method implementations with the interpreter attached.
    let py = unsafe { Python::assume_attached() };
    let result = catch_unwind(AssertUnwindSafe(|| {
        call_soon(py, slf, args, nargs, kwnames)
    }));
    let err = match result {
        Ok(Ok(obj)) => return obj,
        Ok(Err(e)) => e,
        Err(_) => PyRuntimeError::new_err("ferroloop: internal error (panic) in call_soon()"),
    };
    err.restore(py);
    std::ptr::null_mut()
}

/// `get_debug()`: asked by every `asyncio.Future` and `Task` as it is created.
unsafe extern "C" fn get_debug_noargs(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method implementations with the interpreter attached, `slf`
    // being a borrowed reference to the instance.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: as above.
    let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
    // SAFETY: the method descriptor checked that `self` is a `CoreLoop` (see `call_soon`).
    let this = unsafe { slf.cast_unchecked::<CoreLoop>() };
    pyo3::types::PyBool::new(py, this.get().debug_enabled())
        .to_owned()
        .into_ptr()
}

/// Installs the fast methods on `cls` (the `CoreLoop` type).
pub fn install_fast_methods(cls: &Bound<'_, PyType>) -> PyResult<()> {
    install(
        cls,
        "get_debug",
        ffi::PyMethodDef {
            ml_name: c"get_debug".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunction: get_debug_noargs,
            },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: c"get_debug()\n--\n\nWhether the loop is in debug mode.".as_ptr(),
        },
    )?;
    install(
        cls,
        "call_soon",
        ffi::PyMethodDef {
            ml_name: c"call_soon".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: call_soon_vectorcall,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: c"call_soon(callback, *args, context=None)\n--\n\nArrange for a callback to be called as soon as possible.".as_ptr(),
        },
    )
}

/// Puts a method descriptor for `def` on `cls`, replacing the PyO3 method of that name.
fn install(cls: &Bound<'_, PyType>, name: &str, def: ffi::PyMethodDef) -> PyResult<()> {
    let def = Box::leak(Box::new(def));
    // SAFETY: `cls` is a live type object and `def` lives for the rest of the process, as a
    // method descriptor requires. The result is a new reference or NULL with an exception.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            cls.py(),
            ffi::PyDescr_NewMethod(cls.as_type_ptr(), def as *mut ffi::PyMethodDef),
        )?
    };
    cls.setattr(name, descr)
}
