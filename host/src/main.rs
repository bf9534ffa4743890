//! `attune-wasm`: run Attune actions compiled to WebAssembly with their secrets.
//!
//! A thin binary over the `attune_wasm` library: the command line ([`cli`]) is the binary's
//! own and uses only the library's public API.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
