//! Guest stdout/stderr: masked (see [`crate::secrets::redact`]), capped at [`GuestSetup::max_output`]
//! bytes, and either captured in memory or passed through to the host's own streams.
//!
//! Pass-through never blocks the guest's thread: masked bytes go into a bounded buffer
//! ([`BUFFER`]) that a writer thread of its own empties into the host stream. When the
//! buffer is full (nobody reads the host's stdout), the guest is told there is no room
//! (`check-write` answers 0) and waits in `ready()`, an `await` that the deadline and the
//! caller's cancellation can end: a pipe nobody reads cannot hold the execution past its
//! timeout. A writer thread blocked on such a pipe is left behind (it holds no lock the rest
//! of the process needs) and ends with the process.
//!
//! [`GuestSetup::max_output`]: super::GuestSetup::max_output

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::secrets::redact::{Patterns, Stream};

/// Most masked bytes of one pass-through stream waiting for the host stream (64 KiB, one
/// Linux pipe buffer). A write the guest was allowed may go past it by what the masker held
/// back (at most twice the longest masked form).
pub(crate) const BUFFER: usize = 64 * 1024;

/// Most bytes one `check-write` allows into a captured stream.
const CAPTURE_PERMIT: usize = 64 * 1024;

/// Which host stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fd {
    Stdout,
    Stderr,
}

impl Fd {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Where the masked bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// A writer thread writes them to the host stream.
    Host,
    /// They are kept: the captured output.
    Memory,
}

struct State {
    masker: Stream,
    sink: Sink,
    /// Guest bytes accepted (before masking).
    accepted: u64,
    cap: u64,
    capped: bool,
    /// Host: masked bytes the writer has not taken yet. Memory: the captured output.
    buffer: BytesMut,
    /// The writer thread is writing a chunk it took from `buffer`.
    writing: bool,
    /// The host stream failed (the reader closed it): later output is dropped, as a shell
    /// pipeline drops what `head` did not read.
    broken: bool,
    /// No more output will come (the execution ended): the writer thread ends once
    /// `buffer` is written.
    closed: bool,
    /// `AsyncWrite` callers waiting for room.
    wakers: Vec<Waker>,
}

impl State {
    /// Room the guest may write into now.
    fn room(&self) -> usize {
        match self.sink {
            Sink::Memory => CAPTURE_PERMIT,
            Sink::Host if self.broken => BUFFER,
            Sink::Host => BUFFER.saturating_sub(self.buffer.len()),
        }
    }

    /// Everything handed over has reached the host stream (or never will: broken).
    fn drained(&self) -> bool {
        self.sink == Sink::Memory || self.broken || (self.buffer.is_empty() && !self.writing)
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signals the writer thread: bytes in `buffer`, or `closed`.
    data: Condvar,
    /// Signals async waiters: room in `buffer`, or drained.
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a writer panicked mid-write; the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every async waiter (room or drained may have changed).
    fn wake(&self, state: &mut State) {
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
        self.changed.notify_waiters();
    }
}

/// One guest output stream (stdout or stderr): masks secrets and stops at a byte cap; writes
/// past the cap fail (the guest sees an I/O error, [`GuestOutput::finish`] reports it), so a
/// flooding guest cannot fill the host's disk or memory. Clones share the stream.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    shared: Arc<Shared>,
}

impl GuestOutput {
    /// Passed through to the host's `fd`, by a writer thread of its own on a duplicate of
    /// the descriptor.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated or the thread cannot start.
    pub(crate) fn host(fd: Fd, patterns: Patterns, cap: u64) -> std::io::Result<Self> {
        use std::os::fd::AsFd;
        let owned = match fd {
            Fd::Stdout => std::io::stdout().as_fd().try_clone_to_owned()?,
            Fd::Stderr => std::io::stderr().as_fd().try_clone_to_owned()?,
        };
        let out = Self::new(Sink::Host, patterns, cap);
        let shared = Arc::clone(&out.shared);
        std::thread::Builder::new()
            .name(format!("attune-{}", fd.name()))
            .spawn(move || write_host(&shared, std::fs::File::from(owned)))?;
        Ok(out)
    }

    /// Captured in memory, at most `cap` guest bytes.
    pub(crate) fn memory(patterns: Patterns, cap: u64) -> Self {
        Self::new(Sink::Memory, patterns, cap)
    }

    fn new(sink: Sink, patterns: Patterns, cap: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    masker: Stream::new(patterns),
                    sink,
                    accepted: 0,
                    cap,
                    capped: false,
                    buffer: BytesMut::new(),
                    writing: false,
                    broken: false,
                    closed: false,
                    wakers: Vec::new(),
                }),
                data: Condvar::new(),
                changed: Notify::new(),
            }),
        }
    }

    /// Ends the stream: what the masker held back is handed over (masked), and the writer
    /// thread ends once everything is written. Returns whether the cap was hit. Idempotent.
    pub(crate) fn finish(&self) -> bool {
        let mut state = self.shared.lock();
        if !state.closed {
            let rest = state.masker.finish();
            if !state.broken {
                state.buffer.extend_from_slice(&rest);
            }
            state.closed = true;
            self.shared.data.notify_all();
        }
        state.capped
    }

    /// Waits until everything handed over has been written to the host stream (at once for
    /// a captured stream, or when the host stream is broken).
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.lock().drained() {
                return;
            }
            notified.await;
        }
    }

    /// The captured output (masked); empty for a pass-through stream.
    pub(crate) fn contents(&self) -> Bytes {
        let mut state = self.shared.lock();
        match state.sink {
            Sink::Memory => state.buffer.split().freeze(),
            Sink::Host => Bytes::new(),
        }
    }

    /// Masks and hands over `bytes`, or refuses them past the cap.
    fn write_masked(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.shared.lock();
        let len = bytes.len() as u64;
        if state.capped || state.accepted.saturating_add(len) > state.cap {
            state.capped = true;
            return Err(std::io::Error::other("output limit exceeded"));
        }
        if state.closed {
            return Err(std::io::Error::other("output stream closed"));
        }
        state.accepted += len;
        let out = state.masker.push(bytes);
        if !state.broken && !out.is_empty() {
            state.buffer.extend_from_slice(&out);
            if state.sink == Sink::Host {
                self.shared.data.notify_all();
            }
        }
        Ok(())
    }
}

/// The writer thread of a pass-through stream: takes what is buffered, writes it, repeats
/// until the stream is closed and empty or the host stream fails.
fn write_host(shared: &Shared, mut file: std::fs::File) {
    loop {
        let chunk = {
            let mut state = shared.lock();
            while state.buffer.is_empty() && !state.closed {
                state = shared
                    .data
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.buffer.is_empty() {
                return;
            }
            state.writing = true;
            let chunk = state.buffer.split().freeze();
            shared.wake(&mut state);
            chunk
        };
        // The host's own stream: a failure (closed pipe) is the reader's choice; the rest of
        // the output is dropped.
        let ok = file.write_all(&chunk).and_then(|()| file.flush()).is_ok();
        let mut state = shared.lock();
        state.writing = false;
        if !ok {
            state.broken = true;
            state.buffer.clear();
        }
        shared.wake(&mut state);
        if !ok {
            return;
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        // Output is filtered, not a terminal.
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // Our own stream, not wasmtime-wasi's AsyncWriteStream adapter: that one logs the raw
    // bytes it writes at debug level, before masking.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_masked(&bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::msg(e.to_string())))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let state = self.shared.lock();
        if state.capped || state.closed {
            return Err(StreamError::Closed);
        }
        Ok(state.room())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    /// Ready when there is room (or the stream is capped, closed or broken, which
    /// `check-write` then reports).
    async fn ready(&mut self) {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                if state.room() > 0 || state.capped || state.closed {
                    return;
                }
            }
            notified.await;
        }
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let room = {
            let mut state = self.shared.lock();
            let room = state.room();
            if room == 0 && !state.capped && !state.closed {
                state.wakers.push(cx.waker().clone());
                return Poll::Pending;
            }
            room
        };
        let n = buf.len().min(room.max(1));
        Poll::Ready(self.write_masked(&buf[..n]).map(|()| n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn captured_output_stops_at_the_cap_without_a_trap() {
        let out = GuestOutput::memory(Patterns::new(["secret-value"]), 20);
        let mut stream = out.p2_stream();
        stream.write(Bytes::from_static(b"a secret-value")).unwrap();
        assert!(matches!(
            stream.write(Bytes::from_static(b" and more")),
            Err(StreamError::LastOperationFailed(_))
        ));
        assert!(matches!(stream.check_write(), Err(StreamError::Closed)));
        assert!(out.finish(), "capped");
        assert_eq!(&out.contents()[..], b"a ***");
    }

    #[test]
    fn a_closed_stream_refuses_writes() {
        let out = GuestOutput::memory(Patterns::new(std::iter::empty()), 1024);
        let mut stream = out.p2_stream();
        stream.write(Bytes::from_static(b"before")).unwrap();
        assert!(!out.finish());
        assert!(stream.write(Bytes::from_static(b"after")).is_err());
        assert_eq!(&out.contents()[..], b"before");
    }
}
