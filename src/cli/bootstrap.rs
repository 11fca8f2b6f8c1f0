//! `profile-sync bootstrap`: creates what a pipeline's AWS adapters need, if missing — the
//! DynamoDB table (GSI, TTL, waits until ACTIVE), the blind-index key, and for development
//! only a KMS key and alias. Safe to run again: it changes nothing that exists.

use super::{pipeline_file, usage, Failure};
use crate::aws::{self, Endpoint};
use crate::config::{KeysConfig, StoreConfig};
use crate::pipeline::{open_dynamodb, open_kms};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file (default: pipelines/local.yaml).
    #[arg(long)]
    pipeline: Option<PathBuf>,
}

/// Bootstraps each residency zone's adapters (one JSON line per zone, naming it), or the
/// pipeline's when it has no zones.
pub async fn run(args: Args) -> Result<(), Failure> {
    let file = pipeline_file(args.pipeline.as_deref())?;
    for (zone, zone_file) in file.zone_files() {
        let mut said = bootstrap(&zone_file).await?;
        if file.config.residency.is_some() {
            said["zone"] = serde_json::Value::from(zone);
        }
        println!("{said}");
    }
    Ok(())
}

async fn bootstrap(file: &crate::config::Pipeline) -> Result<serde_json::Value, Failure> {
    if !matches!(file.config.store, StoreConfig::Dynamodb { .. }) {
        return Ok(
            serde_json::json!({"created": [], "note": "the embedded store and keyring create their files on first run: nothing to bootstrap"}),
        );
    }
    let store = open_dynamodb(file, false).map_err(usage)?;
    let table = store.ensure_table().await?;
    let mut kms_key_created = false;
    let mut kms_calls = 0;
    if let KeysConfig::Kms {
        key_id,
        region,
        endpoint,
        create_for_development,
        ..
    } = &file.config.keys
    {
        if *create_for_development {
            let at = Endpoint {
                region: region.clone(),
                endpoint: endpoint.clone(),
            };
            kms_key_created = ensure_dev_key(key_id, &at).await.map_err(|e| match e {
                DevKeyError::Usage(m) => usage(anyhow::anyhow!(m)),
                DevKeyError::Kms(m) => Failure::Runtime(anyhow::anyhow!(m)),
            })?;
        }
        // Loads the blind-index key, creating it when the table has none.
        let provider = open_kms(file, None)?;
        kms_calls = crate::keys::KeyProvider::calls(&provider);
    }
    Ok(serde_json::json!({
        "table": table,
        "kms_key_created": kms_key_created,
        "kms_calls": kms_calls,
    }))
}

enum DevKeyError {
    Usage(String),
    Kms(String),
}

/// Creates a symmetric KMS key and the alias `key_id` unless the alias exists. Development
/// only: production keys belong to infrastructure code, with their key policy.
async fn ensure_dev_key(key_id: &str, at: &Endpoint) -> Result<bool, DevKeyError> {
    if !key_id.starts_with("alias/") {
        return Err(DevKeyError::Usage(format!(
            "keys.create_for_development needs keys.key_id to be an alias (alias/NAME), not {key_id:?}"
        )));
    }
    let client = aws_sdk_kms::Client::new(&aws::sdk_config(at).await.map_err(DevKeyError::Usage)?);
    let fail = |what: &str, e: aws::Failure| {
        DevKeyError::Kms(match e {
            aws::Failure::Transient(why) => format!(
                "KMS {what}: {why}: is KMS reachable? (locally: `scripts/services start kms`)"
            ),
            aws::Failure::Permanent { code, message } => {
                format!("KMS {what} refused: {code} ({message})")
            }
        })
    };
    match client.describe_key().key_id(key_id).send().await {
        Ok(_) => return Ok(false),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_not_found_exception()) => {}
        Err(e) => return Err(fail("DescribeKey", aws::classify(&e))),
    }
    let created = client
        .create_key()
        .description("profile-sync development key (created by `profile-sync bootstrap`)")
        .send()
        .await
        .map_err(|e| fail("CreateKey", aws::classify(&e)))?;
    let id = created
        .key_metadata()
        .map(|m| m.key_id().to_string())
        .ok_or_else(|| DevKeyError::Kms("KMS CreateKey returned no key id".into()))?;
    client
        .create_alias()
        .alias_name(key_id)
        .target_key_id(id)
        .send()
        .await
        .map_err(|e| fail("CreateAlias", aws::classify(&e)))?;
    Ok(true)
}
