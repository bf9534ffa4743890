//! The audit trail in SQL: one row per execution (`audit_execution`) with its requests packed
//! in its `records` column as JSON (`[[secret_ref, door, outcome, count], …]`, in the order of
//! [`crate::store::audit::Log::requests`]), written for a whole batch by one statement of fixed
//! text (the batch is one JSON parameter, unpacked by the database: `json_each` on SQLite,
//! `jsonb_array_elements` on PostgreSQL), so that the statement stays prepared whatever the
//! batch's size. Records written before (one row per request, the former `audit` table, now
//! `audit_record`) stay readable: `audit list` reads both and merges them.
//!
//! Why packed: a row per request cost six rows (each with three indexes and an
//! `AUTOINCREMENT` counter) and a multi-row statement of varying text per execution; one row
//! per execution costs one row with three indexes when entered and an update in place of its
//! unindexed columns when it ends (issue 13, BENCHMARKS.md "Round two").

use serde::Deserialize;

use super::Dialect;
use crate::store::audit::{Batch, Listed};
use crate::store::decode::RawAudit;
use crate::store::{Error, Result};

/// The statements of the audit trail, composed once per dialect.
pub(super) struct AuditStatements {
    /// Upserts every execution of a batch; `$1` is [`pack`]'s JSON.
    pub(super) write: String,
    /// Stores executions replayed from the audit journal (`started`, with every journalled
    /// request): inserted, or replacing the records of an execution stored as `started` only,
    /// never those of one whose end is stored; `$1` as for `write`.
    pub(super) replay: String,
    /// Records of the former table (one row per request), newest first; `$1` action ref or
    /// NULL, `$2` since or NULL, `$3` limit.
    pub(super) list_records: String,
    /// Executions with packed records, newest first; the same parameters.
    pub(super) list_packed: String,
}

impl AuditStatements {
    pub(super) fn new<D: Dialect>() -> Self {
        let time = D::TIME_PARAM;
        let (rows, text) = (D::JSON_ROWS, D::TEXT_CAST);
        Self {
            // `WHERE true`: SQLite's parser needs it between a SELECT and an upsert clause.
            write: format!(
                "INSERT INTO audit_execution \
                     (execution_id, action_ref, started, ended, state, records) \
                 SELECT j.value ->> 0, j.value ->> 1, (j.value ->> 2){time}, \
                        (j.value ->> 3){time}, j.value ->> 4, (j.value -> 5){text} \
                 FROM {rows} WHERE true \
                 ON CONFLICT (execution_id) DO UPDATE SET ended = excluded.ended, \
                     state = excluded.state, records = excluded.records"
            ),
            replay: format!(
                "INSERT INTO audit_execution \
                     (execution_id, action_ref, started, ended, state, records) \
                 SELECT j.value ->> 0, j.value ->> 1, (j.value ->> 2){time}, \
                        (j.value ->> 3){time}, j.value ->> 4, (j.value -> 5){text} \
                 FROM {rows} WHERE true \
                 ON CONFLICT (execution_id) DO UPDATE SET records = excluded.records \
                 WHERE audit_execution.state = 'started'"
            ),
            list_records: format!(
                "SELECT {} AS at, a.execution_id, a.action_ref, a.secret_ref, a.door, \
                        a.outcome, a.count, e.state \
                 FROM audit_record a \
                 LEFT JOIN audit_execution e ON e.execution_id = a.execution_id \
                 WHERE ($1 IS NULL OR a.action_ref = $1) AND ($2 IS NULL OR a.at >= $2{time}) \
                 ORDER BY a.at DESC, a.id DESC LIMIT $3",
                D::time_text("a.at"),
            ),
            // Every stored execution has at least one record, so `$3` executions hold at least
            // `$3` records.
            list_packed: format!(
                "SELECT {} AS at, execution_id, action_ref, records, state \
                 FROM audit_execution \
                 WHERE records IS NOT NULL \
                   AND ($1 IS NULL OR action_ref = $1) AND ($2 IS NULL OR started >= $2{time}) \
                 ORDER BY started DESC LIMIT $3",
                D::time_text("started"),
            ),
        }
    }
}

/// One packed request: secret ref, door, outcome, count.
type Packed<'a> = (&'a str, &'a str, &'a str, u64);

/// The JSON parameter of [`AuditStatements::write`]: one array per execution,
/// `[execution_id, action_ref, started, ended or null, state, [[secret_ref, door, outcome,
/// count], …]]`.
pub(super) fn pack(batch: &Batch) -> String {
    let executions: Vec<_> = batch
        .executions
        .iter()
        .map(|e| {
            let requests: Vec<Packed<'_>> = e
                .requests
                .iter()
                .map(|r| {
                    (
                        r.secret_ref.as_str(),
                        r.door.as_str(),
                        r.outcome.as_str(),
                        r.count,
                    )
                })
                .collect();
            (
                e.execution_id.as_str(),
                e.action_ref.as_str(),
                e.started.to_string(),
                e.ended.map(|t| t.to_string()),
                e.state.as_str(),
                requests,
            )
        })
        .collect();
    // Strings, numbers and null only: serializing them cannot fail.
    serde_json::to_string(&executions).unwrap_or_default()
}

/// One execution row of [`AuditStatements::list_packed`], before its records are unpacked.
pub(super) struct PackedRow {
    pub(super) at: String,
    pub(super) execution_id: String,
    pub(super) action_ref: String,
    pub(super) records: String,
    pub(super) state: Option<String>,
}

/// One stored request as read back (owned, any spelling: parsed by [`RawAudit::parse`]).
#[derive(Deserialize)]
struct Unpacked(String, String, String, i64);

impl PackedRow {
    /// The execution's records, newest first (the reverse of their stored order), each parsed
    /// on its own.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when `records` is not a JSON list of requests (then none is listed).
    pub(super) fn unpack(self) -> Result<Vec<Result<Listed>>> {
        let requests: Vec<Unpacked> =
            serde_json::from_str(&self.records).map_err(|_| Error::Corrupt {
                secret_ref: format!("(records of execution {})", self.execution_id),
                reason: "not a JSON list of [secret, door, outcome, count]".to_owned(),
            })?;
        Ok(requests
            .into_iter()
            .rev()
            .map(|Unpacked(secret_ref, door, outcome, count)| {
                RawAudit {
                    at: self.at.clone(),
                    execution_id: self.execution_id.clone(),
                    action_ref: self.action_ref.clone(),
                    secret_ref,
                    door,
                    outcome,
                    count,
                    run: self.state.clone(),
                }
                .parse()
            })
            .collect())
    }
}

/// `packed` (newer rows) and `records` (the former table) merged newest first, at most
/// `limit`; at equal times the packed rows come first (they were written later).
pub(super) fn merge(packed: Vec<Listed>, records: Vec<Listed>, limit: u32) -> Vec<Listed> {
    let mut all = packed;
    all.extend(records);
    // Stable: each part keeps its own order.
    all.sort_by_key(|l| std::cmp::Reverse(l.record.at));
    all.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    all
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secrets::names::ActionRef;
    use crate::store::audit::{Door, ExecutionRecord, Outcome, Request, RunState};
    use crate::store::Timestamp;

    /// A request as [`pack`] writes it.
    fn packed(r: &Request) -> Packed<'_> {
        (
            r.secret_ref.as_str(),
            r.door.as_str(),
            r.outcome.as_str(),
            r.count,
        )
    }

    fn request(secret_ref: &str, door: Door) -> Request {
        Request {
            secret_ref: secret_ref.to_owned(),
            door,
            outcome: Outcome::Delivered,
            count: 2,
        }
    }

    #[test]
    fn a_batch_packs_and_its_records_unpack_newest_first() {
        let requests = vec![
            request("p.env", Door::Env),
            request("p.\"q\"", Door::GetSecret),
        ];
        let started = Timestamp::now();
        let batch = Batch {
            executions: vec![ExecutionRecord {
                execution_id: "e1".to_owned(),
                action_ref: ActionRef::new("p.a").unwrap(),
                started,
                ended: None,
                state: RunState::Started,
                requests: requests.clone(),
            }],
        };
        let json = pack(&batch);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let records = serde_json::to_string(&value[0][5]).unwrap();
        assert_eq!(value[0][3], serde_json::Value::Null);
        assert_eq!(
            records,
            serde_json::to_string(&requests.iter().map(packed).collect::<Vec<_>>()).unwrap()
        );
        let row = PackedRow {
            at: started.to_string(),
            execution_id: "e1".to_owned(),
            action_ref: "p.a".to_owned(),
            records,
            state: Some("started".to_owned()),
        };
        let listed: Vec<Listed> = row
            .unpack()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].record.secret_ref, "p.\"q\"");
        assert_eq!(listed[1].record.door, Door::Env);
        assert_eq!(listed[1].record.count, 2);
        assert_eq!(listed[1].run, Some(RunState::Started));
    }

    #[test]
    fn records_that_are_not_a_list_are_named_not_shown() {
        let row = PackedRow {
            at: Timestamp::now().to_string(),
            execution_id: "e1".to_owned(),
            action_ref: "p.a".to_owned(),
            records: "{\"value\":1}".to_owned(),
            state: None,
        };
        let err = row.unpack().unwrap_err().to_string();
        assert!(err.contains("records of execution e1"), "{err}");
    }
}
