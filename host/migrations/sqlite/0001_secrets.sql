-- Secrets, one row per (owner type, owner, name); modelled on Attune's `attune.key` table
-- (seed "Hierarchical Secret Ownership").
CREATE TABLE secrets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Attune-style ref: `name`, `pack.name` or `pack.action.name`.
    ref         TEXT    NOT NULL,
    owner_type  TEXT    NOT NULL CHECK (owner_type IN ('system', 'pack', 'action')),
    -- '' for system, the pack ref for pack, the action ref `pack.action` for action.
    owner       TEXT    NOT NULL,
    -- The pack of a pack- or action-owned secret ('' for system), for one-query resolution.
    owner_pack  TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    encrypted   INTEGER NOT NULL CHECK (encrypted IN (0, 1)),
    -- Lowercase hex SHA-256 of the derived key (NULL for plain values).
    encryption_key_hash TEXT,
    -- `base64(nonce):base64(ciphertext||tag)` when encrypted, the value itself otherwise.
    value       TEXT    NOT NULL,
    created     TEXT    NOT NULL,
    updated     TEXT    NOT NULL,
    UNIQUE (owner_type, owner, name)
);

CREATE INDEX secrets_by_pack ON secrets (owner_pack);
