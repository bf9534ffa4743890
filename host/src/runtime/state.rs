//! Per-execution store state: WASI context, resource limiter and the `get-secret` door.

use std::collections::BTreeSet;

use secrecy::SecretString;
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
    /// Returns the answer (the value stays a [`SecretString`]: it is exposed once, where the
    /// linker glue hands it to wasmtime to lower into guest memory), its outcome and what was
    /// recorded (the resolved ref, or [`UNRECORDED`]).
    pub(crate) fn lookup(
        &mut self,
        name: &str,
    ) -> (Result<SecretString, SecretError>, Outcome, String) {
        let (result, outcome, recorded) = self.answer(name);
        self.log.note(&recorded, Door::GetSecret, outcome);
        (result, outcome, recorded)
    }

    /// The answer, its outcome, and what to record: the resolved ref, or [`UNRECORDED`] when
    /// the name resolves to nothing, so that a guest cannot write a secret into the audit
    /// table or the host log.
    fn answer(&mut self, name: &str) -> (Result<SecretString, SecretError>, Outcome, String) {
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
            Delivery::Value(v) => (Ok(v.clone()), Outcome::Delivered, recorded),
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
    /// refused before it was copied out of guest memory. The value is still a
    /// [`SecretString`]: the linker glue exposes it.
    pub(crate) fn get_secret(&mut self, name: Option<String>) -> Result<SecretString, SecretError> {
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

#[cfg(test)]
mod tests {
    //! Each decision of the `get-secret` door, and what it records.
    #![allow(clippy::unwrap_used)]
    use secrecy::ExposeSecret;

    use super::*;
    use crate::names::{Owner, PackRef};
    use crate::store::{SecretRow, StoredValue};

    fn row(owner: Owner, name: &str, value: &str, encrypted: bool) -> SecretRow {
        let value = SecretString::from(value);
        SecretRow {
            owner,
            name: SecretName::new(name).unwrap(),
            value: if encrypted {
                StoredValue::encrypted(value, None)
            } else {
                StoredValue::Plain(value)
            },
            created: String::new(),
            updated: String::new(),
            corrupt: None,
        }
    }

    /// A door over system `token`, pack `api_key` and an encrypted `sealed` with no key.
    fn door(allowed: Option<&[&str]>, budget: u64) -> (SecretDoor, Log) {
        let pack = Owner::Pack(PackRef::new("mypack").unwrap());
        let rows = vec![
            row(Owner::System, "token", "system-token-value", false),
            row(pack, "api_key", "pack-api-key-value", false),
            row(Owner::System, "sealed", "AAAA:AAAA", true),
        ];
        let resolution = Resolution::resolve(rows, None, None).unwrap();
        let allowed = allowed.map(|names| {
            names
                .iter()
                .map(|n| SecretName::new(n).unwrap())
                .collect::<BTreeSet<_>>()
        });
        let log = Log::default();
        (
            SecretDoor::new(resolution, allowed, budget, log.clone()),
            log,
        )
    }

    fn recorded(log: &Log) -> Vec<(String, Outcome, u64)> {
        log.records("t", "e", "mypack.a")
            .into_iter()
            .map(|r| {
                assert_eq!(r.door, Door::GetSecret);
                (r.secret_ref, r.outcome, r.count)
            })
            .collect()
    }

    #[test]
    fn a_visible_name_is_delivered_as_a_secret_string_and_recorded_by_ref() {
        let (mut door, log) = door(None, 10);
        let (answer, outcome, what) = door.lookup("api_key");
        assert_eq!(answer.unwrap().expose_secret(), "pack-api-key-value");
        assert_eq!(
            (outcome, what.as_str()),
            (Outcome::Delivered, "mypack.api_key")
        );
        assert_eq!(
            recorded(&log),
            [("mypack.api_key".to_owned(), Outcome::Delivered, 1)]
        );
    }

    #[test]
    fn unknown_and_invalid_names_are_not_recorded_as_given() {
        let (mut door, log) = door(None, 10);
        assert!(matches!(door.lookup("nope").0, Err(SecretError::NotFound)));
        assert!(matches!(
            door.lookup("not valid!").0,
            Err(SecretError::InvalidName)
        ));
        for (what, _, _) in recorded(&log) {
            assert_eq!(what, UNRECORDED, "guest-chosen text must not be recorded");
        }
    }

    #[test]
    fn the_allow_list_denies_other_visible_names() {
        let (mut door, _) = door(Some(&["token"]), 10);
        assert!(door.lookup("token").0.is_ok());
        assert!(matches!(
            door.lookup("api_key").0,
            Err(SecretError::AccessDenied)
        ));
        // Not visible at all stays not-found: the allow-list is no enumeration oracle.
        assert!(matches!(door.lookup("nope").0, Err(SecretError::NotFound)));
    }

    #[test]
    fn calls_past_the_budget_are_denied_even_for_delivered_names() {
        let (mut door, log) = door(None, 2);
        assert!(door.lookup("token").0.is_ok());
        assert!(door.lookup("token").0.is_ok());
        assert!(matches!(
            door.lookup("token").0,
            Err(SecretError::AccessDenied)
        ));
        assert_eq!(door.calls(), 3);
        assert!(recorded(&log).contains(&("token".to_owned(), Outcome::AccessDenied, 1)));
    }

    #[test]
    fn an_undecryptable_winner_is_unavailable() {
        let (mut door, _) = door(None, 10);
        let (answer, outcome, what) = door.lookup("sealed");
        assert!(matches!(answer, Err(SecretError::Unavailable)));
        assert_eq!((outcome, what.as_str()), (Outcome::Unavailable, "sealed"));
    }
}
