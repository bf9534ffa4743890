//! End-to-end tests: the real `attune-wasm` binary running real guests built from `examples/`
//! (wasm32-wasip1 and wasm32-wasip2) against an embedded SQLite store in a temporary directory.
//! One binary, one module per area (wasmtime's `tests/all` layout).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod attune_worker;
mod audit;
mod bad_inputs;
mod bound;
mod boundary;
mod config_store;
mod docs;
mod ending;
mod external;
mod hardening;
mod import;
mod isolation;
mod js_action;
mod leaks;
mod logs_mask;
mod postgres;
mod python_action;
mod redaction;
mod resolution;
mod review;
mod rotate;
mod sandbox;
mod secrets_cli;
mod shape;
mod store_states;
mod support;
mod vectors;
mod wasmtime_cli;
mod worker;
