//! Nothing the guest can touch is trusted by the host (issue 10, rows N22, N24, N26): no mount
//! reaches the store, the configuration, the compilation cache or the host's `/proc`, `/sys`,
//! `/dev`, compared by object; the cache loads only entries this host wrote; the process is
//! not dumpable and writes no core file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use attune_wasm::executor::{self, Executor, SecretSource};
use attune_wasm::runtime::{DirMount, Runtime, RuntimeConfig};
use attune_wasm::store::{OpenMode, Store};

use crate::support::{probe, probe_execution, run_cmd, text, Host, Target};

const ACTION: &str = "mypack.deploy";

/// Asserts `out` is a refusal before the guest started (exit 125) whose message has `want`.
fn assert_refused(out: &Output, want: &[&str], case: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{case}: {stderr}");
    for w in want {
        assert!(stderr.contains(w), "{case}: {w:?} not in {stderr}");
    }
    assert!(out.stdout.is_empty(), "{case}: the guest ran");
}

fn spec(host: &Path, guest: &str) -> String {
    format!("{}::{guest}", host.display())
}

#[test]
fn n22_mount_reaching_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let url = format!("sqlite://{}", elsewhere.join("secrets.db").display());
    let host = Host {
        settings: vec![("ATTUNE__DATABASE__URL".into(), url)],
        ..Host::new()
    };
    host.set("api_key", "n22-secret-value-1", &[]);
    assert!(elsewhere.join("secrets.db").exists());
    let alias = dir.path().join("alias");
    std::os::unix::fs::symlink(&elsewhere, &alias).unwrap();
    std::fs::create_dir_all(elsewhere.join("sub")).unwrap();
    let cases = [
        (spec(&elsewhere, "/s"), "it is the database directory"),
        (spec(&alias, "/s"), "it is the database directory"),
        (
            spec(&alias.join("sub/.."), "/s"),
            "it is the database directory",
        ),
        (spec(dir.path(), "/s"), "it contains the database"),
        (
            spec(&elsewhere.join("sub"), "/s"),
            "it lies inside the database directory",
        ),
    ];
    for (mount, want) in &cases {
        for flag in ["--dir-ro", "--dir"] {
            let out = host.run(
                &probe(Target::P1),
                ACTION,
                &[flag, mount],
                &["read", "/s/secrets.db"],
            );
            assert_refused(
                &out,
                &["refusing to mount", want, "the secret store"],
                mount,
            );
        }
    }
}

#[test]
fn n22_mount_reaching_the_config_file_or_system_dirs_is_refused() {
    let host = Host::new();
    let etc = host.dir.path().join("etc-dir");
    std::fs::create_dir_all(&etc).unwrap();
    let config = etc.join("attune.yaml");
    std::fs::write(&config, "security:\n  strict_secrets: false\n").unwrap();
    let run = |mount: &str| {
        let mut c = host.cmd();
        c.arg("--config")
            .arg(&config)
            .arg("run")
            .arg(probe(Target::P1))
            .args(["--action", ACTION, "--dir-ro", mount, "--", "ls", "/c"]);
        run_cmd(&mut c, None)
    };
    let out = run(&spec(&etc, "/c"));
    assert_refused(&out, &["it contains the configuration file"], "config dir");
    for (mount, want) in [
        ("/proc::/c", "it is the system directory /proc"),
        (
            "/proc/self/fd::/c",
            "lies inside the system directory /proc",
        ),
        ("/sys::/c", "the system directory /sys"),
        ("/dev::/c", "it is the system directory /dev"),
        ("/::/c", "it contains"),
        ("/proc/self/root::/c", "it contains"),
    ] {
        let out = run(mount);
        assert_refused(&out, &[want], mount);
    }
    // A directory of its own is still mounted.
    let free = host.dir.path().join("free");
    std::fs::create_dir_all(&free).unwrap();
    std::fs::write(free.join("f"), "ok").unwrap();
    let out = host.run(
        &probe(Target::P1),
        ACTION,
        &["--dir-ro", &spec(&free, "/c")],
        &["read", "/c/f"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok");
}

#[test]
fn n22_equal_or_nested_guest_paths_are_refused_after_normalising() {
    let host = Host::new();
    let a = host.dir.path().join("a");
    let b = host.dir.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for (first, second, want) in [
        ("/d", "/d/", "two --dir mounts at guest path /d"),
        ("/d", "//d/.", "two --dir mounts at guest path /d"),
        (
            "/d",
            "/d/sub",
            "guest path /d/sub lies inside guest path /d",
        ),
        (
            "/d/sub/",
            "/d",
            "guest path /d/sub lies inside guest path /d",
        ),
    ] {
        let out = host.run(
            &probe(Target::P1),
            ACTION,
            &["--dir-ro", &spec(&a, first), "--dir", &spec(&b, second)],
            &["ls", "/d"],
        );
        assert_refused(&out, &[want], &format!("{first} + {second}"));
    }
    let out = host.run(
        &probe(Target::P1),
        ACTION,
        &["--dir", &spec(&a, "/d/../etc")],
        &["ls", "/etc"],
    );
    assert_refused(&out, &["invalid guest path /d/../etc"], "..");
}

/// The checks are the library's: an embedder's executor refuses a mount of its store (opened
/// anywhere) and of its runtime's compilation cache, without the CLI.
#[tokio::test]
async fn n22_the_library_refuses_mounts_of_its_store_and_cache() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    let cache = dir.path().join("compiled");
    let url = format!("sqlite://{}", db_dir.join("s.db").display());
    let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
    let mut config = RuntimeConfig::default();
    config.cache_dir = Some(cache.clone());
    let runtime = Arc::new(Runtime::new(config).unwrap());
    let guest = runtime
        .load("probe.wasm", &std::fs::read(probe(Target::P2)).unwrap())
        .unwrap();
    let executor = Executor::new(
        runtime,
        SecretSource::Store(store),
        None,
        attune_wasm::executor::Strictness::Lenient,
    );
    for host in [db_dir.clone(), cache.clone(), PathBuf::from("/dev")] {
        let mut exec = probe_execution(ACTION, &["ls", "/m"]);
        exec.dirs = vec![DirMount {
            host: host.clone(),
            guest: "/m".into(),
            read_only: true,
        }];
        match executor.execute(&guest, exec).await {
            Err(executor::Error::Mount(e)) => {
                assert!(e.to_string().contains("refusing to mount"), "{e}")
            }
            other => panic!("{}: {:?}", host.display(), other.map(|r| r.exit)),
        }
    }
    executor.flush().await;
}

/// The data directory is a symlink whose target does not exist yet, and the guest is given
/// the directory it will be created in: on that first run the cache (and store) would be
/// created inside the guest's mount.
#[test]
fn n24_a_guest_cannot_reach_the_cache_through_a_data_dir_not_created_yet() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(target.join("data"), &link).unwrap();
    let host = Host {
        settings: vec![("ATTUNE__DATA_DIR".into(), link.display().to_string())],
        ..Host::new()
    };
    for flag in ["--dir", "--dir-ro"] {
        let out = host.run(
            &probe(Target::P1),
            ACTION,
            &[flag, &spec(&target, "/m")],
            &["write", "/m/data/cache/planted.cwasm", "code"],
        );
        assert_refused(
            &out,
            &["refusing to mount", "it contains the data directory"],
            flag,
        );
        assert!(
            !target.join("data").exists(),
            "nothing is created before the mounts are checked"
        );
    }
    // A directory beside it is mounted as usual.
    let beside = dir.path().join("beside");
    std::fs::create_dir_all(&beside).unwrap();
    let out = host.run(
        &probe(Target::P1),
        ACTION,
        &["--dir", &spec(&beside, "/m")],
        &["write", "/m/f", "x"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The cache entries of `host` (files ending `.cwasm`).
fn entries(host: &Host) -> Vec<PathBuf> {
    let cache = host.dir.path().join("data/cache");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
    out.sort();
    out
}

/// Runs `probe read /m/f` (which prints `hello`), asserting it works.
fn run_read(host: &Host, mounted: &Path) -> String {
    let out = host.run(
        &probe(Target::P2),
        ACTION,
        &["--dir-ro", &spec(mounted, "/m")],
        &["read", "/m/f"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello");
    text(&out.stderr)
}

#[test]
fn n24_cached_code_the_host_did_not_write_is_never_loaded() {
    let host = Host::new();
    let mounted = host.dir.path().join("m");
    std::fs::create_dir_all(&mounted).unwrap();
    std::fs::write(mounted.join("f"), "hello").unwrap();
    let first = run_read(&host, &mounted);
    assert!(!first.contains("compilation cache"), "{first}");
    let [entry] = &entries(&host)[..] else {
        panic!("one entry: {:?}", entries(&host))
    };
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    let again = run_read(&host, &mounted);
    assert!(
        !again.contains("compilation cache"),
        "a good entry is used: {again}"
    );

    // Tampered: one byte of the compiled code changed.
    let mut bytes = std::fs::read(entry).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(entry, &bytes).unwrap();
    let stderr = run_read(&host, &mounted);
    assert!(
        stderr.contains("compilation cache entry")
            && stderr.contains(&name)
            && stderr.contains("tag does not verify")
            && stderr.contains("compiling again"),
        "{stderr}"
    );
    assert_ne!(
        std::fs::read(entry).unwrap(),
        bytes,
        "rewritten by the host"
    );
    assert!(!run_read(&host, &mounted).contains("compilation cache"));

    // Planted: another host's valid entry for the very same guest (its own key).
    let other = Host::new();
    run_read(&other, &mounted);
    let [theirs] = &entries(&other)[..] else {
        panic!("one entry")
    };
    assert_eq!(
        theirs.file_name(),
        entry.file_name(),
        "same guest, same engine"
    );
    std::fs::copy(theirs, entry).unwrap();
    let stderr = run_read(&host, &mounted);
    assert!(
        stderr.contains(&name) && stderr.contains("tag does not verify"),
        "{stderr}"
    );

    // Owned by someone else (the tests run as root, which can give files away).
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(entry, Some(65534), Some(65534)).unwrap();
        let stderr = run_read(&host, &mounted);
        assert!(
            stderr.contains(&name) && stderr.contains("owned by uid 65534"),
            "{stderr}"
        );
    }

    // Open to others, or a symlink to code elsewhere.
    std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stderr = run_read(&host, &mounted);
    assert!(
        stderr.contains("group or others can read or write it"),
        "{stderr}"
    );
    let elsewhere = host.dir.path().join("code.cwasm");
    std::fs::rename(entry, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, entry).unwrap();
    let stderr = run_read(&host, &mounted);
    assert!(stderr.contains("it is a symlink"), "{stderr}");
    assert!(!entry.is_symlink(), "replaced by the host's own entry");
}

#[test]
fn n24_a_cache_directory_others_could_write_is_emptied_and_narrowed() {
    let host = Host::new();
    let mounted = host.dir.path().join("m");
    std::fs::create_dir_all(&mounted).unwrap();
    std::fs::write(mounted.join("f"), "hello").unwrap();
    run_read(&host, &mounted);
    let cache = host.dir.path().join("data/cache");
    let [entry] = &entries(&host)[..] else {
        panic!("one entry")
    };
    let key = std::fs::read(cache.join("key")).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = std::fs::read(entry).unwrap();
    let stderr = run_read(&host, &mounted);
    assert!(
        stderr.contains("was writable by other users: its entries are discarded"),
        "{stderr}"
    );
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    assert_ne!(
        std::fs::read(cache.join("key")).unwrap(),
        key,
        "a key others could have read or replaced is not kept"
    );
    assert_ne!(
        std::fs::read(entry).unwrap(),
        before,
        "the entry was rebuilt"
    );

    // A cache directory owned by someone else is not used at all.
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
        let stderr = run_read(&host, &mounted);
        assert!(
            stderr.contains("compilation cache off") && stderr.contains("owned by uid 65534"),
            "{stderr}"
        );
    }
}

#[test]
fn n26_the_host_is_not_dumpable_and_leaves_no_core_file() {
    use std::os::unix::process::ExitStatusExt;
    let host = Host::new();
    let cwd = tempfile::tempdir().unwrap();
    // SIGQUIT's default action (a core dump) even when the tests run with it ignored (started
    // with `&` from a non-interactive shell, which the child would inherit).
    let mut c = std::process::Command::new("env");
    c.args(["--default-signal=QUIT", "sh", "-c"])
        .arg(r#"ulimit -c unlimited && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_attune-wasm"))
        .args(["run"])
        .arg(probe(Target::P1))
        .args(["--action", ACTION, "--timeout", "60s", "--", "spin"])
        .current_dir(cwd.path())
        .env_clear()
        .env("ATTUNE__DATA_DIR", host.dir.path().join("data"))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let pid = child.id();
    // Wait until the guest spins (the host's main thread plus the epoch ticker).
    let status = format!("/proc/{pid}/status");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let threads = std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_owned()))
            })
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if threads > 2 && exe.ends_with("attune-wasm") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the host never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(core, ["0", "0"], "{limits}");
    let kill = std::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.signal(), Some(3), "ended by SIGQUIT: {exit:?}");
    assert!(!exit.core_dumped(), "no core was written");
    let left: Vec<_> = std::fs::read_dir(cwd.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "no core file: {left:?}");
}
