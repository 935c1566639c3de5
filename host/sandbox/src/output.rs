//! Captured guest output: stdout, stderr and `log` messages share one byte
//! budget (`limits.output_bytes`). Writing past it stops the step with a
//! `limit` error instead of truncating silently: a flood is a symptom, and a
//! truncated record would hide it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use runbox_core::sync::lock;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The output byte budget of one attempt.
#[derive(Debug)]
pub(crate) struct OutputBudget {
    used: AtomicUsize,
    cap: usize,
    overflowed: AtomicBool,
}

impl OutputBudget {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(OutputBudget {
            used: AtomicUsize::new(0),
            cap,
            overflowed: AtomicBool::new(false),
        })
    }

    /// Takes `n` bytes from the budget; false (and remembered) when it would overflow.
    pub(crate) fn take(&self, n: usize) -> bool {
        let prev = self.used.fetch_add(n, Ordering::SeqCst);
        let ok = prev.checked_add(n).is_some_and(|total| total <= self.cap);
        if !ok {
            self.overflowed.store(true, Ordering::SeqCst);
        }
        ok
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::SeqCst)
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
}

/// One captured stream (stdout or stderr) drawing on a shared budget.
#[derive(Debug, Clone)]
pub(crate) struct CapturedStream {
    buf: Arc<Mutex<Vec<u8>>>,
    budget: Arc<OutputBudget>,
}

impl CapturedStream {
    pub(crate) fn new(budget: Arc<OutputBudget>) -> Self {
        CapturedStream {
            buf: Arc::default(),
            budget,
        }
    }

    /// What the guest wrote, lossily decoded.
    pub(crate) fn contents(&self) -> String {
        let buf = lock(&self.buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn append(&self, bytes: &[u8]) -> bool {
        if !self.budget.take(bytes.len()) {
            return false;
        }
        lock(&self.buf).extend_from_slice(bytes);
        true
    }

    fn overflow_message(&self) -> String {
        format!(
            "output limit exceeded: stdout, stderr and logs may hold {} bytes (limits.output_bytes)",
            self.budget.cap()
        )
    }
}

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.append(&bytes) {
            Ok(())
        } else {
            Err(StreamError::Trap(wasmtime::format_err!(
                "{}",
                self.overflow_message()
            )))
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always offer room: the overflow must reach `write`, where it stops
        // the guest, rather than look like a closed pipe it could spin on.
        Ok(64 * 1024)
    }
}

impl AsyncWrite for CapturedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.append(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(io::Error::other(self.overflow_message())))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_overflow_is_remembered() {
        let budget = OutputBudget::new(10);
        let out = CapturedStream::new(budget.clone());
        let err = CapturedStream::new(budget.clone());
        assert!(out.append(b"12345"));
        assert!(err.append(b"12345"));
        assert!(!budget.overflowed());
        assert!(!out.append(b"x"));
        assert!(budget.overflowed());
        assert_eq!(out.contents(), "12345");
    }
}
