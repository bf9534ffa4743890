//! The audit trail: allowed, denied, missing and invalid requests through both doors, the
//! environment door's deliveries on record before the guest starts, never a value (SQLite and
//! PostgreSQL).

use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::support::{probe, text, Host, Target};

fn audit_flow(host: &Host) {
    host.set("api_key", "audit-value-7f3a91", &["--pack", "mypack"]);
    host.set("withheld", "audit-withheld-20c4", &[]);
    let out = host.run(
        &probe(Target::P2),
        "mypack.deploy",
        &["--allow-secret", "api_key"],
        &[
            "get",
            "api_key",
            "api_key",
            "withheld",
            "absent",
            "bad name",
            "audit-value-7f3a91",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = host.run(&probe(Target::P1), "mypack.other", &[], &["env"]);
    assert!(out.status.success());

    let all = audit_list(host);
    let rows = columns(&all);
    // Every run ended: each record's execution is `ended` in the last column.
    let has = |action: &str, secret: &str, door: &str, outcome: &str, count: &str| {
        rows.iter().any(|r| {
            r.len() >= 8
                && r[2] == action
                && r[3] == secret
                && r[r.len() - 4] == door
                && r[r.len() - 3] == outcome
                && r[r.len() - 2] == count
                && r[r.len() - 1] == "ended"
        })
    };
    assert!(
        has(
            "mypack.deploy",
            "mypack.api_key",
            "get-secret",
            "delivered",
            "2"
        ),
        "{all}"
    );
    assert!(
        has("mypack.deploy", "mypack.api_key", "env", "delivered", "1"),
        "{all}"
    );
    assert!(
        has(
            "mypack.deploy",
            "withheld",
            "get-secret",
            "access-denied",
            "1"
        ),
        "{all}"
    );
    // Names that resolve to nothing are guest-chosen text: counted, never recorded.
    assert!(all.contains("(unrecorded name)"), "{all}");
    assert!(!all.contains("absent"), "{all}");
    assert!(all.contains("invalid-name"), "{all}");
    assert!(
        has("mypack.other", "mypack.api_key", "env", "delivered", "1"),
        "{all}"
    );
    assert!(
        has("mypack.other", "withheld", "env", "delivered", "1"),
        "{all}"
    );
    for value in ["audit-value-7f3a91", "audit-withheld-20c4"] {
        assert!(
            !all.contains(value),
            "a value reached the audit trail: {all}"
        );
    }
    // One execution id per run.
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(ids.len(), 2);

    let out = host.exec(&["audit", "list", "--action", "mypack.other"], None);
    assert!(text(&out.stdout)
        .lines()
        .skip(1)
        .all(|l| l.contains("mypack.other")));
    let out = host.exec(&["audit", "list", "--since", "2999-01-01T00:00:00Z"], None);
    assert_eq!(text(&out.stdout).lines().count(), 1, "only the header");
    let out = host.exec(&["audit", "list", "--since", "1h"], None);
    assert_eq!(text(&out.stdout).lines().count(), rows.len() + 1);
    let out = host.exec(&["audit", "list", "--since", "yesterday-ish"], None);
    assert!(!out.status.success());
}

#[test]
fn audit_on_sqlite_and_no_value_in_the_file() {
    let host = Host::new();
    audit_flow(&host);
    for path in host.stored_files() {
        let bytes = std::fs::read(&path).unwrap();
        for value in ["audit-value-7f3a91", "audit-withheld-20c4"] {
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_on_postgres_and_no_value_in_any_table() {
    let Some(host) = Host::postgres() else { return };
    tokio::task::block_in_place(|| audit_flow(&host));
    let url = host.settings[0].1.clone();
    let schema = host.settings[1].1.clone();
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    for table in ["secrets", "audit", "audit_execution"] {
        let dump: String = sqlx::query_scalar(&format!(
            "SELECT coalesce(string_agg(t::text, '\n'), '') FROM {schema}.{table} t"
        ))
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert!(!dump.is_empty());
        for value in ["audit-value-7f3a91", "audit-withheld-20c4"] {
            assert!(!dump.contains(value), "{value} in {table}");
        }
    }
    host.drop_schema().await;
}

/// The output of `audit list` on `host`'s store (which must succeed).
fn audit_list(host: &Host) -> String {
    let out = host.exec(&["audit", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The rows of `audit list`'s output, each split into its columns (the header left out).
fn columns(all: &str) -> Vec<Vec<&str>> {
    all.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// Runs the secret-probe as `mypack.deploy` asking for `secret` (`lines` mode), waits until the
/// guest is running, with its secrets, and kills the host (`kill -9`: no chance to write
/// anything more).
fn kill_9_while_the_probe_runs(host: &Host, target: Target, secret: &str) {
    let mut child = host
        .cmd()
        // Unmasked: masking holds short output back until more arrives (it could be the
        // start of a secret), and the echo must arrive while the guest runs.
        .args(["run", "--no-redact", "--action", "mypack.deploy"])
        .arg(probe(target))
        .args(["--", "lines", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The probe echoes each line of stdin: once one comes back, the guest is running (and
    // blocked reading more).
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"guest-is-running\n").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "guest-is-running", "{target:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
}

/// N31: a host killed (`kill -9`) while a guest that received secrets is running leaves the
/// delivery in the trail: the execution was entered before its guest started, and its run
/// stays `started` with no end. The next run of the same store is unaffected.
///
/// On SQLite the entry is journalled (one `write`) and the next opening of the store replays
/// the journal; on PostgreSQL it is committed before the guest starts.
fn n31_killed_host_leaves_the_delivery_on_record(host: &Host, journalled: bool) {
    host.set("api_key", "n31-delivered-value-5d1e", &["--pack", "mypack"]);
    for target in [Target::P1, Target::P2] {
        kill_9_while_the_probe_runs(host, target, "api_key");
    }
    let out = host.exec(&["audit", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = text(&out.stdout);
    let started: Vec<&str> = all
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8
                && f[3] == "mypack.api_key"
                && f[f.len() - 4] == "env"
                && f[f.len() - 3] == "delivered"
                && f[f.len() - 1] == "started"
        })
        .collect();
    assert_eq!(started.len(), 2, "one per killed run (p1, p2): {all}");
    assert!(!all.contains("n31-delivered-value-5d1e"));
    if journalled {
        // Replayed and removed: nothing is left in the journal directory.
        let journal = host.dir.path().join("data").join("secrets.db.audit");
        let left = std::fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{}", journal.display());
    }
    // The store is usable afterwards, and a finished run is `ended`.
    let out = host.run(&probe(Target::P2), "mypack.deploy", &[], &["exit", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = text(&host.exec(&["audit", "list"], None).stdout);
    assert!(
        all.lines()
            .any(|l| l.contains(" env ") && l.ends_with("ended")),
        "{all}"
    );
}

#[test]
fn n31_killed_host_leaves_the_delivery_on_record_sqlite() {
    n31_killed_host_leaves_the_delivery_on_record(&Host::new(), true);
}

#[tokio::test(flavor = "multi_thread")]
async fn n31_killed_host_leaves_the_delivery_on_record_postgres() {
    let Some(host) = Host::postgres() else { return };
    tokio::task::block_in_place(|| n31_killed_host_leaves_the_delivery_on_record(&host, false));
    host.drop_schema().await;
}

/// A pool of either database, for the tests below.
enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Pool {
    async fn migrate(&self, migrator: &sqlx::migrate::Migrator) {
        match self {
            Self::Sqlite(p) => migrator.run(p).await.unwrap(),
            Self::Postgres(p) => migrator.run(p).await.unwrap(),
        }
    }

    /// Runs `sql` with text parameters; `{time}` is replaced with the dialect's cast of a time.
    async fn execute(&self, sql: &str, binds: &[&str]) {
        match self {
            Self::Sqlite(p) => {
                let sql = sql.replace("{time}", "");
                let mut q = sqlx::query(&sql);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(p).await.unwrap();
            }
            Self::Postgres(p) => {
                let sql = sql.replace("{time}", "::timestamptz");
                let mut q = sqlx::query(&sql);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(p).await.unwrap();
            }
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        match self {
            Self::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Self::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }
}

/// Issue 13: records written before the trail was packed (one row per request) stay readable
/// after the upgrade, merged with packed ones by `audit list`'s filters, newest first; the
/// `audit` view shows both. The store is first migrated only up to `last_old` (the files of
/// the previous version) on `pool`, given old rows, then opened by this version.
async fn old_records_stay_readable_after_the_upgrade(
    options: &attune_wasm::store::StoreOptions,
    kind: &str,
    last_old: &str,
    pool: Pool,
) {
    use attune_wasm::secrets::names::ActionRef;
    use attune_wasm::store::audit::{
        Batch, Door, ExecutionRecord, Filter, Outcome, Request, RunState,
    };
    use attune_wasm::store::{OpenMode, Store, Timestamp};

    // The previous version's migrations, on their own.
    let old = tempfile::tempdir().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(kind);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() <= last_old {
            std::fs::copy(&path, old.path().join(name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    pool.migrate(&migrator).await;
    let t = |s: &str| format!("2026-0{s}T00:00:00.000Z");
    pool.execute(
        "INSERT INTO audit_execution (execution_id, action_ref, started, ended, state)
         VALUES ('e-old', 'p.old', $1{time}, $1{time}, 'ended')",
        &[&t("2-01")],
    )
    .await;
    for (at, id, action, door) in [
        (t("2-01"), "e-old", "p.old", "env"),
        (t("2-01"), "e-old", "p.old", "get-secret"),
        (t("1-01"), "e-older", "p.older", "env"),
    ] {
        pool.execute(
            "INSERT INTO audit (at, execution_id, action_ref, secret_ref, door, outcome, count)
             VALUES ($1{time}, $2, $3, 'p.k', $4, 'delivered', 1)",
            &[&at, id, action, door],
        )
        .await;
    }
    // This version: migrated on open, old rows kept, new ones packed.
    let store = Store::open_with(options, OpenMode::MustExist)
        .await
        .unwrap();
    let request = |secret: &str, door| Request {
        secret_ref: secret.to_owned(),
        door,
        outcome: Outcome::Delivered,
        count: 2,
    };
    let mut batch = Batch::default();
    batch.executions.push(ExecutionRecord {
        execution_id: "e-new".to_owned(),
        action_ref: ActionRef::new("p.new").unwrap(),
        started: Timestamp::parse(&t("3-01")).unwrap(),
        ended: None,
        state: RunState::Started,
        requests: vec![request("p.k", Door::Env), request("p.j", Door::GetSecret)],
    });
    store.record_audit(&batch).await.unwrap();
    let list = |action: Option<&str>, since: Option<&str>, limit| {
        let mut filter = Filter::default();
        filter.action_ref = action.map(|a| ActionRef::new(a).unwrap());
        filter.since = since.map(|s| Timestamp::parse(s).unwrap());
        filter.limit = limit;
        let store = store.clone();
        async move {
            store
                .list_audit(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|l| {
                    let r = l.record;
                    (r.execution_id, r.secret_ref, r.door, r.count, l.run)
                })
                .collect::<Vec<_>>()
        }
    };
    let all = list(None, None, 100).await;
    let ended = Some(RunState::Ended);
    let started = Some(RunState::Started);
    assert_eq!(
        all,
        vec![
            ("e-new".into(), "p.j".into(), Door::GetSecret, 2, started),
            ("e-new".into(), "p.k".into(), Door::Env, 2, started),
            ("e-old".into(), "p.k".into(), Door::GetSecret, 1, ended),
            ("e-old".into(), "p.k".into(), Door::Env, 1, ended),
            ("e-older".into(), "p.k".into(), Door::Env, 1, None),
        ],
        "{kind}"
    );
    assert_eq!(list(None, None, 3).await, all[..3].to_vec(), "{kind}");
    let old_only = list(Some("p.old"), None, 100).await;
    assert_eq!(old_only, all[2..4].to_vec(), "{kind}");
    assert_eq!(
        list(Some("p.new"), None, 100).await,
        all[..2].to_vec(),
        "{kind}"
    );
    let since = list(None, Some(&t("2-01")), 100).await;
    assert_eq!(since, all[..4].to_vec(), "{kind}");
    // The view of the whole trail, in the former table's columns.
    let rows = pool
        .count("SELECT count(*) FROM audit WHERE secret_ref = 'p.k'")
        .await;
    assert_eq!(rows, 4, "{kind}");
}

#[tokio::test]
async fn old_records_stay_readable_after_the_upgrade_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("secrets.db").display());
    let options = attune_wasm::store::StoreOptions::new(url.clone());
    let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    old_records_stay_readable_after_the_upgrade(&options, "sqlite", "0005", Pool::Sqlite(pool))
        .await;
}

#[tokio::test]
async fn old_records_stay_readable_after_the_upgrade_postgres() {
    let Some(host) = Host::postgres() else { return };
    let url = host.settings[0].1.clone();
    let schema = host.settings[1].1.clone();
    let mut options = attune_wasm::store::StoreOptions::new(url.clone());
    options.schema = schema.clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect({
            let schema = schema.clone();
            move |c, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    use sqlx::Executor as _;
                    c.execute(
                        format!(
                            "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
                        )
                        .as_str(),
                    )
                    .await?;
                    Ok(())
                })
            }
        })
        .connect(&url)
        .await
        .unwrap();
    old_records_stay_readable_after_the_upgrade(
        &options,
        "postgres",
        "0006",
        Pool::Postgres(pool.clone()),
    )
    .await;
    pool.close().await;
    host.drop_schema().await;
}

/// Two executions, the second with packed records that are not valid JSON or not of the
/// packed shape (edited by hand): the `audit` view (the former table's name, kept for queries
/// written against it) still reads the first; `audit list` skips only the bad rows. Found by
/// the adversarial review: the view failed as a whole.
const BAD_PACKED: [&str; 4] = [
    r#"[["p.k","env","delivered",1]"#,
    r#"{"not":"an array"}"#,
    r#"[["p.k","env","delivered","many"]]"#,
    r#"[["p.k","env","delivered",1e40]]"#,
];

#[tokio::test]
async fn one_malformed_packed_row_does_not_break_the_audit_view_sqlite() {
    for bad in BAD_PACKED {
        let host = Host::new();
        host.set("k", "v", &[]);
        let db = host.db_path();
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO audit_execution (execution_id, action_ref, started, ended, state, records) \
             VALUES ('good', 'p.a', '2026-12-01T07:00:00.000Z', NULL, 'ended', \
                     '[[\"p.k\",\"env\",\"delivered\",1]]'), \
                    ('bad', 'p.a', '2026-12-01T07:00:01.000Z', NULL, 'ended', ?)",
        )
        .bind(bad)
        .execute(&pool)
        .await
        .unwrap();
        // The whole view, unfiltered (a filter on the execution could spare the bad row).
        let ids: Result<Vec<String>, _> = sqlx::query_scalar("SELECT execution_id FROM audit")
            .fetch_all(&pool)
            .await;
        pool.close().await;
        let ids = ids.map_err(|e| e.to_string());
        assert!(
            ids.as_ref()
                .is_ok_and(|ids| ids.iter().filter(|id| *id == "good").count() == 1),
            "{bad}: {ids:?}"
        );
        let out = host.exec(&["audit", "list"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("good"), "{bad}");
    }
}

#[tokio::test]
async fn one_malformed_packed_row_does_not_break_the_audit_view_postgres() {
    let Some(host) = Host::postgres() else { return };
    // Migrated by a first command on the host's own schema.
    host.set("k", "v", &[]);
    let url = host.settings[0].1.clone();
    let schema = host.settings[1].1.clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect({
            let schema = schema.clone();
            move |c, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    use sqlx::Executor as _;
                    c.execute(format!("SET search_path TO {schema}").as_str())
                        .await?;
                    Ok(())
                })
            }
        })
        .connect(&url)
        .await
        .unwrap();
    for (i, bad) in BAD_PACKED.iter().enumerate() {
        sqlx::query(
            "INSERT INTO audit_execution (execution_id, action_ref, started, ended, state, records) \
             VALUES ($1, 'p.a', now(), NULL, 'ended', $2)",
        )
        .bind(format!("bad-{i}"))
        .bind(*bad)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO audit_execution (execution_id, action_ref, started, ended, state, records) \
         VALUES ('good', 'p.a', now(), NULL, 'ended', '[[\"p.k\",\"env\",\"delivered\",1]]')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rows: Result<Vec<(String, i64)>, _> =
        sqlx::query_as("SELECT execution_id, count FROM audit")
            .fetch_all(&pool)
            .await;
    pool.close().await;
    assert_eq!(
        rows.map_err(|e| e.to_string()),
        Ok(vec![("good".to_owned(), 1)])
    );
    let out = host.exec(&["audit", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("good"));
    host.drop_schema().await;
}

/// The audit journal's directory planted as a symbolic link, or owned by another user: the
/// entry cannot be put on record, so the guest is not started (nothing delivered), and nothing
/// is written or read through the link.
#[test]
fn an_unsafe_audit_journal_directory_keeps_the_guest_from_starting() {
    let host = Host::new();
    host.set(
        "api_key",
        "journal-planted-value-77ab",
        &["--pack", "mypack"],
    );
    let elsewhere = host.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let journal = host.db_path().with_file_name("secrets.db.audit");
    std::os::unix::fs::symlink(&elsewhere, &journal).unwrap();
    let refused = |why: &str| {
        let out = host.run(&probe(Target::P2), "mypack.deploy", &[], &["env"]);
        assert!(!out.status.success(), "{why}");
        let err = text(&out.stderr);
        assert!(
            err.contains("the audit trail cannot be written, so the guest was not started")
                && err.contains("cannot use the audit journal directory")
                && err.contains(why),
            "{err}"
        );
        assert!(!text(&out.stdout).contains("journal-planted-value-77ab"));
        assert!(!err.contains("journal-planted-value-77ab"));
    };
    refused("a symbolic link is refused");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    std::fs::remove_file(&journal).unwrap();
    std::fs::create_dir(&journal).unwrap();
    std::os::unix::fs::chown(&journal, Some(65534), Some(65534))
        .expect("chown (tests run as root)");
    refused("not owned by this user");
    // Removed, the host makes its own again and runs.
    std::fs::remove_dir(&journal).unwrap();
    let out = host.run(&probe(Target::P2), "mypack.deploy", &[], &["exit", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = std::fs::symlink_metadata(&journal)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// N31 through `get-secret` (SQLite): a secret that the environment door leaves out (its value
/// holds a NUL byte, here edited into the row by hand) but `get-secret` delivers is journalled
/// before the guest has it, so a host killed right after leaves that delivery on record.
#[tokio::test(flavor = "multi_thread")]
async fn n31_a_get_secret_delivery_is_on_record_before_the_guest_has_it() {
    use sqlx::Connection as _;
    let host = Host::new();
    host.set("nul_token", "placeholder", &["--pack", "mypack", "--plain"]);
    let url = format!("sqlite://{}", host.db_path().display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let done = sqlx::query(
        "UPDATE secrets SET value = 'n31-nul-' || char(0) || '-value-90c2' WHERE name = 'nul_token'",
    )
    .execute(&mut c)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
    c.close().await.unwrap();
    tokio::task::block_in_place(|| {
        kill_9_while_the_probe_runs(&host, Target::P2, "nul_token");
        let all = audit_list(&host);
        let rows = columns(&all);
        assert!(
            rows.iter().any(|f| f.len() >= 8
                && f[3] == "mypack.nul_token"
                && f[f.len() - 4] == "get-secret"
                && f[f.len() - 3] == "delivered"
                && f[f.len() - 1] == "started"),
            "{all}"
        );
        // Never through the environment (the NUL byte keeps it out).
        assert!(
            !rows.iter().any(|f| f.len() >= 8 && f[f.len() - 4] == "env"),
            "{all}"
        );
        assert!(!all.contains("n31-nul-"));
    });
}

/// The store refuses the trail's writes (a trigger here; a lock held by another program or a
/// full disk in the field): the run still succeeds and says why, nothing is dropped (the journal
/// keeps the run's lines), and the next opening, once the store takes writes again, stores it.
#[tokio::test]
async fn a_refused_trail_stays_in_the_journal_and_is_stored_later_sqlite() {
    let host = Host::new();
    host.set("api_key", "refused-trail-value-8e21", &["--pack", "mypack"]);
    let db = host.db_path();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_trail BEFORE INSERT ON audit_execution \
         BEGIN SELECT RAISE(ABORT, 'the trail is refused by a test trigger'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = host.run(&probe(Target::P2), "mypack.deploy", &[], &["exit", "0"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("audit trail not written; 1 records of 1 executions held")
            && stderr.contains("the trail is refused by a test trigger"),
        "{stderr}"
    );
    assert!(!stderr.contains("refused-trail-value-8e21"));
    let journal = host.dir.path().join("data").join("secrets.db.audit");
    let kept: u64 = std::fs::read_dir(&journal)
        .unwrap()
        .flatten()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(kept > 0, "the journal keeps the run: {}", journal.display());
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_execution")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    sqlx::query("DROP TRIGGER refuse_trail")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = host.exec(&["audit", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = text(&out.stdout);
    assert!(
        all.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8
                && f[3] == "mypack.api_key"
                && f[f.len() - 4] == "env"
                && f[f.len() - 3] == "delivered"
        }),
        "{all}"
    );
    assert!(!all.contains("refused-trail-value-8e21"));
    let left = std::fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "stored, then removed: {}", journal.display());
}
