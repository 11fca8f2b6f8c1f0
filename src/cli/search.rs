//! `profile-sync search`: query the PII-free profile index.

use super::{data_dir, pipeline_file, usage, Failure, Output};
use crate::indexes::IndexError;
use crate::pipeline::{open_index, schemas};
use serde_json::Value as Json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// e.g. `segments:high_value AND country:DE`, `lifetime_value:[1000 TO *]`.
    query: String,
    #[arg(long, default_value_t = 10)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[arg(long)]
    pipeline: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const COLUMNS: &[&str] = &[
    "user_id",
    "version",
    "country",
    "residency_zone",
    "plan",
    "lifetime_value",
    "segments",
];

pub async fn run(args: Args) -> Result<(), Failure> {
    let file = pipeline_file(args.pipeline.as_deref())?;
    let data_dir = data_dir(&file, args.data_dir.as_deref());
    let schemas = schemas(&file).map_err(usage)?;
    let (_, index) = open_index(&file, &data_dir, &schemas).map_err(usage)?;
    let results = match index.search(&args.query, args.limit).await {
        Err(IndexError::Query(reason)) => {
            return Err(usage(anyhow::anyhow!(
                "query {:?} is not valid: {reason}",
                args.query
            )))
        }
        other => other?,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&results)?),
        Output::Text => {
            println!(
                "{} matching profiles (showing {})",
                results.total,
                results.hits.len()
            );
            let rows: Vec<Vec<String>> = results
                .hits
                .iter()
                .map(|hit| COLUMNS.iter().map(|c| cell(hit.get(*c))).collect())
                .collect();
            let widths: Vec<usize> = COLUMNS
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    rows.iter()
                        .map(|r| r[i].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            println!("{}", line(COLUMNS.iter().map(|c| c.to_string()).collect()));
            for row in rows {
                println!("{}", line(row));
            }
        }
    }
    Ok(())
}

fn cell(v: Option<&Json>) -> String {
    match v {
        None | Some(Json::Null) => "-".into(),
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(items)) => items
            .iter()
            .filter_map(Json::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}
