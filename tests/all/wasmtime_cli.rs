//! Differential tests against the real wasmtime CLI (`wasmtime run`, same version as the host):
//! each case runs an action under `attune-wasm run` with secrets stored, and under
//! `wasmtime run --env SECRET_…=…` with the variables the host should inject, and requires the
//! same stdout and exit status. Component actions run under wasmtime composed with
//! `examples/secrets-adapter` (`wac plug`), which answers `get-secret` from `SECRET_*`.
//!
//! Every case also checks the expected status and what the guest received, so two runtimes that
//! failed the same way do not pass. Needs `wasmtime` and `wac` (scripts/setup.sh);
//! `ATTUNE_TEST_WASMTIME_CLI=skip` skips.
//!
//! Known difference, pinned by the last test: the adapter only sees variables, so it cannot
//! tell names apart that map to the same one (`db-password`/`db_password`, `API_KEY`/`api_key`),
//! while the host's `get-secret` matches names exactly. The cases use exact stored names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::external::{WAC, WASMTIME};
use crate::support::{assert_no_panic, run_cmd, text, wasm, Host, Target};

/// Execution id given to wasmtime when the guest does not print attune-wasm's.
const EXECUTION_ID: &str = "00000000-0000-4000-8000-000000000000";

/// One action run under both runtimes, and what both must give.
struct Case<'a> {
    /// What the case shows (named when it fails).
    what: &'a str,
    /// `pack.action`.
    action: &'a str,
    /// Secrets stored in attune-wasm: (name, value, owner arguments of `secret set`).
    stored: &'a [(&'a str, &'a str, &'a [&'a str])],
    /// What wasmtime gets instead: the `SECRET_*` variables the host should resolve and inject.
    env: &'a [(&'a str, &'a str)],
    /// And the configuration variables (`-S config-var=K=V`) its `wasi:config/store` should
    /// answer with: what the host should resolve for the action.
    config: &'a [(&'a str, &'a str)],
    /// Guest arguments.
    args: &'a [&'a str],
    /// Parameters on stdin.
    stdin: &'a [u8],
    /// The exit status both runtimes must give.
    status: i32,
    /// What the guest must have received, checked on attune-wasm's output (wasmtime's stdout
    /// is the same): so that two runtimes failing the same way do not pass.
    check: &'a dyn Fn(&Output),
}

/// Checks nothing beyond the status and the comparison.
fn no_check(_: &Output) {}

/// The wasmtime CLI and wac, with a private CLI cache; `None` when skipped.
struct Cli {
    wasmtime: PathBuf,
    wac: PathBuf,
    /// `XDG_CACHE_HOME` for `wasmtime run` (its compile cache) and the composed components.
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Option<Self> {
        let wasmtime = WASMTIME.require()?;
        let wac = WAC.require()?;
        Some(Self {
            wasmtime,
            wac,
            dir: tempfile::tempdir().expect("tempdir"),
        })
    }

    /// `wac plug ACTION --plug secrets-adapter`: the action with `get-secret` answered from the
    /// WASI environment.
    fn compose(&self, action: &Path) -> PathBuf {
        let adapter = wasm("secrets_adapter", Target::P2);
        let stem = action.file_stem().expect("a file name").to_string_lossy();
        let composed = self.dir.path().join(format!("{stem}.composed.wasm"));
        let out = Command::new(&self.wac)
            .arg("plug")
            .arg(action)
            .arg("--plug")
            .arg(&adapter)
            .arg("-o")
            .arg(&composed)
            .output()
            .expect("run wac");
        assert!(
            out.status.success(),
            "wac plug {} failed: {}",
            action.display(),
            text(&out.stderr)
        );
        composed
    }

    /// `wasmtime run -S config --env K=V… -S config-var=K=V… FILE ARGS` with `stdin`, in an
    /// otherwise empty environment. `wasi:config/store` is always served (empty without
    /// `config`): the probe imports it.
    fn run(
        &self,
        file: &Path,
        env: &[(String, String)],
        config: &[(&str, &str)],
        args: &[&str],
        stdin: &[u8],
    ) -> Output {
        let mut c = Command::new(&self.wasmtime);
        c.env_clear()
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .arg("run");
        // wasi:config for components only: wasmtime refuses `-S config` for a core module
        // ("Cannot enable wasi-config for core wasm modules"). A component's header has layer 1
        // (bytes 6..8 of the preamble, after the version).
        let header = std::fs::read(file).unwrap_or_default();
        if header.get(6..8) == Some(&[1, 0]) {
            c.args(["-S", "config"]);
        }
        for (k, v) in env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        for (k, v) in config {
            c.arg("-S").arg(format!("config-var={k}={v}"));
        }
        c.arg(file).args(args);
        run_cmd(&mut c, Some(stdin))
    }

    /// Stores `case.stored` in `host`, runs `case` under attune-wasm (`attune_file`) and wasmtime
    /// (`wasmtime_file`), asserts the same stdout and exit status, and returns attune-wasm's
    /// output. The execution id wasmtime gets is the one attune-wasm's guest printed (as
    /// `ATTUNE_EXECUTION_ID` in a JSON object), else a fixed one.
    /// Runs every case (each in a fresh host, or all in `shared`): same stdout and status
    /// under both runtimes, the case's status and check.
    fn check_all(
        &self,
        attune_file: &Path,
        wasmtime_file: &Path,
        shared: Option<&Host>,
        cases: &[Case<'_>],
    ) {
        for case in cases {
            let fresh;
            let host = match shared {
                Some(host) => host,
                None => {
                    fresh = Host::new();
                    &fresh
                }
            };
            let out = self.compare(host, attune_file, wasmtime_file, case);
            assert_eq!(
                out.status.code(),
                Some(case.status),
                "{}: {}",
                case.what,
                text(&out.stderr)
            );
            (case.check)(&out);
        }
    }

    fn compare(
        &self,
        host: &Host,
        attune_file: &Path,
        wasmtime_file: &Path,
        case: &Case<'_>,
    ) -> Output {
        for (name, value, owner) in case.stored {
            host.set(name, value, owner);
        }
        let mut c = host.cmd();
        c.arg("run")
            .arg(attune_file)
            .args(["--action", case.action, "--no-redact"]);
        if !case.args.is_empty() {
            c.arg("--").args(case.args);
        }
        let attune = run_cmd(&mut c, Some(case.stdin));
        assert_no_panic(&attune);

        let execution_id = serde_json::from_slice::<Value>(&attune.stdout)
            .ok()
            .and_then(|v| v["ATTUNE_EXECUTION_ID"].as_str().map(str::to_owned))
            .unwrap_or_else(|| EXECUTION_ID.to_owned());
        let (pack, _) = case.action.split_once('.').expect("pack.action");
        let mut env: Vec<(String, String)> = vec![
            ("ATTUNE_ACTION_REF".into(), case.action.into()),
            ("ATTUNE_PACK_REF".into(), pack.into()),
            ("ATTUNE_EXECUTION_ID".into(), execution_id),
        ];
        env.extend(case.env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        let wasmtime = self.run(wasmtime_file, &env, case.config, case.args, case.stdin);
        assert_no_panic(&wasmtime);

        assert_eq!(
            text(&attune.stdout),
            text(&wasmtime.stdout),
            "{}: stdout differs (left: attune-wasm, right: wasmtime run); stderr:\n\
             attune-wasm: {}\nwasmtime: {}",
            case.what,
            text(&attune.stderr),
            text(&wasmtime.stderr)
        );
        assert_eq!(
            attune.status.code(),
            wasmtime.status.code(),
            "{}: exit status differs; stderr:\nattune-wasm: {}\nwasmtime: {}",
            case.what,
            text(&attune.stderr),
            text(&wasmtime.stderr)
        );
        attune
    }
}

fn sha256_prefix(value: &str) -> String {
    hex::encode(&Sha256::digest(value.as_bytes())[..4])
}

fn described(value: &str) -> Value {
    json!({ "len": value.len(), "sha256_prefix": sha256_prefix(value) })
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out.stdout)))
}

// Values with '=', spaces and non-ASCII: `--env K=V` splits at the first '=' only.
const SYSTEM_KEY: &str = "sk_live_system_default_0000";
const PACK_KEY: &str = "sk_live=mypack override ü_1111";
const DB_PASSWORD: &str = "pg-password-for-deploy";
const DEPLOY_TOKEN: &str = "deploy-token-value-42";

/// Stored: system and pack `api_key` (the pack's wins), action `db_password` and
/// `deploy-token` (env name `SECRET_DEPLOY_TOKEN`), another pack's secret (invisible).
const ALL_STORED: &[(&str, &str, &[&str])] = &[
    ("api_key", SYSTEM_KEY, &[]),
    ("api_key", PACK_KEY, &["--pack", "mypack"]),
    ("db_password", DB_PASSWORD, &["--action", "mypack.deploy"]),
    ("deploy-token", DEPLOY_TOKEN, &["--action", "mypack.deploy"]),
    ("token", "otherpack-token-value", &["--pack", "otherpack"]),
];
/// What mypack.deploy should receive from [`ALL_STORED`].
const ALL_ENV: &[(&str, &str)] = &[
    ("SECRET_API_KEY", PACK_KEY),
    ("SECRET_DB_PASSWORD", DB_PASSWORD),
    ("SECRET_DEPLOY_TOKEN", DEPLOY_TOKEN),
];

#[test]
fn classic_deploy_matches_wasmtime_run() {
    let Some(cli) = Cli::new() else { return };
    let classic = wasm("deploy-classic", Target::P1);
    cli.check_all(
        &classic,
        &classic,
        None,
        &[
            Case {
                what: "both secrets, parameters on stdin",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: ALL_ENV,
                config: &[],
                args: &[],
                stdin: br#"{"target": "production"}"#,
                status: 0,
                check: &|out| {
                    assert_eq!(
                        stdout_json(out),
                        json!({
                            "action": "mypack.deploy",
                            "door": "env",
                            "target": "production",
                            "deployed": true,
                            "secret_vars": ["SECRET_API_KEY", "SECRET_DB_PASSWORD", "SECRET_DEPLOY_TOKEN"],
                            "api_key": described(PACK_KEY),
                            "db_password": described(DB_PASSWORD),
                        })
                    );
                },
            },
            Case {
                what: "api_key missing: the action fails",
                action: "mypack.deploy",
                stored: &[("db-password", DB_PASSWORD, &["--action", "mypack.deploy"])],
                env: &[("SECRET_DB_PASSWORD", DB_PASSWORD)],
                config: &[],
                args: &[],
                stdin: b"",
                status: 1,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["deployed"], false);
                    assert_eq!(report["target"], "staging");
                    assert_eq!(report["secret_vars"], json!(["SECRET_DB_PASSWORD"]));
                    assert_eq!(report["api_key"], json!({ "error": "secret not found" }));
                },
            },
        ],
    );
}

#[test]
fn classic_probe_env_and_exit_status_match_wasmtime_run() {
    let Some(cli) = Cli::new() else { return };
    let probe = wasm("secret-probe", Target::P1);
    let params = br#"{"target": "production", "n": [1, 2, 3]}"#;
    cli.check_all(
        &probe,
        &probe,
        None,
        &[
            Case {
                what: "the whole guest environment: exactly the injected variables",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: ALL_ENV,
                config: &[],
                args: &["env"],
                stdin: b"",
                status: 0,
                check: &|out| {
                    let env = stdout_json(out);
                    let mut names: Vec<&str> = env
                        .as_object()
                        .expect("an object")
                        .keys()
                        .map(String::as_str)
                        .collect();
                    names.sort_unstable();
                    assert_eq!(
                        names,
                        [
                            "ATTUNE_ACTION_REF",
                            "ATTUNE_EXECUTION_ID",
                            "ATTUNE_PACK_REF",
                            "SECRET_API_KEY",
                            "SECRET_DB_PASSWORD",
                            "SECRET_DEPLOY_TOKEN"
                        ]
                    );
                    assert_eq!(env["SECRET_API_KEY"], PACK_KEY);
                },
            },
            Case {
                what: "p1 modules keep their exit status",
                action: "mypack.deploy",
                stored: &[],
                env: &[],
                config: &[],
                args: &["exit", "3"],
                stdin: b"",
                status: 3,
                check: &no_check,
            },
            Case {
                what: "parameters on stdin reach the guest unchanged",
                action: "mypack.deploy",
                stored: &[],
                env: &[],
                config: &[],
                args: &["stdin"],
                stdin: params,
                status: 0,
                check: &|out| assert_eq!(out.stdout, params),
            },
        ],
    );
}

#[test]
fn composed_deploy_component_matches_wasmtime_run() {
    let Some(cli) = Cli::new() else { return };
    let component = wasm("deploy-component", Target::P2);
    let composed = cli.compose(&component);
    cli.check_all(
        &component,
        &composed,
        None,
        &[
            Case {
                what: "both secrets through get-secret",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: ALL_ENV,
                config: &[],
                args: &[],
                stdin: br#"{"target": "production"}"#,
                status: 0,
                check: &|out| {
                    assert_eq!(
                        stdout_json(out),
                        json!({
                            "action": "mypack.deploy",
                            "door": "get-secret",
                            "target": "production",
                            "deployed": true,
                            "api_key": described(PACK_KEY),
                            "db_password": described(DB_PASSWORD),
                        })
                    );
                },
            },
            Case {
                what: "api_key missing: exit 1 (Rust wasip2 reports every failure as 1)",
                action: "mypack.deploy",
                stored: &[("db_password", DB_PASSWORD, &["--action", "mypack.deploy"])],
                env: &[("SECRET_DB_PASSWORD", DB_PASSWORD)],
                config: &[],
                args: &[],
                stdin: b"",
                status: 1,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["deployed"], false);
                    assert_eq!(report["api_key"], json!({ "error": "secret not found" }));
                    assert_eq!(report["db_password"], described(DB_PASSWORD));
                },
            },
        ],
    );
}

#[test]
fn composed_probe_get_secret_answers_match_the_host() {
    let Some(cli) = Cli::new() else { return };
    let probe = wasm("secret-probe", Target::P2);
    let composed = cli.compose(&probe);

    // Found (a dash name and its underscore env variable), not found, and names the host rejects.
    let long = "a".repeat(129);
    let args = [
        "get",
        "api_key",
        "deploy-token",
        "missing",
        "token",
        "bad name",
        "_x",
        "",
        long.as_str(),
    ];
    cli.check_all(
        &probe,
        &composed,
        None,
        &[
            Case {
                what: "get-secret answers",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: ALL_ENV,
                config: &[],
                args: &args,
                stdin: b"",
                status: 0,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["api_key"], json!({ "value": PACK_KEY }));
                    assert_eq!(report["deploy-token"], json!({ "value": DEPLOY_TOKEN }));
                    assert_eq!(report["missing"], json!({ "error": "NotFound" }));
                    assert_eq!(report["token"], json!({ "error": "NotFound" }));
                    for bad in ["bad name", "_x", "", long.as_str()] {
                        assert_eq!(report[bad], json!({ "error": "InvalidName" }), "{bad:?}");
                    }
                },
            },
            Case {
                what: "the composed component's environment is the injected one (shared WASI context)",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: ALL_ENV,
                config: &[],
                args: &["env"],
                stdin: b"",
                status: 0,
                check: &|out| assert_eq!(stdout_json(out)["SECRET_DB_PASSWORD"], DB_PASSWORD),
            },
        ],
    );
}

#[test]
fn composed_python_action_matches_wasmtime_run() {
    let Some(cli) = Cli::new() else { return };
    let Some(python) = crate::python_action::python_action() else {
        return;
    };
    let composed = cli.compose(python);
    // One host for every case: the 18 MB component is compiled once, into its cache.
    let host = Host::new();
    cli.check_all(
        python,
        &composed,
        Some(&host),
        &[
            Case {
                what: "nothing stored yet: the error path",
                action: "mypack.deploy",
                stored: &[],
                env: &[],
                config: &[],
                args: &[],
                stdin: b"",
                status: 1,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["deployed"], false);
                    assert_eq!(report["api_key"], json!({ "error": "not-found" }));
                    assert_eq!(report["db_password"], json!({ "error": "not-found" }));
                },
            },
            Case {
                what: "both secrets",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: ALL_ENV,
                config: &[],
                args: &[],
                stdin: br#"{"target": "production"}"#,
                status: 0,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["target"], "production");
                    assert_eq!(report["api_key"], described(PACK_KEY));
                    assert_eq!(report["db_password"], described(DB_PASSWORD));
                },
            },
            Case {
                what: "otherpack.deploy sees the system api_key and its own pack's token, not mypack's secrets",
                action: "otherpack.deploy",
                stored: &[],
                env: &[
                    ("SECRET_API_KEY", SYSTEM_KEY),
                    ("SECRET_TOKEN", "otherpack-token-value"),
                ],
                config: &[],
                args: &[],
                stdin: b"{}",
                status: 0,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["action"], "otherpack.deploy");
                    assert_eq!(report["api_key"], described(SYSTEM_KEY));
                    assert_eq!(report["db_password"], json!({ "error": "not-found" }));
                },
            },
        ],
    );
}

/// The documented difference: `get-secret` under attune-wasm matches the stored name exactly;
/// the adapter answers any name that maps to a set variable.
#[test]
fn adapter_matches_names_by_variable_unlike_the_host() {
    let Some(cli) = Cli::new() else { return };
    let probe = wasm("secret-probe", Target::P2);
    let composed = cli.compose(&probe);
    let host = Host::new();
    host.set("db-password", DB_PASSWORD, &["--action", "mypack.deploy"]);
    let args = ["get", "db-password", "db_password", "DB-PASSWORD"];

    let out = host.run(&probe, "mypack.deploy", &[], &args);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        stdout_json(&out),
        json!({
            "db-password": { "value": DB_PASSWORD },
            "db_password": { "error": "NotFound" },
            "DB-PASSWORD": { "error": "NotFound" },
        })
    );

    let env = [("SECRET_DB_PASSWORD".to_owned(), DB_PASSWORD.to_owned())];
    let out = cli.run(&composed, &env, &[], &args, b"");
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value = json!({ "value": DB_PASSWORD });
    assert_eq!(
        stdout_json(&out),
        json!({ "db-password": value, "db_password": value, "DB-PASSWORD": value })
    );
}

/// The third door: a component written against the standard `wasi:config/store` runs unchanged
/// under `wasmtime run -S config -S config-var=K=V…` and under attune-wasm, whose store answers
/// `get` and `get-all` as it resolves `get-secret` (no adapter, no composition).
#[test]
fn config_action_matches_wasmtime_run_with_config_vars() {
    let Some(cli) = Cli::new() else { return };
    let action = wasm("config-action", Target::P2);
    let all_config: &[(&str, &str)] = &[
        ("api_key", PACK_KEY),
        ("db_password", DB_PASSWORD),
        ("deploy-token", DEPLOY_TOKEN),
    ];
    cli.check_all(
        &action,
        &action,
        None,
        &[
            Case {
                what: "every secret of mypack.deploy, as configuration",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: &[],
                config: all_config,
                args: &[],
                stdin: br#"{"target": "production"}"#,
                status: 0,
                check: &|out| {
                    assert_eq!(
                        stdout_json(out),
                        json!({
                            "action": "mypack.deploy",
                            "door": "wasi-config",
                            "target": "production",
                            "deployed": true,
                            "api_key": described(PACK_KEY),
                            "db_password": described(DB_PASSWORD),
                            "keys": ["api_key", "db_password", "deploy-token"],
                        })
                    );
                },
            },
            Case {
                what: "api_key missing: none, and the action fails",
                action: "mypack.deploy",
                stored: &[("db_password", DB_PASSWORD, &["--action", "mypack.deploy"])],
                env: &[],
                config: &[("db_password", DB_PASSWORD)],
                args: &[],
                stdin: b"",
                status: 1,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["deployed"], false);
                    assert_eq!(report["api_key"], json!({ "error": "not set" }));
                    assert_eq!(report["db_password"], described(DB_PASSWORD));
                    assert_eq!(report["keys"], json!(["db_password"]));
                },
            },
            Case {
                what: "otherpack.deploy: the system api_key and its own pack's token only",
                action: "otherpack.deploy",
                stored: ALL_STORED,
                env: &[],
                config: &[("api_key", SYSTEM_KEY), ("token", "otherpack-token-value")],
                args: &[],
                stdin: b"{}",
                status: 0,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["api_key"], described(SYSTEM_KEY));
                    assert_eq!(report["db_password"], json!({ "error": "not set" }));
                    assert_eq!(report["keys"], json!(["api_key", "token"]));
                },
            },
        ],
    );
}

/// The probe's `wasi:config/store` answers, value by value, including keys no secret could
/// have (none under both, as under any wasi:config host without them).
#[test]
fn composed_probe_config_answers_match_the_host() {
    let Some(cli) = Cli::new() else { return };
    let probe = wasm("secret-probe", Target::P2);
    let composed = cli.compose(&probe);
    let long = "a".repeat(129);
    let config: &[(&str, &str)] = &[
        ("api_key", PACK_KEY),
        ("db_password", DB_PASSWORD),
        ("deploy-token", DEPLOY_TOKEN),
    ];
    let get = [
        "config",
        "api_key",
        "deploy-token",
        "missing",
        "token",
        "bad name",
        "",
        long.as_str(),
    ];
    cli.check_all(
        &probe,
        &composed,
        None,
        &[
            Case {
                what: "get",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: ALL_ENV,
                config,
                args: &get,
                stdin: b"",
                status: 0,
                check: &|out| {
                    let report = stdout_json(out);
                    assert_eq!(report["api_key"], json!({ "value": PACK_KEY }));
                    assert_eq!(report["deploy-token"], json!({ "value": DEPLOY_TOKEN }));
                    for none in ["missing", "token", "bad name", "", long.as_str()] {
                        assert_eq!(report[none], json!({ "none": true }), "{none:?}");
                    }
                },
            },
            Case {
                what: "get-all",
                action: "mypack.deploy",
                stored: ALL_STORED,
                env: ALL_ENV,
                config,
                args: &["config-all"],
                stdin: b"",
                status: 0,
                check: &|out| {
                    assert_eq!(
                        stdout_json(out),
                        json!({
                            "api_key": PACK_KEY,
                            "db_password": DB_PASSWORD,
                            "deploy-token": DEPLOY_TOKEN,
                        })
                    );
                },
            },
        ],
    );
}
