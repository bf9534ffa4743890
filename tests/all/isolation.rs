//! Many executions at once through the library API (the worker's use): each sees only its own
//! scope, guest memory starts clean, and the get-secret budget holds.

use std::sync::Arc;

use attune_wasm::executor::{Executor, SecretSource};
use attune_wasm::runtime::{Pooling, Runtime, RuntimeConfig};
use attune_wasm::secrets::names::{Owner, PackRef};

use crate::support::{probe, probe_execution as execution, Host, Target};

fn pooled() -> RuntimeConfig {
    let mut config = RuntimeConfig::default();
    config.pooling = Some(Pooling::default());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_executions_see_only_their_own_scope() {
    const PACKS: usize = 10;
    let host = Host::new();
    for k in 0..PACKS {
        let pack = Owner::Pack(PackRef::new(&format!("p{k}")).unwrap());
        host.put_raw(pack.clone(), "mine", false, None, &format!("value-of-p{k}"))
            .await;
        host.put_raw(
            pack,
            &format!("only_p{k}"),
            false,
            None,
            &format!("private-of-p{k}"),
        )
        .await;
    }
    // The worker's settings: pooled instance slots (reused between executions), cached rows.
    let runtime = Arc::new(Runtime::new(pooled()).unwrap());
    let guest = runtime
        .load("probe.wasm", &std::fs::read(probe(Target::P2)).unwrap())
        .unwrap();
    let executor = Arc::new(Executor::new(
        runtime,
        SecretSource::Store(
            host.store_cached(Some(std::time::Duration::from_secs(60)))
                .await,
        ),
        None,
        attune_wasm::executor::Strictness::Lenient,
    ));
    let names: Vec<String> = std::iter::once("mine".to_owned())
        .chain((0..PACKS).map(|k| format!("only_p{k}")))
        .collect();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (executor, guest, names) = (Arc::clone(&executor), guest.clone(), names.clone());
            tokio::spawn(async move {
                let k = i % PACKS;
                let mut args = vec!["get"];
                args.extend(names.iter().map(String::as_str));
                let report = executor
                    .execute(&guest, execution(&format!("p{k}.a{i}"), &args))
                    .await
                    .unwrap();
                assert_eq!(report.exit.code, 0);
                let out: serde_json::Value =
                    serde_json::from_slice(report.exit.stdout.as_deref().unwrap()).unwrap();
                (k, out)
            })
        })
        .collect();
    let mut cross = 0;
    for task in tasks {
        let (k, out) = task.await.unwrap();
        assert_eq!(out["mine"]["value"], format!("value-of-p{k}"));
        for other in 0..PACKS {
            let entry = &out[format!("only_p{other}")];
            if other == k {
                assert_eq!(entry["value"], format!("private-of-p{k}"));
            } else if entry.get("value").is_some() {
                cross += 1;
            }
        }
    }
    assert_eq!(cross, 0, "no execution saw another pack's secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_memory_never_carries_data_from_a_previous_execution() {
    // Traps if its memory is not zero where it writes a marker; run many times, also at once.
    let wasm = wat::parse_str(
        r#"(module
             (memory (export "memory") 2)
             (func (export "_start")
               (if (i32.ne (i32.load (i32.const 65536)) (i32.const 0)) (then unreachable))
               (i32.store (i32.const 65536) (i32.const 0x5ec2e7))))"#,
    )
    .unwrap();
    // Pooled: slots, and their memories, are reused across executions; each must start zeroed.
    let runtime = Arc::new(Runtime::new(pooled()).unwrap());
    let guest = runtime.compile("marker.wasm", &wasm).unwrap();
    let executor = Arc::new(Executor::new(
        runtime,
        SecretSource::Missing("test".into()),
        None,
        attune_wasm::executor::Strictness::Lenient,
    ));
    for round in 0..3 {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (executor, guest) = (Arc::clone(&executor), guest.clone());
                tokio::spawn(async move { executor.execute(&guest, execution("p.a", &[])).await })
            })
            .collect();
        for task in tasks {
            let report = task
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(report.exit.code, 0);
        }
    }
}

#[test]
fn a_million_get_secret_calls_hit_the_budget_not_the_host() {
    let host = Host::new();
    host.set("k", "budget-value", &[]);
    let out = host.run(&probe(Target::P2), "p.a", &[], &["hammer", "1000000", "k"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::text(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts["Ok"], 10_000);
    assert_eq!(counts["AccessDenied"], 990_000);
    let audit = crate::support::text(&host.exec(&["audit", "list"], None).stdout);
    assert!(
        audit.contains("990000") && audit.contains("10000"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_results_are_masked_too() {
    let host = Host::new();
    host.put_raw(
        Owner::Pack(PackRef::new("p").unwrap()),
        "tok",
        false,
        None,
        "result-secret-77aa",
    )
    .await;
    let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).unwrap());
    let guest = runtime
        .compile("probe.wasm", &std::fs::read(probe(Target::P2)).unwrap())
        .unwrap();
    let executor = Executor::new(
        runtime,
        SecretSource::Store(host.store().await),
        None,
        attune_wasm::executor::Strictness::Lenient,
    );
    let mut exec = execution("p.a", &["show", "tok"]);
    exec.redact = true;
    let report = executor.execute(&guest, exec).await.unwrap();
    let stdout = String::from_utf8_lossy(report.exit.stdout.as_deref().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(report.exit.stderr.as_deref().unwrap()).into_owned();
    assert_eq!(stdout, "raw:***\nb64:***\nsplit:***\n");
    assert!(stderr.contains("stderr:***") && !format!("{report:?}").contains("result-secret"));
}
