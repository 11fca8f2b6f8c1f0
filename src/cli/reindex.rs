//! `profile-sync reindex`: rebuild the OpenSearch index from the canonical store without
//! downtime (the steps and why they are safe: `src/indexes/opensearch/reindex.rs`).

use super::{data_dir, pipeline_file, usage, Failure, Output};
use crate::indexes::opensearch::{reindex, ReindexCounts};
use crate::indexes::OpenSearchIndex;
use crate::pipeline::{open_store, opensearch_settings, schemas, zone_file};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file with `index: {type: opensearch}`.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Where the embedded store lives.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Profiles read from the store per page.
    #[arg(long, default_value_t = 2000)]
    page_size: usize,
    /// With residency zones: the zone whose index to rebuild from its store (required).
    #[arg(long)]
    zone: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let file = zone_file(
        &pipeline_file(args.pipeline.as_deref())?,
        args.zone.as_deref(),
    )
    .map_err(usage)?;
    let data_dir = data_dir(&file, args.data_dir.as_deref());
    let schemas = schemas(&file).map_err(usage)?;
    let (projection, settings) = opensearch_settings(&file, &schemas).map_err(usage)?;
    let index = OpenSearchIndex::attach(settings, projection.fields()).map_err(usage)?;
    let store = open_store(&file, &data_dir).map_err(usage)?;
    let total = store
        .counts()
        .await
        .map(|c| c.live + c.deleted)
        .unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} reindex {pos}/{len} profiles  {per_sec}  {msg}",
        )
        .expect("static template"),
    );
    let counts = reindex(
        &index,
        store.as_ref(),
        |p| projection.stored_op(p),
        args.page_size,
        |c: &ReindexCounts| {
            bar.set_position(c.scanned);
            bar.set_message(format!(
                "into {}: {} stale, {} failed",
                c.index, c.stale, c.failed
            ));
        },
    )
    .await?;
    bar.finish_and_clear();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&counts)?),
        Output::Text => {
            println!("profile-sync reindex: {}", file.path.display());
            println!("  into           {}", counts.index);
            println!("  scanned        {:>9}", counts.scanned);
            println!("  indexed        {:>9}", counts.indexed);
            println!(
                "  deleted        {:>9}   (delete fences, written as versioned deletes)",
                counts.deleted
            );
            println!(
                "  stale          {:>9}   (the live pipeline had already written a newer version)",
                counts.stale
            );
            println!("  failed         {:>9}", counts.failed);
            for (reason, n) in &counts.failures {
                println!("    {n:>9}  {reason}");
            }
        }
    }
    let settings = index.settings();
    if counts.swapped {
        if let Some(old) = counts.previous.as_ref().filter(|old| **old != counts.index) {
            eprintln!(
                "`{}` and `{}` now point at {}; {old} is kept for a rollback: delete it once satisfied (DELETE {}/{old})",
                settings.read_alias, settings.write_alias, counts.index, settings.url
            );
        }
        Ok(())
    } else {
        eprintln!(
            "profile-sync: {} documents failed, so readers stay on {} (`{}`) while the pipeline writes to {}; fix the cause and run `profile-sync reindex` again (it resumes)",
            counts.failed,
            counts.previous.as_deref().unwrap_or("no index"),
            settings.read_alias,
            counts.index
        );
        Err(Failure::Quiet(1))
    }
}
