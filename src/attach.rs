//! Leaving the interpreter and calling into it from a thread that interpreter exit may end.
//!
//! Discussion: CPython up to 3.13 ends a thread that tries to take the interpreter lock
//! once the interpreter is finalizing (a daemon thread, when the main thread exits) with
//! `pthread_exit`: a forced unwind of the thread's stack. Through Rust frames that is fatal:
//! a frame's clean-up code (dropping a `Bound` is a decref, without the lock, while the
//! main thread tears the interpreter down) runs, then PyO3's `catch_unwind` around every
//! method catches the unwind and the process aborts ("FATAL: exception not rethrown") or
//! crashes. A loop run in a daemon thread meets this whenever the main thread exits while
//! the loop waits in the poller (it re-attaches when the wait ends) or runs Python code
//! (which gives the lock up every few milliseconds and takes it back, or blocks in I/O).
//!
//! So every place where the loop's Rust code hands control to the interpreter in a way that
//! can take the lock back goes through this module: the call is declared `C-unwind`, so
//! the calling frame gets a landing pad for it, and a `HangOnUnwind` guard lives across
//! the call. If the interpreter ends the thread during the call, the guard is the first
//! thing the unwind drops, and it blocks the thread for good instead: nothing else of the
//! frame is torn down, the thread holds no lock, and it goes away with the process (what
//! CPython 3.14 does itself, see gh-87135). A normal return forgets the guard: no cost.
//!
//! Covered: the poller's wait (`detach`), and every callback the loop runs from a handle
//! (`call_vectorcall`, `call_tuple`): tasks, futures' callbacks, readers, writers, timers.
//! Python code reached otherwise (a transport's protocol methods, the exception handler,
//! a `__del__`) is still exposed to the interpreter's exit on 3.11–3.13; those frames call
//! through PyO3, whose imports are not `C-unwind`.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::BoundObject;

mod raw {
    use pyo3::ffi::{PyObject, PyThreadState};

    // The same functions `pyo3::ffi` declares, imported again as able to unwind: CPython
    // itself never unwinds, but its `pthread_exit` does (see the module's discussion).
    extern "C-unwind" {
        pub fn PyEval_RestoreThread(tstate: *mut PyThreadState);
        pub fn PyObject_CallNoArgs(func: *mut PyObject) -> *mut PyObject;
        pub fn PyObject_VectorcallDict(
            callable: *mut PyObject,
            args: *const *mut PyObject,
            nargsf: usize,
            kwdict: *mut PyObject,
        ) -> *mut PyObject;
        pub fn PyObject_Call(
            callable: *mut PyObject,
            args: *mut PyObject,
            kwargs: *mut PyObject,
        ) -> *mut PyObject;
        pub fn PyObject_VectorcallMethod(
            name: *mut PyObject,
            args: *const *mut PyObject,
            nargsf: usize,
            kwnames: *mut PyObject,
        ) -> *mut PyObject;
    }
}

/// Blocks the thread for good if dropped, i.e. if the interpreter ends the thread while
/// this guard is alive (see the module's discussion). Forgotten on a normal return.
struct HangOnUnwind;

impl Drop for HangOnUnwind {
    #[cold]
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A Rust panic (which PyO3 turns into an exception), not the interpreter's
            // forced unwind: let it go on.
            return;
        }
        // SAFETY: `sigfillset` initialises the set it is given; blocking every signal in
        // this thread only keeps them from being delivered to a thread that will never run
        // Python code again (the process delivers them to another one).
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        loop {
            // SAFETY: plain blocking call with no arguments.
            unsafe { libc::pause() };
        }
    }
}

/// Runs `f` detached from the interpreter (other Python threads run meanwhile), like
/// `Python::detach`, but re-attaches in a way that survives interpreter exit (see above).
/// `f` must not use the interpreter.
pub fn detach<T>(_py: Python<'_>, f: impl FnOnce() -> T) -> T {
    // SAFETY: the thread is attached (we hold `_py`); the state is restored below before
    // anything uses the interpreter again on this thread.
    let tstate = unsafe { ffi::PyEval_SaveThread() };
    /// Re-attaches on the way out, also if `f` panics.
    struct Restore(*mut ffi::PyThreadState);
    impl Drop for Restore {
        fn drop(&mut self) {
            let guard = HangOnUnwind;
            // SAFETY: `self.0` is this thread's state, saved above and not restored yet.
            unsafe { raw::PyEval_RestoreThread(self.0) };
            std::mem::forget(guard);
        }
    }
    let _restore = Restore(tstate);
    f()
}

/// `func(*argv)` by vectorcall. `argv` points one slot past scratch space the callee may
/// use (`PY_VECTORCALL_ARGUMENTS_OFFSET` is set).
///
/// # Safety
/// Attached; `func` and the `nargs` objects at `argv` are live for the call, and
/// `argv[-1]` is writable.
#[inline(always)]
pub unsafe fn call_vectorcall<'py>(
    func: &Bound<'py, PyAny>,
    argv: *const *mut ffi::PyObject,
    nargs: usize,
) -> PyResult<Bound<'py, PyAny>> {
    /// A vectorcall function, as able to unwind (see `raw`).
    type Vectorcall = unsafe extern "C-unwind" fn(
        *mut ffi::PyObject,
        *const *mut ffi::PyObject,
        usize,
        *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
    let nargsf = nargs | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET;
    // SAFETY: attached; `func` is a live object.
    let vectorcall = unsafe { ffi::PyVectorcall_Function(func.as_ptr()) };
    let guard = HangOnUnwind;
    let r = match vectorcall {
        // SAFETY: the same function pointer, only declared able to unwind (the ABI is the
        // same); called as CPython's `PyObject_Vectorcall` calls it, with the arguments the
        // caller vouched for.
        Some(f) => unsafe {
            let f: Vectorcall = std::mem::transmute::<ffi::vectorcallfunc, Vectorcall>(f);
            f(func.as_ptr(), argv, nargsf, std::ptr::null_mut())
        },
        // SAFETY: as above; an object without vectorcall is called through `tp_call`.
        None => unsafe {
            raw::PyObject_VectorcallDict(func.as_ptr(), argv, nargsf, std::ptr::null_mut())
        },
    };
    std::mem::forget(guard);
    // SAFETY: attached; `r` is a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(func.py(), r) }
}

/// Calls into Python that survive interpreter exit (see the module's discussion): the
/// loop's Rust code calls Python only through these (clippy's `disallowed-methods` refuses
/// PyO3's own `call*` methods). The one-argument forms take the argument itself, not a
/// tuple, and call by vectorcall.
pub trait SafeCall<'py> {
    /// `self()`.
    fn safe_call0(&self) -> PyResult<Bound<'py, PyAny>>;
    /// `self(arg)`.
    fn safe_call1(&self, arg: impl IntoPyObject<'py>) -> PyResult<Bound<'py, PyAny>>;
    /// `self(*args, **kwargs)`.
    fn safe_call(
        &self,
        args: impl IntoPyObject<'py, Target = PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>>;
    /// `self.name()`.
    fn safe_method0(
        &self,
        name: impl IntoPyObject<'py, Target = PyString>,
    ) -> PyResult<Bound<'py, PyAny>>;
    /// `self.name(arg)`.
    fn safe_method1(
        &self,
        name: impl IntoPyObject<'py, Target = PyString>,
        arg: impl IntoPyObject<'py>,
    ) -> PyResult<Bound<'py, PyAny>>;
    /// `self.name(*args, **kwargs)`.
    fn safe_method(
        &self,
        name: impl IntoPyObject<'py, Target = PyString>,
        args: impl IntoPyObject<'py, Target = PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>>;
}

fn to_object<'py>(py: Python<'py>, v: impl IntoPyObject<'py>) -> PyResult<Bound<'py, PyAny>> {
    v.into_pyobject(py)
        .map(|b| b.into_any().into_bound())
        .map_err(Into::into)
}

/// `argv[0].name(*argv[1..])` by vectorcall.
fn call_method_vector<'py>(
    py: Python<'py>,
    name: &Bound<'py, PyString>,
    argv: &[*mut ffi::PyObject],
) -> PyResult<Bound<'py, PyAny>> {
    let guard = HangOnUnwind;
    // SAFETY: attached; `argv` holds the receiver and live arguments for the call (no
    // scratch slot, so no offset flag); `name` is a live string.
    let r = unsafe {
        raw::PyObject_VectorcallMethod(
            name.as_ptr(),
            argv.as_ptr(),
            argv.len(),
            std::ptr::null_mut(),
        )
    };
    std::mem::forget(guard);
    // SAFETY: attached; `r` is a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, r) }
}

impl<'py, T> SafeCall<'py> for Bound<'py, T> {
    fn safe_call0(&self) -> PyResult<Bound<'py, PyAny>> {
        let guard = HangOnUnwind;
        // SAFETY: attached (we hold a `Bound`); `self` is alive for the call.
        let r = unsafe { raw::PyObject_CallNoArgs(self.as_ptr()) };
        std::mem::forget(guard);
        // SAFETY: attached; `r` is a new reference or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(self.py(), r) }
    }

    fn safe_call1(&self, arg: impl IntoPyObject<'py>) -> PyResult<Bound<'py, PyAny>> {
        let arg = to_object(self.py(), arg)?;
        let argv = [std::ptr::null_mut(), arg.as_ptr()];
        // SAFETY: attached; `arg` is alive for the call and `argv[0]` is the scratch slot.
        unsafe { call_vectorcall(self.as_any(), argv.as_ptr().add(1), 1) }
    }

    fn safe_call(
        &self,
        args: impl IntoPyObject<'py, Target = PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = args
            .into_pyobject(self.py())
            .map_err(Into::into)?
            .into_bound();
        let guard = HangOnUnwind;
        // SAFETY: attached; `self`, `args` (a tuple) and `kwargs` (a dict or NULL) are
        // alive for the call.
        let r = unsafe {
            raw::PyObject_Call(
                self.as_ptr(),
                args.as_ptr(),
                kwargs.map_or(std::ptr::null_mut(), Bound::as_ptr),
            )
        };
        std::mem::forget(guard);
        // SAFETY: attached; `r` is a new reference or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(self.py(), r) }
    }

    fn safe_method0(
        &self,
        name: impl IntoPyObject<'py, Target = PyString>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py();
        let name = name.into_pyobject(py).map_err(Into::into)?.into_bound();
        call_method_vector(py, &name, &[self.as_ptr()])
    }

    fn safe_method1(
        &self,
        name: impl IntoPyObject<'py, Target = PyString>,
        arg: impl IntoPyObject<'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py();
        let name = name.into_pyobject(py).map_err(Into::into)?.into_bound();
        let arg = to_object(py, arg)?;
        call_method_vector(py, &name, &[self.as_ptr(), arg.as_ptr()])
    }

    fn safe_method(
        &self,
        name: impl IntoPyObject<'py, Target = PyString>,
        args: impl IntoPyObject<'py, Target = PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.as_any().getattr(name)?.safe_call(args, kwargs)
    }
}

/// Runs `f`, hanging the thread for good if the interpreter ends it meanwhile (see the
/// module's discussion): the last line of defence for Python code that `f` reaches in
/// ways the calls above do not cover (a `__del__`, a `__hash__`). Frames inside `f` are
/// unwound first, and one of them may abort the process instead: this narrows the
/// window, it does not close it.
pub fn hang_on_exit<R>(f: impl FnOnce() -> R) -> R {
    let guard = HangOnUnwind;
    let r = f();
    std::mem::forget(guard);
    r
}
