//! Privacy commands for the people answering privacy requests: `erase`, `export`, `audit`,
//! `retention run`. Each is audited with the actor and the reason.

use super::get::actor;
use super::{data_dir, pipeline_file, usage, Failure};
use crate::pipeline::{open_profiles, schemas, IndexAccess};
use crate::privacy::{self, Actor, PrivacyError, Profiles};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The pipeline file and data folder a command works on (`--pipeline`, `--data-dir`).
#[derive(clap::Args)]
pub struct Target {
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct EraseArgs {
    user: Uuid,
    /// Why, e.g. the request's ticket. Stored in the audit trail.
    #[arg(long)]
    reason: String,
    #[arg(long)]
    actor: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    user: Uuid,
    #[arg(long)]
    reason: String,
    #[arg(long)]
    actor: Option<String>,
    /// Write the JSON document here (mode 0600) instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct AuditArgs {
    user: Uuid,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Subcommand)]
pub enum RetentionCommand {
    /// Apply the pipeline file's retention rules (privacy.retention).
    Run {
        /// Only report what would be anonymised.
        #[arg(long)]
        dry_run: bool,
        /// Evaluate the rules as of this time (RFC 3339) instead of now.
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

fn open(
    target: &Target,
    access: IndexAccess,
) -> Result<(crate::config::Pipeline, Profiles), Failure> {
    let file = pipeline_file(target.pipeline.as_deref())?;
    let dir = data_dir(&file, target.data_dir.as_deref());
    let schemas = schemas(&file).map_err(usage)?;
    let profiles = open_profiles(&file, &dir, &schemas, access).map_err(usage)?;
    Ok((file, profiles))
}

fn reason(text: &str) -> Result<String, Failure> {
    if text.trim().is_empty() {
        return Err(usage(anyhow::anyhow!(
            "--reason must say why (it goes to the audit trail)"
        )));
    }
    Ok(text.to_string())
}

fn failure(e: PrivacyError) -> Failure {
    match e {
        PrivacyError::NotFound(_) | PrivacyError::Erased(_) => usage(e),
        other => Failure::Runtime(other.into()),
    }
}

pub async fn erase(args: EraseArgs) -> Result<(), Failure> {
    let reason = reason(&args.reason)?;
    let (file, profiles) = open(&args.target, IndexAccess::Write)?;
    let catalog = schemas(&file).map_err(usage)?.catalog;
    let actor = Actor {
        name: actor(args.actor),
        reason,
        request_id: Uuid::new_v4(),
    };
    let fence = profiles
        .erase_on_request(args.user, catalog.top_level_names(), &actor)
        .await
        .map_err(failure)?;
    let dir = data_dir(&file, args.target.data_dir.as_deref());
    crate::pipeline::announce_erasures(&file, &dir, &[(args.user, fence)]).await?;
    println!(
        "{}",
        serde_json::json!({"user_id": args.user, "erased": true, "version_fence": fence, "request_id": actor.request_id})
    );
    Ok(())
}

pub async fn export(args: ExportArgs) -> Result<(), Failure> {
    let reason = reason(&args.reason)?;
    let (file, profiles) = open(&args.target, IndexAccess::Read)?;
    let catalog = schemas(&file).map_err(usage)?.catalog;
    let actor = Actor {
        name: actor(args.actor),
        reason,
        request_id: Uuid::new_v4(),
    };
    let document = privacy::export(&profiles, &catalog, args.user, &actor)
        .await
        .map_err(failure)?;
    let text = serde_json::to_string_pretty(&document)?;
    match args.out {
        Some(path) => write_private(&path, &text)?,
        None => println!("{text}"),
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let cannot = |e: std::io::Error| usage(anyhow::anyhow!("cannot write {}: {e}", path.display()));
    // Not through a symbolic link, and private even when the file was there already.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(cannot)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(cannot)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

pub async fn audit(args: AuditArgs) -> Result<(), Failure> {
    let (_, profiles) = open(&args.target, IndexAccess::Read)?;
    for record in profiles.store.audit_trail(args.user).await? {
        println!("{}", serde_json::to_string(&record)?);
    }
    Ok(())
}

pub async fn retention(command: RetentionCommand) -> Result<(), Failure> {
    let RetentionCommand::Run {
        dry_run,
        as_of,
        actor: who,
        target,
    } = command;
    let (file, profiles) = open(&target, IndexAccess::Write)?;
    let rules = &file.config.privacy.retention;
    let actor = Actor {
        name: actor(who),
        reason: "retention rules of the pipeline file".into(),
        request_id: Uuid::new_v4(),
    };
    let report = privacy::retention(
        &profiles,
        rules,
        file.config.dead_letter.retention_days(),
        as_of.unwrap_or_else(chrono::Utc::now),
        dry_run,
        &actor,
    )
    .await
    .map_err(failure)?;
    profiles.index.commit().await?;
    let dir = data_dir(&file, target.data_dir.as_deref());
    crate::pipeline::announce_erasures(&file, &dir, &report.fences).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
