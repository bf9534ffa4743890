//! Guest loading: detecting the kind of a binary ([`GuestKind`]), compiling and linking it
//! ([`Runtime::compile`], through the on-disk cache when one is configured) and keeping the
//! compiled guests of a process by content ([`Runtime::load`], [`MAX_CACHED_GUESTS`]).

use wasmtime::component::Component;
use wasmtime::{InstancePre, Module};
use wasmtime_wasi::p2::bindings::CommandPre;

use super::state::{ComponentState, ModuleState};
use super::{cache, Error, Result, Runtime};

/// What kind of guest a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// WASI preview 2 command component.
    Component,
    /// WASI preview 1 core module.
    Module,
}

impl GuestKind {
    /// Detects the kind from the binary header (magic `\0asm`, then version 1 for a core
    /// module or version `0x0d` layer 1 for a component).
    ///
    /// # Errors
    /// [`Error::NotWasm`] or [`Error::UnsupportedBinary`], naming `name`.
    pub fn detect(name: &str, bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(Error::NotWasm(name.to_owned()));
        }
        match bytes[4..8] {
            [1, 0, 0, 0] => Ok(Self::Module),
            [0x0d, 0, 1, 0] => Ok(Self::Component),
            _ => Err(Error::UnsupportedBinary(name.to_owned())),
        }
    }
}

/// A compiled and linked guest, ready to instantiate any number of times.
#[derive(Clone)]
pub struct Guest(pub(super) Compiled);

#[derive(Clone)]
pub(super) enum Compiled {
    Component(CommandPre<ComponentState>),
    Module(InstancePre<ModuleState>),
}

impl Guest {
    /// Whether this is a component or a core module.
    pub fn kind(&self) -> GuestKind {
        match self.0 {
            Compiled::Component(_) => GuestKind::Component,
            Compiled::Module(_) => GuestKind::Module,
        }
    }
}

/// Most guests [`Runtime::load`] keeps compiled in memory; past it the least recently loaded
/// is dropped (it stays in the on-disk cache, if one is configured).
pub const MAX_CACHED_GUESTS: usize = 64;

/// Compiled guests by SHA-256 of their bytes, most recently loaded last.
#[derive(Default)]
pub(super) struct GuestCache {
    entries: Vec<([u8; 32], Guest)>,
}

impl GuestCache {
    fn get(&mut self, hash: &[u8; 32]) -> Option<Guest> {
        let at = self.entries.iter().position(|(h, _)| h == hash)?;
        let entry = self.entries.remove(at);
        let guest = entry.1.clone();
        self.entries.push(entry);
        Some(guest)
    }

    fn insert(&mut self, hash: [u8; 32], guest: Guest) {
        self.entries.retain(|(h, _)| *h != hash);
        if self.entries.len() >= MAX_CACHED_GUESTS {
            self.entries.remove(0);
        }
        self.entries.push((hash, guest));
    }
}

impl Runtime {
    /// As [`Runtime::compile`], but returns the guest already compiled from the same bytes
    /// (same SHA-256) by this runtime when there is one: the worker's path, where the same
    /// action runs many times. Keeps up to [`MAX_CACHED_GUESTS`] guests; failures are not
    /// kept.
    ///
    /// # Errors
    /// As [`Runtime::compile`].
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Guest> {
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(bytes).into();
        if let Some(guest) = self.cached(&hash) {
            return Ok(guest);
        }
        let guest = self.compile(name, bytes)?;
        self.guests().insert(hash, guest.clone());
        Ok(guest)
    }

    /// The guest [`Runtime::load`] holds compiled from content whose SHA-256 is `hash`, if it
    /// still holds it (it keeps the [`MAX_CACHED_GUESTS`] most recently loaded).
    pub fn loaded(&self, hash: &[u8; 32]) -> Option<Guest> {
        self.cached(hash)
    }

    /// Number of guests [`Runtime::load`] holds compiled.
    pub fn cached_guests(&self) -> usize {
        self.guests().entries.len()
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<Guest> {
        self.guests().get(hash)
    }

    fn guests(&self) -> std::sync::MutexGuard<'_, GuestCache> {
        // A poisoned lock only means another thread panicked while moving entries: the
        // cache is still a valid list, so it is used as is.
        self.guests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compiles and links `bytes` (named `name` in errors), every time (the on-disk cache of
    /// [`RuntimeConfig::cache_dir`](super::RuntimeConfig::cache_dir) still spares the compiler when it holds the code).
    ///
    /// # Errors
    /// [`Error::NotWasm`], [`Error::UnsupportedBinary`], [`Error::Compile`], or
    /// [`Error::Link`] when an import is not provided (wasmtime names it) or the entry point
    /// (`wasi:cli/run` / `_start`) is missing.
    pub fn compile(&self, name: &str, bytes: &[u8]) -> Result<Guest> {
        let compile = |e: wasmtime::Error| Error::Compile {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let link = |e: wasmtime::Error| Error::Link {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let kind = GuestKind::detect(name, bytes)?;
        match kind {
            GuestKind::Component => {
                let component = self
                    .cached_or_compiled(kind, bytes, |bytes| Component::new(&self.engine, bytes))
                    .map_err(compile)?;
                let pre = self.components.instantiate_pre(&component).map_err(link)?;
                let pre = CommandPre::new(pre).map_err(|e| Error::Link {
                    name: name.to_owned(),
                    reason: format!(
                        "a component action must export wasi:cli/run (a WASI p2 command): {e:#}"
                    ),
                })?;
                Ok(Guest(Compiled::Component(pre)))
            }
            GuestKind::Module => {
                let module = self
                    .cached_or_compiled(kind, bytes, |bytes| Module::new(&self.engine, bytes))
                    .map_err(compile)?;
                let is_command = matches!(
                    module.get_export("_start"),
                    Some(wasmtime::ExternType::Func(f))
                        if f.params().len() == 0 && f.results().len() == 0
                );
                if !is_command {
                    return Err(Error::Link {
                        name: name.to_owned(),
                        reason: "a core module action must export a function _start: [] -> [] (a WASI p1 command)"
                            .into(),
                    });
                }
                let pre = self.modules.instantiate_pre(&module).map_err(link)?;
                Ok(Guest(Compiled::Module(pre)))
            }
        }
    }

    /// The compiled `bytes`: from the disk cache when it holds a verified entry for them,
    /// else compiled by `compile` and stored there.
    fn cached_or_compiled<T: cache::Artifact>(
        &self,
        kind: GuestKind,
        bytes: &[u8],
        compile: impl FnOnce(&[u8]) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<T> {
        let Some(cache) = &self.cache else {
            return compile(bytes);
        };
        use sha2::Digest;
        let entry = cache.entry(kind, &sha2::Sha256::digest(bytes).into());
        if let Some(artifact) = cache.load(&entry) {
            match T::from_verified(&self.engine, &artifact) {
                Ok(compiled) => return Ok(compiled),
                Err(e) => cache.reject(&entry, &format!("wasmtime refused it: {e}")),
            }
        }
        let compiled = compile(bytes)?;
        match compiled.to_bytes() {
            Ok(artifact) => cache.store(&entry, &artifact),
            Err(e) => tracing::warn!(
                "cannot write compilation cache entry {}: {e}",
                entry.display()
            ),
        }
        Ok(compiled)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::RuntimeConfig;

    #[test]
    fn detects_kinds() {
        let module = wat::parse_str("(module)").unwrap();
        assert_eq!(GuestKind::detect("m", &module).unwrap(), GuestKind::Module);
        let component = wat::parse_str("(component)").unwrap();
        assert_eq!(
            GuestKind::detect("c", &component).unwrap(),
            GuestKind::Component
        );
        assert!(matches!(
            GuestKind::detect("t", b"\0as"),
            Err(Error::NotWasm(_))
        ));
        assert!(matches!(
            GuestKind::detect("t", b"#!/bin/sh\n"),
            Err(Error::NotWasm(_))
        ));
    }

    #[test]
    fn missing_imports_are_named_before_running() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = wat::parse_str(
            r#"(module (import "evil" "steal" (func)) (func (export "_start")) (memory (export "memory") 1))"#,
        )
        .unwrap();
        let Err(err) = rt.compile("m.wasm", &wasm) else {
            panic!("must not link")
        };
        let text = err.to_string();
        assert!(text.contains("evil") && text.contains("steal"), "{text}");
    }

    #[test]
    fn load_reuses_compiled_guests_by_content() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let a = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        let b = wat::parse_str(r#"(module (func (export "_start") nop))"#).unwrap();
        let module = |g: &Guest| match &g.0 {
            Compiled::Module(pre) => pre.module().clone(),
            Compiled::Component(_) => panic!("a module"),
        };
        let first = rt.load("a.wasm", &a).unwrap();
        let again = rt.load("renamed.wasm", &a).unwrap();
        assert!(Module::same(&module(&first), &module(&again)));
        assert_eq!(rt.cached_guests(), 1);
        let other = rt.load("b.wasm", &b).unwrap();
        assert!(!Module::same(&module(&first), &module(&other)));
        assert_eq!(rt.cached_guests(), 2);
        assert!(rt.load("bad.wasm", b"\0asm\x01\0\0\0junk").is_err());
        assert_eq!(rt.cached_guests(), 2, "failures are not kept");
        let fresh = rt.compile("a.wasm", &a).unwrap();
        assert!(
            !Module::same(&module(&first), &module(&fresh)),
            "compile always compiles"
        );
    }

    #[test]
    fn module_without_start_is_refused() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = wat::parse_str("(module)").unwrap();
        assert!(matches!(rt.compile("m", &wasm), Err(Error::Link { .. })));
    }

    #[test]
    fn component_without_run_is_refused() {
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let wasm = wat::parse_str("(component)").unwrap();
        let Err(err) = rt.compile("c", &wasm) else {
            panic!("must not link")
        };
        assert!(err.to_string().contains("wasi:cli/run"), "{err}");
    }
}
