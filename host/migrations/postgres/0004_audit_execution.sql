-- One row per execution in the audit trail (bad-inputs N31): entered *before* its guest starts
-- when it receives secrets through the environment (state `started`, `ended` NULL), updated
-- when its run ends (`ended`, or `not-started` when no guest code ran). A host killed mid-run
-- leaves `started` with no end. Executions without environment deliveries are entered at their
-- end. Records (`audit`) join on `execution_id`.
CREATE TABLE audit_execution (
    execution_id TEXT        PRIMARY KEY,
    action_ref   TEXT        NOT NULL,
    started      TIMESTAMPTZ NOT NULL,
    ended        TIMESTAMPTZ,
    state        TEXT        NOT NULL CHECK (state IN ('started', 'ended', 'not-started'))
);

CREATE INDEX audit_by_execution ON audit (execution_id);
