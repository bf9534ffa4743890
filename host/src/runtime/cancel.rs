//! Cancelling a running execution from outside ([`Cancel`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A handle that ends an execution at once: give a clone to [`GuestSetup::cancel`] (or
/// [`Execution::cancel`]) and call [`Cancel::cancel`] from anywhere (another task or thread,
/// e.g. on Attune's `ExecutionCancelRequested`). The guest stops within one epoch tick
/// (10 ms) while it runs wasm, at once while it waits in a host call (stdin, a full output
/// pipe), and never starts if the handle was cancelled before the run; the run then fails
/// with [`Error::Cancelled`], distinct from [`Error::Timeout`]. Cancelling twice, or after
/// the run ended, does nothing. Clones share one state.
///
/// # Examples
/// ```
/// let cancel = attune_wasm::runtime::Cancel::new();
/// let for_the_run = cancel.clone();
/// assert!(!for_the_run.is_cancelled());
/// cancel.cancel();
/// assert!(for_the_run.is_cancelled());
/// ```
///
/// [`GuestSetup::cancel`]: super::GuestSetup::cancel
/// [`Execution::cancel`]: crate::executor::Execution::cancel
/// [`Error::Cancelled`]: super::Error::Cancelled
/// [`Error::Timeout`]: super::Error::Timeout
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancel {
    /// A handle not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every execution holding a clone of this handle.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Completes once [`Cancel::cancel`] is called (at once if it was).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// The error an epoch callback raises in a cancelled guest; [`super::error::classify`] turns it into
/// [`super::Error::Cancelled`].
#[derive(Debug)]
pub(super) struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}
