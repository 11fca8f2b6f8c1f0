//! `profile-sync get`: one stored profile. PII and sensitive fields are masked; `--reveal`
//! decrypts them, requires a reason, and writes an audit record (fields named, never values)
//! before anything is shown.

use super::{data_dir, pipeline_file, usage, Failure};
use crate::pipeline::{open_profiles, schemas, IndexAccess};
use crate::privacy::{Actor, PrivacyError};
use crate::schema::Classification;
use serde_json::Value as Json;
use uuid::Uuid;

pub use crate::privacy::MASK;

#[derive(clap::Args)]
pub struct Args {
    /// A user id, or an email address (found through the blind index).
    user: String,
    #[command(flatten)]
    reveal: Reveal,
    #[command(flatten)]
    target: super::privacy::Target,
}

/// What the commands that can show PII ask: whether to, why, and who asks.
#[derive(clap::Args)]
pub struct Reveal {
    /// Decrypt PII and show sensitive fields (requires --reason; audited).
    #[arg(long = "reveal", requires = "reason")]
    pub wanted: bool,
    /// Why the PII is needed, e.g. a ticket number. Stored in the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
    /// Who is asking; defaults to $PROFILE_SYNC_ACTOR, then $USER.
    #[arg(long)]
    pub actor: Option<String>,
}

impl Reveal {
    /// The actor of the audit records; a usage error if PII is wanted without a reason.
    pub fn actor(&self) -> Result<Actor, Failure> {
        if self.wanted && self.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(usage(anyhow::anyhow!(
                "--reveal needs a non-empty --reason"
            )));
        }
        Ok(Actor {
            name: actor(self.actor.clone()),
            reason: self.reason.clone().unwrap_or_default(),
            request_id: Uuid::new_v4(),
        })
    }
}

pub fn actor(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("PROFILE_SYNC_ACTOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let file = pipeline_file(args.target.pipeline.as_deref())?;
    let data_dir = data_dir(&file, args.target.data_dir.as_deref());
    let actor = args.reveal.actor()?;
    let schemas = schemas(&file).map_err(usage)?;
    let catalog = &schemas.catalog;
    let profiles = open_profiles(&file, &data_dir, &schemas, IndexAccess::Read).map_err(usage)?;
    let user = match Uuid::parse_str(&args.user) {
        Ok(u) => u,
        Err(_) if args.user.contains('@') => profiles
            .find_by_email(&args.user)
            .await?
            .ok_or_else(|| usage(anyhow::anyhow!("no live profile has that email address")))?,
        Err(_) => {
            return Err(usage(anyhow::anyhow!(
                "{:?} is neither a user id (UUID) nor an email address",
                args.user
            )))
        }
    };
    let stored = profiles
        .store
        .get(user)
        .await?
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("no profile for user {user}")))?;
    if let Some(at) = stored.erased_at {
        if args.reveal.wanted {
            return Err(Failure::Runtime(PrivacyError::Erased(user).into()));
        }
        println!(
            "{}",
            serde_json::json!({"user_id": user, "version": stored.version, "state": "erased", "erased_at": at})
        );
        return Ok(());
    }
    let Some(record) = stored.record else {
        println!(
            "{}",
            serde_json::json!({"user_id": user, "version": stored.version, "state": "deleted", "updated_at": stored.updated_at})
        );
        return Ok(());
    };
    let mut profile = record.profile.clone();
    for (name, class) in catalog.top_level() {
        let present = match class {
            Classification::Pii => record.encrypted.contains_key(name),
            Classification::Sensitive if !args.reveal.wanted => profile.contains_key(name),
            _ => false,
        };
        if present {
            profile.insert(name.clone(), Json::from(MASK));
        }
    }
    if args.reveal.wanted {
        let revealed: Vec<String> = catalog
            .top_level()
            .iter()
            .filter(|(n, c)| {
                (*c == Classification::Pii && record.encrypted.contains_key(n))
                    || (*c == Classification::Sensitive && record.profile.contains_key(n))
            })
            .map(|(n, _)| n.clone())
            .collect();
        profiles.audit(&actor, "reveal", user, revealed).await?;
        profile = profiles
            .reveal(user, &record)
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
    }
    let out = serde_json::json!({
        "user_id": user,
        "version": stored.version,
        "state": "live",
        "updated_at": stored.updated_at,
        "revealed": args.reveal.wanted,
        "profile": profile,
        "region": record.region,
        "segments": record.segments,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
