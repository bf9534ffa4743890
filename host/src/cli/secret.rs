//! `attune-wasm secret set | get | list | delete` (and `import`, in `import.rs`): one secret
//! at a time, by owner and name. Values are read without echo or from a pipe, never printed
//! but by `get --reveal`.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use attune_wasm::config::Settings;
use attune_wasm::secrets::crypto;
use attune_wasm::secrets::names::{ActionRef, Owner, PackRef, SecretName};
use attune_wasm::store::{
    self, KeyHash, NewSecret, OpenMode, StoredValue, Visible, Written, MAX_VALUE_BYTES,
};

use super::{import, is_missing, open_store, replace, require_key};

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Store a secret (encrypted unless --plain). Without VALUE, or with `-`, the value is read
    /// from stdin (one trailing newline removed) so that it stays out of shell history.
    Set {
        /// Secret name: 1-128 bytes of [A-Za-z0-9][A-Za-z0-9_-]*.
        name: String,
        /// The value, or `-` for stdin.
        value: Option<String>,
        #[command(flatten)]
        owner: OwnerArgs,
        /// Store the value unencrypted (`encrypted: false`, as the seed allows).
        #[arg(long)]
        plain: bool,
        /// Overwrite the secret even if it is stored encrypted under another key (which this
        /// host cannot decrypt); without it such a write is refused.
        #[arg(long)]
        replace_foreign_key: bool,
    },
    /// Show a secret's metadata; with --reveal, print its value (exactly, no newline added).
    Get {
        /// Secret name.
        name: String,
        #[command(flatten)]
        owner: OwnerArgs,
        /// Decrypt and print the value.
        #[arg(long)]
        reveal: bool,
    },
    /// List secrets (metadata only, never values).
    List {
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Import Attune `attune.key` rows from JSON lines (`psql -Atc "SELECT row_to_json(k)
    /// FROM attune.key k"`), keeping each ciphertext and key hash as is. All rows or none.
    Import(import::ImportArgs),
    /// Delete a secret.
    Delete {
        /// Secret name.
        name: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

/// Owner selection: none = system.
#[derive(Args)]
pub struct OwnerArgs {
    /// Pack-level secret of pack P.
    #[arg(long, value_name = "P", conflicts_with = "action")]
    pack: Option<String>,
    /// Action-level secret of action P.A.
    #[arg(long, value_name = "P.A")]
    action: Option<String>,
}

impl OwnerArgs {
    fn owner(&self) -> anyhow::Result<Option<Owner>> {
        Ok(match (&self.pack, &self.action) {
            (Some(p), _) => Some(Owner::Pack(PackRef::new(p)?)),
            (None, Some(a)) => Some(Owner::Action(ActionRef::new(a)?)),
            (None, None) => None,
        })
    }
}

/// Runs one `secret` subcommand.
///
/// # Errors
/// Bad names or owners, a missing key or store, and the store's errors, each naming the
/// secret by ref.
pub async fn secret(settings: &Settings, cmd: SecretCmd) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Set {
            name,
            value,
            owner,
            plain,
            replace_foreign_key,
        } => {
            let name = SecretName::new(&name)?;
            let owner = owner.owner()?.unwrap_or(Owner::System);
            let secret_ref = owner.secret_ref(&name);
            let value = read_value(value, &secret_ref)?;
            let key = if plain {
                None
            } else {
                Some(require_key(settings)?)
            };
            let store = open_store(settings, OpenMode::CreateIfMissing).await?;
            let stored = match &key {
                Some(k) => StoredValue::encrypted(
                    k.encrypt(&value, &store::binding(&owner, &name)),
                    Some(KeyHash::of(k)),
                ),
                None => StoredValue::Plain(value),
            };
            // A plain write by a host with a key may replace rows under that key.
            let writer = match &key {
                Some(k) => Some(KeyHash::of(k)),
                None => super::key(settings).ok().flatten().map(|k| KeyHash::of(&k)),
            };
            let written = store
                .put_with(
                    &NewSecret {
                        owner: owner.clone(),
                        name: name.clone(),
                        value: stored,
                    },
                    replace(writer.as_ref(), replace_foreign_key),
                )
                .await?;
            let verb = match written {
                Written::Created => "created",
                Written::Updated => "updated",
            };
            let how = if key.is_some() { "encrypted" } else { "plain" };
            println!(
                "{verb} secret {secret_ref} ({owner}, {how}, env {})",
                name.env_var()
            );
        }
        SecretCmd::Get {
            name,
            owner,
            reveal,
        } => {
            let name = SecretName::new(&name)?;
            let owner = owner.owner()?.unwrap_or(Owner::System);
            let store = open_store(settings, OpenMode::MustExist).await?;
            let secret_ref = owner.secret_ref(&name);
            let Some(row) = store.get(&owner, &name).await? else {
                bail!("secret {secret_ref} not found ({owner})");
            };
            if reveal {
                let value = match &row.value {
                    StoredValue::Encrypted {
                        ciphertext,
                        key_hash,
                    } => {
                        let key = require_key(settings)?;
                        let stored = ciphertext.expose_secret();
                        let hash = key_hash.as_ref().map(KeyHash::as_str);
                        crypto::check_floor(stored, key.floor(store.floor_record()))
                            .and_then(|()| key.decrypt(stored, hash, &row.binding()))
                            .with_context(|| format!("secret {secret_ref}"))?
                    }
                    StoredValue::Plain(value) => value.clone(),
                };
                let mut out = std::io::stdout().lock();
                out.write_all(value.expose_secret().as_bytes())?;
                out.flush()?;
            } else {
                println!("ref:       {secret_ref}");
                println!("owner:     {owner}");
                println!("name:      {name}");
                println!("env:       {}", name.env_var());
                println!("encrypted: {}", row.value.is_encrypted());
                println!(
                    "key hash:  {}",
                    row.value.key_hash().map_or("-", KeyHash::as_str)
                );
                println!("created:   {}", row.created);
                println!("updated:   {}", row.updated);
            }
        }
        SecretCmd::List { owner } => {
            let owner = owner.owner()?;
            let store = match open_store(settings, OpenMode::MustExist).await {
                Ok(store) => store,
                Err(e) if is_missing(&e) => {
                    eprintln!("no secrets stored yet ({e:#})");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let rows = store.list(owner.as_ref()).await?;
            println!(
                "{:<7} {:<24} {:<32} {:<9} {:<12} UPDATED",
                "OWNER", "REF", "NAME", "ENCRYPTED", "KEY HASH"
            );
            for listed in rows {
                let row = match listed {
                    Visible::Row(row) => row,
                    // Listed, so that it can be found and deleted; the reason (never content)
                    // goes with it: its columns are what does not parse.
                    Visible::Corrupt {
                        owner,
                        name,
                        reason,
                    } => {
                        println!(
                            "{:<7} {:<24} {:<32} {:<9} {:<12} malformed: {reason}",
                            owner.owner_type().as_str(),
                            shown_ref(&owner),
                            name,
                            "?",
                            "-"
                        );
                        continue;
                    }
                };
                let hash = row.value.key_hash().map_or_else(
                    || "-".to_owned(),
                    |h| {
                        h.as_str()
                            .chars()
                            .take(12)
                            .flat_map(char::escape_default)
                            .collect()
                    },
                );
                println!(
                    "{:<7} {:<24} {:<32} {:<9} {:<12} {}",
                    row.owner.owner_type().as_str(),
                    shown_ref(&row.owner),
                    row.name,
                    row.value.is_encrypted(),
                    hash,
                    row.updated
                );
            }
        }
        SecretCmd::Import(args) => import::import(settings, args).await?,
        SecretCmd::Delete { name, owner } => {
            let name = SecretName::new(&name)?;
            let owner = owner.owner()?.unwrap_or(Owner::System);
            let secret_ref = owner.secret_ref(&name);
            let store = open_store(settings, OpenMode::MustExist).await?;
            if !store.delete(&owner, &name).await? {
                bail!("secret {secret_ref} not found ({owner})");
            }
            println!("deleted secret {secret_ref} ({owner})");
        }
    }
    Ok(())
}

/// Reads the value from the argument or stdin and checks it: at most [`MAX_VALUE_BYTES`],
/// valid UTF-8, no NUL byte (a C guest would see its env value truncated).
pub(super) fn read_value(arg: Option<String>, secret_ref: &str) -> anyhow::Result<SecretString> {
    let mut raw = Zeroizing::new(match arg {
        Some(v) if v != "-" => v.into_bytes(),
        // At a terminal, prompt without echo (one line, like Vault's CLI); multi-line values
        // come from a pipe or file (`- < key.pem`).
        _ if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("{secret_ref} (input hidden, Enter ends): "))
                .context("reading the value from the terminal")?
                .into_bytes()
        }
        _ => {
            let mut buf = read_wiped(std::io::stdin().take(MAX_VALUE_BYTES as u64 + 3))
                .context("reading the value from stdin")?;
            if buf.ends_with(b"\n") {
                buf.pop();
                if buf.ends_with(b"\r") {
                    buf.pop();
                }
            }
            std::mem::take(&mut *buf)
        }
    });
    let problem = if raw.len() > MAX_VALUE_BYTES {
        Some(format!("it is longer than {MAX_VALUE_BYTES} bytes"))
    } else if raw.contains(&0) {
        Some("it contains a NUL byte, which environment variables cannot carry".to_owned())
    } else {
        None
    };
    if let Some(problem) = problem {
        bail!("the value of secret {secret_ref} is refused: {problem}");
    }
    match String::from_utf8(std::mem::take(&mut *raw)) {
        Ok(text) => Ok(SecretString::from(text)),
        Err(e) => {
            Zeroizing::new(e.into_bytes());
            bail!("the value of secret {secret_ref} is refused: it is not valid UTF-8")
        }
    }
}

/// The REF column of `secret list`: the owner's pack or action ref, `-` for the system.
fn shown_ref(owner: &Owner) -> &str {
    if owner.owner_ref().is_empty() {
        "-"
    } else {
        owner.owner_ref()
    }
}

/// Reads `reader` to its end into memory that is wiped when it is freed, including every
/// smaller buffer left behind as it grew (`read_to_end` would free those unwiped: copies of a
/// secret in freed heap memory).
///
/// # Errors
/// The reader's I/O error.
pub(super) fn read_wiped(mut reader: impl Read) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(8 * 1024));
    let mut chunk = Zeroizing::new([0u8; 8 * 1024]);
    loop {
        let n = match reader.read(&mut chunk[..]) {
            Ok(0) => return Ok(buf),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.len() + n > buf.capacity() {
            // Grow by hand: the old buffer is wiped when `buf` is replaced and dropped.
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.len() + n) * 2));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A reader that hands out at most 1,000 bytes per call and is interrupted once.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        interrupted: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if !self.interrupted && self.at > 0 {
                self.interrupted = true;
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = out.len().min(1000).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn read_wiped_reads_everything_across_growth_and_interruptions() {
        for len in [0, 1, 8 * 1024, 8 * 1024 + 1, 100_003] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let read = read_wiped(Trickle {
                data: data.clone(),
                at: 0,
                interrupted: false,
            })
            .unwrap();
            assert_eq!(*read, data, "{len} bytes");
        }
    }
}
