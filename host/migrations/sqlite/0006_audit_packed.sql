-- The audit trail, one row per execution (issue 13): an execution's requests are packed into
-- `audit_execution.records` as JSON, `[[secret_ref, door, outcome, count], ...]`, written when
-- the execution is entered (the environment door's deliveries, before its guest starts) and
-- replaced, complete, when it ends. One row per execution instead of one per request.
--
-- Rows of the former table stay as they were, renamed `audit_record` (`records` is NULL for
-- the executions they belong to). `audit` is now a view of the whole trail, one row per
-- request in the former table's columns (`id` NULL for packed records), so that a query
-- written against the former table still reads everything.
ALTER TABLE audit RENAME TO audit_record;
ALTER TABLE audit_execution ADD COLUMN records TEXT;

-- `audit list --action`, `--since`, newest first.
CREATE INDEX audit_execution_by_action ON audit_execution (action_ref, started);
CREATE INDEX audit_execution_by_time ON audit_execution (started);

CREATE VIEW audit (id, at, execution_id, action_ref, secret_ref, door, outcome, count) AS
    SELECT id, at, execution_id, action_ref, secret_ref, door, outcome, count FROM audit_record
    UNION ALL
    SELECT NULL, e.started, e.execution_id, e.action_ref,
           r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3
      -- A row whose packed records are not valid JSON (edited by hand) adds no requests
      -- instead of failing the whole view (`audit list` skips and names it).
      FROM audit_execution e,
           json_each(CASE WHEN json_valid(e.records) THEN e.records ELSE '[]' END) r
     WHERE e.records IS NOT NULL;
