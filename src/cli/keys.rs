//! `profile-sync keys rotate|rewrap|generations|retire`: the key-encryption keys (KEKs) that
//! wrap the stored user data keys.
//!
//! `rotate` re-wraps every stored key under a new KEK: a new generation under the same KMS key,
//! or a new KEK added to the local keyring (and made current). `rewrap --to-key` (KMS) moves
//! them to another KMS key. The data keys themselves do not change, so no field ciphertext is
//! touched. `generations` lists which KEKs still wrap keys; `retire --kek` (local keyring)
//! removes a KEK no stored key uses, so that what it wrapped (in backups too) can no longer be
//! unwrapped. After erasures, `rotate` then `retire` closes the window backups keep open.
//! `seal` seals a plaintext local keyring under the master key of `keys.master_key_env`.

use super::{data_dir, pipeline_file, usage, Failure};
use crate::config::KeysConfig;
use crate::keys::{KeyProvider, LocalKeyring};
use crate::pipeline::{local_keyring, open_data_keys, open_kms, open_store, zone_file};
use crate::stores::ProfileStore;
use std::collections::BTreeMap;

/// The pipeline file and data folder, and with residency zones the zone whose keys to act on.
#[derive(clap::Args)]
pub struct Target {
    #[arg(long)]
    pipeline: Option<std::path::PathBuf>,
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// With residency zones: the zone whose key provider and stored keys to act on (required).
    #[arg(long)]
    zone: Option<String>,
}

impl Target {
    /// The pipeline file as the zone sees it, and the data folder.
    fn open(&self) -> Result<(crate::config::Pipeline, std::path::PathBuf), Failure> {
        let file = pipeline_file(self.pipeline.as_deref())?;
        let dir = data_dir(&file, self.data_dir.as_deref());
        Ok((zone_file(&file, self.zone.as_deref()).map_err(usage)?, dir))
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Re-wrap every stored key under a new key-encryption key (KMS: a new generation of the
    /// configured key; local keyring: a new KEK, made current).
    Rotate {
        #[command(flatten)]
        target: Target,
    },
    /// Re-wrap every stored user key under key-encryption keys from another KMS key (id, ARN or
    /// alias); then set keys.key_id to it. The old KMS key must stay enabled until this is done.
    Rewrap {
        /// The new KMS key: id, ARN, alias/NAME or alias ARN.
        #[arg(long)]
        to_key: String,
        #[command(flatten)]
        target: Target,
    },
    /// List the key-encryption keys that wrap stored keys, and how many each wraps.
    Generations {
        #[command(flatten)]
        target: Target,
    },
    /// Seal a plaintext local keyring under the master key of `keys.master_key_env` (once).
    Seal {
        #[command(flatten)]
        target: Target,
    },
    /// Remove a key-encryption key no stored key uses from the local keyring.
    Retire {
        /// The KEK id, as `generations` lists it.
        #[arg(long)]
        kek: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Rotate { target } => rotate(&target, None).await,
        Command::Rewrap { to_key, target } => {
            if to_key.trim().is_empty() {
                return Err(usage(anyhow::anyhow!("--to-key is empty: name a KMS key")));
            }
            rotate(&target, Some(&to_key)).await
        }
        Command::Generations { target } => generations(&target).await,
        Command::Retire { kek, target } => retire(&target, &kek).await,
        Command::Seal { target } => seal(&target),
    }
}

async fn rotate(target: &Target, to_key: Option<&str>) -> Result<(), Failure> {
    let (file, dir) = target.open()?;
    let new_kek = match (&file.config.keys, to_key) {
        (KeysConfig::LocalKeyring { .. }, Some(_)) => {
            return Err(usage(anyhow::anyhow!(
                "keys rewrap --to-key moves keys to another KMS key; this pipeline uses the local keyring: use `keys rotate`"
            )))
        }
        (KeysConfig::LocalKeyring { .. }, None) => {
            let (path, master) = local_keyring(&file, &dir).map_err(usage)?.expect("a local keyring");
            Some(LocalKeyring::add_kek(&path, master.as_ref()).map_err(usage)?)
        }
        (KeysConfig::Kms { .. }, _) => None,
    };
    // Opened after the new KEK is in the keyring, so that it wraps with it.
    let store = open_store(&file, &dir).map_err(usage)?;
    let (rewrapped, skipped, calls) = match to_key {
        Some(key) => {
            let provider = open_kms(&file, Some(key)).map_err(usage)?;
            let (r, s) = rewrap_all(store.as_ref(), &provider).await?;
            (r, s, provider.calls())
        }
        None => {
            let keys = open_data_keys(&file, &dir, store.clone()).map_err(usage)?;
            let provider = keys.provider();
            let (r, s) = rewrap_all(store.as_ref(), provider).await?;
            (r, s, provider.calls())
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "rewrapped": rewrapped,
            "skipped": skipped,
            "new_kek": new_kek,
            "key_provider_calls": calls,
            "kms_calls": calls,
        })
    );
    Ok(())
}

/// Re-wraps every stored key with `provider` (a KMS provider starts with no current KEK, so
/// its first wrap makes a new one). A key erased or replaced meanwhile is skipped.
pub async fn rewrap_all(
    store: &dyn ProfileStore,
    provider: &dyn KeyProvider,
) -> Result<(u64, u64), Failure> {
    let (mut rewrapped, mut skipped) = (0, 0);
    let mut cursor = None;
    loop {
        let (page, next) = store.scan_user_keys(cursor, 500).await?;
        for old in page {
            let dek = provider.unwrap(&old).await?;
            let mut new = provider.wrap(old.user_id, old.key_version, &dek).await?;
            new.created_at = old.created_at;
            if store.replace_user_key(&old, &new).await? {
                rewrapped += 1;
            } else {
                skipped += 1;
            }
        }
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok((rewrapped, skipped)),
        }
    }
}

/// The stored keys per (provider, KEK id).
async fn inventory(store: &dyn ProfileStore) -> Result<BTreeMap<(String, String), u64>, Failure> {
    let mut counts = BTreeMap::new();
    let mut cursor = None;
    loop {
        let (page, next) = store.scan_user_keys(cursor, 1000).await?;
        for key in page {
            *counts.entry((key.provider, key.kek_id)).or_insert(0) += 1;
        }
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok(counts),
        }
    }
}

async fn generations(target: &Target) -> Result<(), Failure> {
    let (file, dir) = target.open()?;
    let store = open_store(&file, &dir).map_err(usage)?;
    let counts = inventory(store.as_ref()).await?;
    let mut out: Vec<serde_json::Value> = counts
        .iter()
        .map(|((provider, kek_id), n)| {
            serde_json::json!({"provider": provider, "kek_id": kek_id, "stored_keys": n})
        })
        .collect();
    let mut keyring = None;
    if let Some((path, master)) = local_keyring(&file, &dir).map_err(usage)? {
        let keks = LocalKeyring::keks(&path, master.as_ref()).map_err(usage)?;
        keyring = Some(
            keks.ids
                .iter()
                .map(|id| {
                    let n = counts
                        .get(&(crate::keys::LOCAL_PROVIDER.to_string(), id.clone()))
                        .copied()
                        .unwrap_or(0);
                    let current = *id == keks.current;
                    serde_json::json!({"kek_id": id, "current": current, "stored_keys": n, "retirable": n == 0 && !current})
                })
                .collect::<Vec<_>>(),
        );
    }
    out.sort_by_key(|g| std::cmp::Reverse(g["stored_keys"].as_u64()));
    println!(
        "{}",
        serde_json::json!({"generations": out, "keyring": keyring})
    );
    Ok(())
}

async fn retire(target: &Target, kek: &str) -> Result<(), Failure> {
    let (file, dir) = target.open()?;
    let Some((path, master)) = local_keyring(&file, &dir).map_err(usage)? else {
        return Err(usage(anyhow::anyhow!(
            "keys retire removes a KEK from the local keyring; with KMS, a generation lives only in the stored keys: `keys rotate` (or `rewrap --to-key`), then disable or schedule the deletion of the old KMS key once `keys generations` no longer lists it and the backup window has passed"
        )));
    };
    let store = open_store(&file, &dir).map_err(usage)?;
    let in_use = inventory(store.as_ref())
        .await?
        .into_iter()
        .find(|((_, id), _)| id == kek)
        .map_or(0, |(_, n)| n);
    if in_use > 0 {
        return Err(usage(anyhow::anyhow!(
            "{in_use} stored keys are still wrapped by `{kek}`: run `keys rotate` first"
        )));
    }
    LocalKeyring::remove_kek(&path, kek, master.as_ref()).map_err(usage)?;
    println!("{}", serde_json::json!({"retired": kek}));
    Ok(())
}

fn seal(target: &Target) -> Result<(), Failure> {
    let (file, dir) = target.open()?;
    let Some((path, Some(master))) = local_keyring(&file, &dir).map_err(usage)? else {
        return Err(usage(anyhow::anyhow!(
            "keys seal needs `keys: {{type: local_keyring, master_key_env: NAME}}` and that variable set to a 32-byte key in base64 (e.g. `openssl rand -base64 32`)"
        )));
    };
    let sealed = LocalKeyring::seal(&path, &master).map_err(usage)?;
    println!(
        "{}",
        serde_json::json!({"keyring": path.display().to_string(), "sealed_keys": sealed})
    );
    Ok(())
}
