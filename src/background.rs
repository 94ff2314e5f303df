//! Threads that work behind the application's back (the write-behind applier, the write-back
//! uploaders) yield the CPU to the threads answering it: on a small machine they otherwise
//! compete with FUSE replies for the same cores, and a listing slows while creates are being
//! sent to PostgreSQL.

/// Lowers the calling thread's scheduling priority (nice 10). Best effort: a failure only
/// leaves the thread at normal priority.
pub fn lower_this_threads_priority() {
    // SAFETY: gettid and setpriority have no memory-safety preconditions; on Linux
    // PRIO_PROCESS with a thread id applies to that thread only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}
