//! Guest stdout/stderr passed through to the host's own streams: masked (see
//! [`crate::redact`]) and capped.

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::redact::{Patterns, Stream};

/// Which host stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fd {
    Stdout,
    Stderr,
}

struct State {
    stream: Stream,
    fd: Fd,
    written: u64,
    cap: u64,
    capped: bool,
}

/// A guest output stream that masks secrets and stops at a byte cap; writes past the cap fail
/// (the guest sees an I/O error), so a flooding guest cannot fill the host's disk or memory.
#[derive(Clone)]
pub(crate) struct HostOutput {
    state: Arc<Mutex<State>>,
}

impl HostOutput {
    pub(crate) fn new(fd: Fd, patterns: Patterns, cap: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                stream: Stream::new(patterns),
                fd,
                written: 0,
                cap,
                capped: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a writer panicked mid-write; the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Emits what the masker held back; returns whether the cap was hit.
    pub(crate) fn finish(&self) -> bool {
        let mut state = self.lock();
        let rest = state.stream.finish();
        emit(state.fd, &rest);
        state.capped
    }
}

fn emit(fd: Fd, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // The host's own stdout/stderr: a failure (closed pipe) is the reader's choice, ignored.
    let _ = match fd {
        Fd::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        Fd::Stderr => std::io::stderr().lock().write_all(bytes),
    };
}

impl IsTerminal for HostOutput {
    fn is_terminal(&self) -> bool {
        // Output is filtered, not a terminal.
        false
    }
}

impl StdoutStream for HostOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // Our own stream, not wasmtime-wasi's AsyncWriteStream adapter: that one logs the raw
    // bytes it writes at debug level, before masking.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl HostOutput {
    /// Masks and emits `bytes`, or refuses them past the cap.
    fn write_masked(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.lock();
        let len = bytes.len() as u64;
        if state.written.saturating_add(len) > state.cap {
            state.capped = true;
            return Err(std::io::Error::other("output limit exceeded"));
        }
        state.written += len;
        let out = state.stream.push(bytes);
        emit(state.fd, &out);
        Ok(())
    }
}

impl OutputStream for HostOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_masked(&bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::msg(e.to_string())))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let state = self.lock();
        if state.capped {
            return Err(StreamError::Closed);
        }
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for HostOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for HostOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_masked(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
