//! Per-execution store state: one plain struct per guest kind, holding the WASI context, the memory
//! limiter and the secret door (`get-secret`, `wasi:config/store`) (wasmtime's `WasiCtx` +
//! `ResourceTable` implementing `WasiView`).

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::Limiter;
use super::secrets::SecretDoor;

/// Host state of a component execution (WASI p2, `attune:action/secrets`,
/// `wasi:config/store`).
pub(crate) struct ComponentState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) secrets: SecretDoor,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Host state of a core-module execution (WASI p1; secrets come through the env door only).
pub(crate) struct ModuleState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: Limiter,
    /// Held so that the plaintexts share the store's lifetime and are zeroized with it.
    pub(crate) _secrets: SecretDoor,
}
