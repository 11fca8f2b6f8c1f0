//! `profile-sync validate`: check a file of events against the schemas without writing anything.

use super::{pipeline_file, usage, Failure};
use crate::config::FileFormat;
use crate::pipeline::schemas;
use crate::sources::{EventSource, FileSource};
use crate::stages::decode::Decoder;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// An Avro object container file (.avro) or JSON lines.
    file: PathBuf,
    #[arg(long)]
    pipeline: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let file = pipeline_file(args.pipeline.as_deref())?;
    let decoder = Decoder::new(schemas(&file).map_err(usage)?.profile_change);
    let mut source = FileSource::open(&args.file, FileFormat::Auto).map_err(usage)?;
    let (mut total, mut invalid) = (0u64, 0u64);
    loop {
        let batch = source.next_batch(10_000).await?;
        if batch.is_empty() {
            break;
        }
        for record in &batch {
            total += 1;
            if let Err(r) = decoder.decode(&record.payload) {
                invalid += 1;
                println!("{}: {r}", record.position);
            }
        }
    }
    println!(
        "{total} events, {} valid, {invalid} invalid",
        total - invalid
    );
    if invalid > 0 {
        return Err(Failure::Quiet(1));
    }
    Ok(())
}
