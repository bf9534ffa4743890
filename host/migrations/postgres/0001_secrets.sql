-- Secrets, one row per (owner type, owner, name); modelled on Attune's `attune.key` table
-- (seed "Hierarchical Secret Ownership"). Created in the schema on the connection's
-- search_path (database.schema, default `attune`).
CREATE TABLE secrets (
    id          BIGSERIAL PRIMARY KEY,
    -- Attune-style ref: `name`, `pack.name` or `pack.action.name`.
    ref         TEXT        NOT NULL,
    owner_type  TEXT        NOT NULL CHECK (owner_type IN ('system', 'pack', 'action')),
    -- '' for system, the pack ref for pack, the action ref `pack.action` for action.
    owner       TEXT        NOT NULL,
    -- The pack of a pack- or action-owned secret ('' for system), for one-query resolution.
    owner_pack  TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    encrypted   BOOLEAN     NOT NULL,
    -- Lowercase hex SHA-256 of the derived key (NULL for plain values).
    encryption_key_hash TEXT,
    -- `base64(nonce):base64(ciphertext||tag)` when encrypted, the value itself otherwise.
    value       TEXT        NOT NULL,
    created     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (owner_type, owner, name)
);

CREATE INDEX secrets_by_pack ON secrets (owner_pack);
