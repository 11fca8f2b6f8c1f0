//! Metric names and the few helpers that record them, in one place: Prometheus conventions
//! (`profile_sync_*`, `_total` for counters, `_seconds` for durations, base units). Labels
//! name stages, sinks, outcomes and causes, never users or values. Without an installed
//! recorder (the CLI installs one with `--metrics-addr`) these calls cost next to nothing.

pub mod health;
pub mod server;

pub use health::Health;

pub const EVENTS_READ: &str = "profile_sync_events_read_total";
pub const EVENTS_WRITTEN: &str = "profile_sync_events_written_total";
pub const EVENTS_STALE: &str = "profile_sync_events_stale_total";
pub const EVENTS_DEAD_LETTERED: &str = "profile_sync_events_dead_lettered_total";
pub const BATCH_SECONDS: &str = "profile_sync_batch_duration_seconds";
pub const RETRIES: &str = "profile_sync_retries_total";
pub const EVENT_LATENCY_SECONDS: &str = "profile_sync_event_latency_seconds";
pub const STAGE_SECONDS: &str = "profile_sync_stage_duration_seconds";
pub const IN_FLIGHT: &str = "profile_sync_in_flight_events";
pub const SINK_BATCH_SIZE: &str = "profile_sync_sink_batch_size";
pub const SINK_REQUEST_SECONDS: &str = "profile_sync_sink_request_duration_seconds";
pub const KEY_PROVIDER_CALLS: &str = "profile_sync_key_provider_calls_total";
pub const KEY_CACHE_HITS: &str = "profile_sync_key_cache_hits_total";
pub const KEY_CACHE_MISSES: &str = "profile_sync_key_cache_misses_total";
pub const CONSENT_CHANGES: &str = "profile_sync_consent_changes_total";
pub const ERASURES: &str = "profile_sync_erasures_total";
/// Per topic and partition, from librdkafka's statistics (every 5 s by default).
pub const KAFKA_CONSUMER_LAG: &str = "profile_sync_kafka_consumer_lag";
pub const KAFKA_ASSIGNED_PARTITIONS: &str = "profile_sync_kafka_assigned_partitions";
pub const KAFKA_MESSAGES: &str = "profile_sync_kafka_messages_total";
pub const KAFKA_COMMITS: &str = "profile_sync_kafka_commits_total";
pub const KAFKA_COMMIT_FAILURES: &str = "profile_sync_kafka_commit_failures_total";
pub const KAFKA_TRANSIENT_ERRORS: &str = "profile_sync_kafka_transient_errors_total";
pub const REGISTRY_TRANSIENT_ERRORS: &str = "profile_sync_registry_transient_errors_total";
pub const DEAD_LETTER_RETRIES: &str = "profile_sync_dead_letter_retries_total";
/// Live profiles per segment (label `segment`): the store's count when the worker started,
/// moved by every segment change this worker applies since. Only with the segment change feed.
pub const SEGMENT_MEMBERS: &str = "profile_sync_segment_members";
/// Segment changes made durable in the feed's sink.
pub const SEGMENT_CHANGES: &str = "profile_sync_segment_changes_total";
/// The profile API (`serve`): requests answered, by route template, method and status.
pub const API_REQUESTS: &str = "profile_sync_api_requests_total";
/// The profile API: seconds from a request's arrival to its answer, by route template and method.
pub const API_REQUEST_SECONDS: &str = "profile_sync_api_request_seconds";
/// The profile API: reveals and lookups over a key's unusual rate, by role.
pub const API_UNUSUAL_REVEALS: &str = "profile_sync_api_unusual_reveal_rate_total";

/// The members gauge's starting point: the store's count per segment.
pub fn segment_members(members: &std::collections::BTreeMap<String, u64>) {
    for (segment, n) in members {
        metrics::gauge!(SEGMENT_MEMBERS, "segment" => segment.clone()).set(*n as f64);
    }
}

/// A user entered `entered` and left `exited` (segment names are the pipeline file's, never
/// values).
pub fn segment_members_moved(entered: &[String], exited: &[String]) {
    let mut moved = MembersMoved::default();
    moved.add(entered, exited);
    moved.record();
}

/// The members gauge's moves over a whole write, summed per segment and recorded once each
/// (a gauge update per change and segment was a label allocation and a registry look-up each).
#[derive(Debug, Default)]
pub struct MembersMoved(Vec<(String, i64)>);

impl MembersMoved {
    pub fn add(&mut self, entered: &[String], exited: &[String]) {
        for (segments, by) in [(entered, 1), (exited, -1)] {
            for segment in segments {
                match self.0.iter_mut().find(|(s, _)| s == segment) {
                    Some((_, n)) => *n += by,
                    None => self.0.push((segment.clone(), by)),
                }
            }
        }
    }

    pub fn record(self) {
        for (segment, by) in self.0.into_iter().filter(|(_, by)| *by != 0) {
            metrics::gauge!(SEGMENT_MEMBERS, "segment" => segment).increment(by as f64);
        }
    }
}

pub fn segment_changes(n: usize) {
    metrics::counter!(SEGMENT_CHANGES).increment(n as u64);
}

pub fn consent_change(granted: bool) {
    metrics::counter!(CONSENT_CHANGES, "decision" => if granted { "granted" } else { "withdrawn" })
        .increment(1);
}

pub fn erasure() {
    metrics::counter!(ERASURES).increment(1);
}

/// Acknowledged batches' outcome, and each batch's time from fetch to acknowledgement; `stage`
/// of dead letters is counted by the caller.
pub fn batch(read: u64, written: u64, stale: u64, fetched_at: &[std::time::Instant]) {
    metrics::counter!(EVENTS_READ).increment(read);
    metrics::counter!(EVENTS_WRITTEN).increment(written);
    metrics::counter!(EVENTS_STALE).increment(stale);
    for at in fetched_at {
        metrics::histogram!(BATCH_SECONDS).record(at.elapsed().as_secs_f64());
    }
}

pub fn dead_lettered(stage: &'static str) {
    metrics::counter!(EVENTS_DEAD_LETTERED, "stage" => stage).increment(1);
}

pub fn retry(cause: &'static str) {
    metrics::counter!(RETRIES, "cause" => cause).increment(1);
}

/// Time spent in one stage for a batch (`decode`, `enrich`, `protect`, `apply`).
pub fn stage(stage: &'static str, seconds: f64) {
    metrics::histogram!(STAGE_SECONDS, "stage" => stage).record(seconds);
}

/// One request to a sink (`store`, `index`, `index_commit`, `dead_letter`) with the number of
/// items in it.
pub fn sink_request(sink: &'static str, items: usize, seconds: f64) {
    metrics::histogram!(SINK_BATCH_SIZE, "sink" => sink).record(items as f64);
    metrics::histogram!(SINK_REQUEST_SECONDS, "sink" => sink).record(seconds);
}

pub fn in_flight(events: usize) {
    metrics::gauge!(IN_FLIGHT).set(events as f64);
}

/// From the event's `occurred_at` to its acknowledgement.
pub fn event_latency(seconds: f64) {
    metrics::histogram!(EVENT_LATENCY_SECONDS).record(seconds.max(0.0));
}

/// Totals kept by the key provider and the data-key cache, published as counters.
pub fn keys(provider_calls: u64, cache_hits: u64, cache_misses: u64) {
    metrics::counter!(KEY_PROVIDER_CALLS).absolute(provider_calls);
    metrics::counter!(KEY_CACHE_HITS).absolute(cache_hits);
    metrics::counter!(KEY_CACHE_MISSES).absolute(cache_misses);
}
