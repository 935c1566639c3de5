//! The one way a synchronous store call is made from async code:
//! [`in_place`]. On a multi-threaded runtime the call runs where it is and
//! the runtime hands this worker's other tasks to another thread meanwhile
//! (`block_in_place`), so a commit waiting on the disk, on etcd or on a
//! group commit holds up no other task; elsewhere (a current-thread
//! runtime, no runtime) it simply runs. A hand-off to a blocking thread and
//! back was measured costlier than a step (BENCHMARKS.md), which is why
//! store calls do not `spawn_blocking`. The engine runs every write
//! through it, and the etcd backend every wait on a request.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, which may block, without holding up the other tasks of a
/// multi-threaded runtime's worker.
///
/// ```
/// let rt = tokio::runtime::Runtime::new()?;
/// let answer = rt.block_on(async { runbox_store::blocking::in_place(|| 6 * 7) });
/// assert_eq!(answer, 42);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    if on_multi_threaded_runtime() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Whether the calling thread is in a multi-threaded runtime, where
/// [`in_place`] hands the worker's other tasks on.
pub fn on_multi_threaded_runtime() -> bool {
    runtime_flavor() == Some(RuntimeFlavor::MultiThread)
}

/// The flavor of the runtime the calling thread is in, if any.
pub fn runtime_flavor() -> Option<RuntimeFlavor> {
    Handle::try_current().ok().map(|h| h.runtime_flavor())
}
