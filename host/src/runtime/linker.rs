//! The two linkers, built once per [`Runtime`](super::Runtime): what a guest may import,
//! one capability at a time (wasmtime-wasi's `add_to_linker` per capability).
//!
//! - components: WASI preview 2 ([`wasmtime_wasi::p2::add_to_linker_async`]) and the two
//!   secrets doors over one resolver: `attune:action/secrets` ([`secrets::add_to_linker`]) and
//!   the standard `wasi:config/store` ([`config_store::add_to_linker`]); a component may
//!   import either, both or neither;
//! - core modules: WASI preview 1, with `proc_exit` replaced so that a status WASI does not
//!   allow is a typed error.
//!
//! Anything else a guest imports is refused when it is linked, naming the import.

use wasmtime::{Engine, Linker};
use wasmtime_wasi::I32Exit;

use super::error::ExitOutOfRange;
use super::state::{ComponentState, ModuleState};
use super::{config_store, secrets, Error, Result};

/// wasmtime's errors while defining imports: a host failure.
fn host(e: wasmtime::Error) -> Error {
    Error::Host(format!("{e:#}"))
}

/// The linker of component guests: WASI p2, `attune:action/secrets` and `wasi:config/store`.
///
/// # Errors
/// [`Error::Host`] when wasmtime refuses a definition.
pub(super) fn components(engine: &Engine) -> Result<wasmtime::component::Linker<ComponentState>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(host)?;
    secrets::add_to_linker(&mut linker, |s: &mut ComponentState| &mut s.secrets).map_err(host)?;
    config_store::add_to_linker(&mut linker, |s: &mut ComponentState| &mut s.secrets)
        .map_err(host)?;
    Ok(linker)
}

/// The linker of core-module guests: WASI p1 (secrets come through the env door only).
///
/// # Errors
/// [`Error::Host`] when wasmtime refuses a definition.
pub(super) fn modules(engine: &Engine) -> Result<Linker<ModuleState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut ModuleState| &mut s.wasi)
        .map_err(host)?;
    // `proc_exit` replaced so that a status WASI does not allow is a typed error
    // (wasmtime-wasi reports it as an untyped message).
    linker.allow_shadowing(true);
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "proc_exit",
            |status: i32| -> wasmtime::Result<()> {
                // The WASI `exitcode` is a u32 passed as an i32.
                let status = status.cast_unsigned();
                match i32::try_from(status) {
                    Ok(code) if status < 126 => Err(wasmtime::Error::new(I32Exit(code))),
                    _ => Err(wasmtime::Error::new(ExitOutOfRange(status))),
                }
            },
        )
        .map_err(host)?;
    linker.allow_shadowing(false);
    Ok(linker)
}
