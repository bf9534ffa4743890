-- A third door in the audit trail: `wasi-config` (the standard `wasi:config/store` import).
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt with its rows and ids
-- (same columns, same order), and its indexes are made again.
CREATE TABLE audit_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT    NOT NULL,  -- RFC 3339 UTC, millisecond precision
    execution_id TEXT    NOT NULL,
    action_ref   TEXT    NOT NULL,
    -- Ref of the resolved secret, or a placeholder when none was resolved.
    secret_ref   TEXT    NOT NULL,
    door         TEXT    NOT NULL CHECK (door IN ('env', 'get-secret', 'wasi-config')),
    outcome      TEXT    NOT NULL
        CHECK (outcome IN ('delivered', 'not-found', 'access-denied', 'invalid-name', 'unavailable')),
    -- Identical requests of one execution are one row with a count.
    count        INTEGER NOT NULL DEFAULT 1
);

INSERT INTO audit_new (id, at, execution_id, action_ref, secret_ref, door, outcome, count)
    SELECT id, at, execution_id, action_ref, secret_ref, door, outcome, count FROM audit;
DROP TABLE audit;
ALTER TABLE audit_new RENAME TO audit;

CREATE INDEX audit_by_action ON audit (action_ref, at);
CREATE INDEX audit_by_time ON audit (at);
CREATE INDEX audit_by_execution ON audit (execution_id);
