//! `attune-wasm secret import FILE`: Attune `attune.key` rows (JSON lines) into the store, in
//! one transaction, ciphertexts and key hashes kept as they are ([`attune_wasm::store::import`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use attune_wasm::config::Settings;
use attune_wasm::store::{KeyHash, OpenMode, Written};

use super::secret::read_wiped;
use super::{key, open_store, replace};

// The about text is the doc comment of `SecretCmd::Import`.
#[derive(Args)]
pub struct ImportArgs {
    /// The JSON-lines file, or `-` for stdin.
    file: PathBuf,
    /// Overwrite stored secrets that are encrypted under a key other than the imported
    /// row's and the configured one; without it such a row refuses the import.
    #[arg(long)]
    replace_foreign_key: bool,
}

/// Imports every row of the file or none; rows of owner types this host does not run are
/// reported on stderr and skipped.
///
/// # Errors
/// An unreadable file, a bad row (named by line and ref), a missing key for a store with a
/// ciphertext floor, or the store's error: nothing is written then.
pub async fn import(settings: &Settings, args: ImportArgs) -> anyhow::Result<()> {
    let ImportArgs {
        file,
        replace_foreign_key,
    } = args;
    // The rows carry ciphertexts and plain values: read into memory wiped when freed.
    let bytes = if file.as_os_str() == "-" {
        read_wiped(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::File::open(&file)
            .and_then(read_wiped)
            .with_context(|| format!("cannot read {}", file.display()))?
    };
    let input =
        std::str::from_utf8(&bytes).with_context(|| format!("cannot read {}", file.display()))?;
    let mut plan =
        attune_wasm::store::import::plan(input).context("import refused, nothing written")?;
    for (line, secret_ref, owner_type) in &plan.skipped {
        eprintln!("skipped line {line} (ref {secret_ref}): owner type {owner_type} is not run by this host");
    }
    let store = open_store(settings, OpenMode::CreateIfMissing).await?;
    let writer = key(settings)?.map(|k| KeyHash::of(&k));
    if store.floor_record().is_some() {
        plan.bind_unbound(key(settings)?.as_ref())
            .context("import refused, nothing written")?;
    }
    let written = store
        .put_many_with(&plan.secrets, replace(writer.as_ref(), replace_foreign_key))
        .await
        .context("import failed, nothing written")?;
    let created = written.iter().filter(|w| **w == Written::Created).count();
    println!(
        "imported {} secret{} ({created} created, {} updated), skipped {}",
        written.len(),
        if written.len() == 1 { "" } else { "s" },
        written.len() - created,
        plan.skipped.len()
    );
    Ok(())
}
