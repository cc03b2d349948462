//! `Handle` and `TimerHandle` (asyncio: `events.Handle`, `events.TimerHandle`).
//!
//! A handle is a callback, its arguments and the `contextvars.Context` it runs in. The
//! loop's ready queue and timer heap hold handles; `cancel()` flips a flag the loop checks
//! before running one, and drops the callback at once so nothing stays alive through it.
//! Formatting (`repr`, error messages) is delegated to `ferroloop._format`, which runs only
//! on cold paths.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyTuple};
use pyo3::{PyTraverseError, PyTypeInfo, PyVisit};

use crate::attach::{self, SafeCall};
use crate::errors::is_base_exit;
use crate::gil_cell::GilCell;
use crate::threadsafe::HandleRun;
use crate::timers::Cancellable;

/// `ferroloop._format`, imported on first use.
pub fn format_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || py.import("ferroloop._format").map(Bound::unbind))
        .map(|m| m.bind(py))
}

/// `module.<name>`, looked up once and kept in `cell` (one cell per name).
pub fn module_attr(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<Py<PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import(module)?.getattr(name)?.unbind())
    })
    .map(|c| c.clone_ref(py))
}

/// `asyncio.<name>`, for the `__class__` of handles and transports.
pub fn asyncio_class(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Py<PyAny>> {
    module_attr(py, cell, "asyncio", name)
}

/// A callback's positional arguments. Most callbacks take none or one (a future's done
/// callbacks, `Task.__step`), which are kept without a tuple and passed by vectorcall.
pub enum Args {
    Empty,
    One(Py<PyAny>),
    Tuple(Py<PyTuple>),
}

impl Args {
    pub fn from_tuple(args: Bound<'_, PyTuple>) -> Args {
        match args.len() {
            0 => Args::Empty,
            1 => match args.get_item(0) {
                Ok(a) => Args::One(a.unbind()),
                Err(_) => Args::Tuple(args.unbind()),
            },
            _ => Args::Tuple(args.unbind()),
        }
    }

    /// Lets go of the arguments as `Bound`s (see `HandleContext::drop`).
    fn release(self, py: Python<'_>) {
        match self {
            Args::Empty => {}
            Args::One(a) => drop(a.into_bound(py)),
            Args::Tuple(t) => drop(t.into_bound(py)),
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> Args {
        match self {
            Args::Empty => Args::Empty,
            Args::One(a) => Args::One(a.clone_ref(py)),
            Args::Tuple(t) => Args::Tuple(t.clone_ref(py)),
        }
    }

    pub fn to_tuple<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        match self {
            Args::Empty => Ok(PyTuple::empty(py)),
            Args::One(a) => PyTuple::new(py, [a]),
            Args::Tuple(t) => Ok(t.bind(py).clone()),
        }
    }

    /// `func(*args)`, through `attach` (interpreter exit may end the thread during it).
    fn call<'py>(&self, func: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Args::Empty => func.safe_call0(),
            Args::One(a) => {
                // Slot 0 is scratch space the callee may use (PY_VECTORCALL_ARGUMENTS_OFFSET).
                let argv = [std::ptr::null_mut(), a.as_ptr()];
                // SAFETY: attached; `argv[1..]` holds one borrowed reference kept alive by
                // `self` for the call, and `argv[0]` is the writable scratch slot.
                unsafe { attach::call_vectorcall(func, argv.as_ptr().add(1), 1) }
            }
            Args::Tuple(t) => func.safe_call(t.bind(func.py()), None),
        }
    }
}

struct Callback {
    func: Py<PyAny>,
    args: Args,
}

/// Discussion: the handles a running loop makes for `call_soon` and `call_later` are not
/// tracked by the cyclic garbage collector. Tracking them (asyncio's and uvloop's handles
/// are tracked) puts the collector's traversals on the hot paths: a fifth of `call_soon`'s
/// time, and a tenth of a timer's even with a lean traversal (`traverse_handle`). PyO3
/// makes every class a GC type; the allocator in `freelist` hands out handles untracked.
/// But what an untracked object refers to looks referenced from outside to the collector,
/// so a cycle through one is never collected.
/// An untracked handle is therefore made visible whenever it may be part of a cycle that
/// nothing else keeps alive, which is only when it may outlive the loop's hold on it, or the
/// loop itself is garbage:
/// - a pending handle only the loop holds (the usual case: `call_soon`'s caller drops the
///   handle) is traversed by the loop as part of its queue (`traverse_pending`);
/// - a pending handle or timer that someone else also holds (a timeout, `sleep`'s timer) is
///   tracked when the loop stops running, and from the start if made while it is not
///   running: a loop can only be garbage while it is not running, so a loop dropped
///   unclosed with work pending is collected, and its `__del__` closes it;
/// - a handle the loop lets go of (it ran, was cancelled, or the loop closed) while someone
///   else holds it is tracked from then on (`expose`): it keeps its context, and its
///   callback too if the callback raised (asyncio's handles keep theirs);
/// - reader/writer handles and every handle made in debug mode are tracked from the start:
///   they keep their callback after running.
/// A tracked handle's context copy is not hidden (see `HandleContext`). A one-shot handle
/// the loop ran and nobody else holds is emptied for reuse instead (`recycle`).
#[pyclass(subclass, frozen, weakref, module = "ferroloop._ferroloop")]
pub struct Handle {
    callback: GilCell<Option<Callback>>,
    /// Keep the callback after running: reader/writer handles run many times, and debug
    /// mode formats handles after they ran.
    keep_after_run: bool,
    /// Empty only while the handle waits in `SPARE` for reuse.
    context: GilCell<Option<HandleContext>>,
    cancelled: AtomicBool,
    /// Whether this is a `call_soon_threadsafe` handle with 3.14's semantics, and the thread
    /// running its callback (see `threadsafe`).
    run_state: HandleRun,
    /// The collector tracks the handle (`expose`; once set, set for good). Spare handles
    /// (`SPARE`) never are.
    tracked: AtomicBool,
    source_traceback: Option<Py<PyAny>>,
}

/// A copy of the calling thread's current context (`contextvars.copy_context()`).
pub fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: attached (we hold `py`); PyContext_CopyCurrent returns a new reference or
    // NULL with an exception set, which `from_owned_ptr_or_err` turns into a `PyErr`.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()).map(Bound::unbind) }
}

/// The context a handle runs in: the caller's `context=`, or a copy of the current context
/// made for this handle alone.
///
/// Discussion: a copy made for a handle is hidden from the cyclic garbage collector while
/// the handle owns it. `call_soon` without `context=` copies the context for every
/// callback, and tracked copies made the collector run every 700 callbacks and walk every
/// pending copy, a fifth of `call_soon`'s time. Hiding them loses nothing: a copy refers
/// only to its variables' mapping (tracked on its own, and referenced by the context it was
/// copied from), and it is reachable from its handle, which the collector does not see
/// either (see `Handle`). Only untracked handles hide their copies. A copy is tracked again
/// when its handle becomes visible (`reveal`), and before the handle lets go of it, because
/// CPython's context deallocator unlinks the object from the collector's lists without
/// checking that it is tracked.
struct HandleContext {
    /// Released by `drop` (see there).
    context: ManuallyDrop<Py<PyAny>>,
    hidden: bool,
}

impl HandleContext {
    /// `given`, or a copy of the current context, hidden from the collector if `hide`.
    #[inline(always)]
    fn new(py: Python<'_>, given: Option<Bound<'_, PyAny>>, hide: bool) -> PyResult<HandleContext> {
        if let Some(context) = given {
            return Ok(HandleContext {
                context: ManuallyDrop::new(context.unbind()),
                hidden: false,
            });
        }
        let context = copy_context(py)?;
        if !hide {
            return Ok(HandleContext {
                context: ManuallyDrop::new(context),
                hidden: false,
            });
        }
        // SAFETY: attached; `context` is a live, tracked context object that this handle
        // owns a reference to. Untracking is undone in `drop` while that reference is still
        // held, so the object is tracked whenever it can be deallocated.
        unsafe { ffi::PyObject_GC_UnTrack(context.as_ptr().cast()) };
        Ok(HandleContext {
            context: ManuallyDrop::new(context),
            hidden: true,
        })
    }
}

impl HandleContext {
    /// Makes a hidden copy visible to the collector again.
    fn reveal(&mut self) {
        if std::mem::replace(&mut self.hidden, false) {
            // SAFETY: attached (a `HandleContext` is only touched by its handle, on an
            // attached thread); the field holds a live reference to the context.
            unsafe { track(self.context.as_ptr()) };
        }
    }
}

/// Tracks `obj` with the cyclic collector unless it is tracked already (which
/// `PyObject_GC_Track` does not allow).
///
/// # Safety
/// Attached; `obj` is a live, fully initialised object of a GC type.
unsafe fn track(obj: *mut ffi::PyObject) {
    // SAFETY: as the caller promises.
    unsafe {
        if ffi::PyObject_GC_IsTracked(obj) == 0 {
            ffi::PyObject_GC_Track(obj.cast());
        }
    }
}

impl Drop for HandleContext {
    fn drop(&mut self) {
        // SAFETY: a `HandleContext` lives inside a `Handle`, which drops it in its
        // deallocator, in `recycle`, in `__clear__`, or when `Py::new` fails: always on an
        // attached thread.
        let py = unsafe { Python::assume_attached() };
        self.reveal();
        // SAFETY: `drop` runs once, and the field is not touched after this.
        let context = unsafe { ManuallyDrop::take(&mut self.context) }.into_bound(py);
        // Released as a `Bound`: a plain decref, where dropping a `Py` would first look up
        // whether the thread is attached (a thread-local lookup, on every handle).
        drop(context);
    }
}

/// One-shot handles that ran and that nothing else refers to, kept for reuse.
///
/// Discussion: every task step and future callback goes through `call_soon`, whose handle
/// the caller drops at once, so a handle usually dies right after it runs. Making a Python
/// object and tearing it down (allocation, PyO3's initialisation, the deallocator) costs
/// about as much as the rest of `call_soon` and the run together. When the loop lets go of
/// a handle it ran and it holds the only reference (and no weak reference exists),
/// nobody can tell it apart from a new one, so it is emptied and handed out again by the
/// next `call_soon`.
static SPARE: GilCell<Vec<Py<Handle>>> = GilCell::new(Vec::new());

/// At most this many spare handles are kept.
const SPARE_CAPACITY: usize = 1024;

/// Whether the caller's reference to `handle` is the only one.
fn is_sole_reference(handle: &Bound<'_, Handle>) -> bool {
    // SAFETY: attached; `handle` is a live object.
    unsafe { ffi::Py_REFCNT(handle.as_ptr()) == 1 }
}

/// Whether weak references to `handle` exist.
fn has_weakrefs(handle: &Bound<'_, Handle>) -> bool {
    let obj = handle.as_ptr();
    // SAFETY: attached; `obj` is a live object whose type is `Handle` or a subclass, so its
    // header can be read. A positive `tp_weaklistoffset` is the offset of the instance's
    // weak-reference list pointer (PyO3's `weakref` option sets it), NULL when none exists.
    unsafe {
        let offset = (*ffi::Py_TYPE(obj)).tp_weaklistoffset;
        offset <= 0 || !(*obj.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>()).is_null()
    }
}

impl Handle {
    /// A one-shot handle outside debug mode (`call_soon`): a spare one refilled, or a new
    /// one. Untracked, its context copy hidden, unless `tracked` (see `Handle`).
    #[inline(always)]
    pub fn one_shot(
        py: Python<'_>,
        func: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
        tracked: bool,
    ) -> PyResult<Py<Handle>> {
        let spare = if tracked {
            None
        } else {
            SPARE.borrow_mut(py).pop()
        };
        let Some(handle) = spare else {
            let context = HandleContext::new(py, context, !tracked)?;
            let callback = Callback {
                func: func.unbind(),
                args,
            };
            let handle = Py::new(py, Handle::assemble(callback, context, false, None))?;
            if tracked {
                Handle::expose(handle.bind(py));
            }
            return Ok(handle);
        };
        let context = HandleContext::new(py, context, true)?;
        let this = handle.get();
        this.cancelled.store(false, Ordering::Relaxed);
        this.run_state.reset();
        // The slots are empty (see `recycle`): assigning drops nothing.
        *this.callback.borrow_mut(py) = Some(Callback {
            func: func.unbind(),
            args,
        });
        *this.context.borrow_mut(py) = Some(context);
        Ok(handle)
    }

    /// The loop lets go of a handle it ran (or found cancelled): a one-shot handle nobody
    /// else refers to is emptied and kept for `one_shot`; one that someone else keeps is
    /// made visible to the collector (see `Handle`).
    #[inline(always)]
    pub fn recycle(handle: Bound<'_, Handle>) {
        let py = handle.py();
        let this = handle.get();
        // Handles that keep their callback are tracked from the start; a tracked handle is
        // never reused (spare handles are untracked).
        if this.tracked.load(Ordering::Relaxed) {
            return;
        }
        if !is_sole_reference(&handle) {
            Handle::expose(&handle);
            return;
        }
        if !handle.is_exact_instance_of::<Handle>() {
            return; // a timer
        }
        if has_weakrefs(&handle) {
            return;
        }
        let callback = this.callback.borrow_mut(py).take();
        let context = this.context.borrow_mut(py).take();
        // Dropping may run Python code, which cannot reach this handle: nothing refers to it.
        drop((callback, context));
        let mut spare = SPARE.borrow_mut(py);
        let len = spare.len();
        if len < spare.capacity() {
            spare.push(handle.unbind());
        } else if len < SPARE_CAPACITY {
            spare.reserve_exact(SPARE_CAPACITY - len);
            spare.push(handle.unbind());
        }
    }

    /// The loop lets go of a handle it did not run (it was cancelled, or the loop closed):
    /// a handle someone else keeps is made visible to the collector, as in `recycle`.
    pub fn release(handle: &Bound<'_, Handle>) {
        if !is_sole_reference(handle) {
            Handle::expose(handle);
        }
    }

    /// Whether a handle in the loop's queue or heap is untracked and held by someone besides
    /// the loop.
    pub(crate) fn is_untracked_and_shared(handle: &Py<Handle>) -> bool {
        // SAFETY: attached (the loop's queues are only touched attached); `handle` is live.
        let shared = unsafe { ffi::Py_REFCNT(handle.as_ptr()) > 1 };
        shared && !handle.get().tracked.load(Ordering::Relaxed)
    }

    /// Tracks an untracked handle with the cyclic collector, and reveals its context copy
    /// (see `Handle`).
    #[cold]
    #[inline(never)]
    pub fn expose(handle: &Bound<'_, Handle>) {
        handle.get().tracked.store(true, Ordering::Relaxed);
        // SAFETY: attached; `handle` is a live, initialised handle.
        unsafe { track(handle.as_ptr()) };
        // Never borrowed across a call into Python, so free here; if it were not, the copy
        // would only stay hidden.
        if let Some(mut context) = handle.get().context.try_borrow_mut_for_gc() {
            if let Some(c) = context.as_mut() {
                c.reveal();
            }
        }
    }

    /// Calls `f` on each object the handle refers to, for the collector (which runs
    /// attached, but without a token: cells borrowed right now are skipped).
    fn for_each_ref<E>(&self, f: &mut impl FnMut(&Py<PyAny>) -> Result<(), E>) -> Result<(), E> {
        if let Some(cb) = self.callback.try_borrow_for_gc() {
            if let Some(cb) = cb.as_ref() {
                f(&cb.func)?;
                match &cb.args {
                    Args::Empty => {}
                    Args::One(a) => f(a)?,
                    Args::Tuple(t) => f(t.as_any())?,
                }
            }
        }
        if let Some(c) = self.context.try_borrow_for_gc() {
            // A hidden copy is untracked: visiting it would do nothing.
            if let Some(c) = c.as_ref().filter(|c| !c.hidden) {
                f(&c.context)?;
            }
        }
        match &self.source_traceback {
            Some(t) => f(t),
            None => Ok(()),
        }
    }

    /// Traverses a handle in the loop's queue, for the loop's `__traverse__`: one that only
    /// the loop holds and the collector does not track is traversed as part of the queue
    /// (what it refers to, the loop alone keeps alive); any other is visited as an object.
    pub(crate) fn traverse_pending(
        handle: &Py<Handle>,
        visit: &PyVisit<'_>,
    ) -> Result<(), PyTraverseError> {
        // SAFETY: called during a collection (attached), on a handle the loop holds, so it
        // is live. Reference counts do not change while the collector traverses.
        let alone = unsafe { ffi::Py_REFCNT(handle.as_ptr()) == 1 };
        let alone = alone && !handle.get().tracked.load(Ordering::Relaxed);
        if alone {
            handle.get().for_each_ref(&mut |obj| visit.call(obj))
        } else {
            visit.call(handle)
        }
    }

    fn assemble(
        callback: Callback,
        context: HandleContext,
        keep_after_run: bool,
        source_traceback: Option<Py<PyAny>>,
    ) -> Handle {
        Handle {
            callback: GilCell::new(Some(callback)),
            keep_after_run,
            context: GilCell::new(Some(context)),
            cancelled: AtomicBool::new(false),
            run_state: HandleRun::new(),
            tracked: AtomicBool::new(false),
            source_traceback,
        }
    }

    /// A handle (or a timer's base). One the collector will track (`tracked`: the caller
    /// makes the object and tracks it) does not hide its context copy (see `Handle`).
    #[inline(always)]
    pub fn new(
        py: Python<'_>,
        func: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
        (debug, repeats, tracked): (bool, bool, bool),
    ) -> PyResult<Handle> {
        let context = HandleContext::new(py, context, !tracked)?;
        let source_traceback = if debug {
            Some(
                format_module(py)?
                    .safe_method0(intern!(py, "extract_stack"))?
                    .unbind(),
            )
        } else {
            None
        };
        let callback = Callback {
            func: func.unbind(),
            args,
        };
        Ok(Handle::assemble(
            callback,
            context,
            repeats || debug,
            source_traceback,
        ))
    }

    /// `Handle::new`, made into a tracked object (a reader/writer's, or any in debug mode).
    pub fn new_tracked(
        py: Python<'_>,
        func: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
        debug: bool,
        repeats: bool,
    ) -> PyResult<Py<Handle>> {
        let handle = Handle::new(py, func, args, context, (debug, repeats, true))?;
        let handle = Py::new(py, handle)?;
        Handle::expose(handle.bind(py));
        Ok(handle)
    }

    /// Gives the handle the semantics of asyncio's `_ThreadSafeHandle` (3.14+): `cancel()`
    /// and `cancelled()` from another thread wait while the callback runs.
    pub fn make_threadsafe(&self) {
        self.run_state.make_threadsafe();
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The callable, while the handle has it (for describing a slow callback after it ran:
    /// a one-shot handle lets go of it when it runs).
    pub fn callback_object<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.callback
            .borrow(py)
            .as_ref()
            .map(|c| c.func.bind(py).clone())
    }

    /// Marks the handle cancelled; returns whether it was live before.
    fn mark_cancelled(&self, py: Python<'_>) -> bool {
        let was_live = !self.cancelled.swap(true, Ordering::Relaxed);
        // Take the callback out first and drop it after the borrow ends: dropping may run
        // arbitrary Python code.
        let cb = self.callback.borrow_mut(py).take();
        drop(cb);
        was_live
    }

    /// Runs the callback in its context, as `Handle._run` does. Exceptions go to the
    /// loop's exception handler through `loop._report_callback_error`; only
    /// `KeyboardInterrupt` and `SystemExit` (and failures of the handler itself) come back
    /// as `Err`, to propagate out of `run_forever`.
    pub fn run(slf: &Bound<'_, Handle>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.is_cancelled() {
            return Ok(());
        }
        // Until the callback has returned, other threads' cancel()/cancelled() of a
        // thread-safe handle wait (nothing runs Python code between the check above and here).
        let _running = this.run_state.start();
        let callback = if this.keep_after_run {
            this.callback.borrow(py).as_ref().map(|cb| Callback {
                func: cb.func.clone_ref(py),
                args: cb.args.clone_ref(py),
            })
        } else {
            this.callback.borrow_mut(py).take()
        };
        let Some(Callback { func, args }) = callback else {
            return Ok(());
        };
        // Held as `Bound`s from here (see `HandleContext::drop`).
        let func = func.into_bound(py);
        let Some(context) = this
            .context
            .borrow(py)
            .as_ref()
            .map(|c| c.context.bind(py).clone())
        else {
            return Ok(());
        };
        let ctx = context.as_ptr();
        // SAFETY: attached; `ctx` is a live context object held by this handle and, above,
        // by us for the whole call. Enter/Exit are paired below.
        let result = if unsafe { ffi::PyContext_Enter(ctx) } < 0 {
            Err(PyErr::fetch(py))
        } else {
            let r = args.call(&func);
            // SAFETY: we entered `ctx` above on this thread; exiting it is always valid.
            if unsafe { ffi::PyContext_Exit(ctx) } < 0 {
                return Err(PyErr::fetch(py));
            }
            r
        };
        match result {
            Ok(_) => {
                args.release(py);
                Ok(())
            }
            Err(e) if is_base_exit(py, &e) => Err(e),
            Err(e) => {
                let args_tuple = args.to_tuple(py)?;
                if !this.keep_after_run {
                    // The report shows the handle: give it its callback back, as asyncio's
                    // handles keep theirs.
                    let mut slot = this.callback.borrow_mut(py);
                    if slot.is_none() && !this.is_cancelled() {
                        *slot = Some(Callback {
                            func: func.clone().unbind(),
                            args,
                        });
                    }
                }
                event_loop.safe_method(
                    intern!(py, "_report_callback_error"),
                    (slf, e.into_value(py), func, args_tuple),
                    None,
                )?;
                Ok(())
            }
        }
    }
}

#[pymethods]
impl Handle {
    fn cancel(&self, py: Python<'_>) {
        self.run_state.wait_until_not_running(py);
        self.mark_cancelled(py);
    }

    fn cancelled(&self, py: Python<'_>) -> bool {
        self.run_state.wait_until_not_running(py);
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context
            .borrow(py)
            .as_ref()
            .map(|c| c.context.clone_ref(py))
    }

    /// `asyncio.Handle`, so `isinstance(handle, asyncio.Handle)` holds as it does for
    /// asyncio's own handles (isinstance consults `__class__` when the type itself is not a
    /// subclass). Discussion: a PyO3 class cannot inherit from `asyncio.Handle` (its
    /// `__slots__` layout conflicts with ours), and making handles Python objects would put
    /// them back on the hot path.
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        static CLS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static THREADSAFE_CLS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        if self.run_state.is_threadsafe() {
            return module_attr(py, &THREADSAFE_CLS, "asyncio.events", "_ThreadSafeHandle");
        }
        asyncio_class(py, &CLS, "Handle")
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback
            .borrow(py)
            .as_ref()
            .map(|c| c.func.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        let cb = self.callback.borrow(py);
        cb.as_ref()
            .map(|c| c.args.to_tuple(py).map(Bound::unbind))
            .transpose()
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    /// Runs the callback now (asyncio's private `Handle._run`, kept for code that calls it).
    fn _run(slf: &Bound<'_, Self>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        Handle::run(slf, event_loop)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        Ok(format_module(py)?
            .safe_method1(intern!(py, "handle_repr"), slf)?
            .unbind())
    }
}

/// A handle with a deadline (`call_later`/`call_at`).
#[pyclass(extends = Handle, frozen, module = "ferroloop._ferroloop")]
pub struct TimerHandle {
    when: f64,
    /// The deadline as given to `call_at`, when that was not a float.
    when_obj: Option<Py<PyAny>>,
    /// In the loop's heap (set when pushed, cleared when popped).
    scheduled: AtomicBool,
    /// Shared with the loop: how many scheduled timers were cancelled since it last looked.
    cancelled_counter: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub fn new(when: f64, when_obj: Option<Py<PyAny>>, counter: Arc<AtomicUsize>) -> TimerHandle {
        TimerHandle {
            when,
            when_obj,
            scheduled: AtomicBool::new(true),
            cancelled_counter: counter,
        }
    }

    pub fn set_unscheduled(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }

    /// The deadline, as a float (for the loop's lag figures).
    pub fn deadline(&self) -> f64 {
        self.when
    }
}

impl Cancellable for Py<TimerHandle> {
    fn is_cancelled(&self) -> bool {
        // SAFETY: timer handles are only held in the loop's timer heap, which lives in a
        // `GilCell` and so is only touched by an attached thread.
        let py = unsafe { Python::assume_attached() };
        self.bind(py).as_super().get().is_cancelled()
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.when_obj {
            Some(w) => Ok(w.clone_ref(py)),
            None => Ok(PyFloat::new(py, self.when).into_any().unbind()),
        }
    }

    /// `asyncio.TimerHandle` (see `Handle.__class__`).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        static CLS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        asyncio_class(py, &CLS, "TimerHandle")
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.when(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    fn cancel(slf: &Bound<'_, Self>) {
        let py = slf.py();
        if slf.as_super().get().mark_cancelled(py) && slf.get().scheduled.load(Ordering::Relaxed) {
            slf.get().cancelled_counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `hash(self.when())`, as asyncio's.
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.when(py)?.bind(py).hash()
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let equal = || -> PyResult<bool> {
            if slf.is(other) {
                return Ok(true);
            }
            let (x, y) = (slf.as_super(), other.as_super());
            if a != b || x.get().is_cancelled() != y.get().is_cancelled() {
                return Ok(false);
            }
            let (xc, yc) = (
                Handle::_callback(x.get(), py),
                Handle::_callback(y.get(), py),
            );
            let (xa, ya) = (Handle::_args(x.get(), py)?, Handle::_args(y.get(), py)?);
            Ok(xc.into_pyobject(py)?.eq(yc)? && xa.into_pyobject(py)?.eq(ya)?)
        };
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || equal()?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || equal()?,
            CompareOp::Eq => equal()?,
            CompareOp::Ne => !equal()?,
        };
        Ok(result.into_pyobject(py)?.to_owned().into_any().unbind())
    }
}

/// `tp_traverse` of `Handle` (and, through `subtype_traverse`, of Python subclasses).
///
/// Discussion: PyO3's generated traversal costs several hundred instructions a call (it
/// looks up the base type's traversal along the type chain, arms a panic trap and a
/// thread-local guard). Timers are tracked (see `Handle`), and every collection that finds
/// one pending traverses it twice: with PyO3's traversal, a quarter of the cost of a timer.
/// These read the fields directly; `install_traversal` puts them in the types' slots.
unsafe extern "C" fn traverse_handle(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: the collector calls this attached, with a live instance of `Handle` or of a
    // subclass (whose layout starts with `Handle`'s), and a matching `visit`/`arg` pair.
    // A heap type's instances visit their type (PyO3's classes are heap types).
    unsafe {
        let rc = visit(ffi::Py_TYPE(obj).cast(), arg);
        if rc != 0 {
            return rc;
        }
        let py = Python::assume_attached();
        let handle = Borrowed::from_ptr(py, obj).cast_unchecked::<Handle>();
        let result = handle
            .get()
            .for_each_ref(&mut |o| match visit(o.as_ptr(), arg) {
                0 => Ok(()),
                rc => Err(rc),
            });
        result.err().unwrap_or(0)
    }
}

/// `tp_traverse` of `TimerHandle` (see `traverse_handle`).
unsafe extern "C" fn traverse_timer(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: as in `traverse_handle`, for an instance of `TimerHandle`.
    unsafe {
        let rc = traverse_handle(obj, visit, arg);
        if rc != 0 {
            return rc;
        }
        let py = Python::assume_attached();
        let timer = Borrowed::from_ptr(py, obj).cast_unchecked::<TimerHandle>();
        match &timer.get().when_obj {
            Some(w) => visit(w.as_ptr(), arg),
            None => 0,
        }
    }
}

/// `tp_clear` of both handle types: lets go of the callback and the context.
unsafe extern "C" fn clear_handle(obj: *mut ffi::PyObject) -> std::ffi::c_int {
    // SAFETY: the collector calls this attached, with a live instance of `Handle` or of a
    // subclass.
    let handle =
        unsafe { Borrowed::from_ptr(Python::assume_attached(), obj).cast_unchecked::<Handle>() };
    let this = handle.get();
    let callback = this
        .callback
        .try_borrow_mut_for_gc()
        .and_then(|mut c| c.take());
    let context = this
        .context
        .try_borrow_mut_for_gc()
        .and_then(|mut c| c.take());
    drop((callback, context));
    0
}

/// Installs `traverse_handle`, `traverse_timer` and `clear_handle` in the handle types'
/// slots (PyO3 would make its own, see `traverse_handle`).
pub fn install_traversal(py: Python<'_>) {
    // SAFETY: attached; the type objects are live (created by PyO3, never deallocated) and
    // no instance exists yet. The collector reads the slots at each traversal.
    unsafe {
        let handle = Handle::type_object_raw(py);
        (*handle).tp_traverse = Some(traverse_handle);
        (*handle).tp_clear = Some(clear_handle);
        let timer = TimerHandle::type_object_raw(py);
        (*timer).tp_traverse = Some(traverse_timer);
        (*timer).tp_clear = Some(clear_handle);
    }
}
