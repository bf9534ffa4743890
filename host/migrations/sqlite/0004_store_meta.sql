-- Store-wide records, by name. `ciphertext_floor`: a bound (v2) ciphertext under the store's key
-- that `key rotate` writes once every encrypted row is bound; while it is authentic, an unbound
-- (seed or blob) row is refused as a downgrade (docs/secrets-management.md, "Ciphertext formats").
CREATE TABLE store_meta (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
