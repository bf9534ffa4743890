//! Host logging that keeps guest-chosen strings out of the logs.
//!
//! wasmtime-wasi 48 logs what a guest passes to WASI calls: its `wasi:*` bindings are generated
//! with `tracing` on (`wasmtime_wasi::p2::bindings`, `wasmtime_wasi_io::bindings`: every
//! call's `string` arguments, such as the path given to `open-at` or the name given to
//! `resolve-addresses`, at `TRACE`), its preview 1 adapter traces each call and drops errors at
//! `DEBUG` (`wasmtime_wasi::p1`), and its socket code logs failed DNS lookups with the name at
//! `DEBUG` (`wasmtime_wasi::sockets::ip_name_lookup`). A guest can pass a secret it received
//! as any of these, so those events would copy it, unmasked, into the host's log.
//!
//! [`GuestDataCap`] caps every target of those crates (and of the rest of the wasmtime and
//! cranelift family, whose debug output names guest functions and data) at `WARN`, whatever
//! `RUST_LOG` asks for: their warnings carry no guest data, their debug and trace events are
//! dropped. It is a [`Layer`] (a global filter: wrap any subscriber with it) and a
//! per-layer [`Filter`]. The binary installs it through [`install`]; an embedder adds it to
//! its own subscriber:
//!
//! ```
//! use tracing_subscriber::layer::SubscriberExt as _;
//! let subscriber = tracing_subscriber::registry()
//!     .with(attune_wasm::runtime::logging::GuestDataCap)
//!     .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
//! # drop(subscriber);
//! ```
//!
//! The host's own events never carry a guest-chosen string: a `get-secret` name that resolves
//! to nothing is logged as `-` (see [`crate::runtime`]), and guest output is masked before it
//! is written (see [`crate::secrets::redact`]).

use std::io::IsTerminal as _;

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};

/// Crates (first segment of an event's target, or its prefix followed by `_`) whose events
/// below [`GUEST_DATA_MAX_LEVEL`] may carry guest-chosen strings: `wasmtime` (and
/// `wasmtime_wasi`, `wasmtime_wasi_io`, `wasmtime_internal_*`, …), `wiggle` (preview 1
/// bindings) and `cranelift` (`cranelift_codegen`, …).
pub const GUEST_DATA_CRATES: &[&str] = &["wasmtime", "wiggle", "cranelift"];

/// The most verbose level let through for [`GUEST_DATA_CRATES`].
pub const GUEST_DATA_MAX_LEVEL: Level = Level::WARN;

/// The `RUST_LOG` directives used when the variable is unset or invalid.
pub const DEFAULT_DIRECTIVES: &str = "warn";

/// `true` when events of `target` are capped at [`GUEST_DATA_MAX_LEVEL`].
pub fn carries_guest_data(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    GUEST_DATA_CRATES.iter().any(|c| {
        krate
            .strip_prefix(c)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
    })
}

/// Caps the targets of [`GUEST_DATA_CRATES`] at [`GUEST_DATA_MAX_LEVEL`]; everything else
/// passes. Use it as a [`Layer`] around a whole subscriber or as a [`Filter`] on one layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestDataCap;

impl GuestDataCap {
    /// Whether an event or span with `metadata` may be recorded.
    pub fn allows(metadata: &Metadata<'_>) -> bool {
        // tracing orders levels by verbosity: TRACE > DEBUG > INFO > WARN > ERROR.
        *metadata.level() <= GUEST_DATA_MAX_LEVEL || !carries_guest_data(metadata.target())
    }

    fn interest(metadata: &Metadata<'_>) -> Interest {
        if Self::allows(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

impl<S: Subscriber> Layer<S> for GuestDataCap {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        Self::interest(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        Self::allows(metadata)
    }
}

impl<S> Filter<S> for GuestDataCap {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::allows(metadata)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        Self::interest(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        None
    }
}

/// Installs the binary's subscriber: `RUST_LOG` (else [`DEFAULT_DIRECTIVES`]), to stderr,
/// without timestamps or targets, wrapped in [`GuestDataCap`]. Returns `false` when a global
/// subscriber was already installed (then nothing changes).
pub fn install() -> bool {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_DIRECTIVES));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .finish()
        .with(GuestDataCap)
        .try_init()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasmtime_family_targets_are_capped() {
        for t in [
            "wasmtime",
            "wasmtime_wasi::p2::bindings::sync::filesystem::types",
            "wasmtime_wasi_io::bindings",
            "wasmtime_internal_cranelift",
            "wiggle",
            "cranelift_codegen::machinst",
        ] {
            assert!(carries_guest_data(t), "{t}");
        }
        for t in ["attune_wasm::executor", "sqlx::query", "wasmtimex", "tokio"] {
            assert!(!carries_guest_data(t), "{t}");
        }
        assert!(Level::TRACE > GUEST_DATA_MAX_LEVEL && Level::ERROR < GUEST_DATA_MAX_LEVEL);
    }
}
