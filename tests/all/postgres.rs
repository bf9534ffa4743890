//! The CLI and guests on PostgreSQL (`database.url = postgres://…`), each test in its own schema.

use crate::support::{value, Host, Target};

const ACTION: &str = "mypack.deploy";

#[tokio::test]
async fn hierarchy_override_and_isolation_on_postgres() {
    let Some(host) = Host::postgres() else { return };
    host.set("token", "1", &[]);
    host.set("token", "2", &["--pack", "mypack"]);
    host.set("token", "3", &["--action", ACTION]);
    host.set("theirs", "not-for-mypack", &["--pack", "otherpack"]);
    for (expected, delete) in [
        ("3", vec!["--action", ACTION]),
        ("2", vec!["--pack", "mypack"]),
        ("1", vec![]),
    ] {
        let report = host.get(Target::P2, ACTION, &["token", "theirs"]);
        assert_eq!(value(&report, "token").as_deref(), Ok(expected));
        assert_eq!(value(&report, "theirs"), Err("NotFound".into()));
        assert_eq!(host.env(Target::P1, ACTION)["SECRET_TOKEN"], expected);
        let mut args = vec!["secret", "delete", "token"];
        args.extend(delete);
        assert!(host.exec(&args, None).status.success());
    }
    let list = crate::support::text(&host.exec(&["secret", "list"], None).stdout);
    assert!(
        list.contains("otherpack") && !list.contains("not-for-mypack"),
        "{list}"
    );
    assert!(
        !host.db_path().exists(),
        "nothing went to the embedded default"
    );
    host.drop_schema().await;
}
