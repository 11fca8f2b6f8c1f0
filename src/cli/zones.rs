//! `profile-sync zones list|locate|move`: the residency zones of a pipeline file, where a user's
//! data lives, and the one way it changes zone (an audited migration).

use super::get::actor;
use super::privacy::Target;
use super::{data_dir, pipeline_file, usage, Failure};
use crate::pipeline::{announce_move, open_profiles, open_store, schemas, zone_file, IndexAccess};
use crate::privacy::{leave_zone, move_user, Actor, PrivacyError, ZoneProfiles};
use uuid::Uuid;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The zones and, for each, where its store, index and keys are.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// The zone (or zones, after a move that stopped half way) holding a user.
    Locate {
        user: Uuid,
        #[command(flatten)]
        target: Target,
    },
    /// Move a user's data to another zone: re-encrypted under a new key of that zone, written
    /// there, then removed from the old zone. Audited; run it again to finish a stopped move.
    Move {
        user: Uuid,
        /// The zone to move to.
        #[arg(long)]
        to: String,
        /// Why, e.g. the ticket of the residency change. Stored in the audit trail.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::List { target } => list(&target),
        Command::Locate { user, target } => {
            let zones = holders(&target, user).await?;
            println!("{}", serde_json::json!({"user_id": user, "zones": zones}));
            Ok(())
        }
        Command::Move {
            user,
            to,
            reason,
            actor: given,
            target,
        } => {
            if reason.trim().is_empty() {
                return Err(usage(anyhow::anyhow!(
                    "--reason must say why (it goes to the audit trail)"
                )));
            }
            let actor = Actor {
                name: actor(given),
                reason,
                request_id: Uuid::new_v4(),
            };
            relocate(&target, user, &to, &actor).await
        }
    }
}

fn zoned_file(target: &Target) -> Result<crate::config::Pipeline, Failure> {
    let file = pipeline_file(target.pipeline.as_deref())?;
    if file.config.residency.is_none() {
        return Err(usage(anyhow::anyhow!(
            "{} has no residency zones (a `residency:` section): every user is in its one store",
            file.path.display()
        )));
    }
    Ok(file)
}

fn list(target: &Target) -> Result<(), Failure> {
    let file = zoned_file(target)?;
    for (name, zone) in file.zone_files() {
        let c = &zone.config;
        println!(
            "{}",
            serde_json::json!({
                "zone": name,
                "default": Some(&name) == file.config.residency.as_ref().map(|r| &r.default_zone),
                "store": c.store.identity(),
                "index": c.index.identity(),
                "keys": c.keys.identity(),
            })
        );
    }
    Ok(())
}

/// The zones whose store holds the user (a profile row, a fence or a key), asked one by one.
async fn holders(target: &Target, user: Uuid) -> Result<Vec<String>, Failure> {
    let file = zoned_file(target)?;
    let dir = data_dir(&file, target.data_dir.as_deref());
    let mut zones = Vec::new();
    for (name, zone) in file.zone_files() {
        let store = open_store(&zone, &dir).map_err(usage)?;
        let held = store.get(user).await?.is_some()
            || !store.user_keys(&[user]).await?.is_empty()
            || !store.consent_history(user).await?.is_empty();
        if held {
            zones.push(name);
        }
    }
    Ok(zones)
}

async fn relocate(target: &Target, user: Uuid, to: &str, actor: &Actor) -> Result<(), Failure> {
    let file = zoned_file(target)?;
    let dir = data_dir(&file, target.data_dir.as_deref());
    let destination = zone_file(&file, Some(to)).map_err(usage)?;
    let held = holders(target, user).await?;
    // After a move that stopped half way the user is in both: the other zone is the source.
    let Some(from) = held.iter().find(|z| z.as_str() != to) else {
        return Err(usage(anyhow::anyhow!(if held.is_empty() {
            format!("no zone holds user {user}")
        } else {
            format!("user {user} is in zone {to} already")
        })));
    };
    let source = zone_file(&file, Some(from)).map_err(usage)?;
    let schemas = schemas(&file).map_err(usage)?;
    let open = |zone: &crate::config::Pipeline| {
        open_profiles(zone, &dir, &schemas, IndexAccess::Write).map_err(usage)
    };
    let (source_profiles, destination_profiles) = (open(&source)?, open(&destination)?);
    let mut moved = move_user(
        ZoneProfiles {
            name: from,
            profiles: &source_profiles,
        },
        ZoneProfiles {
            name: to,
            profiles: &destination_profiles,
        },
        user,
        actor,
    )
    .await
    .map_err(|e| match e {
        PrivacyError::NotFound(_) | PrivacyError::Erased(_) => usage(e),
        other => Failure::Runtime(other.into()),
    })?;
    if let (Some(segments), Some(version)) = (&moved.segments, moved.version) {
        announce_move(
            &file,
            &dir,
            user,
            version,
            (from, to),
            segments,
            moved.residency_zone.as_deref(),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!("user {user} is copied to zone {to} but still in zone {from}: the segment change feeds could not be told ({e}); run the move again to finish it")
        })?;
    }
    moved.removed = leave_zone(&source_profiles, user, moved.version.unwrap_or(0))
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    println!("{}", serde_json::to_string(&moved)?);
    Ok(())
}
