//! The store's statements, composed once per dialect from the few fragments where SQLite and
//! PostgreSQL differ. Placeholders are `$N` for both (sqlx binds SQLite's `$N` by number).

use super::Dialect;

/// The statements of a dialect, composed once when the store opens.
pub(super) struct Statements {
    pub(super) upsert: String,
    pub(super) stored: String,
    pub(super) get: String,
    pub(super) list_all: String,
    pub(super) list_owner: String,
    pub(super) visible: String,
    pub(super) delete: String,
    pub(super) rotate: String,
    pub(super) floor_get: String,
    pub(super) floor_set: String,
}

impl Statements {
    pub(super) fn new<D: Dialect>() -> Self {
        let now = D::NOW;
        let columns = format!(
            "owner_type, owner, name, encrypted, encryption_key_hash, value, {} AS created, \
             {} AS updated",
            D::time_text("created"),
            D::time_text("updated")
        );
        let row = "owner_type = $1 AND owner = $2 AND name = $3";
        let order = "ORDER BY CASE owner_type WHEN 'system' THEN 0 WHEN 'pack' THEN 1 ELSE 2 END, \
                     owner, name";
        Self {
            // One statement, atomic under concurrent writers: the row either is inserted or,
            // when the stored row is one this write may replace, its value columns are
            // replaced; `created` survives an update. No row comes back when the replacement
            // is refused (on PostgreSQL the conflicting row stays locked until the transaction
            // ends, so the check cannot race another writer).
            upsert: format!(
                "INSERT INTO secrets (ref, owner_type, owner, owner_pack, name, encrypted, \
                     encryption_key_hash, value, created, updated) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}, {now}) \
                 ON CONFLICT (owner_type, owner, name) DO UPDATE SET \
                     encrypted = excluded.encrypted, \
                     encryption_key_hash = excluded.encryption_key_hash, \
                     value = excluded.value, updated = excluded.updated \
                 WHERE $10 OR NOT secrets.encrypted \
                    OR lower(secrets.encryption_key_hash) = lower(excluded.encryption_key_hash) \
                    OR lower(secrets.encryption_key_hash) = $9 \
                 RETURNING {} AS fresh",
                D::INSERTED
            ),
            stored: format!("SELECT encryption_key_hash, value FROM secrets WHERE {row}"),
            get: format!("SELECT {columns} FROM secrets WHERE {row}"),
            list_all: format!("SELECT {columns} FROM secrets {order}"),
            list_owner: format!(
                "SELECT {columns} FROM secrets WHERE owner_type = $1 AND owner = $2 {order}"
            ),
            visible: format!(
                "SELECT {columns} FROM secrets WHERE owner_type = 'system' \
                   OR (owner_type = 'pack' AND owner = $1) \
                   OR (owner_type = 'action' AND owner = $2)"
            ),
            delete: format!("DELETE FROM secrets WHERE {row}"),
            rotate: format!(
                "UPDATE secrets SET value = $4, encryption_key_hash = $5, updated = {now} \
                 WHERE {row} AND value = $6"
            ),
            floor_get: "SELECT value FROM store_meta WHERE name = $1".to_owned(),
            floor_set: "INSERT INTO store_meta (name, value) VALUES ($1, $2) \
                        ON CONFLICT (name) DO UPDATE SET value = excluded.value"
                .to_owned(),
        }
    }
}
