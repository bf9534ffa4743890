//! The worker's fast path (issue 5): compiled guests reused by content hash, cached rows that
//! follow every write (through this store at once; on PostgreSQL from any writer by NOTIFY;
//! on SQLite from other processes within the TTL), audit records written in the background
//! and complete after `flush`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use attune_wasm::executor::{Executor, SecretSource};
use attune_wasm::runtime::{Guest, Runtime};
use attune_wasm::secrets::names::ActionRef;
use attune_wasm::store::Store;

use crate::support::{probe, probe_execution as execution, text, value, Host, Target};

struct Worker {
    executor: Executor,
    guest: Guest,
}

impl Worker {
    async fn new(store: Store) -> Self {
        let runtime = Arc::new(Runtime::new(crate::support::pooled(8)).unwrap());
        let guest = runtime
            .load("probe.wasm", &std::fs::read(probe(Target::P2)).unwrap())
            .unwrap();
        let key = crate::support::key(crate::support::KEY);
        Self {
            executor: Executor::new(
                runtime,
                SecretSource::Store(store),
                Some(key),
                attune_wasm::executor::Strictness::Strict,
            ),
            guest,
        }
    }

    /// What `get api_key` gives `mypack.deploy`: the value or the WIT error name.
    async fn api_key(&self) -> Result<String, String> {
        self.try_api_key().await.unwrap()
    }

    /// As [`Worker::api_key`], or the execution's error (strict mode: a store error).
    async fn try_api_key(&self) -> Result<Result<String, String>, attune_wasm::executor::Error> {
        let report = self
            .executor
            .execute(&self.guest, execution("mypack.deploy", &["get", "api_key"]))
            .await?;
        let out: serde_json::Value =
            serde_json::from_slice(report.exit.stdout.as_deref().unwrap()).unwrap();
        Ok(value(&out, "api_key"))
    }

    /// Runs executions until `api_key` reads `want`; the time it took.
    async fn until(&self, want: Result<&str, &str>, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.api_key().await;
            if got.as_deref().map_err(String::as_str) == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "still {got:?} after {within:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_rows_follow_writes_through_the_same_store() {
    for host in Host::all_backends() {
        host.set("api_key", "first-value-1111", &["--pack", "mypack"]);
        let store = host.store_cached(Some(Duration::from_secs(3600))).await;
        let worker = Worker::new(store.clone()).await;
        assert_eq!(worker.api_key().await.unwrap(), "first-value-1111");
        assert_eq!(store.cached_actions(), 1, "the rows are cached");

        // A write through the same store is seen by the very next execution.
        let key = crate::support::key(crate::support::KEY);
        let owner =
            attune_wasm::secrets::names::Owner::Action(ActionRef::new("mypack.deploy").unwrap());
        let name = attune_wasm::secrets::names::SecretName::new("api_key").unwrap();
        store
            .put(&attune_wasm::store::NewSecret {
                owner: owner.clone(),
                name: name.clone(),
                value: attune_wasm::store::StoredValue::encrypted(
                    key.encrypt(
                        &secrecy::SecretString::from("action-override-2222"),
                        &attune_wasm::store::binding(&owner, &name),
                    ),
                    Some(attune_wasm::store::KeyHash::of(&key)),
                ),
            })
            .await
            .unwrap();
        assert_eq!(worker.api_key().await.unwrap(), "action-override-2222");
        assert!(store.delete(&owner, &name).await.unwrap());
        assert_eq!(worker.api_key().await.unwrap(), "first-value-1111");
        host.drop_schema().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_follows_every_writer_by_notify() {
    let Some(host) = Host::postgres() else {
        return;
    };
    host.set("api_key", "first-value-1111", &["--pack", "mypack"]);
    // An hour of TTL: only the notification can explain seeing a change.
    let store = host.store_cached(Some(Duration::from_secs(3600))).await;
    let worker = Worker::new(store.clone()).await;
    // The listener connects in the background; until then nothing is cached.
    worker
        .until(Ok("first-value-1111"), Duration::from_secs(10))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.cached_actions() == 0 {
        assert!(Instant::now() < deadline, "the cache never went live");
        worker.api_key().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another process (the CLI) writes.
    host.set("api_key", "second-value-2222", &["--pack", "mypack"]);
    let took = worker
        .until(Ok("second-value-2222"), Duration::from_secs(10))
        .await;
    eprintln!("change by another process seen after {took:?}");

    // A writer that is not this host at all (Attune, psql) deletes the row.
    {
        use sqlx::Executor as _;
        let url = std::env::var("ATTUNE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let schema = host.schema().unwrap();
        let deleted = pool
            .execute(format!("DELETE FROM {schema}.secrets WHERE name = 'api_key'").as_str())
            .await
            .unwrap();
        assert_eq!(deleted.rows_affected(), 1);
    }
    worker.until(Err("NotFound"), Duration::from_secs(10)).await;
    worker.executor.flush().await;
    drop(worker);
    drop(store);
    host.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cache_sees_other_processes_within_the_ttl() {
    let host = Host::new();
    host.set("api_key", "first-value-1111", &["--pack", "mypack"]);
    let ttl = Duration::from_millis(300);
    let store = host.store_cached(Some(ttl)).await;
    let worker = Worker::new(store.clone()).await;
    assert_eq!(worker.api_key().await.unwrap(), "first-value-1111");
    assert_eq!(store.cached_actions(), 1);
    host.set("api_key", "second-value-2222", &["--pack", "mypack"]);
    let wrote = Instant::now();
    worker
        .until(Ok("second-value-2222"), Duration::from_secs(10))
        .await;
    // Seen once the entry expired (allowing for the executions' own time).
    assert!(wrote.elapsed() < ttl + Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_of_concurrent_executions_are_complete_after_flush() {
    let host = Host::new();
    host.set("api_key", "audited-value-3333", &["--pack", "mypack"]);
    let store = host.store_cached(Some(Duration::from_secs(60))).await;
    let worker = Arc::new(Worker::new(store).await);
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let worker = Arc::clone(&worker);
            tokio::spawn(async move { worker.api_key().await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), "audited-value-3333");
    }
    worker.executor.flush().await;
    let out = host.exec(&["audit", "list", "--limit", "1000"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let delivered = listing
        .lines()
        .filter(|l| {
            l.contains("mypack.api_key") && l.contains("get-secret") && l.contains("delivered")
        })
        .count();
    assert_eq!(delivered, 40, "{listing}");
    assert!(!listing.contains("audited-value-3333"));
}

/// A p1 module that spins for a while (about 100 ms of wasm) and exits 0.
fn spinner() -> Vec<u8> {
    wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "_start") (local i64)
               (loop
                 (local.set 0 (i64.add (local.get 0) (i64.const 1)))
                 (br_if 0 (i64.lt_u (local.get 0) (i64.const 200000000))))))"#,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_is_a_clear_error_and_the_next_execution_runs() {
    let runtime = Arc::new(Runtime::new(crate::support::pooled(1)).unwrap());
    let guest = runtime.load("spin.wasm", &spinner()).unwrap();
    let host = Host::new();
    host.set("api_key", "pooled-value-5555", &[]);
    let key = crate::support::key(crate::support::KEY);
    let executor = Arc::new(Executor::new(
        runtime,
        SecretSource::Store(host.store().await),
        Some(key),
        attune_wasm::executor::Strictness::Lenient,
    ));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (executor, guest) = (Arc::clone(&executor), guest.clone());
            tokio::spawn(async move { executor.execute(&guest, execution("p.a", &[])).await })
        })
        .collect();
    let mut full = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(report) => assert_eq!(report.exit.code, 0),
            Err(e) => {
                let text = e.to_string();
                assert!(text.starts_with("too many executions at once"), "{text}");
                full += 1;
            }
        }
    }
    assert!(full >= 1, "three executions at once in a pool of one");
    let report = executor
        .execute(&guest, execution("p.a", &[]))
        .await
        .unwrap();
    assert_eq!(report.exit.code, 0);
    // Only the executions whose guest ran are recorded as having received the secret.
    executor.flush().await;
    let out = host.exec(&["audit", "list", "--limit", "100"], None);
    let delivered = text(&out.stdout)
        .lines()
        .filter(|l| {
            l.contains("api_key")
                && l.contains(" env ")
                && l.contains("delivered")
                && l.ends_with("ended")
        })
        .count();
    assert_eq!(delivered, 3 - full + 1, "{}", text(&out.stdout));
}

#[test]
fn audit_survives_the_runtime_that_started_its_writer() {
    let host = Host::new();
    host.set("api_key", "audited-value-4444", &["--pack", "mypack"]);
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = rt();
    let worker = first.block_on(async {
        let store = host.store().await;
        Worker::new(store).await
    });
    first.block_on(async {
        worker.api_key().await.unwrap();
        worker.executor.flush().await;
    });
    drop(first); // ends the audit writer's task
    for _ in 0..2 {
        rt().block_on(async {
            worker.api_key().await.unwrap();
            worker.executor.flush().await;
        });
    }
    let out = host.exec(&["audit", "list", "--limit", "100"], None);
    let delivered = text(&out.stdout)
        .lines()
        .filter(|l| l.contains("mypack.api_key") && l.contains("get-secret"))
        .count();
    assert_eq!(delivered, 3, "{}", text(&out.stdout));
}

#[test]
fn postgres_cache_stops_serving_when_its_listener_is_gone() {
    let Some(host) = Host::postgres() else {
        return;
    };
    host.set("api_key", "first-value-1111", &["--pack", "mypack"]);
    let first = tokio::runtime::Runtime::new().unwrap();
    let store = first.block_on(async {
        let store = host.store_cached(Some(Duration::from_secs(3600))).await;
        let worker = Worker::new(store.clone()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.cached_actions() == 0 {
            assert!(Instant::now() < deadline, "the cache never went live");
            worker.api_key().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
    });
    drop(first); // cancels the listener task
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        host.set("api_key", "second-value-2222", &["--pack", "mypack"]);
        let worker = Worker::new(store).await;
        // The pool's connections were opened on the dropped runtime: a query on one of them
        // can fail before the pool replaces it (strict mode makes that an error). What must
        // never come back is the old value.
        let mut answer = None;
        for _ in 0..5 {
            match worker.try_api_key().await {
                Ok(got) => {
                    answer = Some(got);
                    break;
                }
                Err(e) => eprintln!("store error after the runtime switch: {e}"),
            }
        }
        assert_eq!(answer.unwrap().unwrap(), "second-value-2222");
        host.drop_schema().await;
    });
}

#[test]
fn a_compilation_cache_others_can_write_is_narrowed_or_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let host = Host::new();
    let cache = host.dir.path().join("data").join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let deploy = crate::support::wasm("deploy-classic", Target::P1);
    let out = host.run(&deploy, "mypack.deploy", &[], &[]);
    crate::support::assert_no_panic(&out);
    let mode = std::fs::metadata(&cache).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "narrowed to the owner");

    // Owned by someone else (possible to arrange only as root): not used at all.
    let nobody = std::process::Command::new("chown")
        .args(["-R", "65534"])
        .arg(&cache)
        .status();
    if nobody.is_ok_and(|s| s.success()) {
        let out = host.run(&deploy, "mypack.deploy", &[], &[]);
        crate::support::assert_no_panic(&out);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("compilation cache off") && stderr.contains("owned by uid 65534"),
            "{stderr}"
        );
    }
}
