//! Per-execution store state: WASI context, resource limiter and the `get-secret` door.

use std::collections::BTreeSet;

use secrecy::ExposeSecret;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::attune::action::secrets::SecretError;
use crate::audit::{Door, Log, Outcome, UNRECORDED};
use crate::names::SecretName;
use crate::resolve::{Delivery, Resolution};

/// Host state of a component execution (WASI p2 + `attune:action/secrets`).
pub(crate) struct ComponentState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) secrets: SecretDoor,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Host state of a core-module execution (WASI p1; secrets come through the env door only).
pub(crate) struct ModuleState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: Limiter,
    /// Held so that the plaintexts share the store's lifetime and are zeroized with it.
    pub(crate) _secrets: SecretDoor,
}

/// The `get-secret` door: the execution's resolved secrets, an optional allow-list and a
/// call budget. Dropping it zeroizes every plaintext it holds.
pub struct SecretDoor {
    resolution: Resolution,
    allowed: Option<BTreeSet<SecretName>>,
    calls: u64,
    budget: u64,
    log: Log,
}

impl SecretDoor {
    /// Builds the door over `resolution`. `allowed`, when set, is the only names the guest may
    /// read (others visible answer `access-denied`); `budget` caps the number of calls per
    /// execution (calls past it answer `access-denied`). Every call is counted in `log`.
    pub fn new(
        resolution: Resolution,
        allowed: Option<BTreeSet<SecretName>>,
        budget: u64,
        log: Log,
    ) -> Self {
        Self {
            resolution,
            allowed,
            calls: 0,
            budget,
            log,
        }
    }

    /// Looks `name` up as the guest asked for it, and counts the request in the audit log.
    /// Returns the answer, its outcome and what was recorded (the resolved ref, or
    /// [`UNRECORDED`]).
    pub fn lookup(&mut self, name: &str) -> (Result<String, SecretError>, Outcome, String) {
        let (result, outcome, recorded) = self.answer(name);
        self.log.note(&recorded, Door::GetSecret, outcome);
        (result, outcome, recorded)
    }

    /// The answer, its outcome, and what to record: the resolved ref, or [`UNRECORDED`] when
    /// the name resolves to nothing, so that a guest cannot write a secret into the audit
    /// table or the host log.
    fn answer(&mut self, name: &str) -> (Result<String, SecretError>, Outcome, String) {
        self.calls = self.calls.saturating_add(1);
        let Ok(name) = SecretName::new(name) else {
            return (
                Err(SecretError::InvalidName),
                Outcome::InvalidName,
                UNRECORDED.to_owned(),
            );
        };
        let resolved = self.resolution.get(&name);
        // A requested name that resolves to nothing is guest-chosen text: it could carry a
        // secret (encoded any way), so it is neither recorded nor logged.
        let recorded = match resolved {
            Some(r) => r.secret_ref(),
            None => UNRECORDED.to_owned(),
        };
        if self.calls > self.budget {
            return (
                Err(SecretError::AccessDenied),
                Outcome::AccessDenied,
                recorded,
            );
        }
        let Some(resolved) = resolved else {
            return (Err(SecretError::NotFound), Outcome::NotFound, recorded);
        };
        if self.allowed.as_ref().is_some_and(|a| !a.contains(&name)) {
            return (
                Err(SecretError::AccessDenied),
                Outcome::AccessDenied,
                recorded,
            );
        }
        match &resolved.delivery {
            // The one place a plaintext leaves the host through this door.
            Delivery::Value(v) => (
                Ok(v.expose_secret().to_owned()),
                Outcome::Delivered,
                recorded,
            ),
            Delivery::Unavailable(_) => (
                Err(SecretError::Unavailable),
                Outcome::Unavailable,
                recorded,
            ),
        }
    }

    /// Number of `get-secret` calls so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }
}

impl ComponentState {
    /// Answers one `get-secret` call; `None` is a name longer than the naming rule allows,
    /// refused before it was copied out of guest memory.
    pub(crate) fn get_secret(&mut self, name: Option<String>) -> Result<String, SecretError> {
        let (result, outcome, recorded) = self.secrets.lookup(name.as_deref().unwrap_or(""));
        tracing::debug!(secret = %recorded, %outcome, "get-secret");
        result
    }
}

/// Caps the linear memory of one execution (all memories together) and remembers whether the
/// cap was hit, so that the trap can be reported as a memory-limit error.
pub(crate) struct Limiter {
    max_memory: usize,
    used: usize,
    pub(crate) hit: bool,
}

/// Bytes of host memory one table element is counted as (a pointer and its metadata).
const TABLE_ELEMENT_BYTES: usize = 16;

impl Limiter {
    pub(crate) fn new(max_memory: usize) -> Self {
        Self {
            max_memory,
            used: 0,
            hit: false,
        }
    }
}

/// Most table elements one table may have (each costs a pointer of host memory).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = self.used.saturating_add(desired.saturating_sub(current));
        if grown > self.max_memory {
            self.hit = true;
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        self.used = grown;
        Ok(true)
    }

    /// Tables count against the same budget as memories: a guest cannot trade memory for
    /// huge tables.
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        let bytes = desired
            .saturating_sub(current)
            .saturating_mul(TABLE_ELEMENT_BYTES);
        let grown = self.used.saturating_add(bytes);
        if grown > self.max_memory {
            self.hit = true;
            return Err(wasmtime::Error::msg("memory limit exceeded (tables)"));
        }
        self.used = grown;
        Ok(true)
    }
}
