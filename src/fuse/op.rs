//! Per-operation metrics of the FUSE adapter: each callback's duration until its reply
//! (`graviton_fuse_op_duration_seconds`) and its error replies by errno
//! (`graviton_fuse_op_errors_total`).

use std::cell::Cell;
use std::time::Instant;

use fuser::Errno;

thread_local! {
    /// The FUSE operation this thread is answering, naming the errors it counts.
    static CURRENT_OP: Cell<&'static str> = const { Cell::new("") };
}

/// One FUSE request being answered: its duration is recorded when this is dropped, after the
/// reply (on the blocking pool for the operations sent there).
pub(super) struct Op {
    name: &'static str,
    /// None while metrics are off.
    start: Option<Instant>,
}

/// Starts timing the operation `name` (each callback's first line).
pub(super) fn op(name: &'static str) -> Op {
    CURRENT_OP.set(name);
    Op {
        name,
        start: crate::metrics::enabled().then(Instant::now),
    }
}

impl Op {
    /// Names this operation on the thread that now answers it.
    pub(super) fn enter(&self) {
        CURRENT_OP.set(self.name);
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            metrics::histogram!(crate::metrics::FUSE_OP_DURATION, "op" => self.name)
                .record(start.elapsed().as_secs_f64());
        }
    }
}

/// Counts an error reply of the operation this thread is answering.
pub(super) fn failed(e: Errno) -> Errno {
    if crate::metrics::enabled() {
        let name = format!("{:?}", nix::errno::Errno::from_raw(e.code()));
        let op = CURRENT_OP.get();
        metrics::counter!(crate::metrics::FUSE_OP_ERRORS, "op" => op, "errno" => name).increment(1);
    }
    e
}
