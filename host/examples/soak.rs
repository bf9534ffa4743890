//! Resident memory over many executions (BENCHMARKS.md, "Resident memory").
//!
//! ```text
//! cargo run --release -p attune-wasm --example soak -- GUEST.wasm [EXECUTIONS] [--no-store]
//! ```
//!
//! `--no-store` runs without a store (no secrets, no audit): the runtime alone, to tell its
//! memory from the store's (SQLite's page caches fill as the audit table grows).
//!
//! Runs `GUEST.wasm` (e.g. `examples/bench-action`, wasm32-wasip2) as `mypack.deploy` with three
//! stored secrets, on two tokio workers, through one pooled [`Executor`] over a cached SQLite
//! store in a temporary directory, `EXECUTIONS` times (default 1,000,000). Prints the resident
//! set size (`/proc/self/statm`) after a 10,000-execution warm-up and every tenth of the run,
//! then the largest deviation from the warm-up value, in percent, and how much of the audit
//! trail was stored (one `audit_execution` row per execution, no journal line left unsettled).
//! Exits 1 if any execution failed or the trail is not complete. Prints the store's path first
//! (stderr), so that another process can lock it for a while to test a failing trail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attune_wasm::executor::{Execution, Executor, SecretSource};
use attune_wasm::runtime::Output;
use attune_wasm::store::StoreOptions;

mod common;

const WARM_UP: u64 = 10_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The host's warnings (e.g. audit records not written) on stderr; `RUST_LOG` overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let guest_path = args.next().expect("usage: soak GUEST.wasm [EXECUTIONS]");
    let total: u64 = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("a count"));
    let no_store = args.next().as_deref() == Some("--no-store");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("secrets.db");
    // Where the store is, to lock it from another process while the soak runs (BENCHMARKS.md).
    eprintln!("store: {}", db.display());
    let mut options = StoreOptions::new(format!("sqlite://{}", db.display()));
    options.cache_ttl = Some(Duration::from_secs(5));
    let common::Setup {
        store,
        key,
        action,
        runtime,
        guest,
    } = common::setup(
        &options,
        "soak-test-password-0123456789abcdefghijkl",
        ["eu-west-1-soak", "sk-soak-0123456789", "soak-password"],
        16,
        &guest_path,
        "guest.wasm",
    )
    .await;
    let source = if no_store {
        SecretSource::Missing("--no-store".into())
    } else {
        SecretSource::Store(store)
    };
    let executor = Arc::new(Executor::new(
        runtime,
        source,
        Some(key),
        attune_wasm::executor::Strictness::Lenient,
    ));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let run = |count: u64| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (executor, guest, action) =
                    (Arc::clone(&executor), guest.clone(), action.clone());
                let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
                tokio::spawn(async move {
                    for _ in 0..(count / 2 + u64::from(w == 0) * (count % 2)) {
                        let mut exec = Execution::new(action.clone(), "guest.wasm");
                        exec.stdout = Output::Capture(64 * 1024);
                        exec.stderr = Output::Capture(64 * 1024);
                        match executor.execute(&guest, exec).await {
                            Ok(r) if r.exit.code == 0 => {}
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect::<Vec<_>>();
        async move {
            for w in workers {
                w.await.unwrap();
            }
        }
    };
    run(WARM_UP).await;
    executor.flush().await;
    let base = rss_bytes();
    println!(
        "after {WARM_UP} warm-up executions: RSS {} KiB",
        base / 1024
    );
    let started = Instant::now();
    let step = (total / 10).max(1);
    let mut worst: f64 = 0.0;
    let mut ran = 0;
    while ran < total {
        let n = step.min(total - ran);
        run(n).await;
        executor.flush().await;
        ran += n;
        let rss = rss_bytes();
        let deviation = (rss as f64 - base as f64) / base as f64 * 100.0;
        worst = if deviation.abs() > worst.abs() {
            deviation
        } else {
            worst
        };
        println!(
            "{ran:>9} executions: RSS {} KiB ({deviation:+.2} %), {:.0} executions/s",
            rss / 1024,
            ran as f64 / started.elapsed().as_secs_f64()
        );
    }
    let failures = failed.load(Ordering::Relaxed);
    let done = done.load(Ordering::Relaxed);
    println!(
        "{done} executions, {failures} failed; largest RSS deviation from warm-up: {worst:+.2} %"
    );
    let mut complete = true;
    if !no_store {
        // The trail is complete: one row per execution, and no journal line left unsettled.
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_execution")
            .fetch_one(&pool)
            .await
            .unwrap();
        let unsettled: u64 = std::fs::read_dir(dir.path().join("secrets.db.audit"))
            .map(|d| {
                d.flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        println!(
            "audit trail: {stored} executions stored of {done}; journal: {unsettled} bytes unsettled"
        );
        complete = u64::try_from(stored) == Ok(done) && unsettled == 0;
    }
    if failures > 0 || !complete {
        std::process::exit(1);
    }
}
