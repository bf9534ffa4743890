-- A third door in the audit trail: `wasi-config` (the standard `wasi:config/store` import).
ALTER TABLE audit DROP CONSTRAINT audit_door_check;
ALTER TABLE audit ADD CONSTRAINT audit_door_check
    CHECK (door IN ('env', 'get-secret', 'wasi-config'));
