//! `attune-wasm db migrate`: create the database if needed and apply pending migrations.

use clap::Subcommand;

use attune_wasm::config::Settings;
use attune_wasm::store::{redact_url, OpenMode};

use super::open_store;

#[derive(Subcommand)]
pub enum DbCmd {
    /// Create the database if needed and apply pending migrations (also done on every start).
    Migrate,
}

/// Runs one `db` subcommand.
///
/// # Errors
/// A bad `database.url`, or the store's error while creating or migrating.
pub async fn db(settings: &Settings, cmd: DbCmd) -> anyhow::Result<()> {
    match cmd {
        DbCmd::Migrate => {
            let options = settings.store_options()?;
            open_store(settings, OpenMode::CreateIfMissing).await?;
            println!("{} is up to date", redact_url(&options.url));
            Ok(())
        }
    }
}
