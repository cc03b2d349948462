//! The snapshot behind `loop.metrics()` (the figures are kept in `crate::metrics`, updated
//! by the iteration's steps: `poll_io`, `collect_timers` and the batch in `batch.rs`).

use std::sync::atomic::Ordering;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{monotonic, CoreLoop};
use crate::timers::Cancellable;

impl CoreLoop {
    /// The snapshot behind `loop.metrics()`, as a dict of plain values.
    pub(super) fn metrics_snapshot<'py>(
        &self,
        py: Python<'py>,
        reset: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let now = monotonic();
        let running = self.thread_id.load(Ordering::SeqCst) != 0;
        let sleeping = self.sleeping.load(Ordering::SeqCst);
        // Plain values under the borrow; Python objects after it.
        let (counts, times, lag, lag_buckets, slowest, sizes) = {
            let mut st = self.state.borrow_mut(py);
            let m = &st.metrics;
            let (mut busy, mut idle) = (m.busy, m.idle);
            // The time since the last boundary, while the loop runs.
            if running {
                if sleeping {
                    idle += now - m.mark;
                } else {
                    busy += now - m.mark;
                }
            }
            let counts = [
                ("iterations", m.iterations),
                ("callbacks", m.callbacks),
                ("io_events", m.io_events),
                ("timers_fired", m.timers_fired),
                ("slow_callbacks", m.slow_callbacks),
                ("slow_iterations", m.slow_iterations),
                ("lag_count", m.lag.count()),
            ];
            let times = [
                ("time", now),
                ("busy_time", busy),
                ("idle_time", idle),
                ("reset_time", m.reset_at),
            ];
            let lag = [
                ("lag_sum", m.lag.sum()),
                ("lag_p50", m.lag.quantile(0.5)),
                ("lag_p99", m.lag.quantile(0.99)),
                ("lag_max", m.lag.max()),
            ];
            let lag_buckets = m.lag.buckets();
            let slowest = m.slowest.entries().to_vec();
            let io = &st.io;
            let fds = io.len() + st.transports.keys().filter(|fd| !io.contains(**fd)).count();
            let sizes = [
                (
                    "timers_pending",
                    st.timers.iter().filter(|t| !t.is_cancelled()).count(),
                ),
                ("ready", st.ready.len()),
                ("open_transports", st.transports.len()),
                ("registered_fds", fds),
            ];
            if reset {
                st.metrics.reset(now);
            }
            (counts, times, lag, lag_buckets, slowest, sizes)
        };
        let d = PyDict::new(py);
        for (k, v) in counts {
            d.set_item(k, v)?;
        }
        for (k, v) in times.into_iter().chain(lag) {
            d.set_item(k, v)?;
        }
        for (k, v) in sizes {
            d.set_item(k, v)?;
        }
        d.set_item("lag_buckets", lag_buckets)?;
        let slowest: Vec<_> = slowest
            .into_iter()
            .map(|s| (s.duration, s.at, s.callbacks, s.description, s.source))
            .collect();
        d.set_item("slowest", slowest)?;
        Ok(d)
    }
}
