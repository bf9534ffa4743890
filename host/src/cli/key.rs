//! `attune-wasm key hash | rotate`: the configured key's hash, and re-encrypting every
//! encrypted secret under a new password ([`attune_wasm::store::rotate`]).

use anyhow::Context;
use clap::Subcommand;
use secrecy::SecretString;

use attune_wasm::config::Settings;
use attune_wasm::secrets::crypto::EncryptionKey;
use attune_wasm::store::OpenMode;

use super::secret::read_value;
use super::{open_store, require_key};

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Print the configured key's hash (lowercase hex SHA-256 of the derived key), to compare
    /// with the key hash stored on each row.
    Hash,
    /// Re-encrypt every encrypted secret under a new password (from ATTUNE_NEW_ENCRYPTION_KEY,
    /// else stdin) in one transaction; run it again after an interruption. Then configure the
    /// new password as security.encryption_key.
    Rotate {
        /// Report what would change without writing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs one `key` subcommand.
///
/// # Errors
/// No key configured, a new password that is too short, a missing store, or a row the old
/// key cannot open (named; nothing is written then).
pub async fn key(settings: &Settings, cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Hash => {
            println!("{}", require_key(settings)?.key_hash());
            Ok(())
        }
        KeyCmd::Rotate { dry_run } => rotate(settings, dry_run).await,
    }
}

/// Environment variable holding the new password for `key rotate`.
const NEW_KEY_ENV: &str = "ATTUNE_NEW_ENCRYPTION_KEY";

async fn rotate(settings: &Settings, dry_run: bool) -> anyhow::Result<()> {
    let old = require_key(settings)?;
    let new_password = match std::env::var(NEW_KEY_ENV) {
        Ok(v) => SecretString::from(v),
        Err(_) => read_value(Some("-".into()), "new encryption key")?,
    };
    let new = EncryptionKey::from_password(&new_password).context("new encryption key")?;
    let store = open_store(settings, OpenMode::MustExist).await?;
    let summary = attune_wasm::store::rotate::rotate(&store, &old, &new, dry_run).await?;
    let verb = if dry_run {
        "would re-encrypt"
    } else {
        "re-encrypted"
    };
    for secret_ref in &summary.rotated {
        println!("{verb} {secret_ref}");
    }
    let rotated = summary.rotated.len();
    println!(
        "{verb} {rotated} secret{}; {} already under the new key, {} plain left alone",
        if rotated == 1 { "" } else { "s" },
        summary.already_new.len(),
        summary.plain
    );
    if !dry_run {
        println!(
            "new key hash {}: configure the new password as security.encryption_key",
            new.key_hash()
        );
    }
    Ok(())
}
