//! The engine's one way to call the store, which blocks (a synced write, an
//! etcd round trip), from async code: [`in_place`]. On a multi-threaded
//! runtime the call runs where it is and the runtime hands this worker's
//! other tasks to another thread meanwhile (`block_in_place`), so a commit
//! waiting on the disk or on the group commit holds up no other incident;
//! elsewhere (a current-thread runtime, no runtime) it simply runs. A
//! hand-off to a blocking thread and back was measured costlier than a
//! step (BENCHMARKS.md), which is why commits do not `spawn_blocking`.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, which may block on the store, without holding up the other
/// tasks of a multi-threaded runtime's worker.
pub(crate) fn in_place<T>(f: impl FnOnce() -> T) -> T {
    if on_multi_threaded_runtime() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Whether this thread runs tasks of a multi-threaded runtime.
pub(crate) fn on_multi_threaded_runtime() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}
