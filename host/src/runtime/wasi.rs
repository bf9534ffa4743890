//! The guest's WASI context, built from an explicit list ([`GuestSetup`]): arguments, the
//! environment (never the host's own; the `SECRET_*` variables are the env door), stdin,
//! masked and capped stdout/stderr ([`Output`], `output.rs`) and directory mounts
//! ([`DirMount`]). Sockets stay denied (wasmtime-wasi's default).

use std::path::PathBuf;

use bytes::Bytes;
use secrecy::ExposeSecret;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{output, Error, GuestSetup, Result};

/// A directory mounted into the guest (`--dir HOST::GUEST`).
#[derive(Debug, Clone)]
pub struct DirMount {
    /// Path on the host.
    pub host: PathBuf,
    /// Path the guest sees.
    pub guest: String,
    /// Mounted read-only (`--dir-ro`): the guest can read but not create, change or delete.
    pub read_only: bool,
}

/// Where guest stdin comes from.
#[non_exhaustive]
pub enum Stdin {
    /// Nothing (immediate end of file).
    Empty,
    /// These bytes.
    Bytes(Bytes),
    /// The host process's stdin (CLI use).
    Inherit,
}

/// Where guest stdout/stderr go. Either way the output is masked and capped at
/// [`GuestSetup::max_output`] bytes per stream: writes past the cap fail in the guest and
/// [`GuestExit::output_capped`](super::GuestExit::output_capped) is set; nothing traps.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Output {
    /// The host process's stream (CLI use), written by a thread of its own: a host stream
    /// nobody reads makes the guest wait (backpressure), never the deadline.
    Inherit,
    /// Captured in memory, up to this many bytes (and [`GuestSetup::max_output`], whichever
    /// is smaller); past it, writes fail.
    Capture(usize),
}

/// The guest's output streams: captured or passed through (masked and capped either way).
pub(super) struct Outputs {
    pub(super) stdout: Option<output::GuestOutput>,
    pub(super) stderr: Option<output::GuestOutput>,
    passthrough: Vec<output::GuestOutput>,
}

impl Outputs {
    /// Ends every stream (what the masker held back is handed over); `true` if one hit its
    /// cap.
    pub(super) fn finish(&self) -> bool {
        // Every stream is finished, even after one reports its cap.
        let mut capped = false;
        for output in self
            .stdout
            .iter()
            .chain(&self.stderr)
            .chain(&self.passthrough)
        {
            capped |= output.finish();
        }
        capped
    }

    /// Waits until the pass-through streams have written everything out.
    pub(super) async fn drained(&self) {
        for output in &self.passthrough {
            output.drained().await;
        }
    }
}

impl Drop for Outputs {
    /// A run dropped midway (its future cancelled) still ends its streams, so that their
    /// writer threads end.
    fn drop(&mut self) {
        self.finish();
    }
}

/// Builds the WASI context: explicit env (never inherited), args, stdio, mounts. Sockets stay
/// denied (wasmtime-wasi's default).
pub(super) fn wasi_builder(setup: &GuestSetup) -> Result<(WasiCtxBuilder, Outputs)> {
    let mut b = WasiCtxBuilder::new();
    b.args(&setup.args);
    // WasiCtxBuilder::env does not deduplicate; the executor hands over unique names.
    for (k, v) in &setup.env {
        b.env(k, v);
    }
    for (k, v) in &setup.secret_env {
        // The one place a plaintext leaves the host through the env door.
        b.env(k, v.expose_secret());
    }
    match &setup.stdin {
        Stdin::Empty => {}
        Stdin::Bytes(bytes) => {
            b.stdin(MemoryInputPipe::new(bytes.clone()));
        }
        Stdin::Inherit => {
            b.inherit_stdin();
        }
    }
    let mut passthrough = Vec::new();
    let mut sink = |output: Output, fd: output::Fd| -> Result<Option<output::GuestOutput>> {
        match output {
            Output::Inherit => {
                let out = output::GuestOutput::host(fd, setup.redact.clone(), setup.max_output)
                    .map_err(|e| Error::Host(format!("cannot pass guest output on: {e}")))?;
                passthrough.push(out.clone());
                Ok(Some(out))
            }
            Output::Capture(cap) => {
                let cap = setup.max_output.min(u64::try_from(cap).unwrap_or(u64::MAX));
                Ok(Some(output::GuestOutput::memory(setup.redact.clone(), cap)))
            }
        }
    };
    let stdout = sink(setup.stdout, output::Fd::Stdout)?;
    let stderr = sink(setup.stderr, output::Fd::Stderr)?;
    if let Some(out) = &stdout {
        b.stdout(out.clone());
    }
    if let Some(out) = &stderr {
        b.stderr(out.clone());
    }
    let captured = |out: Option<output::GuestOutput>, output: Output| {
        out.filter(|_| matches!(output, Output::Capture(_)))
    };
    let outputs = Outputs {
        stdout: captured(stdout, setup.stdout),
        stderr: captured(stderr, setup.stderr),
        passthrough,
    };
    for dir in &setup.dirs {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| Error::Dir {
                host: dir.host.clone(),
                reason: format!("{e:#}"),
            })?;
    }
    Ok((b, outputs))
}
