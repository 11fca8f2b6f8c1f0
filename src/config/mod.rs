//! The pipeline file: which adapters to use and how the stages are configured.
//!
//! Every struct refuses unknown keys, so a typo is an error that names the key and its line,
//! not a silently ignored setting. Relative paths are resolved against the pipeline file's
//! folder (code, schemas, databases) or the data directory (what the pipeline writes).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod enrich;
mod interpolate;
mod keys;
mod privacy;
mod residency;
mod serve;
mod sinks;
mod source;

pub use enrich::*;
pub use interpolate::*;
pub use keys::*;
pub use privacy::*;
pub use residency::*;
pub use serve::*;
pub use sinks::*;
pub use source::*;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pipeline file {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where events come from.
    pub source: SourceConfig,
    /// The folder with the Avro reader schemas.
    #[serde(default = "default_schemas")]
    pub schemas: PathBuf,
    pub keys: KeysConfig,
    pub store: StoreConfig,
    pub index: IndexConfig,
    pub dead_letter: DeadLetterConfig,
    /// Where segment changes go (users entering and leaving segments); absent: no feed.
    #[serde(default)]
    pub segment_changes: Option<SegmentChangesConfig>,
    /// Data residency: the zones whose users' data stays in their own store, index and keys.
    /// Absent: one zone, the `keys`, `store` and `index` above, for every user.
    #[serde(default)]
    pub residency: Option<ResidencyConfig>,
    pub enrich: EnrichConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// The profile API (`profile-sync serve`): keys, roles, rate limits.
    #[serde(default)]
    pub serve: ServeConfig,
    /// Events per batch: the unit of store transactions and acknowledgements.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches fetched and not yet through the index stage, at most (the pipelined runtime's
    /// bound on memory).
    #[serde(default = "default_max_batches_in_flight")]
    pub max_batches_in_flight: usize,
    /// Batches decoded at once (decoding is pure CPU work). Default: the machine's cores.
    #[serde(default)]
    pub decode_workers: Option<usize>,
    /// Where the embedded adapters keep their files; `--data-dir` overrides it.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_schemas() -> PathBuf {
    PathBuf::from("../schemas")
}
fn default_batch_size() -> usize {
    2000
}
fn default_max_batches_in_flight() -> usize {
    4
}
fn default_commit_every_docs() -> usize {
    50_000
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_keyring() -> PathBuf {
    PathBuf::from("keyring.json")
}
fn default_key_max_age() -> u64 {
    300
}
fn default_key_max_uses() -> u64 {
    1_000_000
}
/// Each cached key holds its AES-GCM context, about 1 KB: 25,000 keys are ~25 MB of the
/// worker's memory (BENCHMARKS.md, "Kafka backlog memory").
fn default_key_max_entries() -> usize {
    25_000
}
fn default_sqlite() -> PathBuf {
    PathBuf::from("profiles.sqlite")
}
fn default_tantivy() -> PathBuf {
    PathBuf::from("index")
}
fn default_dead_letter() -> PathBuf {
    PathBuf::from("dead-letter.jsonl")
}

/// A loaded pipeline file with the folder its relative paths are resolved against.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub config: PipelineConfig,
    base: PathBuf,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let text = interpolate(text, |name| std::env::var(name).ok()).map_err(|reason| {
            ConfigError::Invalid {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        let config: PipelineConfig =
            serde_yaml::from_str(&text).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if config.batch_size == 0 {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: "batch_size must be at least 1".into(),
            });
        }
        if config.max_batches_in_flight == 0 || config.decode_workers == Some(0) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: "max_batches_in_flight and decode_workers must be at least 1".into(),
            });
        }
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut file = Self {
            path: path.to_path_buf(),
            config,
            base,
        };
        file.check_residency()?;
        Ok(file)
    }

    /// The residency section's rules: a default zone that is not also listed, zones that the
    /// region enrichment can place users in, one projection, and no adapter shared by two
    /// zones (a zone's store, index and keys never receive another zone's users).
    fn check_residency(&mut self) -> Result<(), ConfigError> {
        let Some(residency) = &mut self.config.residency else {
            return Ok(());
        };
        let invalid = |reason: String| ConfigError::Invalid {
            path: self.path.clone(),
            reason,
        };
        if residency.zones.is_empty() {
            return Err(invalid(
                "residency.zones lists no zone: list at least one, or remove the residency section"
                    .into(),
            ));
        }
        if residency.zones.contains_key(&residency.default_zone) {
            return Err(invalid(format!("residency.default_zone {:?} is also listed in residency.zones: the default zone's adapters are the top-level keys, store and index", residency.default_zone)));
        }
        let derived = &self.config.enrich.geoip.residency_zones;
        let top_fields = self.config.index.fields().to_vec();
        for (name, zone) in residency.zones.iter_mut() {
            if !derived.contains_key(name) {
                return Err(invalid(format!("residency.zones.{name}: enrich.geoip.residency_zones has no zone {name:?}, so no user would ever be placed there (it has: {})", derived.keys().cloned().collect::<Vec<_>>().join(", "))));
            }
            let fields = zone.index.fields_mut();
            if fields.is_empty() {
                *fields = top_fields.clone();
            } else if *fields != top_fields {
                return Err(invalid(format!("residency.zones.{name}.index.fields differ from index.fields: every zone's index holds the same projection (leave them out to take index.fields)")));
            }
        }
        if self.config.segment_changes.is_none() {
            if let Some((name, _)) = residency
                .zones
                .iter()
                .find(|(_, z)| z.segment_changes.is_some())
            {
                return Err(invalid(format!("residency.zones.{name}.segment_changes needs the pipeline's own segment_changes (the other zones' feed): add one, or remove the zone's")));
            }
        }
        residency.placement_cache_entries = residency
            .placement_cache_entries
            .max(4 * self.config.batch_size * self.config.max_batches_in_flight);
        let zones: Vec<(&str, &KeysConfig, &StoreConfig, &IndexConfig)> = std::iter::once((
            residency.default_zone.as_str(),
            &self.config.keys,
            &self.config.store,
            &self.config.index,
        ))
        .chain(
            residency
                .zones
                .iter()
                .map(|(n, z)| (n.as_str(), &z.keys, &z.store, &z.index)),
        )
        .collect();
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (zone, keys, store, index) in zones {
            for (what, identity) in [
                ("keys", keys.identity()),
                ("store", store.identity()),
                ("index", index.identity()),
            ] {
                if let Some(other) = seen.insert(format!("{what} {identity}"), zone) {
                    return Err(invalid(format!("residency: zones {other} and {zone} share the {what} {identity}: each zone needs its own, so that no zone's {what} ever receives another zone's users")));
                }
            }
        }
        Ok(())
    }

    /// Each zone's view of this pipeline file: the file with the zone's keys, store, index
    /// and dead-letter sink in place of the top-level ones, the default zone first. Without a
    /// residency section, one unnamed zone: the file itself.
    pub fn zone_files(&self) -> Vec<(String, Pipeline)> {
        let Some(residency) = &self.config.residency else {
            return vec![(String::new(), self.clone())];
        };
        let mut default = self.clone();
        default.config.residency = None;
        let mut files = vec![(residency.default_zone.clone(), default.clone())];
        for (name, zone) in &residency.zones {
            let mut file = default.clone();
            file.config.keys = zone.keys.clone();
            file.config.store = zone.store.clone();
            file.config.index = zone.index.clone();
            if let Some(dead_letter) = &zone.dead_letter {
                file.config.dead_letter = dead_letter.clone();
            }
            if let Some(feed) = &zone.segment_changes {
                file.config.segment_changes = Some(feed.clone());
            }
            files.push((name.clone(), file));
        }
        files
    }

    /// A path from the pipeline file, relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            tidy(&self.base.join(p))
        }
    }

    /// A data path, relative to the data directory.
    pub fn data_path(&self, data_dir: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            data_dir.join(p)
        }
    }

    pub fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }
}

/// `a/b/../c` as `a/c`, so messages show the path a reader would type.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_local_pipeline_parses() {
        let p = Pipeline::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/pipelines/local.yaml"
        )))
        .unwrap();
        assert!(p.config.enrich.segments.len() >= 5);
    }

    #[test]
    fn shipped_opensearch_pipeline_parses() {
        let p = Pipeline::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/pipelines/opensearch-local.yaml"
        )))
        .unwrap();
        assert!(matches!(p.config.index, IndexConfig::Opensearch { .. }));
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/local.yaml"))
                .unwrap()
                .replace("batch_size:", "batch_sise:");
        let err = Pipeline::parse(Path::new("x.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `batch_sise`"), "{err}");
    }
}
