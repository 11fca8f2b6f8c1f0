//! `profile-sync search`: query the PII-free profile index.

use super::{data_dir, pipeline_file, usage, Failure, Output};
use crate::indexes::{Aggregation, IndexError};
use crate::pipeline::{open_index, schemas, zone_file, IndexAccess};
use serde_json::Value as Json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// e.g. `segments:high_value AND country:DE`, `lifetime_value:[1000 TO *]`.
    query: String,
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Count the matching profiles by this field (repeatable): segments, country, residency_zone…
    #[arg(long = "agg", value_name = "FIELD")]
    aggs: Vec<String>,
    /// How many values each aggregation shows.
    #[arg(long, default_value_t = 20)]
    agg_size: usize,
    /// `text` (also `table`) or `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// With residency zones: search this zone only (default: every zone, each hit naming its zone).
    #[arg(long)]
    zone: Option<String>,
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
    let zoned = file.config.residency.is_some();
    let file = match &args.zone {
        Some(zone) => zone_file(&file, Some(zone)).map_err(usage)?,
        None => file,
    };
    let (_, index) = open_index(&file, &data_dir, &schemas, IndexAccess::Read).map_err(usage)?;
    let invalid = |reason: String| {
        usage(anyhow::anyhow!(
            "query {:?} is not valid: {reason}",
            args.query
        ))
    };
    let results = match index.search(&args.query, args.limit).await {
        Err(IndexError::Query(reason)) => return Err(invalid(reason)),
        other => other?,
    };
    let mut aggregations = Vec::with_capacity(args.aggs.len());
    for field in &args.aggs {
        aggregations.push(
            match index.aggregate(&args.query, field, args.agg_size).await {
                Err(IndexError::Query(reason)) => return Err(usage(anyhow::anyhow!(reason))),
                other => other?,
            },
        );
    }
    match args.output {
        Output::Json if aggregations.is_empty() => {
            println!("{}", serde_json::to_string(&results)?)
        }
        Output::Json => {
            let mut json = serde_json::to_value(&results)?;
            json["aggregations"] = serde_json::to_value(&aggregations)?;
            println!("{json}")
        }
        Output::Text => {
            println!(
                "{} matching profiles (showing {})",
                results.total,
                results.hits.len()
            );
            // With zones, the zone each hit's data lives in (searching one zone: that zone).
            let columns: Vec<&str> = COLUMNS
                .iter()
                .copied()
                .chain(zoned.then_some("zone"))
                .collect();
            let rows: Vec<Vec<String>> = results
                .hits
                .iter()
                .map(|hit| {
                    columns
                        .iter()
                        .map(|c| match (*c, &args.zone) {
                            ("zone", Some(zone)) => zone.clone(),
                            (c, _) => cell(hit.get(c)),
                        })
                        .collect()
                })
                .collect();
            let mut table = super::table::plain(&columns, &[]);
            for row in rows {
                table.add_row(row);
            }
            super::table::print(&table);
            for agg in &aggregations {
                print_aggregation(agg);
            }
        }
    }
    Ok(())
}

/// A terms aggregation as a two-column table, with the share of the matching profiles.
fn print_aggregation(agg: &Aggregation) {
    println!();
    let share = |n: u64| {
        if agg.total == 0 {
            0.0
        } else {
            100.0 * n as f64 / agg.total as f64
        }
    };
    let mut table = super::table::plain(&[agg.field.as_str(), "profiles", "share"], &[1, 2]);
    for b in &agg.buckets {
        table.add_row([
            b.key.clone(),
            b.count.to_string(),
            format!("{:.1}%", share(b.count)),
        ]);
    }
    if agg.other > 0 {
        table.add_row(["(other)".to_string(), agg.other.to_string(), String::new()]);
    }
    super::table::print(&table);
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
