//! `attune-wasm`: run Attune actions compiled to WebAssembly with their secrets.

use std::process::ExitCode;

fn main() -> ExitCode {
    attune_wasm::cli::main()
}
