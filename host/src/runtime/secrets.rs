//! The secrets capability: the host side of `attune:action/secrets` (`wit/action.wit`), the
//! `get-secret` door of component guests, and the one resolver behind it and the
//! `wasi:config/store` door ([`super::config_store`]).
//!
//! One request, through either door, goes through three steps, each in one place:
//!
//! 1. [`SecretDoor::decide`]: the decisions, in this order: the name's rule, the call budget
//!    ([`Limits::secret_calls`](super::Limits::secret_calls)), visibility to the action
//!    ([`Resolution`]), the allow-list (`--allow-secret`), whether the winner could be
//!    decrypted;
//! 2. [`answer`]: the one mapping from that decision to what the guest sees (a
//!    [`SecretError`] variant of the WIT) and to the audit [`Outcome`];
//! 3. [`add_to_linker`]: the linker glue, where the value is exposed once to be lowered into
//!    guest memory (for `wasi:config/store`: [`super::config_store`], which maps the same
//!    answer to that interface's `option` and `error`).
//!
//! What the guest caused or may know (`invalid-name`, `not-found`, `access-denied`) reaches it
//! as a WIT variant; a value the host could not decrypt is `unavailable`, without detail (the
//! reason is a warning on the host). No answer, record or log line carries a value.

use std::collections::BTreeSet;

use secrecy::{ExposeSecret, SecretString};
use wasmtime::component::{Linker, WasmStr};
use wasmtime::StoreContextMut;

pub use super::bindings::attune::action::secrets::SecretError;
use crate::secrets::names::{SecretName, MAX_NAME_BYTES};
use crate::store::audit::{Door, Log, Outcome, GET_ALL, UNRECORDED};
use crate::store::resolve::{Delivery, Resolution};

/// The WIT interface of the `get-secret` door (`wit/action.wit`).
pub const SECRETS_INTERFACE: &str = "attune:action/secrets@0.1.0";

/// The `get-secret` and `wasi:config/store` doors: the execution's resolved secrets, an
/// optional allow-list and one call budget for both doors. Dropping it zeroizes every plaintext
/// it holds. No `Debug`: it holds them.
pub struct SecretDoor {
    resolution: Resolution,
    allowed: Option<BTreeSet<SecretName>>,
    calls: u64,
    budget: u64,
    log: Log,
    /// Whether `wasi:config/store.get-all` is answered ([`SecretDoor::with_config_get_all`]).
    get_all: GetAll,
}

/// Whether components' `wasi:config/store.get-all` is answered (operators choose it with
/// `security.refuse_config_get_all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GetAll {
    /// Answered: every secret the action may see (allow-list and budget applied), each
    /// recorded. The default.
    #[default]
    Answered,
    /// Refused with the error `upstream("access-denied")`: the guest must name each secret it
    /// reads, as with `get-secret`.
    Refused,
}

/// Why a `wasi:config/store.get-all` call was refused as a whole (recorded as
/// [`GET_ALL`], `access-denied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AllRefused {
    /// The host does not answer `get-all` ([`SecretDoor::with_config_get_all`]).
    Disabled,
    /// The budget cannot cover one call per secret the action may see.
    OverBudget,
}

/// Why the door refuses a request (each of its decisions but delivery). [`answer`] turns it
/// into the guest's [`SecretError`] and the audit [`Outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The name breaks the naming rule (an oversized one is refused before it is copied out
    /// of guest memory).
    InvalidName,
    /// More calls than the budget of the execution.
    OverBudget,
    /// No secret of that name is visible to the action.
    NotFound,
    /// Visible, but not on the allow-list.
    NotAllowed,
    /// Visible and allowed, but the host could not decrypt it (no key, wrong key, damaged).
    Unavailable,
}

impl SecretDoor {
    /// Builds the door over `resolution`. `allowed`, when set, is the only names the guest may
    /// read (others visible answer `access-denied`); `budget` caps the number of requests per
    /// execution, both doors together (requests past it answer `access-denied`; a
    /// `wasi:config/store.get-all` costs one request per secret it returns). Every request is
    /// counted in `log`. `get-all` is answered (see [`SecretDoor::with_config_get_all`]).
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
            get_all: GetAll::Answered,
        }
    }

    /// Whether `wasi:config/store.get-all` is answered ([`GetAll::Answered`], the default) or
    /// refused ([`GetAll::Refused`]).
    #[must_use]
    pub fn with_config_get_all(mut self, get_all: GetAll) -> Self {
        self.get_all = get_all;
        self
    }

    /// Number of requests so far, both doors together (`get-secret` calls, `get` calls, and
    /// one per secret a `get-all` returned or one per refused `get-all`).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Looks `name` up as the guest asked for it (`None`: a name longer than the naming rule
    /// allows), and counts the request in the audit log. Returns the answer (the value stays
    /// a [`SecretString`]: it is exposed once, where the linker glue hands it to wasmtime to
    /// lower into guest memory), its outcome and what was recorded (the resolved ref, or
    /// [`UNRECORDED`]).
    pub(super) fn request(
        &mut self,
        name: Option<&str>,
        door: Door,
    ) -> (Result<SecretString, SecretError>, Outcome, String) {
        let (decision, recorded) = self.decide(name);
        let (result, outcome) = answer(decision);
        if outcome == Outcome::Delivered {
            // On record before the guest has the value; if it cannot be, it does not get it.
            match self.log.deliver(&recorded, door) {
                Ok(()) => return (result, outcome, recorded),
                Err(e) => {
                    tracing::warn!(secret = %recorded, "not delivered: {e}");
                    self.log.note(&recorded, door, Outcome::Unavailable);
                    return (
                        Err(SecretError::Unavailable),
                        Outcome::Unavailable,
                        recorded,
                    );
                }
            }
        }
        self.log.note(&recorded, door, outcome);
        (result, outcome, recorded)
    }

    /// Answers one `get-secret` call of the guest (see [`SecretDoor::request`]) and logs it
    /// at debug level, by ref and outcome only.
    fn get(&mut self, name: Option<&str>) -> Result<SecretString, SecretError> {
        let (result, outcome, recorded) = self.request(name, Door::GetSecret);
        tracing::debug!(secret = %recorded, %outcome, "get-secret");
        result
    }

    /// Every secret the action may see (visible, and on the allow-list when there is one),
    /// by stored name, for `door`'s `get-all`: each is one request, decided and recorded as
    /// [`SecretDoor::request`] does, and one the host cannot decrypt is left out (recorded
    /// `unavailable`, as the environment door leaves it out). Refused as a whole, and
    /// recorded once as [`GET_ALL`] `access-denied`, when the host does not answer `get-all`
    /// or the budget cannot cover one request per secret (none is delivered then).
    pub(super) fn request_all(
        &mut self,
        door: Door,
    ) -> Result<Vec<(String, SecretString)>, AllRefused> {
        let names: Vec<SecretName> = self
            .resolution
            .iter()
            .filter(|r| self.allowed.as_ref().is_none_or(|a| a.contains(&r.name)))
            .map(|r| r.name.clone())
            .collect();
        let cost = u64::try_from(names.len()).unwrap_or(u64::MAX);
        let refused = if self.get_all == GetAll::Refused {
            Some(AllRefused::Disabled)
        } else if self.calls.saturating_add(cost.max(1)) > self.budget {
            Some(AllRefused::OverBudget)
        } else {
            None
        };
        if let Some(refused) = refused {
            self.calls = self.calls.saturating_add(1);
            self.log.note(GET_ALL, door, Outcome::AccessDenied);
            return Err(refused);
        }
        if names.is_empty() {
            // An empty answer is a request too: a loop of them is bounded by the budget.
            self.calls = self.calls.saturating_add(1);
        }
        let mut all = Vec::with_capacity(names.len());
        for name in names {
            // Within the budget, visible and allowed: delivered, or unavailable.
            if let (Ok(value), _, _) = self.request(Some(name.as_str()), door) {
                all.push((name.as_str().to_owned(), value));
            }
        }
        Ok(all)
    }

    /// The door's decision for one request, and what to record: the resolved ref, or
    /// [`UNRECORDED`] when the name resolves to nothing, so that a guest cannot write a
    /// secret into the audit table or the host log.
    fn decide(&mut self, name: Option<&str>) -> (Result<SecretString, Refusal>, String) {
        self.calls = self.calls.saturating_add(1);
        let Some(Ok(name)) = name.map(SecretName::new) else {
            return (Err(Refusal::InvalidName), UNRECORDED.to_owned());
        };
        let resolved = self.resolution.get(&name);
        // A requested name that resolves to nothing is guest-chosen text: it could carry a
        // secret (encoded any way), so it is neither recorded nor logged.
        let recorded = match resolved {
            Some(r) => r.secret_ref(),
            None => UNRECORDED.to_owned(),
        };
        if self.calls > self.budget {
            return (Err(Refusal::OverBudget), recorded);
        }
        let Some(resolved) = resolved else {
            return (Err(Refusal::NotFound), recorded);
        };
        if self.allowed.as_ref().is_some_and(|a| !a.contains(&name)) {
            return (Err(Refusal::NotAllowed), recorded);
        }
        match &resolved.delivery {
            Delivery::Value(v) => (Ok(v.clone()), recorded),
            Delivery::Unavailable(_) => (Err(Refusal::Unavailable), recorded),
        }
    }
}

/// The one mapping from a decision of the door to the guest's answer (a [`SecretError`]
/// variant of `wit/action.wit`) and the audit [`Outcome`]. The budget and the allow-list both
/// answer `access-denied`, so the guest cannot tell them apart.
fn answer(decision: Result<SecretString, Refusal>) -> (Result<SecretString, SecretError>, Outcome) {
    let refusal = match decision {
        Ok(value) => return (Ok(value), Outcome::Delivered),
        Err(refusal) => refusal,
    };
    let (error, outcome) = match refusal {
        Refusal::InvalidName => (SecretError::InvalidName, Outcome::InvalidName),
        Refusal::OverBudget | Refusal::NotAllowed => {
            (SecretError::AccessDenied, Outcome::AccessDenied)
        }
        Refusal::NotFound => (SecretError::NotFound, Outcome::NotFound),
        Refusal::Unavailable => (SecretError::Unavailable, Outcome::Unavailable),
    };
    (Err(error), outcome)
}

/// Adds `attune:action/secrets` to `linker`: `get-secret` answered by the [`SecretDoor`]
/// that `door` finds in the store's data (as wasmtime-wasi's `add_to_linker` per capability).
///
/// `get-secret` is wrapped by hand rather than through the bindgen `Host` trait: the name
/// arrives as a [`WasmStr`] (a view of guest memory), so an oversized name is refused before
/// it is copied into the host.
///
/// # Errors
/// wasmtime's, when the interface is already defined in `linker`.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    door: fn(&mut T) -> &mut SecretDoor,
) -> wasmtime::Result<()> {
    linker.instance(SECRETS_INTERFACE)?.func_wrap(
        "get-secret",
        move |mut store: StoreContextMut<'_, T>, (name,): (WasmStr,)| {
            let name = {
                let text = name.to_str(&store)?;
                (text.len() <= MAX_NAME_BYTES).then(|| text.into_owned())
            };
            let answer = door(store.data_mut()).get(name.as_deref());
            // The one place a plaintext leaves the host through this door: copied for
            // wasmtime to lower into guest memory (that copy is freed, not zeroized:
            // docs/secrets-management.md, "Limits").
            Ok((answer.map(|v| v.expose_secret().to_owned()),))
        },
    )
}

#[cfg(test)]
pub(super) mod fixture {
    //! A door over a few secrets, for the tests of both doors.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secrets::names::{Owner, PackRef};
    use crate::store::{SecretRow, StoredValue, Timestamp};

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
            created: Timestamp::now(),
            updated: Timestamp::now(),
        }
    }

    /// A door over system `token`, pack `api_key` and an encrypted `sealed` with no key.
    pub(in crate::runtime) fn door(allowed: Option<&[&str]>, budget: u64) -> (SecretDoor, Log) {
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
}

#[cfg(test)]
mod tests {
    //! Each decision of the `get-secret` door, and what it records.
    #![allow(clippy::unwrap_used)]
    use super::fixture::door;
    use super::*;

    impl SecretDoor {
        /// A `get-secret` request for `name` as the guest asked for it.
        fn lookup(&mut self, name: &str) -> (Result<SecretString, SecretError>, Outcome, String) {
            self.request(Some(name), Door::GetSecret)
        }
    }

    /// The `get-secret` records of `log`, in order: (ref, outcome, count).
    fn recorded(log: &Log) -> Vec<(String, Outcome, u64)> {
        log.requests()
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
    fn an_oversized_name_is_invalid_counted_and_not_recorded() {
        let (mut door, log) = door(None, 10);
        let (answer, outcome, what) = door.request(None, Door::GetSecret);
        assert!(matches!(answer, Err(SecretError::InvalidName)));
        assert_eq!((outcome, what.as_str()), (Outcome::InvalidName, UNRECORDED));
        assert_eq!(door.calls(), 1, "it counts against the budget");
        assert_eq!(
            recorded(&log),
            [(UNRECORDED.to_owned(), Outcome::InvalidName, 1)]
        );
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
    fn past_the_budget_every_name_is_denied_whatever_else_it_would_be() {
        let (mut door, _) = door(Some(&["token"]), 0);
        // The budget is decided before visibility and the allow-list (but after the name's
        // rule): not-found, not allowed and unavailable all answer access-denied.
        for name in ["nope", "api_key", "sealed", "token"] {
            let (_, outcome, _) = door.lookup(name);
            assert_eq!(outcome, Outcome::AccessDenied, "{name}");
        }
        assert_eq!(door.lookup("not valid!").1, Outcome::InvalidName);
    }

    #[test]
    fn an_undecryptable_winner_is_unavailable() {
        let (mut door, _) = door(None, 10);
        let (answer, outcome, what) = door.lookup("sealed");
        assert!(matches!(answer, Err(SecretError::Unavailable)));
        assert_eq!((outcome, what.as_str()), (Outcome::Unavailable, "sealed"));
    }

    #[test]
    fn each_refusal_maps_to_one_wit_error_and_one_outcome() {
        let cases = [
            (
                Refusal::InvalidName,
                SecretError::InvalidName,
                Outcome::InvalidName,
            ),
            (
                Refusal::OverBudget,
                SecretError::AccessDenied,
                Outcome::AccessDenied,
            ),
            (Refusal::NotFound, SecretError::NotFound, Outcome::NotFound),
            (
                Refusal::NotAllowed,
                SecretError::AccessDenied,
                Outcome::AccessDenied,
            ),
            (
                Refusal::Unavailable,
                SecretError::Unavailable,
                Outcome::Unavailable,
            ),
        ];
        for (refusal, error, outcome) in cases {
            let (reply, got) = answer(Err(refusal));
            let Err(got_error) = reply else {
                panic!("{refusal:?} delivered")
            };
            assert_eq!(
                (std::mem::discriminant(&got_error), got),
                (std::mem::discriminant(&error), outcome),
                "{refusal:?}"
            );
        }
        let (delivered, outcome) = answer(Ok(SecretString::from("v")));
        assert_eq!(delivered.unwrap().expose_secret(), "v");
        assert_eq!(outcome, Outcome::Delivered);
    }
}
