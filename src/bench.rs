//! What the benchmarks share: a fixture of generated events with the stages built from a
//! pipeline file by [`crate::pipeline::build`], the in-process chain without the sinks, and
//! the process and disk measurements (`/proc/self/status`, folder sizes) the harness reports.
//! Used by `benches/stages.rs` (criterion) and `profile-sync bench`.

use crate::config;
use crate::event::{EnrichedChange, ProfileChange};
use crate::generate::{write_file, Format, Spec};
use crate::keys::KeyError;
use crate::pipeline::{build, BuildError, Components};
use crate::sources::{Payload, SourceError};
use crate::stages::project::IndexOp;
use std::path::{Path, PathBuf};

/// Events per fixture: enough distinct users and IPs to defeat tiny caches, small enough to
/// sit in L2 as decoded values.
pub const FIXTURE_EVENTS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write the fixture's events: {0}")]
    Io(#[from] std::io::Error),
}

/// Generated events, as Avro datums, and a pipeline built from `pipelines/local.yaml` over a
/// scratch data folder that is removed on drop.
pub struct Fixture {
    pub dir: ScratchDir,
    pub payloads: Vec<Payload>,
    pub components: Components,
}

impl Fixture {
    /// `events` valid generated events (seed 42), read back through the file source so the
    /// payloads are exactly what the pipeline sees.
    pub fn new(events: usize) -> Result<Self, FixtureError> {
        let file = config::Pipeline::load(&repo_path("pipelines/local.yaml"))?;
        let dir = ScratchDir::new("fixture")?;
        let input = generate_avro(&file, dir.path(), events as u64)?;
        let mut components = build(&file, &dir.path().join("data"), Some(&input))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(FixtureError::Io)?;
        let records = rt.block_on(components.source.next_batch(events))?;
        let payloads = records.into_iter().map(|r| r.payload).collect();
        Ok(Self {
            dir,
            payloads,
            components,
        })
    }

    pub fn decoded(&self) -> Vec<ProfileChange> {
        self.payloads
            .iter()
            .filter_map(|p| self.components.pipeline.decoder.decode(p).ok())
            .collect()
    }

    pub fn enriched(&self, decoded: &[ProfileChange]) -> Vec<EnrichedChange> {
        decoded
            .iter()
            .filter_map(|c| {
                self.components
                    .pipeline
                    .enricher
                    .enrich(c.clone(), None)
                    .ok()
            })
            .collect()
    }

    /// decode → enrich → protect → project over every payload, without the sinks. Returns the
    /// index operations.
    pub async fn chain(&self) -> Result<Vec<IndexOp>, KeyError> {
        let p = &self.components.pipeline;
        let enriched: Vec<EnrichedChange> = self
            .payloads
            .iter()
            .filter_map(|payload| p.decoder.decode(payload).ok())
            .filter_map(|c| p.enricher.enrich(c, None).ok())
            .collect();
        Ok(p.protector
            .protect(enriched)
            .await?
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|c| p.profiles.projection.op(c))
            .collect())
    }
}

/// Writes `count` valid generated events (seed 42) as an Avro container under `dir`.
pub fn generate_avro(
    file: &config::Pipeline,
    dir: &Path,
    count: u64,
) -> Result<PathBuf, FixtureError> {
    let schemas = crate::pipeline::schemas(file)?;
    let out = dir.join("events.avro");
    let spec = Spec {
        count,
        seed: 42,
        invalid_ratio: 0.0,
        privacy_ratio: 0.0,
        format: Format::Avro,
    };
    write_file(&out, spec, &schemas.profile_change)?;
    Ok(out)
}

/// A file of the repository, wherever the benchmark runs from.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A fresh folder under the system's temporary folder, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "profile-sync-bench-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `kB` line of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes; `None` off Linux.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of the whole process (every thread, user + system) from `/proc/self/stat`, in
/// seconds, at the kernel's usual 100 ticks per second; `None` off Linux. On a shared machine
/// events per CPU-second is steadier than events per wall-clock second.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `(comm)`, which may hold spaces: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS, so setup work is not counted. Returns
/// whether the kernel allowed it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Bytes of the files under `path` (a file's own size if it is one); 0 if it is missing.
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| disk_bytes(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// The `q` quantile (0.0–1.0) of sorted samples, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), 50.0);
        assert_eq!(quantile(&s, 0.99), 99.0);
        assert_eq!(quantile(&s, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn a_fixture_runs_the_chain_without_sinks() {
        let f = Fixture::new(50).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ops = rt.block_on(f.chain()).unwrap();
        assert_eq!(f.payloads.len(), 50);
        assert!(!ops.is_empty() && ops.len() <= 50);
    }
}
