//! `profile-sync run`: the main job.

use super::{data_dir, pipeline_file, usage, Failure, Output};
use crate::pipeline::{build, Counts};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file (default: pipelines/local.yaml, the embedded mode).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Read events from this file instead of the pipeline file's source.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where the embedded store, index, keyring and dead letters live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let file = pipeline_file(args.pipeline.as_deref())?;
    let data_dir = data_dir(&file, args.data_dir.as_deref());
    let mut components = build(&file, &data_dir, args.input.as_deref()).map_err(usage)?;
    let bar = indicatif::ProgressBar::new(components.source.size_hint().unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} events  {per_sec}  {msg}")
            .expect("static template"),
    );
    let started = Instant::now();
    let counts = components
        .pipeline
        .run(
            components.source.as_mut(),
            file.config.batch_size,
            |c: &Counts| {
                bar.set_position(c.read);
                bar.set_message(format!("{} dead-lettered", c.dead_lettered));
            },
        )
        .await?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let rate = if elapsed > 0.0 {
        counts.read as f64 / elapsed
    } else {
        0.0
    };
    match args.output {
        Output::Json => {
            let summary = serde_json::json!({
                "read": counts.read,
                "written": counts.written,
                "stale": counts.stale,
                "dead_lettered": counts.dead_lettered,
                "elapsed_seconds": (elapsed * 1000.0).round() / 1000.0,
                "events_per_second": rate.round(),
                "key_provider_calls": components.pipeline.profiles.keys.provider().calls(),
                "data_dir": data_dir,
            });
            println!("{summary}");
        }
        Output::Text => {
            println!("profile-sync run: {}", file.path.display());
            println!("  read           {:>9}", counts.read);
            println!("  written        {:>9}", counts.written);
            println!(
                "  stale          {:>9}   (older than or equal to the stored version: skipped)",
                counts.stale
            );
            println!(
                "  dead-lettered  {:>9}   (with reasons, in the dead-letter sink)",
                counts.dead_lettered
            );
            println!("  took {elapsed:.2} s ({rate:.0} events/s)");
            println!("data: {}", data_dir.display());
            println!("next: profile-sync search 'segments:high_value AND residency_zone:EU'");
        }
    }
    Ok(())
}
