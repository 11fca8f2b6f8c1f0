//! `profile-sync check`: preflight before a deploy. Validates the pipeline file step by step,
//! then tries each dependency in turn, and prints a pass/fail table with the fix for each
//! failure. Exit code 0 only when everything passes.

use super::{data_dir, pipeline_file, Failure};
use crate::pipeline::{open_data_keys, open_index, open_source, open_store, schemas, IndexAccess};
use crate::stages::enrich::{RegionResolver, SegmentRules};
use crate::stages::project::Projection;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pipeline: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

struct Table(Vec<(&'static str, Result<String, String>)>);

impl Table {
    fn record<T>(
        &mut self,
        name: &'static str,
        result: Result<T, String>,
        pass: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match result {
            Ok(v) => {
                self.0.push((name, Ok(pass(&v))));
                Some(v)
            }
            Err(e) => {
                self.0.push((name, Err(e)));
                None
            }
        }
    }

    fn print(&self) -> bool {
        let mut table = super::table::plain(&["CHECK", "RESULT", "DETAIL"], &[]);
        for (name, result) in &self.0 {
            match result {
                Ok(detail) => table.add_row([*name, "pass", detail.as_str()]),
                Err(why) => table.add_row([*name, "FAIL", why.as_str()]),
            };
        }
        super::table::print(&table);
        self.0.iter().all(|(_, r)| r.is_ok())
    }
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let mut t = Table(Vec::new());
    let file = t.record(
        "pipeline file",
        pipeline_file(args.pipeline.as_deref()).map_err(|e| match e {
            Failure::Usage(e) | Failure::Runtime(e) => format!("{e:#}"),
            Failure::Quiet(_) => "unreadable".into(),
        }),
        |f| f.path.display().to_string(),
    );
    let Some(file) = file else {
        t.print();
        return Err(Failure::Quiet(2));
    };
    let data_dir = data_dir(&file, args.data_dir.as_deref());
    let schemas = t.record("schemas", schemas(&file).map_err(|e| e.to_string()), |s| {
        format!("{} profile fields classified", s.catalog.top_level().len())
    });
    let enrich = &file.config.enrich;
    t.record(
        "geoip database",
        RegionResolver::open(
            &file.resolve(&enrich.geoip.database),
            &enrich.geoip.residency_zones,
        )
        .map_err(|e| e.to_string()),
        |_| file.resolve(&enrich.geoip.database).display().to_string(),
    );
    if let Some(schemas) = &schemas {
        t.record(
            "segment rules",
            SegmentRules::compile(
                &enrich.segments,
                &file.config.privacy.purposes,
                &schemas.catalog,
            )
            .map_err(|e| e.to_string()),
            |_| format!("{} rules compile", enrich.segments.len()),
        );
        t.record(
            "index projection",
            Projection::new(&schemas.catalog, file.config.index.fields())
                .map_err(|e| e.to_string()),
            |p| format!("{} fields, none pii or sensitive", p.fields().len()),
        );
    }
    if let Some(mut source) = t.record(
        "source",
        open_source(&file, None).map_err(|e| e.to_string()),
        |_| "opened".into(),
    ) {
        let result = source.check().await;
        t.record("source reachable", result, |d| d.clone());
    }
    if let Some(store) = t.record(
        "store",
        open_store(&file, &data_dir).map_err(|e| e.to_string()),
        |_| "opened".into(),
    ) {
        let result = store.check().await;
        t.record("store reachable", result, |d| d.clone());
        if let Some(keys) = t.record(
            "key provider",
            open_data_keys(&file, &data_dir, store).map_err(|e| e.to_string()),
            |_| "opened".into(),
        ) {
            let result = keys.provider().check().await;
            t.record("key provider works", result, |d| d.clone());
        }
    }
    if let Some(sink) = t.record(
        "dead-letter sink",
        crate::pipeline::open_dead_letters(&file, &data_dir).map_err(|e| e.to_string()),
        |_| "opened".into(),
    ) {
        let result = sink.check().await.map_err(|e| e.to_string());
        t.record("dead-letter writes", result, |d| d.clone());
    }
    if file.config.segment_changes.is_some() {
        if let Some(Some(sink)) = t.record(
            "segment changes",
            crate::pipeline::open_segment_changes(&file, &data_dir).map_err(|e| e.to_string()),
            |_| "opened".into(),
        ) {
            let result = sink.check().await;
            t.record("segment sink works", result, |d| d.clone());
        }
    }
    if let Some(schemas) = &schemas {
        if let Some((_, index)) = t.record(
            "index",
            open_index(&file, &data_dir, schemas, IndexAccess::Read).map_err(|e| e.to_string()),
            |_| "opened".into(),
        ) {
            let result = index.check().await;
            t.record("index reachable", result, |d| d.clone());
        }
    }
    if t.print() {
        Ok(())
    } else {
        Err(Failure::Quiet(1))
    }
}
