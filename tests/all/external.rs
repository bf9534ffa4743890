//! External tools some tests run: the wasmtime CLI and wac (`wasmtime_cli`) and componentize-py
//! (`python_action`), installed at pinned versions by `scripts/setup.sh`.
//!
//! A missing tool or a wrong version FAILS the test, so that CI cannot pass without running it.
//! Setting the tool's skip variable to `skip` (`ATTUNE_TEST_WASMTIME_CLI=skip`,
//! `ATTUNE_TEST_PYTHON=skip`) skips those tests instead, with a line on stderr.

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
                && reported
                    .split(|c: char| c.is_whitespace() || c == 'v')
                    .any(|word| word == self.version),
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
