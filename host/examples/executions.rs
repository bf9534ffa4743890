//! A fixed number of executions, one after another, as `execution/component_3_secrets` and
//! `execution/p1_3_secrets` run them (BENCHMARKS.md, "Round two"): for counts that do not
//! depend on the machine's load (instructions under `valgrind --tool=callgrind`, PostgreSQL
//! commits per execution).
//!
//! ```text
//! cargo run --release -p attune-wasm --example executions -- GUEST.wasm [COUNT] [STORE_URL]
//! ```
//!
//! Runs `GUEST.wasm` (`examples/bench-action`, wasm32-wasip2 or wasm32-wasip1) as
//! `mypack.deploy` with its three secrets stored (one per level), `COUNT` times (default 1,000)
//! on one thread, through one pooled [`Executor`] over a cached store with its audit trail:
//! SQLite in a temporary directory, or `STORE_URL` (a `postgres://` URL: a schema of its own,
//! dropped at the end). Waits for the audit trail, then prints the time per execution and, on
//! PostgreSQL, the commits (`pg_stat_database.xact_commit` of the URL's database, read once the
//! store's connections are closed) per execution: give it a database no one else uses.
//! Instructions per execution under callgrind: run it with two counts and divide the
//! difference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use attune_wasm::executor::{Execution, Executor, SecretSource, Strictness};
use attune_wasm::runtime::Output;
use attune_wasm::store::StoreOptions;
use sqlx::Connection as _;

mod common;

/// `xact_commit` of the database at `url` (PostgreSQL's statistics, flushed by backends that
/// have exited).
async fn commits(url: &str) -> i64 {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let n = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    n
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let guest_path = args
        .next()
        .expect("usage: executions GUEST.wasm [COUNT] [STORE_URL]");
    let count: u32 = args.next().map_or(1_000, |n| n.parse().expect("a count"));
    let dir = tempfile::tempdir().unwrap();
    let postgres = args.next();
    let mut options = match &postgres {
        Some(url) => {
            let mut options = StoreOptions::new(url.clone());
            options.schema = format!("executions_{}", std::process::id());
            options
        }
        None => StoreOptions::new(format!(
            "sqlite://{}",
            dir.path().join("secrets.db").display()
        )),
    };
    options.cache_ttl = Some(Duration::from_secs(3600));
    let common::Setup {
        store,
        key,
        action,
        runtime,
        guest,
    } = common::setup(
        &options,
        "executions-password-0123456789abcdefghijkl",
        [
            "eu-west-1-benchmark",
            "sk-benchmark-0123456789abcdef",
            "hunter2-but-longer",
        ],
        32,
        &guest_path,
        "bench-action.wasm",
    )
    .await;
    let executor = Executor::new(
        runtime,
        SecretSource::Store(store.clone()),
        Some(key),
        Strictness::Lenient,
    );
    let run = || async {
        let mut exec = Execution::new(action.clone(), "bench-action.wasm");
        exec.stdout = Output::Capture(64 * 1024);
        exec.stderr = Output::Capture(64 * 1024);
        let report = executor.execute(&guest, exec).await.unwrap();
        assert_eq!(
            report.exit.stdout.as_deref(),
            Some(&b"bench-action: 3 secrets\n"[..])
        );
    };
    // The first execution opens the audit trail's connection and fills the row cache.
    run().await;
    executor.flush().await;
    // Statistics reach `pg_stat_database` when a backend has been idle a while (10 s at most).
    if postgres.is_some() {
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    let before = match &postgres {
        Some(url) => Some(commits(url).await),
        None => None,
    };
    let started = Instant::now();
    for _ in 0..count {
        run().await;
    }
    executor.flush().await;
    let elapsed = started.elapsed();
    println!(
        "{count} executions: {:.1} µs each",
        elapsed.as_secs_f64() * 1e6 / f64::from(count)
    );
    drop(executor);
    drop(store);
    if let (Some(url), Some(before)) = (&postgres, before) {
        // Let the store's backends exit or idle (they flush their statistics then).
        tokio::time::sleep(Duration::from_secs(11)).await;
        let after = commits(url).await;
        println!(
            "{} commits: {:.2} per execution (the store's and this program's own reads)",
            after - before,
            (after - before) as f64 / f64::from(count)
        );
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", options.schema))
            .execute(&mut c)
            .await
            .unwrap();
    }
}
