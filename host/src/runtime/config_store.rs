//! The third door: the standard `wasi:config/store` interface (`get`, `get-all`; the
//! `wasi:config@0.2.0-rc.1` that wasmtime 48 serves with `wasmtime run -S config`, WIT in
//! `wit/deps/config`), answered by the same [`SecretDoor`] as `get-secret`.
//!
//! A component written against the WASI configuration proposal runs unchanged with Attune's
//! secrets. Every request goes through the door's decisions (name, budget, visibility,
//! allow-list, delivery) and is recorded with the door `wasi-config`; only the answer's shape
//! differs, mapped in one function ([`get_answer`]):
//!
//! | `get-secret` says | `get(key)` answers |
//! |---|---|
//! | the value | `ok(some(value))` |
//! | `not-found`, `invalid-name` | `ok(none)`: no such key, as any `wasi:config` host says |
//! | `access-denied` (allow-list, budget) | `err(upstream("access-denied"))` |
//! | `unavailable` (not decryptable) | `err(upstream("unavailable"))` |
//!
//! So `get` tells a guest no more than `get-secret` does (a name it may not read is no more
//! visible here than there), and no error carries a value or a reason from the host.
//!
//! `get-all` returns every secret the action may see, by stored name, each one request
//! ([`SecretDoor::request_all`]), or `err(upstream("access-denied"))` when the host refuses
//! it ([`SecretDoor::with_config_get_all`]) or the budget cannot cover it.
//!
//! wasmtime's own `wasmtime-wasi-config` crate serves this interface from a plain
//! `HashMap<String, String>` given before the run, with private bindings: it would keep
//! plaintexts outside `secrecy` and could not decide, count or record each request. This door
//! is written by hand over the same WIT, like `get-secret` (the key is read as a [`WasmStr`]
//! so that an oversized one is refused before it is copied into the host).

use secrecy::{ExposeSecret, SecretString};
use wasmtime::component::{Linker, WasmStr};
use wasmtime::StoreContextMut;

pub use super::bindings::wasi::config::store::Error as ConfigError;
use super::secrets::{AllRefused, SecretDoor, SecretError};
use crate::secrets::names::MAX_NAME_BYTES;
use crate::store::audit::Door;

/// The WIT interface of the `wasi:config/store` door (`wit/deps/config/store.wit`, the version
/// wasmtime 48 ships in `wasmtime-wasi-config`).
pub const CONFIG_INTERFACE: &str = "wasi:config/store@0.2.0-rc.1";

/// The `upstream` error text for a key the execution may not read (allow-list, call budget,
/// or a `get-all` the host refuses).
pub const CONFIG_ACCESS_DENIED: &str = "access-denied";

/// The `upstream` error text for a secret the host could not decrypt (the reason is a warning
/// on the host, never sent to the guest).
pub const CONFIG_UNAVAILABLE: &str = "unavailable";

/// The one mapping from the door's answer to `get`'s (table in the module docs).
fn get_answer(
    answer: Result<SecretString, SecretError>,
) -> Result<Option<SecretString>, ConfigError> {
    match answer {
        Ok(value) => Ok(Some(value)),
        Err(SecretError::NotFound | SecretError::InvalidName) => Ok(None),
        Err(SecretError::AccessDenied) => Err(ConfigError::Upstream(CONFIG_ACCESS_DENIED.into())),
        Err(SecretError::Unavailable) => Err(ConfigError::Upstream(CONFIG_UNAVAILABLE.into())),
    }
}

/// Answers one `get` (`None`: a key longer than any secret name) and logs it at debug level,
/// by ref and outcome only.
fn get(door: &mut SecretDoor, key: Option<&str>) -> Result<Option<SecretString>, ConfigError> {
    let (answer, outcome, recorded) = door.request(key, Door::WasiConfig);
    tracing::debug!(secret = %recorded, %outcome, "wasi:config get");
    get_answer(answer)
}

/// Answers one `get-all` and logs it at debug level, by count only.
fn get_all(door: &mut SecretDoor) -> Result<Vec<(String, SecretString)>, ConfigError> {
    match door.request_all(Door::WasiConfig) {
        Ok(all) => {
            tracing::debug!(delivered = all.len(), "wasi:config get-all");
            Ok(all)
        }
        Err(refused) => {
            let why = match refused {
                AllRefused::Disabled => "refused by the host",
                AllRefused::OverBudget => "over the call budget",
            };
            tracing::debug!(why, "wasi:config get-all");
            Err(ConfigError::Upstream(CONFIG_ACCESS_DENIED.into()))
        }
    }
}

/// Adds `wasi:config/store` to `linker`: `get` and `get-all` answered by the [`SecretDoor`]
/// that `door` finds in the store's data.
///
/// # Errors
/// wasmtime's, when the interface is already defined in `linker`.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    door: fn(&mut T) -> &mut SecretDoor,
) -> wasmtime::Result<()> {
    let mut instance = linker.instance(CONFIG_INTERFACE)?;
    instance.func_wrap(
        "get",
        move |mut store: StoreContextMut<'_, T>, (key,): (WasmStr,)| {
            let key = {
                let text = key.to_str(&store)?;
                (text.len() <= MAX_NAME_BYTES).then(|| text.into_owned())
            };
            let answer = get(door(store.data_mut()), key.as_deref());
            // The plaintext leaves the host here: copied for wasmtime to lower into guest
            // memory (as get-secret's; docs/secrets-management.md, "Limits").
            Ok((answer.map(|v| v.map(|v| v.expose_secret().to_owned())),))
        },
    )?;
    instance.func_wrap(
        "get-all",
        move |mut store: StoreContextMut<'_, T>, (): ()| {
            let answer = get_all(door(store.data_mut()));
            // As for `get`: each plaintext is copied once, to be lowered into guest memory.
            let answer = answer.map(|all| {
                all.into_iter()
                    .map(|(name, v)| (name, v.expose_secret().to_owned()))
                    .collect::<Vec<_>>()
            });
            Ok((answer,))
        },
    )
}

#[cfg(test)]
mod tests {
    //! The `wasi:config/store` door: the same decisions as `get-secret`, its own answers and
    //! its own door in the audit records.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::secrets::fixture::door;
    use crate::runtime::GetAll;
    use crate::store::audit::{Log, Outcome, GET_ALL, UNRECORDED};

    /// Every record of `log`: (ref, door, outcome, count).
    fn records(log: &Log) -> Vec<(String, Door, Outcome, u64)> {
        log.requests()
            .into_iter()
            .map(|r| (r.secret_ref, r.door, r.outcome, r.count))
            .collect()
    }

    fn value(answer: Result<Option<SecretString>, ConfigError>) -> Option<String> {
        answer.unwrap().map(|v| v.expose_secret().to_owned())
    }

    fn upstream(answer: Result<Option<SecretString>, ConfigError>) -> String {
        match answer {
            Err(ConfigError::Upstream(text)) => text,
            Err(other) => panic!("not upstream: {other:?}"),
            Ok(v) => panic!("answered {:?}", v.is_some()),
        }
    }

    #[test]
    fn get_delivers_a_visible_name_and_records_the_door() {
        let (mut door, log) = door(None, 10);
        assert_eq!(
            value(get(&mut door, Some("api_key"))).as_deref(),
            Some("pack-api-key-value")
        );
        assert_eq!(
            records(&log),
            [(
                "mypack.api_key".to_owned(),
                Door::WasiConfig,
                Outcome::Delivered,
                1
            )]
        );
    }

    #[test]
    fn unknown_invalid_and_oversized_keys_are_none_and_not_recorded_as_given() {
        let (mut door, log) = door(None, 10);
        assert_eq!(value(get(&mut door, Some("nope"))), None);
        assert_eq!(value(get(&mut door, Some("not valid!"))), None);
        assert_eq!(value(get(&mut door, None)), None);
        assert_eq!(door.calls(), 3, "each counts against the budget");
        assert_eq!(
            records(&log),
            [
                (
                    UNRECORDED.to_owned(),
                    Door::WasiConfig,
                    Outcome::NotFound,
                    1
                ),
                (
                    UNRECORDED.to_owned(),
                    Door::WasiConfig,
                    Outcome::InvalidName,
                    2
                ),
            ]
        );
    }

    #[test]
    fn the_allow_list_and_the_budget_are_access_denied_and_absent_stays_none() {
        let (mut door, log) = door(Some(&["token"]), 3);
        assert!(value(get(&mut door, Some("token"))).is_some());
        assert_eq!(upstream(get(&mut door, Some("api_key"))), "access-denied");
        // Not visible at all stays none: the allow-list is no enumeration oracle.
        assert_eq!(value(get(&mut door, Some("nope"))), None);
        // The budget (3) is spent: even an allowed name is denied.
        assert_eq!(upstream(get(&mut door, Some("token"))), "access-denied");
        assert!(records(&log).contains(&(
            "token".to_owned(),
            Door::WasiConfig,
            Outcome::AccessDenied,
            1
        )));
    }

    #[test]
    fn an_undecryptable_secret_is_an_error_naming_no_value() {
        let (mut door, log) = door(None, 10);
        assert_eq!(upstream(get(&mut door, Some("sealed"))), "unavailable");
        assert_eq!(
            records(&log),
            [(
                "sealed".to_owned(),
                Door::WasiConfig,
                Outcome::Unavailable,
                1
            )]
        );
    }

    #[test]
    fn both_doors_share_one_budget() {
        let (mut door, _) = door(None, 2);
        assert!(door.request(Some("token"), Door::GetSecret).0.is_ok());
        assert!(value(get(&mut door, Some("token"))).is_some());
        assert_eq!(upstream(get(&mut door, Some("token"))), "access-denied");
        assert!(matches!(
            door.request(Some("token"), Door::GetSecret).0,
            Err(SecretError::AccessDenied)
        ));
    }

    #[test]
    fn get_all_returns_what_the_action_may_see_each_recorded() {
        let (mut door, log) = door(None, 10);
        let all = get_all(&mut door).unwrap();
        let shown: Vec<(&str, &str)> = all
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_secret()))
            .collect();
        // `sealed` cannot be decrypted: left out (as from the environment), recorded.
        assert_eq!(
            shown,
            [
                ("api_key", "pack-api-key-value"),
                ("token", "system-token-value")
            ]
        );
        assert_eq!(door.calls(), 3, "one request per visible secret");
        let mut got = records(&log);
        got.sort();
        assert_eq!(
            got,
            [
                (
                    "mypack.api_key".to_owned(),
                    Door::WasiConfig,
                    Outcome::Delivered,
                    1
                ),
                (
                    "sealed".to_owned(),
                    Door::WasiConfig,
                    Outcome::Unavailable,
                    1
                ),
                ("token".to_owned(), Door::WasiConfig, Outcome::Delivered, 1),
            ]
        );
    }

    #[test]
    fn get_all_keeps_to_the_allow_list() {
        let (mut door, log) = door(Some(&["token", "absent"]), 10);
        let all = get_all(&mut door).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "token");
        assert_eq!(records(&log).len(), 1, "nothing recorded for the others");
    }

    #[test]
    fn get_all_over_the_budget_or_refused_delivers_nothing() {
        for (door_, why) in [
            (door(None, 2), "budget of 2 for 3 secrets"),
            (
                (
                    door(None, 10).0.with_config_get_all(GetAll::Refused),
                    Log::default(),
                ),
                "refused",
            ),
        ] {
            let (mut door, _) = door_;
            let Err(ConfigError::Upstream(text)) = get_all(&mut door) else {
                panic!("{why}: delivered")
            };
            assert_eq!(text, "access-denied", "{why}");
            assert_eq!(door.calls(), 1, "{why}: one refused request");
        }
        let (door, log) = door(None, 10);
        let mut door = door.with_config_get_all(GetAll::Refused);
        assert!(get_all(&mut door).is_err());
        assert_eq!(
            records(&log),
            [(
                GET_ALL.to_owned(),
                Door::WasiConfig,
                Outcome::AccessDenied,
                1
            )]
        );
        // `get` is still answered.
        assert!(value(get(&mut door, Some("token"))).is_some());
    }

    #[test]
    fn another_version_of_the_interface_is_still_an_unknown_import_named() {
        use crate::runtime::{Runtime, RuntimeConfig};
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = wat::parse_str(
            r#"(component (import "wasi:config/store@0.3.0" (instance (export "get-all" (func)))))"#,
        )
        .unwrap();
        let Err(err) = rt.compile("c.wasm", &wasm) else {
            panic!("must not link")
        };
        assert!(err.to_string().contains("wasi:config/store@0.3.0"), "{err}");
    }
}
