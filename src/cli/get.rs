//! `profile-sync get`: one stored profile. PII and sensitive fields are masked; `--reveal`
//! decrypts them, requires a reason, and writes an audit record (fields named, never values)
//! before anything is shown.

use super::{data_dir, pipeline_file, usage, Failure};
use crate::crypto::open_field;
use crate::pipeline::{open_data_keys, open_store, schemas};
use crate::schema::Classification;
use crate::stores::AuditRecord;
use serde_json::Value as Json;
use std::path::PathBuf;
use uuid::Uuid;

pub const MASK: &str = "***";

#[derive(clap::Args)]
pub struct Args {
    /// A user id, or an email address (found through the blind index).
    user: String,
    /// Decrypt PII and show sensitive fields (requires --reason; audited).
    #[arg(long, requires = "reason")]
    reveal: bool,
    /// Why the PII is needed, e.g. a ticket number. Stored in the audit trail.
    #[arg(long)]
    reason: Option<String>,
    /// Who is asking; defaults to $PROFILE_SYNC_ACTOR, then $USER.
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    pipeline: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn actor(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("PROFILE_SYNC_ACTOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let file = pipeline_file(args.pipeline.as_deref())?;
    let data_dir = data_dir(&file, args.data_dir.as_deref());
    if !data_dir.exists() {
        return Err(usage(anyhow::anyhow!(
            "no data at {}: run `profile-sync run` first, or pass --data-dir",
            data_dir.display()
        )));
    }
    if args.reveal && args.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(usage(anyhow::anyhow!(
            "--reveal needs a non-empty --reason"
        )));
    }
    let catalog = schemas(&file).map_err(usage)?.catalog;
    let store = open_store(&file, &data_dir).map_err(usage)?;
    let keys = open_data_keys(&file, &data_dir, store.clone()).map_err(usage)?;
    let user = match Uuid::parse_str(&args.user) {
        Ok(u) => u,
        Err(_) if args.user.contains('@') => {
            let index = keys.provider().blind_index().email(&args.user);
            store
                .find_by_email_index(&index)
                .await?
                .ok_or_else(|| usage(anyhow::anyhow!("no live profile has that email address")))?
        }
        Err(_) => {
            return Err(usage(anyhow::anyhow!(
                "{:?} is neither a user id (UUID) nor an email address",
                args.user
            )))
        }
    };
    let stored = store
        .get(user)
        .await?
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("no profile for user {user}")))?;
    let Some(record) = stored.record else {
        println!(
            "{}",
            serde_json::json!({"user_id": user, "version": stored.version, "state": "deleted", "updated_at": stored.updated_at})
        );
        return Ok(());
    };
    let mut profile = record.profile.clone();
    for (name, class) in catalog.top_level() {
        match class {
            Classification::Sensitive if !args.reveal && profile.contains_key(name) => {
                profile.insert(name.clone(), Json::from(MASK));
            }
            Classification::Pii if record.encrypted.contains_key(name) => {
                profile.insert(name.clone(), Json::from(MASK));
            }
            _ => {}
        }
    }
    if args.reveal {
        let revealed: Vec<String> = catalog
            .top_level()
            .iter()
            .filter(|(n, c)| {
                (*c == Classification::Pii && record.encrypted.contains_key(n))
                    || (*c == Classification::Sensitive && record.profile.contains_key(n))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let key = keys
            .for_users(&[user], false)
            .await?
            .remove(&user)
            .ok_or_else(|| {
                Failure::Runtime(anyhow::anyhow!(
                    "user {user} has no data key: their PII cannot be decrypted"
                ))
            })?
            .map_err(|reason| {
                Failure::Runtime(anyhow::anyhow!(
                    "the data key of user {user} cannot be used: {reason}"
                ))
            })?;
        store
            .append_audit(&AuditRecord {
                id: Uuid::new_v4(),
                at: chrono::Utc::now(),
                actor: actor(args.actor),
                action: "reveal".into(),
                user_id: user,
                fields: revealed,
                reason: args.reason.clone().unwrap_or_default(),
                request_id: Uuid::new_v4(),
            })
            .await?;
        for (field, sealed) in &record.encrypted {
            let plain = open_field(&key.key, user, field, sealed).map_err(|e| {
                Failure::Runtime(anyhow::anyhow!(
                    "field {field} of user {user} does not decrypt: {e}"
                ))
            })?;
            profile.insert(field.clone(), serde_json::from_slice(&plain)?);
        }
    }
    let out = serde_json::json!({
        "user_id": user,
        "version": stored.version,
        "state": "live",
        "updated_at": stored.updated_at,
        "revealed": args.reveal,
        "profile": profile,
        "region": record.region,
        "segments": record.segments,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
