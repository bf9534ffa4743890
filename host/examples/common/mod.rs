//! Set-up shared by the examples `soak` and `executions`: a store holding the three secrets
//! `bench-action` (and `deploy-component`) ask for, encrypted in the bound format, and a pooled
//! runtime with the guest loaded. A directory without `main.rs`: cargo does not take it for an
//! example of its own.

use std::sync::Arc;

use attune_wasm::runtime::{Guest, Pooling, Runtime, RuntimeConfig};
use attune_wasm::secrets::crypto::EncryptionKey;
use attune_wasm::secrets::names::{ActionRef, Owner, PackRef, SecretName};
use attune_wasm::store::{KeyHash, NewSecret, OpenMode, Store, StoreOptions, StoredValue};
use secrecy::SecretString;

/// What [`setup`] made.
pub struct Setup {
    pub store: Store,
    pub key: EncryptionKey,
    /// `mypack.deploy`, the action the secrets are for.
    pub action: ActionRef,
    pub runtime: Arc<Runtime>,
    pub guest: Guest,
}

/// Opens the store of `options` and writes, under `password`, `region` (system), `api_key`
/// (pack `mypack`) and `db_password` (action `mypack.deploy`) with `values` in that order;
/// makes a runtime pooled for `executions` at once and loads the guest at `guest_path` as
/// `guest_name`.
pub async fn setup(
    options: &StoreOptions,
    password: &str,
    values: [&str; 3],
    executions: u32,
    guest_path: &str,
    guest_name: &str,
) -> Setup {
    let store = Store::open_with(options, OpenMode::CreateIfMissing)
        .await
        .unwrap();
    let key = EncryptionKey::from_password(&SecretString::from(password)).unwrap();
    let secret = |owner: Owner, name: &str, value: &str| {
        let name = SecretName::new(name).unwrap();
        let value = key.encrypt(
            &SecretString::from(value),
            &attune_wasm::store::binding(&owner, &name),
        );
        NewSecret {
            owner,
            name,
            value: StoredValue::encrypted(value, Some(KeyHash::of(&key))),
        }
    };
    let action = ActionRef::new("mypack.deploy").unwrap();
    let [region, api_key, db_password] = values;
    store
        .put_many(&[
            secret(Owner::System, "region", region),
            secret(
                Owner::Pack(PackRef::new("mypack").unwrap()),
                "api_key",
                api_key,
            ),
            secret(Owner::Action(action.clone()), "db_password", db_password),
        ])
        .await
        .unwrap();
    let mut pooling = Pooling::default();
    pooling.executions = executions;
    let mut config = RuntimeConfig::default();
    config.pooling = Some(pooling);
    let runtime = Arc::new(Runtime::new(config).unwrap());
    let guest = runtime
        .load(guest_name, &std::fs::read(guest_path).unwrap())
        .unwrap();
    Setup {
        store,
        key,
        action,
        runtime,
        guest,
    }
}
