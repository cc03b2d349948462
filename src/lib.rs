//! ferroloop's Rust core: a drop-in asyncio event loop for CPython.
//!
//! This file is the table of contents. Each module names the asyncio concept it implements.
//!
//! No panic may reach Python (PyO3 would turn it into a `PanicException`, and a panic inside
//! the loop could leave it half-way through an iteration): outside tests, clippy refuses
//! `unwrap`, `expect`, `panic!`, `unreachable!` and friends, and `clippy.toml` refuses the
//! unchecked float-to-`Duration` conversions and PyO3's own call methods (calls into Python
//! go through `attach::SafeCall`). Sizes that come from the caller are allocated with
//! `try_reserve` (`errors::try_vec`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

mod attach;
mod buffers;
mod errors;
mod event_loop;
mod freelist;
mod fs_ops;
mod gil_cell;
mod handles;
mod metrics;
pub mod poller;
#[cfg(test)]
mod proptests;
mod sock_ops;
mod sys;
mod threadsafe;
pub mod timers;
mod transport;
pub mod write_buffer;

use pyo3::prelude::*;

/// glibc's malloc serves blocks over 128 KiB with `mmap` until the program frees such a
/// block, and only then raises that threshold (and the one at which it gives the heap's top
/// back to the kernel). Until it happens, every transfer of 100 KiB or more (a `bytes` per
/// `recv`) maps, faults in and unmaps fresh pages: twice the CPU per request, depending on
/// what the process happened to do before. One freed 1 MiB block settles it now.
fn settle_allocator() {
    // SAFETY: a plain allocation, freed at once and never touched (`black_box` keeps the
    // compiler from eliding the pair).
    unsafe { libc::free(std::hint::black_box(libc::malloc(1 << 20))) }
}

/// The main interpreter only (see `python/ferroloop/_interpreter.py`, which refuses a
/// subinterpreter before this module is even loaded; this is the check for a direct import).
fn refuse_subinterpreter() -> PyResult<()> {
    // SAFETY: plain queries of the running interpreter state, made while attached.
    let main =
        unsafe { pyo3::ffi::PyInterpreterState_Get() == pyo3::ffi::PyInterpreterState_Main() };
    if main {
        Ok(())
    } else {
        Err(pyo3::exceptions::PyImportError::new_err(
            "ferroloop cannot be imported in a subinterpreter: it supports the main interpreter only",
        ))
    }
}

// `gil_used`: every "serialized by the interpreter lock" argument in this crate (`GilCell`,
// the free lists) needs the lock; a free-threaded build loads the module with it on.
#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    refuse_subinterpreter()?;
    settle_allocator();
    m.add_class::<event_loop::CoreLoop>()?;
    event_loop::install_fast_methods(&m.py().get_type::<event_loop::CoreLoop>())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    freelist::install_handle_free_lists(m.py())?;
    handles::install_traversal(m.py());
    m.add_class::<transport::StreamTransport>()?;
    m.add_class::<transport::ReadPipeTransport>()?;
    m.add_class::<transport::WritePipeTransport>()?;
    m.add_class::<transport::DatagramTransport>()?;
    m.add_class::<transport::TlsProtocol>()?;
    m.add_class::<transport::TlsTransport>()?;
    m.add_function(wrap_pyfunction!(fs_ops::sendfile, m)?)?;
    m.add_function(wrap_pyfunction!(fs_ops::path_mode_and_inode, m)?)?;
    m.add_function(wrap_pyfunction!(fs_ops::unlink_path, m)?)?;
    transport::finalize::install_transport_finalizers(m.py());
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
