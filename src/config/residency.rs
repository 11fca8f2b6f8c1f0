//! Residency zones: each zone's own store, index and keys.

use super::*;

/// Data residency (README, "Data residency"). The `keys`, `store` and `index` of the pipeline
/// file are the default zone's, which holds every user whose residency zone has no entry in
/// `zones`; each zone listed holds its users' profiles, keys and index documents, and only them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// The name of the default zone (the top-level `keys`, `store` and `index`).
    pub default_zone: String,
    /// Residency zone (as `enrich.geoip.residency_zones` names it) → its adapters.
    pub zones: BTreeMap<String, ZoneConfig>,
    /// Users whose zone is remembered at once (the rest are looked up in the zones' stores).
    #[serde(default = "default_placement_cache")]
    pub placement_cache_entries: usize,
}

fn default_placement_cache() -> usize {
    200_000
}

/// One residency zone's own adapters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub keys: KeysConfig,
    pub store: StoreConfig,
    /// Its `fields` must be the top-level index's (one projection for every zone), or empty.
    pub index: IndexConfig,
    /// The zone's own dead-letter sink; absent: the pipeline's `dead_letter`.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// The zone's own segment change feed; absent: the pipeline's `segment_changes`.
    #[serde(default)]
    pub segment_changes: Option<SegmentChangesConfig>,
}
