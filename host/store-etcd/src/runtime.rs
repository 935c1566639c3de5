//! The runtime the store's client runs on: its caller's, not one of its
//! own, and the one way a synchronous store call waits for it.
//!
//! [`runbox_store::Store`] is synchronous, etcd's client is async. The
//! store keeps a handle to the multi-threaded tokio runtime it was
//! connected on (the host's): the client's connections, the lease's
//! renewals and every request run there, so a process has one scheduler
//! and one I/O driver. A call waits for its request on the calling thread
//! ([`Host::wait`]) and never holds up the runtime's other tasks while it
//! does:
//!
//! | called from | how it waits |
//! |---|---|
//! | a multi-threaded runtime's worker, or its `block_on` | `block_in_place`: the worker's other tasks move to a fresh thread meanwhile |
//! | any thread outside a runtime (a blocking-pool thread, a plain thread) | on the host runtime's handle, directly |
//! | a current-thread runtime | on a scoped thread: that runtime cannot drive anything while it waits |
//!
//! A current-thread runtime cannot be the store's: its I/O only moves
//! while its own thread polls it, and that thread is the one waiting, so
//! [`Host::current`] refuses it rather than deadlock.

use std::future::Future;

use runbox_store::blocking::in_place;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// The host's runtime, as the store holds it.
pub(crate) struct Host {
    handle: Handle,
    /// Closed once the runtime shut down (a parked task of it holds the
    /// other end): a call then fails, naming why, instead of polling a
    /// runtime that is gone.
    running: oneshot::Sender<()>,
}

/// Why the store cannot run a request on its runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// Connected outside any tokio runtime.
    #[error(
        "the etcd store runs on its caller's tokio runtime: connect from within a multi-threaded one"
    )]
    NoRuntime,
    /// Connected on a current-thread runtime, which could not drive the
    /// store's requests while a call waits on one.
    #[error(
        "the etcd store needs a multi-threaded tokio runtime: a current-thread one cannot move its requests while a call waits"
    )]
    CurrentThread,
    /// The runtime it was connected on has shut down.
    #[error("the tokio runtime the etcd store was connected on has shut down")]
    ShutDown,
}

impl Host {
    /// The runtime of the calling context, if it can carry the store.
    pub(crate) fn current() -> Result<Host, RuntimeError> {
        let handle = Handle::try_current().map_err(|_| RuntimeError::NoRuntime)?;
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return Err(RuntimeError::CurrentThread);
        }
        let (running, shutdown) = oneshot::channel::<()>();
        // Never answered: it ends when the store drops the sender, or is
        // dropped with the runtime, which closes the sender.
        handle.spawn(async move {
            let _ = shutdown.await;
        });
        Ok(Host { handle, running })
    }

    /// Runs `task` on the runtime in the background.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
        self.handle.spawn(task).abort_handle()
    }

    /// Waits for `task` on the calling thread, as the table above says.
    pub(crate) fn wait<T: Send>(
        &self,
        task: impl Future<Output = T> + Send,
    ) -> Result<T, RuntimeError> {
        if self.running.is_closed() {
            return Err(RuntimeError::ShutDown);
        }
        let run = || self.handle.block_on(task);
        Ok(match runbox_store::blocking::runtime_flavor() {
            // That runtime cannot move anything while its thread waits.
            Some(RuntimeFlavor::CurrentThread) => std::thread::scope(|s| {
                s.spawn(run)
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }),
            _ => in_place(run),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_needs_a_multi_threaded_runtime_to_connect_on() {
        assert_eq!(Host::current().err(), Some(RuntimeError::NoRuntime));
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _in_single = single.enter();
        assert_eq!(Host::current().err(), Some(RuntimeError::CurrentThread));
    }

    #[test]
    fn a_call_waits_from_every_context_and_fails_once_the_runtime_is_gone() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let host = {
            let _in_rt = rt.enter();
            Host::current().unwrap()
        };
        let io = || async { tokio::time::sleep(std::time::Duration::from_millis(1)).await };
        // Outside any runtime.
        assert_eq!(host.wait(io()), Ok(()));
        // On the runtime's own block_on, and on one of its workers.
        rt.block_on(async { assert_eq!(host.wait(io()), Ok(())) });
        let host = std::sync::Arc::new(host);
        let on_worker = host.clone();
        rt.block_on(rt.spawn(async move { on_worker.wait(io()) }))
            .unwrap()
            .unwrap();
        // From a current-thread runtime's task.
        let single = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        single.block_on(async { assert_eq!(host.wait(io()), Ok(())) });
        drop(rt);
        assert_eq!(host.wait(io()), Err(RuntimeError::ShutDown));
    }
}
