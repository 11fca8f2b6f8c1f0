//! `profile-sync generate`: synthetic events for demos, tests and benchmarks.

use super::{usage, Failure};
use crate::generate::{write_file, Format, Spec};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// How many events to write.
    #[arg(long)]
    count: u64,
    /// Same seed, same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of events that must be dead-lettered (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    invalid_ratio: f64,
    /// Share of valid events that are consent decisions or erasures (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    privacy_ratio: f64,
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<(), Failure> {
    if !(0.0..=1.0).contains(&args.invalid_ratio) {
        return Err(usage(anyhow::anyhow!(
            "--invalid-ratio must be between 0.0 and 1.0"
        )));
    }
    let schema = apache_avro::Schema::parse_str(include_str!("../../schemas/profile_change.avsc"))?;
    let spec = Spec {
        count: args.count,
        seed: args.seed,
        invalid_ratio: args.invalid_ratio,
        privacy_ratio: args.privacy_ratio,
        format: args.format,
    };
    let summary = write_file(&args.out, spec, &schema)
        .map_err(|e| usage(anyhow::anyhow!("cannot write {}: {e}", args.out.display())))?;
    println!(
        "{}",
        serde_json::json!({"valid": summary.valid, "invalid": summary.invalid, "users": summary.users, "out": args.out})
    );
    Ok(())
}
