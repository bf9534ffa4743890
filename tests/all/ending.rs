//! Row N17: the process can always end. It ends when the guest ends, even while nobody closes
//! its stdin; at the timeout (exit 124) while the guest waits for stdin or writes into a pipe
//! nobody reads; at once when the caller cancels. Captured output honours `max_output` like
//! passed-through output: writes past the cap fail, `output_capped` is set, nothing traps.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attune_wasm::executor::{Executor, SecretSource};
use attune_wasm::runtime::{self, Cancel, Guest, Output, Runtime, RuntimeConfig};

use crate::support::{probe, probe_execution, text, Host, Target};

const ACTION: &str = "p.a";

/// Longest a test waits for the host before it kills it and fails (far past every limit).
const HARD_LIMIT: Duration = Duration::from_secs(40);

/// Which of the host's output streams the test never reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unread {
    Nothing,
    Stdout,
    Stderr,
}

/// How the host process ended.
struct Ended {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        text(&bytes)
    })
}

/// Runs `c` with its stdin a pipe the test keeps open and never writes to (as
/// `(sleep 10) | attune-wasm …`), reading every output stream but `unread`; returns how the
/// process ended and how long it took. A host still running after [`HARD_LIMIT`] is killed.
fn ends(c: &mut Command, unread: Unread) -> Ended {
    ends_with_input(c, unread, None)
}

/// As [`ends`]; with `input`, stdin is that text, then closed.
fn ends_with_input(c: &mut Command, unread: Unread, input: Option<Vec<u8>>) -> Ended {
    let start = Instant::now();
    let mut child: Child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn attune-wasm");
    let mut stdin = child.stdin.take();
    if let Some(input) = input {
        let mut pipe = stdin.take().expect("stdin pipe");
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = child.stdout.take().expect("stdout pipe");
    let stderr = child.stderr.take().expect("stderr pipe");
    // The unread pipe stays open, unread, until the host has ended.
    let (out_reader, out_held) = if unread == Unread::Stdout {
        (None, Some(stdout))
    } else {
        (Some(drain(stdout)), None)
    };
    let (err_reader, err_held) = if unread == Unread::Stderr {
        (None, Some(stderr))
    } else {
        (Some(drain(stderr)), None)
    };
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > HARD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the host was still running after {HARD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    drop((stdin, out_held, err_held));
    if let Some(reader) = out_reader {
        reader.join().unwrap();
    }
    Ended {
        code: status.code(),
        stderr: err_reader.map(|r| r.join().unwrap()).unwrap_or_default(),
        took,
    }
}

fn run(host: &Host, target: Target, extra: &[&str], guest_args: &[&str]) -> Command {
    let mut c = host.cmd();
    c.arg("run")
        .arg(probe(target))
        .args(["--action", ACTION])
        .args(extra)
        .arg("--")
        .args(guest_args);
    c
}

#[test]
fn n17_the_process_ends_with_the_guest_while_stdin_stays_open() {
    let host = Host::new();
    for target in [Target::P2, Target::P1] {
        let ended = ends(
            &mut run(&host, target, &[], &["exit", "0"]),
            Unread::Nothing,
        );
        assert_eq!(ended.code, Some(0), "{target:?}: {}", ended.stderr);
        assert!(
            ended.took < Duration::from_secs(6),
            "{target:?}: took {:?}",
            ended.took
        );
        // A guest's own status passes through as quickly.
        let ended = ends(
            &mut run(&host, target, &["--timeout", "2s"], &["exit", "5"]),
            Unread::Nothing,
        );
        // Rust's wasip2 std reports every non-zero exit as 1 through wasi:cli/exit.
        let want = if matches!(target, Target::P1) { 5 } else { 1 };
        assert_eq!(ended.code, Some(want), "{target:?}: {}", ended.stderr);
        assert!(
            ended.took < Duration::from_secs(6),
            "{target:?}: took {:?}",
            ended.took
        );
    }
}

#[test]
fn n17_a_guest_reading_stdin_forever_ends_at_the_timeout() {
    let host = Host::new();
    for target in [Target::P2, Target::P1] {
        for mode in ["stdin", "lines"] {
            let ended = ends(
                &mut run(&host, target, &["--timeout", "2s"], &[mode]),
                Unread::Nothing,
            );
            assert_eq!(ended.code, Some(124), "{target:?} {mode}: {}", ended.stderr);
            assert!(
                ended.stderr.contains("guest timed out after 2s"),
                "{target:?} {mode}: {}",
                ended.stderr
            );
            assert!(
                ended.took < Duration::from_secs(8),
                "{target:?} {mode}: took {:?}",
                ended.took
            );
        }
    }
}

#[test]
fn n17_a_guest_flooding_a_pipe_nobody_reads_ends_at_the_timeout() {
    let host = Host::new();
    for target in [Target::P2, Target::P1] {
        let ended = ends(
            &mut run(&host, target, &["--timeout", "2s"], &["flood", "64"]),
            Unread::Stdout,
        );
        assert_eq!(ended.code, Some(124), "{target:?}: {}", ended.stderr);
        assert!(
            ended.stderr.contains("guest timed out after 2s"),
            "{target:?}: {}",
            ended.stderr
        );
        assert!(
            ended.took < Duration::from_secs(8),
            "{target:?}: took {:?}",
            ended.took
        );
        // The same on stderr (the host's own error line then has nowhere to go either).
        let ended = ends(
            &mut run(&host, target, &["--timeout", "2s"], &["flood-stderr", "64"]),
            Unread::Stderr,
        );
        assert_eq!(ended.code, Some(124), "{target:?}: stderr flood");
        assert!(
            ended.took < Duration::from_secs(8),
            "{target:?}: stderr flood took {:?}",
            ended.took
        );
    }
}

#[test]
fn n17_output_nobody_reads_after_the_guest_ended_ends_at_the_timeout() {
    // 100 KiB: more than the pipe holds, less than the pipe and the host's buffer together.
    // The guest ends, its last output cannot be passed on, and the host gives up at the
    // deadline.
    let input = "y".repeat(1023) + "\n";
    let input = input.repeat(100).into_bytes();
    let host = Host::new();
    for target in [Target::P2, Target::P1] {
        let ended = ends_with_input(
            &mut run(&host, target, &["--timeout", "2s"], &["stdin"]),
            Unread::Stdout,
            Some(input.clone()),
        );
        assert_eq!(ended.code, Some(124), "{target:?}: {}", ended.stderr);
        assert!(
            ended.stderr.contains(
                "guest output could not be written within the timeout of 2s: nobody is reading"
            ),
            "{target:?}: {}",
            ended.stderr
        );
        assert!(
            ended.took < Duration::from_secs(8),
            "{target:?}: took {:?}",
            ended.took
        );
    }
}

#[test]
fn n17_output_read_late_is_still_passed_on_whole() {
    // Backpressure, not loss: a reader that only starts reading after a while gets all of it.
    let host = Host::new();
    for target in [Target::P2, Target::P1] {
        let mut child = run(&host, target, &["--timeout", "20s"], &["flood", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = drain(child.stderr.take().unwrap());
        std::thread::sleep(Duration::from_millis(500));
        let mut stdout = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "{target:?}: {}",
            stderr.join().unwrap()
        );
        assert_eq!(stdout.len(), 4 * 1024 * 1024, "{target:?}");
    }
}

/// A runtime, an executor without a store, and the probe for `target`.
fn library(target: Target) -> (Executor, Guest) {
    let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).unwrap());
    let guest = runtime
        .load("probe.wasm", &std::fs::read(probe(target)).unwrap())
        .unwrap();
    let source = SecretSource::Missing("no store in this test".into());
    (
        Executor::new(
            runtime,
            source,
            None,
            attune_wasm::executor::Strictness::Lenient,
        ),
        guest,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n17_captured_output_stops_at_the_cap_without_a_trap() {
    for target in [Target::P2, Target::P1] {
        let (executor, guest) = library(target);
        // The cap is `max_output` when it is the smaller, else the capture size.
        for (capture, max_output) in [(1 << 20, 64 * 1024), (64 * 1024, 1 << 20)] {
            let mut exec = probe_execution(ACTION, &["flood", "8"]);
            exec.stdout = Output::Capture(capture);
            exec.max_output = max_output;
            let report = executor
                .execute(&guest, exec)
                .await
                .unwrap_or_else(|e| panic!("{target:?} {capture}/{max_output}: {e}"));
            let exit = report.exit;
            assert!(exit.output_capped, "{target:?} {capture}/{max_output}");
            assert_eq!(
                exit.stdout.as_ref().map(bytes::Bytes::len),
                Some(64 * 1024),
                "{target:?}: exactly the cap is kept"
            );
            // The probe's write failed; it said so and exited 3 (wasip2 std: 1).
            assert_ne!(exit.code, 0, "{target:?}");
            assert!(
                text(exit.stderr.as_deref().unwrap_or_default()).contains("write failed"),
                "{target:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n17_a_cancelled_guest_ends_at_once_with_its_own_outcome() {
    for target in [Target::P2, Target::P1] {
        let (executor, guest) = library(target);
        let cancel = Cancel::new();
        let mut exec = probe_execution(ACTION, &["spin"]);
        exec.cancel = cancel.clone();
        let start = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        });
        let err = executor.execute(&guest, exec).await.unwrap_err();
        let took = start.elapsed();
        canceller.await.unwrap();
        assert!(
            matches!(
                err,
                attune_wasm::executor::Error::Runtime(runtime::Error::Cancelled)
            ),
            "{target:?}: {err}"
        );
        assert!(took < Duration::from_secs(5), "{target:?}: took {took:?}");

        // Cancelled before it starts: the guest never runs.
        let cancel = Cancel::new();
        cancel.cancel();
        let mut exec = probe_execution(ACTION, &["exit", "0"]);
        exec.cancel = cancel;
        let err = executor.execute(&guest, exec).await.unwrap_err();
        assert!(
            matches!(
                err,
                attune_wasm::executor::Error::Runtime(runtime::Error::Cancelled)
            ),
            "{target:?}: {err}"
        );
    }
}
