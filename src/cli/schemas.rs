//! `profile-sync schemas register|check`: the schemas in `schemas/` against the Schema
//! Registry, under the subjects of the pipeline's topics (`<topic>-value`). Compatibility is
//! the registry's rule for the subject (BACKWARD unless the subject's config says otherwise);
//! `register` checks first and registers nothing that is incompatible.

use super::kafka_args::{kafka_source, registry};
use super::{usage, Failure};
use crate::schema::registry::{check, register, value_subject};
use crate::schema::PROFILE_CHANGE_FILE;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Check compatibility, then register (a no-op when the schema is already registered).
    Register(Target),
    /// Only check compatibility; exit 1 if the registry would refuse the schema.
    Check(Target),
}

#[derive(clap::Args)]
struct Target {
    /// Pipeline file with a Kafka source (default: pipelines/kafka-local.yaml).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Subject(s) to use instead of `<topic>-value` for each source topic.
    #[arg(long)]
    subject: Vec<String>,
    /// Folder with profile_change.avsc (default: schemas).
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let (target, write) = match args.action {
        Action::Register(t) => (t, true),
        Action::Check(t) => (t, false),
    };
    let k = kafka_source(target.pipeline.as_deref())?;
    let path = target.schemas.join(PROFILE_CHANGE_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| usage(anyhow::anyhow!("cannot read {}: {e}", path.display())))?;
    let schema = apache_avro::Schema::parse_str(&text).map_err(|e| {
        usage(anyhow::anyhow!(
            "{} is not a valid Avro schema: {e}",
            path.display()
        ))
    })?;
    let settings = registry(&k)?;
    let subjects = if target.subject.is_empty() {
        k.topics.iter().map(|t| value_subject(t)).collect()
    } else {
        target.subject.clone()
    };
    let mut refused = 0;
    for subject in &subjects {
        let status = check(&settings, subject, &schema, &text)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}. Is the schema registry at {} running?",
                    k.schema_registry.effective_url()
                )
            })?;
        let latest = match status.latest {
            Some((version, id)) => format!("latest version {version} (id {id})"),
            None => "no versions yet".into(),
        };
        println!("{subject}: {latest}");
        if status.unchanged {
            println!(
                "  unchanged: {} is already the latest version",
                path.display()
            );
        } else {
            for change in &status.changes {
                println!("  {change}");
            }
        }
        if !status.compatible {
            refused += 1;
            println!("  INCOMPATIBLE with the latest version under the subject's compatibility rule: not registered");
            continue;
        }
        println!("  compatible");
        if write {
            let id = register(&settings, subject, &schema, &text).await?;
            println!("  registered: id {id}");
        }
    }
    if refused > 0 {
        eprintln!(
            "profile-sync: {refused} subject(s) would refuse {}: make the change compatible (e.g. give new fields defaults) or register under a new subject",
            path.display()
        );
        return Err(Failure::Quiet(1));
    }
    Ok(())
}
