//! Ownership resolution (system → pack → action) as guests see it, through both doors.

use crate::support::{probe, text, value, Host, Target};

const ACTION: &str = "mypack.deploy";

/// What both doors say about `name`: (get-secret via the p2 probe, env via the p1 probe,
/// env of the p2 component).
fn both_doors(
    host: &Host,
    name: &str,
    env_var: &str,
) -> (Result<String, String>, Option<String>, Option<String>) {
    let via_get = value(&host.get(Target::P2, ACTION, &[name]), name);
    let env_p1 = host
        .env(Target::P1, ACTION)
        .get(env_var)
        .map(|v| v.as_str().unwrap().to_owned());
    let env_p2 = host
        .env(Target::P2, ACTION)
        .get(env_var)
        .map(|v| v.as_str().unwrap().to_owned());
    (via_get, env_p1, env_p2)
}

#[test]
fn n2_override_at_three_levels_then_delete_one_level_at_a_time() {
    let host = Host::new();
    host.set("token", "1", &[]);
    host.set("token", "2", &["--pack", "mypack"]);
    host.set("token", "3", &["--action", ACTION]);
    for (expected, delete) in [
        ("3", vec!["--action", ACTION]),
        ("2", vec!["--pack", "mypack"]),
        ("1", vec![]),
    ] {
        let (get, env1, env2) = both_doors(&host, "token", "SECRET_TOKEN");
        assert_eq!(get.as_deref(), Ok(expected));
        assert_eq!(env1.as_deref(), Some(expected));
        assert_eq!(env2.as_deref(), Some(expected));
        let mut args = vec!["secret", "delete", "token"];
        args.extend(delete);
        assert!(host.exec(&args, None).status.success());
    }
    let (get, env1, env2) = both_doors(&host, "token", "SECRET_TOKEN");
    assert_eq!(get, Err("NotFound".into()));
    assert_eq!((env1, env2), (None, None));
}

#[test]
fn n3_empty_value_overrides_and_is_delivered_empty() {
    let host = Host::new();
    host.set("api-token", "xyz", &[]);
    host.set("api-token", "", &["--action", ACTION]);
    let (get, env1, env2) = both_doors(&host, "api-token", "SECRET_API_TOKEN");
    assert_eq!(get.as_deref(), Ok(""));
    assert_eq!(env1.as_deref(), Some(""));
    assert_eq!(env2.as_deref(), Some(""));
}

#[test]
fn n4_unknown_name_is_not_found_and_absent_from_env() {
    let host = Host::new();
    host.set("other", "x", &[]);
    let (get, env1, env2) = both_doors(&host, "nowhere", "SECRET_NOWHERE");
    assert_eq!(get, Err("NotFound".into()));
    assert_eq!((env1, env2), (None, None));
}

#[test]
fn n5_other_packs_and_actions_are_invisible() {
    let host = Host::new();
    host.set("only_p2", "p2-secret-value", &["--pack", "p2"]);
    host.set("sibling", "sibling-value", &["--action", "p1.other"]);
    host.set("mine", "p1-a-value", &["--action", "p1.a"]);
    let report = host.get(Target::P2, "p1.a", &["only_p2", "sibling", "mine"]);
    assert_eq!(value(&report, "only_p2"), Err("NotFound".into()));
    assert_eq!(value(&report, "sibling"), Err("NotFound".into()));
    assert_eq!(value(&report, "mine").as_deref(), Ok("p1-a-value"));
    for target in [Target::P1, Target::P2] {
        let env = host.env(target, "p1.a");
        let all = serde_json::to_string(&env).unwrap();
        assert!(
            !all.contains("p2-secret-value") && !all.contains("sibling-value"),
            "{all}"
        );
        assert_eq!(env["SECRET_MINE"], "p1-a-value");
    }
}

#[test]
fn n1_env_collision_fails_before_the_guest_starts_naming_both() {
    let host = Host::new();
    host.set("db-password", "P1-value", &["--pack", "mypack"]);
    host.set("db_password", "P2-value", &["--action", ACTION]);
    for target in [Target::P1, Target::P2] {
        let out = host.run(&probe(target), ACTION, &[], &["env"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(out.stdout.is_empty(), "the guest must not start");
        let err = text(&out.stderr);
        assert!(
            err.contains("mypack.db-password") && err.contains("mypack.deploy.db_password"),
            "{err}"
        );
        assert!(err.contains("SECRET_DB_PASSWORD"));
        assert!(!err.contains("P1-value") && !err.contains("P2-value"));
    }
    // Another action of the pack sees only the pack's secret: no collision there.
    let report = host.get(Target::P2, "mypack.other", &["db-password", "db_password"]);
    assert_eq!(value(&report, "db-password").as_deref(), Ok("P1-value"));
    assert_eq!(value(&report, "db_password"), Err("NotFound".into()));
}

#[test]
fn n6_values_are_delivered_byte_for_byte_through_both_doors() {
    let host = Host::new();
    let values = [
        ("eq", "a=b=c"),
        ("b64", "dGVzdA=="),
        ("multi", "line1\nline2\n-----END-----"),
        ("unicode", "pässwörd€"),
        ("colon", "with:colon:inside"),
        ("spaces", "  padded  "),
    ];
    for (name, v) in values {
        host.set(name, v, &["--pack", "mypack"]);
    }
    let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
    let report = host.get(Target::P2, ACTION, &names);
    let env_p1 = host.env(Target::P1, ACTION);
    let env_p2 = host.env(Target::P2, ACTION);
    for (name, v) in values {
        assert_eq!(value(&report, name).as_deref(), Ok(v), "{name}");
        let var = format!("SECRET_{}", name.to_uppercase());
        assert_eq!(env_p1[&var], v, "{name} p1");
        assert_eq!(env_p2[&var], v, "{name} p2");
    }
}

#[test]
fn n11_plain_secret_that_looks_like_ciphertext_is_delivered_as_stored() {
    let host = Host::new();
    host.set("looks", "abc:def", &["--plain"]);
    let report = host.get(Target::P2, ACTION, &["looks"]);
    assert_eq!(value(&report, "looks").as_deref(), Ok("abc:def"));
}

#[test]
fn n13_p1_module_and_p2_component_see_the_same_value() {
    let host = Host::new();
    host.set("x", "same-value-for-both", &["--pack", "mypack"]);
    let p1 = host.get(Target::P1, ACTION, &["x"]);
    let p2 = host.get(Target::P2, ACTION, &["x"]);
    assert_eq!(value(&p1, "x").as_deref(), Ok("same-value-for-both"));
    assert_eq!(p1, p2);
}

#[test]
fn get_secret_uses_exact_names_and_rejects_invalid_ones() {
    let host = Host::new();
    host.set("Token", "upper", &[]);
    let report = host.get(Target::P2, ACTION, &["Token", "token", "bad=name"]);
    assert_eq!(value(&report, "Token").as_deref(), Ok("upper"));
    assert_eq!(value(&report, "token"), Err("NotFound".into()));
    assert_eq!(value(&report, "bad=name"), Err("InvalidName".into()));
}

#[test]
fn allow_secret_restricts_both_doors() {
    let host = Host::new();
    host.set("granted", "g-value", &[]);
    host.set("withheld", "w-value", &[]);
    let out = host.run(
        &probe(Target::P2),
        ACTION,
        &["--allow-secret", "granted"],
        &["get", "granted", "withheld", "absent"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value(&report, "granted").as_deref(), Ok("g-value"));
    assert_eq!(value(&report, "withheld"), Err("AccessDenied".into()));
    assert_eq!(value(&report, "absent"), Err("NotFound".into()));
    let out = host.run(
        &probe(Target::P1),
        ACTION,
        &["--allow-secret", "granted"],
        &["env"],
    );
    let env = text(&out.stdout);
    assert!(
        env.contains("SECRET_GRANTED") && !env.contains("w-value"),
        "{env}"
    );
}

#[test]
fn example_actions_report_their_secrets_safely() {
    let host = Host::new();
    host.set("api_key", "sk_live_example_0001", &["--pack", "mypack"]);
    host.set("db_password", "db-example-pw", &["--action", ACTION]);
    let outputs: Vec<serde_json::Value> = [
        crate::support::wasm("deploy-component", Target::P2),
        crate::support::wasm("deploy-classic", Target::P1),
    ]
    .iter()
    .map(|file| {
        let mut c = host.cmd();
        c.arg("run").arg(file).args(["--action", ACTION]);
        let out = crate::support::run_cmd(&mut c, Some(br#"{"target":"prod"}"#));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(!stdout.contains("sk_live_example_0001"));
        serde_json::from_str(&stdout).unwrap()
    })
    .collect();
    for o in &outputs {
        assert_eq!(o["target"], "prod", "stdin parameters reach the guest");
        assert_eq!(o["deployed"], true);
        assert_eq!(o["action"], ACTION);
        assert_eq!(o["api_key"]["len"], 20);
    }
    assert_eq!(outputs[0]["api_key"], outputs[1]["api_key"]);
    assert_eq!(outputs[0]["db_password"], outputs[1]["db_password"]);

    // Without its secret the action fails with a non-zero status.
    let empty = Host::new();
    let mut c = empty.cmd();
    c.arg("run")
        .arg(crate::support::wasm("deploy-classic", Target::P1))
        .args(["--action", ACTION]);
    let out = crate::support::run_cmd(&mut c, Some(b"{}"));
    assert_eq!(out.status.code(), Some(1));
}
