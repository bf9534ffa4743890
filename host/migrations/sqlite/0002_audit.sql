-- Audit trail: which secrets reached which execution, through which door, with what outcome.
-- Never a value. Written once per execution, at its end (one transaction).
CREATE TABLE audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT    NOT NULL,  -- RFC 3339 UTC, millisecond precision
    execution_id TEXT    NOT NULL,
    action_ref   TEXT    NOT NULL,
    -- Ref of the resolved secret, or the requested name when none was resolved.
    secret_ref   TEXT    NOT NULL,
    door         TEXT    NOT NULL CHECK (door IN ('env', 'get-secret')),
    outcome      TEXT    NOT NULL
        CHECK (outcome IN ('delivered', 'not-found', 'access-denied', 'invalid-name', 'unavailable')),
    -- Identical requests of one execution are one row with a count.
    count        INTEGER NOT NULL DEFAULT 1
);

CREATE INDEX audit_by_action ON audit (action_ref, at);
CREATE INDEX audit_by_time ON audit (at);
