//! External tools some tests run: the wasmtime CLI and wac (`wasmtime_cli`), componentize-py
//! (`python_action`) and npm with componentize-js (`js_action`), installed at pinned versions by
//! `scripts/setup.sh`.
//!
//! A missing tool or a wrong version FAILS the test, so that CI cannot pass without running it.
//! Setting the tool's skip variable to `skip` (`ATTUNE_TEST_WASMTIME_CLI=skip`,
//! `ATTUNE_TEST_PYTHON=skip`, `ATTUNE_TEST_JS=skip`) skips those tests instead, with a line on
//! stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The wasmtime CLI, at the version attune-wasm embeds (`wasmtime` in the root Cargo.toml).
pub const WASMTIME: ToolSpec = ToolSpec {
    name: "wasmtime",
    version: "48.0.8",
    skip_var: "ATTUNE_TEST_WASMTIME_CLI",
};

/// wac-cli, for `wac plug` (composing an action with the secrets adapter).
pub const WAC: ToolSpec = ToolSpec {
    name: "wac",
    version: "0.12.0",
    skip_var: "ATTUNE_TEST_WASMTIME_CLI",
};

/// componentize-py, for the Python action.
pub const COMPONENTIZE_PY: ToolSpec = ToolSpec {
    name: "componentize-py",
    version: "0.25.1",
    skip_var: "ATTUNE_TEST_PYTHON",
};

/// npm, for componentize-js (pinned by `examples/js-action/package-lock.json`, not here: any
/// version of npm reports itself as a word, so an empty pin accepts every version).
pub const NPM: ToolSpec = ToolSpec {
    name: "npm",
    version: "",
    skip_var: "ATTUNE_TEST_JS",
};

/// A pinned external tool.
pub struct ToolSpec {
    pub name: &'static str,
    pub version: &'static str,
    /// Variable that, set to `skip`, skips the tests needing this tool.
    pub skip_var: &'static str,
}

impl ToolSpec {
    /// Whether the tests needing this tool are skipped (`<skip_var>=skip`); says so on stderr.
    pub fn skipped(&self) -> bool {
        let skip = std::env::var(self.skip_var).as_deref() == Ok("skip");
        if skip {
            eprintln!("skipped: {}=skip (needs {})", self.skip_var, self.name);
        }
        skip
    }

    /// The tool's path: on PATH, else in `~/.cargo/bin`. Panics when it is missing or reports
    /// another version than the pinned one.
    pub fn path(&self) -> PathBuf {
        let found = search_path(self.name).unwrap_or_else(|| {
            panic!(
                "`{}` {} not found on PATH or in ~/.cargo/bin: run scripts/setup.sh \
                 (or set {}=skip to skip these tests)",
                self.name, self.version, self.skip_var
            )
        });
        let out = Command::new(&found)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("run {} --version: {e}", found.display()));
        let reported = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && (self.version.is_empty()
                    || reported
                        .split(|c: char| c.is_whitespace() || c == 'v')
                        .any(|word| word == self.version)),
            "{} reports {:?}, the tests need {} {}: run scripts/setup.sh \
             (or set {}=skip to skip these tests)",
            found.display(),
            reported.trim(),
            self.name,
            self.version,
            self.skip_var
        );
        found
    }

    /// `None` when skipped, else the checked path (see [`ToolSpec::path`]).
    pub fn require(&self) -> Option<PathBuf> {
        if self.skipped() {
            None
        } else {
            Some(self.path())
        }
    }
}

/// Builds `examples/<example>` with its `build.sh OUT` into `examples/target/<example>/<file>`
/// (under a private name first, then renamed: another test process may be reading it), with
/// `tool`'s directory first on PATH. Panics with the script's output when it fails.
pub fn build_example(example: &str, file: &str, tool: &Path) -> PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .join("examples");
    let out_dir = examples.join("target").join(example);
    std::fs::create_dir_all(&out_dir).expect("create output dir");
    let out = out_dir.join(file);
    let partial = out_dir.join(format!("{file}.{}.tmp", std::process::id()));
    let tool_dir = tool.parent().expect("a tool path has a directory");
    let path = std::env::join_paths(std::iter::once(tool_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH entries are joinable");
    let script = examples.join(example).join("build.sh");
    let built = Command::new(&script)
        .arg(&partial)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        built.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::rename(&partial, &out).expect("rename the built component");
    out
}

fn search_path(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
