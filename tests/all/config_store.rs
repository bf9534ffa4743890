//! The third door, `wasi:config/store`, under attune-wasm: the same resolver and rules as
//! `get-secret` (allow-list, budget, masking, undeliverable values), its own door in the audit
//! trail (SQLite and PostgreSQL), and `get-all` refused by the documented option. The
//! comparison with `wasmtime run -S config` is in `wasmtime_cli.rs`.

use serde_json::{json, Value};

use crate::support::{probe, text, Host, Target, OTHER_KEY};

const API_KEY: &str = "config-door-api-key-5e1f";
const WITHHELD: &str = "config-door-withheld-93b0";

fn json_out(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out.stdout)))
}

/// `audit list` rows as columns.
fn audit_rows(host: &Host) -> (String, Vec<Vec<String>>) {
    let out = host.exec(&["audit", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = text(&out.stdout);
    let rows = all
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    (all, rows)
}

/// Whether a row of `rows` has `secret`, `door`, `outcome` and `count` (an ended run).
fn has(rows: &[Vec<String>], secret: &str, door: &str, outcome: &str, count: &str) -> bool {
    rows.iter().any(|r| {
        r.len() >= 8
            && r[r.len() - 5] == secret
            && r[r.len() - 4] == door
            && r[r.len() - 3] == outcome
            && r[r.len() - 2] == count
            && r[r.len() - 1] == "ended"
    })
}

#[test]
fn get_and_get_all_keep_to_the_allow_list_and_audit_names_the_door() {
    for host in Host::all_backends() {
        host.set("api_key", API_KEY, &["--pack", "mypack"]);
        host.set("withheld", WITHHELD, &[]);
        let allow = ["--allow-secret", "api_key"];
        let got = json_out(&host.run(
            &probe(Target::P2),
            "mypack.deploy",
            &allow,
            &["config", "api_key", "withheld", "absent", "bad name"],
        ));
        assert_eq!(
            got,
            json!({
                "api_key": { "value": API_KEY },
                // Visible but not allowed: refused, as get-secret's access-denied.
                "withheld": { "error": "upstream: access-denied" },
                // Not visible, or no secret could have that name: no such key.
                "absent": { "none": true },
                "bad name": { "none": true },
            })
        );
        let all = json_out(&host.run(&probe(Target::P2), "mypack.deploy", &allow, &["config-all"]));
        assert_eq!(all, json!({ "api_key": API_KEY }));
        let all = json_out(&host.run(&probe(Target::P2), "mypack.deploy", &[], &["config-all"]));
        assert_eq!(all, json!({ "api_key": API_KEY, "withheld": WITHHELD }));

        let (listing, rows) = audit_rows(&host);
        assert!(
            has(&rows, "mypack.api_key", "wasi-config", "delivered", "1"),
            "{listing}"
        );
        assert!(
            has(&rows, "withheld", "wasi-config", "access-denied", "1"),
            "{listing}"
        );
        assert!(
            has(&rows, "withheld", "wasi-config", "delivered", "1"),
            "{listing}"
        );
        assert!(
            listing.contains("(unrecorded name)") && listing.contains("invalid-name"),
            "{listing}"
        );
        assert!(!listing.contains("absent"), "{listing}");
        assert!(!listing.contains("get-secret"), "one door only: {listing}");
        for value in [API_KEY, WITHHELD] {
            assert!(!listing.contains(value), "a value in the trail: {listing}");
        }
    }
}

#[test]
fn values_read_through_the_config_door_are_masked() {
    let host = Host::new();
    host.set("api_key", API_KEY, &["--pack", "mypack"]);
    for args in [&["config", "api_key"][..], &["config-all"]] {
        let out = host.run_redacted(&probe(Target::P2), "mypack.deploy", &[], args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let shown = text(&out.stdout);
        assert!(!shown.contains(API_KEY), "{args:?}: {shown}");
        assert!(shown.contains("***"), "{args:?}: {shown}");
    }
}

#[test]
fn the_call_budget_holds_for_the_config_door() {
    let host = Host::new();
    host.set("k", "config-budget-value", &[]);
    let got = json_out(&host.run(
        &probe(Target::P2),
        "p.a",
        &[],
        &["config-hammer", "10003", "k"],
    ));
    // The default budget: 10,000 requests per execution, both doors together.
    assert_eq!(got, json!({ "some": 10_000, "upstream: access-denied": 3 }));
    let (listing, rows) = audit_rows(&host);
    assert!(
        has(&rows, "k", "wasi-config", "delivered", "10000"),
        "{listing}"
    );
    assert!(
        has(&rows, "k", "wasi-config", "access-denied", "3"),
        "{listing}"
    );
}

#[test]
fn get_all_can_be_refused_and_get_still_answers() {
    let host = Host::new();
    host.set("api_key", API_KEY, &["--pack", "mypack"]);
    let refuse = ["--refuse-config-get-all"];
    let all = json_out(&host.run(
        &probe(Target::P2),
        "mypack.deploy",
        &refuse,
        &["config-all"],
    ));
    assert_eq!(all, json!({ "error": "upstream: access-denied" }));
    let got = json_out(&host.run(
        &probe(Target::P2),
        "mypack.deploy",
        &refuse,
        &["config", "api_key"],
    ));
    assert_eq!(got, json!({ "api_key": { "value": API_KEY } }));
    let (listing, rows) = audit_rows(&host);
    assert!(
        has(&rows, "(get-all)", "wasi-config", "access-denied", "1"),
        "{listing}"
    );

    // The same through the configuration file's setting.
    let host = Host {
        settings: vec![(
            "ATTUNE__SECURITY__REFUSE_CONFIG_GET_ALL".into(),
            "true".into(),
        )],
        ..host
    };
    let all = json_out(&host.run(&probe(Target::P2), "mypack.deploy", &[], &["config-all"]));
    assert_eq!(all, json!({ "error": "upstream: access-denied" }));
}

#[test]
fn an_undecryptable_secret_is_an_error_naming_no_value_and_left_out_of_get_all() {
    let writer = Host {
        key: Some(OTHER_KEY.into()),
        ..Host::new()
    };
    writer.set("foreign", "config-foreign-plaintext", &["--pack", "mypack"]);
    writer.set(
        "plain",
        "config-plain-value",
        &["--pack", "mypack", "--plain"],
    );
    let host = Host {
        key: Some(crate::support::KEY.into()),
        ..writer
    };
    let out = host.run(
        &probe(Target::P2),
        "mypack.deploy",
        &[],
        &["config", "foreign", "plain"],
    );
    let got = json_out(&out);
    assert_eq!(
        got,
        json!({
            "foreign": { "error": "upstream: unavailable" },
            "plain": { "value": "config-plain-value" },
        })
    );
    assert!(!text(&out.stdout).contains("config-foreign-plaintext"));
    let all = json_out(&host.run(&probe(Target::P2), "mypack.deploy", &[], &["config-all"]));
    assert_eq!(all, json!({ "plain": "config-plain-value" }));
    let (listing, rows) = audit_rows(&host);
    // Recorded by both runs (`get`, then `get-all`), one row each.
    let unavailable = rows
        .iter()
        .filter(|r| {
            r.len() >= 8 && r[r.len() - 5] == "mypack.foreign" && r[r.len() - 4] == "wasi-config"
        })
        .filter(|r| r[r.len() - 3] == "unavailable")
        .count();
    assert_eq!(unavailable, 2, "{listing}");
}

#[test]
fn the_example_reads_its_secrets_through_the_config_door() {
    let host = Host::new();
    host.set("api_key", API_KEY, &["--pack", "mypack"]);
    let action = crate::support::wasm("config-action", Target::P2);
    let out = host.run_redacted(&action, "mypack.deploy", &[], &[]);
    let report = json_out(&out);
    assert_eq!(report["door"], "wasi-config");
    assert_eq!(report["deployed"], true);
    assert_eq!(report["api_key"]["len"], API_KEY.len());
    assert_eq!(report["db_password"], json!({ "error": "not set" }));
    assert_eq!(report["keys"], json!(["api_key"]));
    // Without api_key: none, and the action fails.
    let empty = Host::new();
    let out = empty.run_redacted(&action, "mypack.deploy", &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// Context of the reference host: WASI p2 and wasmtime's own `wasi:config/store`.
struct Reference {
    ctx: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
    vars: wasmtime_wasi_config::WasiConfigVariables,
}

impl wasmtime_wasi::WasiView for Reference {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Runs `file` with WASI p2 and `wasmtime-wasi-config` (what `wasmtime run -S config` links)
/// serving `vars`, `ATTUNE_ACTION_REF=action` in its environment: its stdout and whether
/// `wasi:cli/run` returned ok.
async fn under_wasmtime_wasi_config(
    file: &std::path::Path,
    action: &str,
    vars: &[(&str, &str)],
) -> (String, bool) {
    use wasmtime::component::{Component, Linker, ResourceTable};
    use wasmtime_wasi::p2::bindings::Command;
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

    let engine = wasmtime::Engine::default();
    let mut linker = Linker::<Reference>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_config::add_to_linker(&mut linker, |r: &mut Reference| {
        wasmtime_wasi_config::WasiConfig::from(&r.vars)
    })
    .unwrap();
    let stdout = MemoryOutputPipe::new(1 << 20);
    let ctx = wasmtime_wasi::WasiCtx::builder()
        .env("ATTUNE_ACTION_REF", action)
        .stdout(stdout.clone())
        .build();
    let mut store = wasmtime::Store::new(
        &engine,
        Reference {
            ctx,
            table: ResourceTable::new(),
            vars: vars.iter().copied().collect(),
        },
    );
    let component = Component::from_file(&engine, file).unwrap();
    let command = Command::instantiate_async(&mut store, &component, &linker)
        .await
        .unwrap();
    // `std::process::exit(n)` ends the run with wasmtime-wasi's `I32Exit`.
    let ok = match command.wasi_cli_run().call_run(&mut store).await {
        Ok(returned) => returned.is_ok(),
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => exit.0 == 0,
            None => panic!("{e:?}"),
        },
    };
    (String::from_utf8_lossy(&stdout.contents()).into_owned(), ok)
}

/// The example under attune-wasm prints what it prints under wasmtime's own `wasi:config`
/// host given, as configuration, the secrets the action resolves to (no wasmtime CLI needed:
/// the same crate the CLI links, in process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_answers_as_under_wasmtimes_own_wasi_config_host() {
    let action = crate::support::wasm("config-action", Target::P2);
    type Stored<'a> = &'a [(&'a str, &'a str, &'a [&'a str])];
    /// (stored, action, what the action resolves to, whether it succeeds)
    type Case<'a> = (Stored<'a>, &'a str, &'a [(&'a str, &'a str)], bool);
    let all: Stored<'_> = &[
        ("api_key", "system-api-key-0000", &[]),
        ("api_key", API_KEY, &["--pack", "mypack"]),
        ("db_password", WITHHELD, &["--action", "mypack.deploy"]),
        ("token", "otherpack-token-0000", &["--pack", "otherpack"]),
    ];
    let cases: [Case<'_>; 3] = [
        (
            all,
            "mypack.deploy",
            &[("api_key", API_KEY), ("db_password", WITHHELD)],
            true,
        ),
        (
            all,
            "otherpack.deploy",
            &[
                ("api_key", "system-api-key-0000"),
                ("token", "otherpack-token-0000"),
            ],
            true,
        ),
        (
            &[("db_password", WITHHELD, &["--action", "mypack.deploy"])],
            "mypack.deploy",
            &[("db_password", WITHHELD)],
            false,
        ),
    ];
    for (stored, action_ref, vars, ok) in cases {
        let host = Host::new();
        for (name, value, owner) in stored {
            host.set(name, value, owner);
        }
        let attune = host.run(&action, action_ref, &[], &[]);
        let (reference, reference_ok) = under_wasmtime_wasi_config(&action, action_ref, vars).await;
        assert_eq!(text(&attune.stdout), reference, "{action_ref}");
        assert_eq!(attune.status.success(), reference_ok, "{action_ref}");
        assert_eq!(reference_ok, ok, "{action_ref}: {reference}");
    }
}
