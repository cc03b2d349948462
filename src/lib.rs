//! ferroloop's Rust core: a drop-in asyncio event loop for CPython.
//!
//! This file is the table of contents. Each module names the asyncio concept it implements.

mod errors;
mod event_loop;
mod gil_cell;
mod handles;
pub mod poller;
mod sock_ops;
mod sys;
pub mod timers;
mod transport;

use pyo3::prelude::*;

#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::CoreLoop>()?;
    event_loop::install_fast_methods(&m.py().get_type::<event_loop::CoreLoop>())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<transport::StreamTransport>()?;
    m.add_class::<transport::DatagramTransport>()?;
    m.add_class::<transport::TlsProtocol>()?;
    m.add_class::<transport::TlsTransport>()?;
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
