//! The sandbox: what a guest can and cannot reach, and the limits that stop it.

use std::time::{Duration, Instant};

use crate::support::{probe, run_cmd, text, Host, Target};

const ACTION: &str = "mypack.deploy";

/// The status the probe's failing commands (`exit(2)`) end with: Rust's wasip2 std reports
/// every non-zero exit as 1 through `wasi:cli/exit`.
fn failed(target: Target) -> i32 {
    match target {
        Target::P1 => 2,
        Target::P2 => 1,
    }
}

#[test]
fn n14_host_environment_never_reaches_a_guest() {
    let host = Host::new();
    host.set("api_key", "k", &[]);
    for target in [Target::P1, Target::P2] {
        let mut c = host.cmd();
        c.env("AWS_SECRET_ACCESS_KEY", "canary-4f1d")
            .env("HOME", "/root")
            .env("PATH", "/usr/bin")
            .arg("run")
            .arg(probe(target))
            .args(["--action", ACTION, "--", "env"]);
        let out = run_cmd(&mut c, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let env: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&out.stdout).unwrap();
        let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "ATTUNE_ACTION_REF",
                "ATTUNE_EXECUTION_ID",
                "ATTUNE_PACK_REF",
                "SECRET_API_KEY"
            ],
            "exactly the resolved secrets plus documented metadata"
        );
        assert!(!text(&out.stdout).contains("canary-4f1d"));
    }
}

#[test]
fn env_flag_adds_variables_and_reserved_names_are_refused() {
    let host = Host::new();
    let out = host.run(
        &probe(Target::P2),
        ACTION,
        &["--env", "MODE=fast", "--env", "MODE=slow"],
        &["env"],
    );
    let env: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(env["MODE"], "slow", "later --env wins, no duplicates");
    for bad in ["SECRET_API_KEY=spoof", "ATTUNE_ACTION_REF=other.action"] {
        let out = host.run(&probe(Target::P2), ACTION, &["--env", bad], &["env"]);
        assert_eq!(out.status.code(), Some(125), "{bad}");
        assert!(text(&out.stderr).contains("reserved"));
    }
}

#[test]
fn no_filesystem_without_dir_and_a_mounted_dir_with_it() {
    let host = Host::new();
    let shared = host.dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hello from the host").unwrap();
    for target in [Target::P1, Target::P2] {
        for path in ["/etc/passwd", "/data/hello.txt", "hello.txt"] {
            let out = host.run(&probe(target), ACTION, &[], &["read", path]);
            assert_eq!(
                out.status.code(),
                Some(failed(target)),
                "{target:?} {path} must be unreadable"
            );
        }
        let out = host.run(&probe(target), ACTION, &[], &["ls", "/"]);
        assert_eq!(out.status.code(), Some(failed(target)));
        let dir = format!("{}::/data", shared.display());
        let out = host.run(
            &probe(target),
            ACTION,
            &["--dir", &dir],
            &["read", "/data/hello.txt"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello from the host");
        // The mount does not open the rest of the host.
        let out = host.run(
            &probe(target),
            ACTION,
            &["--dir", &dir],
            &["read", "/data/../../etc/passwd"],
        );
        assert_eq!(out.status.code(), Some(failed(target)));
    }
}

#[test]
fn compiled_code_is_cached_privately_in_the_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new();
    let cache = host.dir.path().join("data").join("cache");
    let out = host.run(&probe(Target::P2), ACTION, &["--no-cache"], &["exit", "0"]);
    assert!(out.status.success());
    assert!(!cache.exists(), "--no-cache writes no cache");
    for _ in 0..2 {
        let out = host.run(&probe(Target::P2), ACTION, &[], &["exit", "0"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "cache dir {mode:o}");
    assert!(
        host.stored_files().iter().any(|p| p.starts_with(&cache)),
        "compiled code was cached"
    );
}

#[test]
fn read_only_mounts_cannot_be_written() {
    let host = Host::new();
    let shared = host.dir.path().join("ro");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("config.txt"), "original").unwrap();
    for target in [Target::P1, Target::P2] {
        let ro = format!("{}::/ro", shared.display());
        let out = host.run(
            &probe(target),
            ACTION,
            &["--dir-ro", &ro],
            &["read", "/ro/config.txt"],
        );
        assert_eq!(text(&out.stdout), "original", "{target:?} reads");
        for path in ["/ro/config.txt", "/ro/new.txt"] {
            let out = host.run(
                &probe(target),
                ACTION,
                &["--dir-ro", &ro],
                &["write", path, "changed"],
            );
            assert_eq!(out.status.code(), Some(failed(target)), "{target:?} {path}");
        }
        assert_eq!(
            std::fs::read_to_string(shared.join("config.txt")).unwrap(),
            "original"
        );
        assert!(!shared.join("new.txt").exists());
        // The same directory read-write can be written.
        let rw = format!("{}::/rw", shared.display());
        let out = host.run(
            &probe(target),
            ACTION,
            &["--dir", &rw],
            &["write", "/rw/new.txt", "made"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::remove_file(shared.join("new.txt")).unwrap();
    }
}

#[test]
fn timeout_stops_an_infinite_loop_with_a_clear_error() {
    let host = Host::new();
    host.set("api_key", "long-enough-to-mask", &[]);
    for target in [Target::P1, Target::P2] {
        let started = Instant::now();
        let out = host.run_redacted(&probe(target), ACTION, &["--timeout", "300ms"], &["spin"]);
        assert_eq!(out.status.code(), Some(124), "{target:?}");
        let err = text(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("timed out after 300ms"), "{err}");
        // Generous bound: the point is that it stops, not how fast (no timing assertions).
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}

#[test]
fn memory_limit_stops_growth_with_a_clear_error() {
    let host = Host::new();
    for target in [Target::P1, Target::P2] {
        let out = host.run(
            &probe(target),
            ACTION,
            &["--max-memory", "32MiB"],
            &["alloc", "64"],
        );
        assert_eq!(out.status.code(), Some(134), "{target:?}");
        let err = text(&out.stderr);
        assert!(err.contains("memory limit of 33554432 bytes"), "{err}");
        // Under the limit the same guest succeeds.
        let out = host.run(
            &probe(target),
            ACTION,
            &["--max-memory", "64MiB"],
            &["alloc", "8"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

#[test]
fn fuel_limits_work_and_deep_recursion_traps_cleanly() {
    let host = Host::new();
    let out = host.run(&probe(Target::P2), ACTION, &["--fuel", "100000"], &["spin"]);
    assert_eq!(out.status.code(), Some(134));
    assert!(
        text(&out.stderr).contains("out of fuel"),
        "{}",
        text(&out.stderr)
    );
    let out = host.run(&probe(Target::P1), ACTION, &[], &["recurse"]);
    assert_eq!(out.status.code(), Some(134));
    assert!(
        text(&out.stderr).contains("trapped"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exit_status_stdin_and_args_pass_through() {
    let host = Host::new();
    let out = host.run(&probe(Target::P1), ACTION, &[], &["exit", "7"]);
    assert_eq!(out.status.code(), Some(7));
    // Rust's wasip2 std reports every non-zero exit as 1 through wasi:cli/exit.
    let out = host.run(&probe(Target::P2), ACTION, &[], &["exit", "7"]);
    assert_eq!(out.status.code(), Some(1));
    for target in [Target::P1, Target::P2] {
        let mut c = host.cmd();
        c.arg("run")
            .arg(probe(target))
            .args(["--action", ACTION, "--", "stdin"]);
        let out = run_cmd(&mut c, Some(b"{\"param\": 1}"));
        assert_eq!(text(&out.stdout), "{\"param\": 1}");
    }
}

#[test]
fn bad_files_and_unknown_imports_are_refused_before_running() {
    let host = Host::new();
    let dir = host.dir.path();
    let not_wasm = dir.join("script.wasm");
    std::fs::write(&not_wasm, "#!/bin/sh\necho hi\n").unwrap();
    let out = host.run(&not_wasm, ACTION, &[], &[]);
    assert_eq!(out.status.code(), Some(125));
    // Named by the path as given, not just its file name.
    let expected = format!("{} is not a WebAssembly binary", not_wasm.display());
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );

    let truncated = dir.join("truncated.wasm");
    let full = std::fs::read(probe(Target::P2)).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let out = host.run(&truncated, ACTION, &[], &[]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("cannot compile"),
        "{}",
        text(&out.stderr)
    );

    let evil = dir.join("evil.wasm");
    std::fs::write(
        &evil,
        wat::parse_str(r#"(module (import "host" "read_secrets_file" (func)) (memory (export "memory") 1) (func (export "_start")))"#).unwrap(),
    )
    .unwrap();
    let out = host.run(&evil, ACTION, &[], &[]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("host") && err.contains("read_secrets_file"),
        "{err}"
    );

    let no_run = dir.join("lib.wasm");
    std::fs::write(&no_run, wat::parse_str("(component)").unwrap()).unwrap();
    let out = host.run(&no_run, ACTION, &[], &[]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("wasi:cli/run"));

    let out = host.run(&probe(Target::P2), "not-an-action-ref", &[], &[]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("pack.action"));
}

#[test]
fn missing_store_warns_and_runs_unless_strict() {
    let host = Host::new();
    let out = host.run(&probe(Target::P2), ACTION, &[], &["get", "api_key"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("running without secrets"),
        "{}",
        text(&out.stderr)
    );
    assert!(!host.db_path().exists(), "run does not create a store");
    let out = host.run(
        &probe(Target::P2),
        ACTION,
        &["--strict-secrets"],
        &["get", "api_key"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("strict"));
    // The config switch does the same.
    let mut c = host.cmd();
    c.env("ATTUNE__SECURITY__STRICT_SECRETS", "true")
        .arg("run")
        .arg(probe(Target::P2))
        .args(["--action", ACTION]);
    assert_eq!(run_cmd(&mut c, None).status.code(), Some(125));
}

#[test]
fn each_execution_has_its_own_id() {
    let host = Host::new();
    let a = host.env(Target::P2, ACTION);
    let b = host.env(Target::P2, ACTION);
    assert_ne!(a["ATTUNE_EXECUTION_ID"], b["ATTUNE_EXECUTION_ID"]);
    assert_eq!(a["ATTUNE_PACK_REF"], "mypack");
}
