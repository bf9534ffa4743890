-- The audit trail, one row per execution (issue 13): an execution's requests are packed into
-- `audit_execution.records` as JSON text, `[[secret_ref, door, outcome, count], ...]`, written
-- when the execution is entered (the environment door's deliveries, before its guest starts)
-- and replaced, complete, when it ends. One row per execution instead of one per request.
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

-- The packed records of one execution as a JSON array of `[text, text, text, bigint]`, or an
-- empty array when they are not (edited by hand): one bad row adds no requests to the view
-- instead of failing it as a whole (`audit list` skips and names it).
CREATE FUNCTION audit_packed_records(records text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    parsed jsonb;
    item jsonb;
BEGIN
    parsed := records::jsonb;
    IF jsonb_typeof(parsed) IS DISTINCT FROM 'array' THEN
        RETURN '[]'::jsonb;
    END IF;
    FOR item IN SELECT value FROM jsonb_array_elements(parsed) LOOP
        IF jsonb_typeof(item) IS DISTINCT FROM 'array'
           OR jsonb_typeof(item -> 3) IS DISTINCT FROM 'number' THEN
            RETURN '[]'::jsonb;
        END IF;
        PERFORM (item ->> 3)::bigint;
    END LOOP;
    RETURN parsed;
EXCEPTION WHEN others THEN
    RETURN '[]'::jsonb;
END
$$;

CREATE VIEW audit AS
    SELECT id, at, execution_id, action_ref, secret_ref, door, outcome, count FROM audit_record
    UNION ALL
    SELECT NULL::bigint, e.started, e.execution_id, e.action_ref,
           r.value ->> 0, r.value ->> 1, r.value ->> 2, (r.value ->> 3)::bigint
      FROM audit_execution e
           CROSS JOIN LATERAL jsonb_array_elements(audit_packed_records(e.records)) AS r(value)
     WHERE e.records IS NOT NULL;
