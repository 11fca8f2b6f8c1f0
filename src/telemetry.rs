//! Metric names and the few helpers that record them, in one place: Prometheus conventions
//! (`profile_sync_*`, `_total` for counters, `_seconds` for durations, base units). Labels
//! name stages, sinks, outcomes and causes, never users or values. Without an installed
//! recorder (the CLI installs one with `--metrics-addr`) these calls cost next to nothing.

pub const EVENTS_READ: &str = "profile_sync_events_read_total";
pub const EVENTS_WRITTEN: &str = "profile_sync_events_written_total";
pub const EVENTS_STALE: &str = "profile_sync_events_stale_total";
pub const EVENTS_DEAD_LETTERED: &str = "profile_sync_events_dead_lettered_total";
pub const BATCH_SECONDS: &str = "profile_sync_batch_duration_seconds";
pub const RETRIES: &str = "profile_sync_retries_total";
pub const CONSENT_CHANGES: &str = "profile_sync_consent_changes_total";
pub const ERASURES: &str = "profile_sync_erasures_total";

pub fn consent_change(granted: bool) {
    metrics::counter!(CONSENT_CHANGES, "decision" => if granted { "granted" } else { "withdrawn" })
        .increment(1);
}

pub fn erasure() {
    metrics::counter!(ERASURES).increment(1);
}

/// One batch's outcome; `stage` of dead letters is counted by the caller.
pub fn batch(read: u64, written: u64, stale: u64, seconds: f64) {
    metrics::counter!(EVENTS_READ).increment(read);
    metrics::counter!(EVENTS_WRITTEN).increment(written);
    metrics::counter!(EVENTS_STALE).increment(stale);
    metrics::histogram!(BATCH_SECONDS).record(seconds);
}

pub fn dead_lettered(stage: &'static str) {
    metrics::counter!(EVENTS_DEAD_LETTERED, "stage" => stage).increment(1);
}

pub fn retry(cause: &'static str) {
    metrics::counter!(RETRIES, "cause" => cause).increment(1);
}
