//! The store suite, run against SQLite always and against PostgreSQL
//! (`ATTUNE_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`; each test
//! in a schema of its own, dropped afterwards). `ATTUNE_TEST_POSTGRES=skip` skips it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use secrecy::{ExposeSecret, SecretString};

use super::*;

use crate::secrets::names::{ActionRef, Owner, PackRef, SecretName};

/// A store and what keeps it alive (a temp dir or a schema to drop).
pub(crate) struct TestStore {
    pub(crate) store: Store,
    _dir: Option<tempfile::TempDir>,
    schema: Option<(String, String)>,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some((url, schema)) = self.schema.take() {
            // Best effort, on a thread of its own: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    use sqlx::Connection as _;
                    let mut c = sqlx::PgConnection::connect(&url).await?;
                    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut c)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                })
                .map_err(std::io::Error::other)
            })
            .join();
        }
    }
}

pub(crate) fn postgres_url() -> Option<String> {
    if std::env::var("ATTUNE_TEST_POSTGRES").as_deref() == Ok("skip") {
        return None;
    }
    Some(
        std::env::var("ATTUNE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
    )
}

/// Every backend this machine has: SQLite always, PostgreSQL unless skipped.
pub(crate) async fn stores() -> Vec<TestStore> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let sqlite = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
    let mut all = vec![TestStore {
        store: sqlite,
        _dir: Some(dir),
        schema: None,
    }];
    if let Some(url) = postgres_url() {
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut options = StoreOptions::new(url.clone());
        options.schema.clone_from(&schema);
        let pg = Store::open_with(&options, OpenMode::CreateIfMissing)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL test store: {e} (set ATTUNE_TEST_POSTGRES=skip to skip)")
            });
        all.push(TestStore {
            store: pg,
            _dir: None,
            schema: Some((url, schema)),
        });
    }
    all
}

fn secret(owner: Owner, name: &str, value: &str) -> NewSecret {
    NewSecret {
        owner,
        name: SecretName::new(name).unwrap(),
        value: StoredValue::Plain(SecretString::from(value)),
    }
}

#[tokio::test]
async fn put_get_list_delete() {
    for t in stores().await {
        let store = &t.store;
        let pack = Owner::Pack(PackRef::new("mypack").unwrap());
        assert_eq!(
            store.put(&secret(pack.clone(), "k", "v1")).await.unwrap(),
            Written::Created
        );
        assert_eq!(
            store.put(&secret(pack.clone(), "k", "v2")).await.unwrap(),
            Written::Updated
        );
        let row = store
            .get(&pack, &SecretName::new("k").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.value.text().expose_secret(), "v2", "{store:?}");
        assert_eq!(row.secret_ref(), "mypack.k");
        assert!(
            row.created.to_string().ends_with('Z') && row.updated >= row.created,
            "{}",
            row.created
        );
        assert!(!format!("{row:?}").contains("v2"));
        assert_eq!(store.list(None).await.unwrap().len(), 1);
        assert_eq!(store.list(Some(&Owner::System)).await.unwrap().len(), 0);
        assert!(store
            .delete(&pack, &SecretName::new("k").unwrap())
            .await
            .unwrap());
        assert!(!store
            .delete(&pack, &SecretName::new("k").unwrap())
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn visible_to_returns_only_the_three_levels() {
    for t in stores().await {
        let store = &t.store;
        let action = ActionRef::new("p1.a").unwrap();
        store.put(&secret(Owner::System, "s", "x")).await.unwrap();
        store
            .put(&secret(Owner::Pack(PackRef::new("p1").unwrap()), "p", "x"))
            .await
            .unwrap();
        store
            .put(&secret(
                Owner::Pack(PackRef::new("p2").unwrap()),
                "other",
                "x",
            ))
            .await
            .unwrap();
        store
            .put(&secret(Owner::Action(action.clone()), "a", "x"))
            .await
            .unwrap();
        let sibling = Owner::Action(ActionRef::new("p1.b").unwrap());
        store.put(&secret(sibling, "sibling", "x")).await.unwrap();
        let other_pack_action = Owner::Action(ActionRef::new("p2.a").unwrap());
        store
            .put(&secret(other_pack_action, "a2", "x"))
            .await
            .unwrap();
        let mut names: Vec<_> = store
            .visible_to(&action)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "p", "s"], "{store:?}");
    }
}

#[tokio::test]
async fn same_name_at_each_level_is_three_rows_and_values_round_trip() {
    for t in stores().await {
        let store = &t.store;
        let action = ActionRef::new("mypack.deploy").unwrap();
        store
            .put(&secret(Owner::System, "token", "1"))
            .await
            .unwrap();
        store
            .put(&secret(Owner::Pack(action.pack()), "token", "2"))
            .await
            .unwrap();
        store
            .put(&secret(Owner::Action(action.clone()), "token", ""))
            .await
            .unwrap();
        let odd = "line1\nline2 pässwörd€ a=b=c '; DROP TABLE secrets; --";
        store.put(&secret(Owner::System, "odd", odd)).await.unwrap();
        let rows = store.visible_to(&action).await.unwrap();
        assert_eq!(rows.len(), 4);
        let got = store
            .get(&Owner::System, &SecretName::new("odd").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.value.text().expose_secret(), odd);
    }
}

#[tokio::test]
async fn concurrent_sets_of_one_name_leave_one_consistent_row() {
    for t in stores().await {
        let store = t.store.clone();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .put(&secret(Owner::System, "race", &format!("value-{i}")))
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let rows = store.list(None).await.unwrap();
        assert_eq!(rows.len(), 1);
        let row = rows[0].row().expect("a sound row");
        assert!(row.value.text().expose_secret().starts_with("value-"));
    }
}

#[tokio::test]
async fn both_backends_keep_times_in_one_format_from_the_database_clock() {
    for t in stores().await {
        let store = &t.store;
        let before = Timestamp::now();
        store.put(&secret(Owner::System, "t", "1")).await.unwrap();
        store.put(&secret(Owner::System, "t", "2")).await.unwrap();
        let row = store
            .get(&Owner::System, &SecretName::new("t").unwrap())
            .await
            .unwrap()
            .unwrap();
        // Both parsed as times (a row whose times do not parse is corrupt), in one text form:
        // `2026-11-29T08:22:01.407Z`, so times compare as text.
        for time in [row.created, row.updated] {
            assert_eq!(time.to_string().len(), 24, "{store:?} {time}");
        }
        // The database's clock, to the second (it may differ from ours by milliseconds).
        assert!(
            row.created.as_datetime()
                >= chrono::SubsecRound::trunc_subsecs(before.as_datetime(), 0),
            "{store:?}"
        );
        assert!(row.updated >= row.created, "{store:?}");
    }
}

#[tokio::test]
async fn must_exist_reports_missing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("none.db").display());
    assert!(matches!(
        Store::open(&url, OpenMode::MustExist).await,
        Err(Error::Missing { .. })
    ));
    assert!(!dir.path().join("none.db").exists());
}

#[tokio::test]
async fn bad_urls_and_schemas_are_refused() {
    assert!(matches!(
        Store::open("mysql://x/y", OpenMode::CreateIfMissing).await,
        Err(Error::UnsupportedUrl { .. })
    ));
    let mut options = StoreOptions::new("postgres://u:pw@127.0.0.1:1/none");
    options.schema = "Robert'); DROP".into();
    let err = Store::open_with(&options, OpenMode::CreateIfMissing)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadSchema(_)), "{err}");
    options.schema = "attune".into();
    let err = Store::open_with(&options, OpenMode::CreateIfMissing)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("pw"), "{err}");
}

#[test]
fn urls_are_shown_as_host_port_and_database_only() {
    for (url, shown) in [
        (
            "postgres://u:pw@127.0.0.1:5432/test",
            "postgres://127.0.0.1:5432/test",
        ),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("sqlite:x.db?mode=rwc", "sqlite:x.db"),
        (
            "postgres://u:PW_pa/ss@127.0.0.1:1/db",
            "postgres://127.0.0.1:1/db",
        ),
        ("postgres://u:p@ss/w@h/db", "postgres://h/db"),
        (
            "postgres://u@127.0.0.1:5999/test?password=PW",
            "postgres://127.0.0.1:5999/test",
        ),
        ("postgresql://h/db#PW", "postgresql://h/db"),
        ("postgres://u:PW?x@h:1/db", "postgres://h:1/db"),
        ("postgres:/u:PW@127.0.0.1:5432/test", "postgres:…"),
        ("postgres:u:PW@h/db", "postgres:…"),
        ("u:PW@h/db", "u:…"),
        ("PW@h/db", "…"),
        (
            "postgres://attune:Sup3rS3cret.db.internal:5432/attune",
            "postgres:…",
        ),
        ("postgres://u:PW%40host/db", "postgres:…"),
        ("postgres://u:PW/127.0.0.1:5999/test", "postgres:…"),
        ("postgres://u:PW@[::1]:5432/db", "postgres://[::1]:5432/db"),
        ("postgres://h:5432", "postgres://h:5432"),
        ("://PW@h", "…"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
    let options = StoreOptions::new("postgres://u@h/db?password=PW");
    assert!(!format!("{options:?}").contains("PW"));
}
