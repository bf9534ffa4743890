//! The host's benchmarks (criterion; `cargo bench -p attune-wasm`, results in BENCHMARKS.md).
//! Each measurement sits beside its baseline, measured in the same run; the ids are stable so
//! results compare across changes:
//!
//! - `execution/component_3_secrets` vs `execution/component_bare`: one execution of
//!   `examples/bench-action` (a WASI p2 component asking for three secrets through
//!   `get-secret`) through the [`Executor`] (resolution from a cached SQLite store, decryption,
//!   masking, audit) vs the same component in plain wasmtime with the same engine (no
//!   secrets: `get-secret` answers `not-found`);
//! - `execution/p1_3_secrets` vs `execution/p1_bare`: the same for the wasm32-wasip1 build
//!   (secrets through `SECRET_*`);
//! - `execution/wasmtime_cli`: the p1 build run by `wasmtime run --env SECRET_…` as a process
//!   (skipped with a message when `wasmtime` is not on PATH), and `execution/spawn_true`:
//!   spawning `/bin/true`;
//! - `resolve/sqlite`, `resolve/postgres`: one execution's lookup (3 levels, 20 secrets:
//!   query, resolution, decryption of the 14 winners), no row cache; `resolve/sqlite_cached`
//!   with it (PostgreSQL skipped with a message when not reachable);
//! - `crypto/decrypt/{32B,64KiB}` vs `crypto/aes_gcm/{32B,64KiB}`: [`EncryptionKey::decrypt`]
//!   of a stored value vs one raw `aes-gcm` decryption of the same bytes;
//! - `redact/patterns_3`, `redact/automaton_3`, `redact/mask_line_3` vs `redact/copy_line`:
//!   collecting the masked forms of three secrets (every execution), that plus building their
//!   automaton and masking a line that holds one (executions that print a secret), and masking
//!   a clean line vs copying it; `redact/clean_100_lines_3` vs `redact/copy_100_lines`: a whole
//!   execution's masking (forms, stream) of 100 lines that hold no secret vs copying them;
//! - `cold_start/compile` vs `cold_start/disk_cache` vs `cold_start/memory_cache`: getting a
//!   runnable guest for a component never seen by the process, with the host's on-disk cache
//!   warm (entry checked and its HMAC verified, then deserialized), and from
//!   [`Runtime::load`]'s in-memory cache;
//! - `throughput/2_workers`: executions per second of `component_3_secrets` on two tokio
//!   workers.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use attune_wasm::executor::{Execution, Executor, SecretSource};
use attune_wasm::runtime::{
    Guest, Output, Pooling, Runtime, RuntimeConfig, SecretError, SECRETS_INTERFACE,
};
use attune_wasm::secrets::crypto::EncryptionKey;
use attune_wasm::secrets::names::{ActionRef, Owner, PackRef, SecretName};
use attune_wasm::store::{KeyHash, NewSecret, OpenMode, Store, StoreOptions, StoredValue};
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use secrecy::SecretString;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

const PASSWORD: &str = "benchmark-password-0123456789abcdefghijkl";
const ACTION: &str = "mypack.deploy";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds `examples/bench-action` for both targets (release) and returns (p2, p1) paths.
fn bench_action() -> (PathBuf, PathBuf) {
    let examples = root().join("examples");
    let target = examples.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&examples)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .args(["build", "--release", "-p", "bench-action"])
        .args(["--target", "wasm32-wasip2", "--target", "wasm32-wasip1"])
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building examples/bench-action failed (run scripts/setup.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = |triple: &str| {
        target
            .join(triple)
            .join("release")
            .join("bench-action.wasm")
    };
    (at("wasm32-wasip2"), at("wasm32-wasip1"))
}

fn engine_config() -> RuntimeConfig {
    let mut pooling = Pooling::default();
    pooling.executions = 32;
    let mut config = RuntimeConfig::default();
    config.pooling = Some(pooling);
    config
}

fn key() -> EncryptionKey {
    EncryptionKey::from_password(&SecretString::from(PASSWORD)).unwrap()
}

fn secret(key: &EncryptionKey, owner: Owner, name: &str, value: &str) -> NewSecret {
    let name = SecretName::new(name).unwrap();
    let value = key.encrypt(
        &SecretString::from(value),
        &attune_wasm::store::binding(&owner, &name),
    );
    NewSecret {
        owner,
        name,
        value: StoredValue::encrypted(value, Some(KeyHash::of(key))),
    }
}

/// A SQLite store (in `dir`) holding the three secrets `bench-action` asks for, one per level.
async fn store_with_3(dir: &Path, cache_ttl: Option<Duration>) -> Store {
    let mut options = StoreOptions::new(format!("sqlite://{}", dir.join("secrets.db").display()));
    options.cache_ttl = cache_ttl;
    let store = Store::open_with(&options, OpenMode::CreateIfMissing)
        .await
        .unwrap();
    let key = key();
    let action = ActionRef::new(ACTION).unwrap();
    store
        .put_many(&[
            secret(&key, Owner::System, "region", "eu-west-1-benchmark"),
            secret(
                &key,
                Owner::Pack(PackRef::new("mypack").unwrap()),
                "api_key",
                "sk-benchmark-0123456789abcdef",
            ),
            secret(
                &key,
                Owner::Action(action),
                "db_password",
                "hunter2-but-longer",
            ),
        ])
        .await
        .unwrap();
    store
}

/// 20 secrets over 3 levels for `mypack.deploy`: 8 system, 6 pack (2 overriding system),
/// 6 action (2 overriding pack, 2 overriding system): 14 winners.
async fn store_with_20(options: &StoreOptions) -> Store {
    let store = Store::open_with(options, OpenMode::CreateIfMissing)
        .await
        .unwrap();
    let key = key();
    let pack = || Owner::Pack(PackRef::new("mypack").unwrap());
    let action = || Owner::Action(ActionRef::new(ACTION).unwrap());
    let mut rows = Vec::new();
    for i in 0..8 {
        rows.push(secret(
            &key,
            Owner::System,
            &format!("s{i}"),
            "system-value-32-bytes-long-abcd",
        ));
    }
    for i in 0..6 {
        let name = if i < 2 {
            format!("s{i}")
        } else {
            format!("p{i}")
        };
        rows.push(secret(
            &key,
            pack(),
            &name,
            "pack-value-32-bytes-long-abcdefg",
        ));
    }
    for i in 0..6 {
        let name = match i {
            0 | 1 => format!("p{}", i + 2),
            2 | 3 => format!("s{}", i + 2),
            _ => format!("a{i}"),
        };
        rows.push(secret(
            &key,
            action(),
            &name,
            "action-value-32-bytes-long-abcde",
        ));
    }
    store.put_many(&rows).await.unwrap();
    store
}

fn execution(stdout: usize) -> Execution {
    let mut execution = Execution::new(ActionRef::new(ACTION).unwrap(), "bench-action.wasm");
    execution.stdout = Output::Capture(stdout);
    execution.stderr = Output::Capture(stdout);
    execution
}

/// State of the plain-wasmtime baseline.
struct Bare {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// The component in plain wasmtime on `engine`: WASI p2 plus a `get-secret` that answers
/// `not-found`, empty environment, captured stdout, an epoch deadline like the host's.
struct BareComponent {
    engine: wasmtime::Engine,
    pre: CommandPre<Bare>,
}

impl BareComponent {
    fn new(engine: &wasmtime::Engine, bytes: &[u8]) -> Self {
        let mut linker = wasmtime::component::Linker::<Bare>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        linker
            .instance(SECRETS_INTERFACE)
            .unwrap()
            .func_wrap(
                "get-secret",
                |_: wasmtime::StoreContextMut<'_, Bare>, (_name,): (String,)| {
                    Ok((Err::<String, SecretError>(SecretError::NotFound),))
                },
            )
            .unwrap();
        let component = wasmtime::component::Component::new(engine, bytes).unwrap();
        let pre = CommandPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Self {
            engine: engine.clone(),
            pre,
        }
    }

    async fn run(&self) -> usize {
        let stdout = MemoryOutputPipe::new(64 * 1024);
        let ctx = WasiCtxBuilder::new()
            .args(&["bench-action.wasm"])
            .stdout(stdout.clone())
            .build();
        let mut store = wasmtime::Store::new(
            &self.engine,
            Bare {
                ctx,
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(3_000);
        let command = self.pre.instantiate_async(&mut store).await.unwrap();
        command
            .wasi_cli_run()
            .call_run(&mut store)
            .await
            .unwrap()
            .unwrap();
        stdout.contents().len()
    }
}

/// The core module in plain wasmtime: WASI p1, empty environment, captured stdout.
struct BareModule {
    engine: wasmtime::Engine,
    pre: wasmtime::InstancePre<wasmtime_wasi::p1::WasiP1Ctx>,
}

impl BareModule {
    fn new(engine: &wasmtime::Engine, bytes: &[u8]) -> Self {
        let mut linker = wasmtime::Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| s).unwrap();
        let module = wasmtime::Module::new(engine, bytes).unwrap();
        Self {
            engine: engine.clone(),
            pre: linker.instantiate_pre(&module).unwrap(),
        }
    }

    async fn run(&self) -> usize {
        let stdout = MemoryOutputPipe::new(64 * 1024);
        let ctx = WasiCtxBuilder::new()
            .args(&["bench-action.wasm"])
            .stdout(stdout.clone())
            .build_p1();
        let mut store = wasmtime::Store::new(&self.engine, ctx);
        store.set_epoch_deadline(3_000);
        let instance = self.pre.instantiate_async(&mut store).await.unwrap();
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .unwrap();
        start.call_async(&mut store, ()).await.unwrap();
        stdout.contents().len()
    }
}

/// One execution through the executor; checks that all three secrets arrived.
async fn execute(executor: &Executor, guest: &Guest) {
    let report = executor.execute(guest, execution(64 * 1024)).await.unwrap();
    assert_eq!(report.exit.code, 0);
    assert_eq!(
        report.exit.stdout.as_deref(),
        Some(&b"bench-action: 3 secrets\n"[..])
    );
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn executions(c: &mut Criterion) {
    let (p2, p1) = bench_action();
    let (p2, p1) = (std::fs::read(p2).unwrap(), std::fs::read(p1).unwrap());
    let rt = current_thread();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(store_with_3(dir.path(), Some(Duration::from_secs(3600))));
    let runtime = Arc::new(Runtime::new(engine_config()).unwrap());
    let component = runtime.load("bench-action.wasm", &p2).unwrap();
    let module = runtime.load("bench-action.wasm", &p1).unwrap();
    let bare_component = BareComponent::new(runtime.engine(), &p2);
    let bare_module = BareModule::new(runtime.engine(), &p1);
    let executor = Executor::new(
        Arc::clone(&runtime),
        SecretSource::Store(store),
        Some(key()),
        attune_wasm::executor::Strictness::Lenient,
    );

    let mut group = c.benchmark_group("execution");
    group.bench_function("component_3_secrets", |b| {
        b.to_async(&rt).iter(|| execute(&executor, &component));
    });
    group.bench_function("component_bare", |b| {
        b.to_async(&rt).iter(|| bare_component.run());
    });
    group.bench_function("p1_3_secrets", |b| {
        b.to_async(&rt).iter(|| execute(&executor, &module));
    });
    group.bench_function("p1_bare", |b| {
        b.to_async(&rt).iter(|| bare_module.run());
    });
    rt.block_on(executor.flush());

    match Command::new("wasmtime").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let cache = tempfile::tempdir().unwrap();
            let file = dir.path().join("bench-action-p1.wasm");
            std::fs::write(&file, &p1).unwrap();
            group.bench_function("wasmtime_cli", |b| {
                b.iter(|| {
                    let out = Command::new("wasmtime")
                        .env_clear()
                        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                        .env("XDG_CACHE_HOME", cache.path())
                        .arg("run")
                        .args(["--env", "SECRET_API_KEY=sk-benchmark-0123456789abcdef"])
                        .args(["--env", "SECRET_DB_PASSWORD=hunter2-but-longer"])
                        .args(["--env", "SECRET_REGION=eu-west-1-benchmark"])
                        .arg(&file)
                        .output()
                        .unwrap();
                    assert_eq!(out.stdout, b"bench-action: 3 secrets\n");
                });
            });
        }
        _ => eprintln!(
            "execution/wasmtime_cli skipped: no `wasmtime` on PATH (scripts/setup.sh installs it)"
        ),
    }
    group.bench_function("spawn_true", |b| {
        b.iter(|| {
            assert!(Command::new("/bin/true").status().unwrap().success());
        });
    });
    group.finish();
}

fn postgres_options() -> Option<StoreOptions> {
    let url = std::env::var("ATTUNE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if std::env::var("ATTUNE_TEST_POSTGRES").as_deref() == Ok("skip") {
        return None;
    }
    let mut options = StoreOptions::new(url);
    options.schema = format!("bench_{}", std::process::id());
    Some(options)
}

fn resolve(c: &mut Criterion) {
    let rt = current_thread();
    let dir = tempfile::tempdir().unwrap();
    let action = ActionRef::new(ACTION).unwrap();
    let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).unwrap());
    let sqlite = StoreOptions::new(format!("sqlite://{}", dir.path().join("s.db").display()));
    let mut sqlite_cached = sqlite.clone();
    sqlite_cached.cache_ttl = Some(Duration::from_secs(3600));

    let mut group = c.benchmark_group("resolve");
    let mut bench = |id: &str, options: &StoreOptions| {
        let store = rt.block_on(store_with_20(options));
        let executor = Executor::new(
            Arc::clone(&runtime),
            SecretSource::Store(store),
            Some(key()),
            attune_wasm::executor::Strictness::Strict,
        );
        assert_eq!(rt.block_on(executor.resolve(&action)).unwrap().len(), 14);
        group.bench_function(id, |b| {
            b.to_async(&rt).iter(|| executor.resolve(&action));
        });
    };
    bench("sqlite", &sqlite);
    bench("sqlite_cached", &sqlite_cached);
    match postgres_options() {
        Some(options) => {
            let reachable = rt.block_on(Store::open_with(&options, OpenMode::CreateIfMissing));
            match reachable {
                Ok(_) => {
                    bench("postgres", &options);
                    rt.block_on(drop_schema(&options));
                }
                Err(e) => eprintln!("resolve/postgres skipped: {e}"),
            }
        }
        None => eprintln!("resolve/postgres skipped: ATTUNE_TEST_POSTGRES=skip"),
    }
    group.finish();
}

async fn drop_schema(options: &StoreOptions) {
    use sqlx::Executor as _;
    if let Ok(pool) = sqlx::PgPool::connect(&options.url).await {
        let _ = pool
            .execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", options.schema).as_str())
            .await;
    }
}

fn crypto(c: &mut Criterion) {
    let key = key();
    let raw_key: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(PASSWORD.as_bytes()).into()
    };
    let mut group = c.benchmark_group("crypto");
    for (label, len) in [("32B", 32usize), ("64KiB", 64 * 1024)] {
        let value: String = "s".repeat(len);
        // The bound format, as the host writes it; the baseline decrypts the same bytes with
        // the same associated data.
        let row = attune_wasm::secrets::crypto::Binding {
            owner_type: "pack",
            owner: "mypack",
            name: "api_key",
        };
        let stored = key.encrypt(&SecretString::from(value.clone()), &row);
        let aad = row.aad(key.key_hash());
        let (nonce_b64, sealed_b64) = stored
            .strip_prefix(attune_wasm::secrets::crypto::BOUND_PREFIX)
            .unwrap()
            .split_once(':')
            .unwrap();
        let nonce = base64::engine::general_purpose::STANDARD
            .decode(nonce_b64)
            .unwrap();
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(sealed_b64)
            .unwrap();
        let hash = key.key_hash().to_owned();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("decrypt", label), |b| {
            b.iter(|| key.decrypt(&stored, Some(&hash), &row).unwrap());
        });
        group.bench_function(BenchmarkId::new("aes_gcm", label), |b| {
            let cipher = Aes256Gcm::new_from_slice(&raw_key).unwrap();
            b.iter(|| {
                cipher
                    .decrypt(
                        Nonce::from_slice(&nonce),
                        aes_gcm::aead::Payload {
                            msg: sealed.as_slice(),
                            aad: &aad,
                        },
                    )
                    .unwrap()
            });
        });
    }
    group.finish();
}

fn redact(c: &mut Criterion) {
    use attune_wasm::secrets::redact::{Patterns, Stream};
    let values = [
        "eu-west-1-benchmark",
        "sk-benchmark-0123456789abcdef",
        "hunter2-but-longer",
    ];
    let line: &[u8] = b"bench-action: 3 secrets\n";
    let lines: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("step {i}: deployed service-{i} to staging, took {i} ms\n").into_bytes())
        .collect();
    let mut group = c.benchmark_group("redact");
    // Baselines: passing the output on without masking.
    group.bench_function("copy_line", |b| {
        b.iter(|| std::hint::black_box(line).to_vec());
    });
    group.bench_function("copy_100_lines", |b| {
        b.iter(|| {
            lines
                .iter()
                .map(|l| std::hint::black_box(l.as_slice()).to_vec().len())
                .sum::<usize>()
        });
    });
    group.bench_function("patterns_3", |b| {
        b.iter(|| Patterns::new(values));
    });
    // A line holding a secret: the automaton is built (once per execution, on first need).
    group.bench_function("automaton_3", |b| {
        b.iter(|| Patterns::new(values).mask_all(b"key=hunter2-but-longer\n"));
    });
    let patterns = Patterns::new(values);
    group.bench_function("mask_line_3", |b| {
        b.iter(|| patterns.mask_all(line));
    });
    // A whole execution that prints 100 lines and no secret: forms, stream, lines.
    group.bench_function("clean_100_lines_3", |b| {
        b.iter(|| {
            let mut stream = Stream::new(Patterns::new(values));
            let mut n = 0;
            for l in &lines {
                n += stream.push(l).len();
            }
            n + stream.finish().len()
        });
    });
    group.finish();
}

fn cold_start(c: &mut Criterion) {
    let (p2, _) = bench_action();
    let bytes = std::fs::read(p2).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let uncached = Runtime::new(engine_config()).unwrap();
    let mut config = engine_config();
    config.cache_dir = Some(cache.path().to_path_buf());
    let cached = Runtime::new(config).unwrap();
    cached.compile("bench-action.wasm", &bytes).unwrap(); // fills the disk cache
    uncached.load("bench-action.wasm", &bytes).unwrap();

    let mut group = c.benchmark_group("cold_start");
    group.sample_size(10);
    group.bench_function("compile", |b| {
        b.iter(|| uncached.compile("bench-action.wasm", &bytes).unwrap());
    });
    group.bench_function("disk_cache", |b| {
        b.iter(|| cached.compile("bench-action.wasm", &bytes).unwrap());
    });
    group.bench_function("memory_cache", |b| {
        b.iter(|| uncached.load("bench-action.wasm", &bytes).unwrap());
    });
    group.finish();
}

fn throughput(c: &mut Criterion) {
    const PER_WORKER: u64 = 500;
    let (p2, _) = bench_action();
    let bytes = std::fs::read(p2).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(store_with_3(dir.path(), Some(Duration::from_secs(3600))));
    let runtime = Arc::new(Runtime::new(engine_config()).unwrap());
    let guest = runtime.load("bench-action.wasm", &bytes).unwrap();
    let executor = Arc::new(Executor::new(
        runtime,
        SecretSource::Store(store),
        Some(key()),
        attune_wasm::executor::Strictness::Lenient,
    ));
    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Elements(2 * PER_WORKER));
    group.bench_function("2_workers", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (executor, guest) = (Arc::clone(&executor), guest.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let workers: Vec<_> = (0..2)
                        .map(|_| {
                            let (executor, guest) = (Arc::clone(&executor), guest.clone());
                            tokio::spawn(async move {
                                for _ in 0..PER_WORKER {
                                    execute(&executor, &guest).await;
                                }
                            })
                        })
                        .collect();
                    for worker in workers {
                        worker.await.unwrap();
                    }
                }
                // Audit records are part of the work: count their writing.
                executor.flush().await;
                start.elapsed()
            }
        });
    });
    group.finish();
}

criterion_group!(benches, executions, resolve, crypto, redact, cold_start, throughput);
criterion_main!(benches);
