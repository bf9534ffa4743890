//! `attune-wasm audit list`: who received which secret, when and through which door (never
//! values), newest first.

use clap::Subcommand;

use attune_wasm::config::Settings;
use attune_wasm::secrets::names::ActionRef;
use attune_wasm::store::audit::{Filter, RunState};
use attune_wasm::store::{OpenMode, Timestamp};

use super::open_store;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// List audit records, newest first.
    List {
        /// Only this action (`pack.action`).
        #[arg(long, value_name = "P.A")]
        action: Option<String>,
        /// Only records since this long ago (`1h`, `30m`) or this RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<Timestamp>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// `1h`-style durations ago, or an RFC 3339 time.
fn parse_since(s: &str) -> Result<Timestamp, String> {
    let at = match humantime::parse_duration(s) {
        Ok(ago) => chrono::Duration::from_std(ago)
            .ok()
            .and_then(|ago| chrono::Utc::now().checked_sub_signed(ago))
            .ok_or_else(|| format!("{s:?} is too long ago"))?,
        Err(_) => {
            return Timestamp::parse(s).ok_or_else(|| {
                format!("expected a duration like 1h or an RFC 3339 time, got {s:?}")
            })
        }
    };
    Ok(Timestamp::from(at))
}

/// Runs one `audit` subcommand.
///
/// # Errors
/// A bad action ref, a missing store, or the store's error.
pub async fn audit(settings: &Settings, cmd: AuditCmd) -> anyhow::Result<()> {
    let AuditCmd::List {
        action,
        since,
        limit,
    } = cmd;
    let action_ref = action.map(|a| ActionRef::new(&a)).transpose()?;
    let store = open_store(settings, OpenMode::MustExist).await?;
    let mut filter = Filter::default();
    filter.action_ref = action_ref;
    filter.since = since;
    filter.limit = limit;
    let records = store.list_audit(&filter).await?;
    println!(
        "{:<24} {:<36} {:<24} {:<32} {:<11} {:<13} {:<5} RUN",
        "TIME", "EXECUTION", "ACTION", "SECRET", "DOOR", "OUTCOME", "COUNT"
    );
    for listed in records {
        let r = &listed.record;
        println!(
            "{:<24} {:<36} {:<24} {:<32} {:<11} {:<13} {:<5} {}",
            r.at,
            r.execution_id,
            r.action_ref,
            r.secret_ref,
            r.door.as_str(),
            r.outcome.as_str(),
            r.count,
            listed.run.map_or("-", RunState::as_str)
        );
    }
    Ok(())
}
