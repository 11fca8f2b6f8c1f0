//! `profile-sync keys rotate|rewrap`: re-wraps every stored user data key under a new KMS
//! key-encryption key — a new KEK generation under the same KMS key (`rotate`) or under
//! another KMS key (`rewrap --to-key`). The data keys themselves do not change, so no field
//! ciphertext is touched; old KEKs stay decryptable for workers that still cache them.

use super::{pipeline_file, usage, Failure};
use crate::config::KeysConfig;
use crate::keys::{KeyProvider, KmsKeyProvider};
use crate::pipeline::{open_dynamodb, open_kms};
use crate::stores::DynamoStore;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Re-wrap every stored user key under a new key-encryption key from the configured KMS key.
    Rotate {
        #[arg(long)]
        pipeline: Option<PathBuf>,
    },
    /// Re-wrap every stored user key under key-encryption keys from another KMS key (id, ARN or
    /// alias); then set keys.key_id to it. The old KMS key must stay enabled until this is done.
    Rewrap {
        /// The new KMS key: id, ARN, alias/NAME or alias ARN.
        #[arg(long)]
        to_key: String,
        #[arg(long)]
        pipeline: Option<PathBuf>,
    },
}

pub async fn run(command: Command) -> Result<(), Failure> {
    let (pipeline, to_key) = match &command {
        Command::Rotate { pipeline } => (pipeline, None),
        Command::Rewrap { pipeline, to_key } => (pipeline, Some(to_key.as_str())),
    };
    let file = pipeline_file(pipeline.as_deref())?;
    if !matches!(file.config.keys, KeysConfig::Kms { .. }) {
        return Err(usage(anyhow::anyhow!(
            "keys rotate and keys rewrap work with `keys: {{type: kms}}`; the local keyring has no rotation yet"
        )));
    }
    if to_key.is_some_and(|k| k.trim().is_empty()) {
        return Err(usage(anyhow::anyhow!("--to-key is empty: name a KMS key")));
    }
    let store = open_dynamodb(&file, true).map_err(usage)?;
    let provider = open_kms(&file, to_key).map_err(usage)?;
    let (rewrapped, skipped) = rewrap_all(&store, &provider).await?;
    println!(
        "{}",
        serde_json::json!({
            "rewrapped": rewrapped,
            "skipped": skipped,
            "kms_calls": provider.calls(),
        })
    );
    Ok(())
}

/// Re-wraps every stored user key with `provider` (which starts with no current KEK, so its
/// first wrap makes a new one). A key erased or replaced meanwhile is skipped.
pub async fn rewrap_all(
    store: &DynamoStore,
    provider: &KmsKeyProvider,
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
