//! Kafka topics as an event source: a consumer in a consumer group, values in the Confluent
//! wire format with writer schemas from a Schema Registry.
//!
//! Several batches are in flight while this source polls. Each batch handed out is remembered
//! with the next offset of every partition in it; an acknowledgement of batches `1..=n` (always
//! a contiguous prefix, see `runtime::acks`) makes those offsets committable, and commits are
//! batched (`commit_every_events` / `commit_interval_ms`). On a revocation (which librdkafka
//! reports while we poll) the committable offsets are committed, and the revoked partitions are
//! forgotten everywhere, in flight included: a batch of theirs that finishes later is not
//! committed by us, the new owner reads it again from the committed offset. A crash loses at
//! most the uncommitted window, which is replayed harmlessly (versioned writes).

use super::{Acknowledger, EventSource, Payload, RecordMeta, SourceError, SourceRecord};
use crate::retry::Backoff;
use crate::schema::registry::{schema_id, Lookup, WriterSchemas};
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything the source needs; built from the pipeline file.
#[derive(Debug, Clone)]
pub struct KafkaSourceSettings {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    /// librdkafka properties, already merged with the environment's.
    pub properties: BTreeMap<String, String>,
    pub linger: Duration,
    pub commit_every_events: usize,
    pub commit_interval: Duration,
    pub stop_when_idle: Option<Duration>,
    /// Larger message values are rejected (`too_large`) without being decoded.
    pub max_event_bytes: usize,
}

/// Offsets acknowledged but not committed yet (partition → next offset to read), and those of
/// the batches handed out and not acknowledged yet, oldest first.
#[derive(Default)]
struct Pending {
    offsets: HashMap<(String, i32), i64>,
    events: usize,
    in_flight: VecDeque<HandedOut>,
}

/// One batch handed out: its number, the next offset of each partition in it, its size.
struct HandedOut {
    batch: u64,
    next: HashMap<(String, i32), i64>,
    events: usize,
}

/// The source's [`Acknowledger`]: moves the offsets of acknowledged batches to the committable
/// set; the source commits them on its cadence while it polls.
struct KafkaAcks {
    pending: Arc<Mutex<Pending>>,
}

impl Acknowledger for KafkaAcks {
    fn acknowledge(&self, through: u64) -> Result<(), SourceError> {
        let Ok(mut pending) = self.pending.lock() else {
            return Err(read_err("offset bookkeeping lock poisoned"));
        };
        while pending
            .in_flight
            .front()
            .is_some_and(|b| b.batch <= through)
        {
            let done = pending.in_flight.pop_front().expect("front exists");
            for (k, next) in done.next {
                let slot = pending.offsets.entry(k).or_insert(next);
                *slot = (*slot).max(next);
            }
            pending.events += done.events;
        }
        Ok(())
    }
}

/// Commits what completed when partitions are revoked, from inside librdkafka's poll; keeps
/// the assignment size (for `/readyz`) and the consumer lag (from librdkafka's statistics).
struct GroupContext {
    pending: Arc<Mutex<Pending>>,
    assigned: Arc<AtomicUsize>,
    lag: Lag,
}

/// Consumer lag per (topic, partition), as the last statistics reported it.
type Lag = Arc<Mutex<HashMap<(String, i32), i64>>>;

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Ok(mut lag) = self.lag.lock() else {
            return;
        };
        lag.clear();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal UA partition; lag -1 means unknown,
                // which it also is for an empty partition nobody committed on: that one's 0.
                let empty = p.hi_offset == 0 || (p.lo_offset >= 0 && p.hi_offset == p.lo_offset);
                if *partition >= 0 && p.consumer_lag < 0 && empty {
                    lag.insert((topic.clone(), *partition), 0);
                }
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.insert((topic.clone(), *partition), p.consumer_lag);
                    metrics::gauge!(
                        crate::telemetry::KAFKA_CONSUMER_LAG,
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let revoked: HashSet<(String, i32)> = revoked
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if let Err(e) = commit_offsets(consumer, &pending.offsets) {
            tracing::warn!(error = %e, "commit on partition revocation failed; the new owner replays from the last commit");
            metrics::counter!(crate::telemetry::KAFKA_COMMIT_FAILURES).increment(1);
        }
        // Whatever happened, those partitions are not ours to commit any more, not even when a
        // batch of theirs in flight finishes.
        pending.offsets.retain(|k, _| !revoked.contains(k));
        pending.events = 0;
        for batch in &mut pending.in_flight {
            batch.next.retain(|k, _| !revoked.contains(k));
        }
        tracing::info!(partitions = revoked.len(), "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The count comes from the event, never from `consumer.assignment()`: that call waits
        // on librdkafka's main thread, which stops answering while the consumer closes, and a
        // worker hung on SIGTERM there (the revocation of a close runs this callback).
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let before = self.assigned.load(Ordering::Relaxed);
        let assigned = match rebalance {
            Rebalance::Assign(tpl) if cooperative => before + tpl.count(),
            Rebalance::Assign(tpl) => tpl.count(),
            Rebalance::Revoke(tpl) if cooperative => before.saturating_sub(tpl.count()),
            Rebalance::Revoke(_) => 0,
            Rebalance::Error(_) => before,
        };
        self.assigned.store(assigned, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::KAFKA_ASSIGNED_PARTITIONS).set(assigned as f64);
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "partitions assigned; resuming from committed offsets"
            );
        }
    }
}

fn commit_offsets<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    offsets: &HashMap<(String, i32), i64>,
) -> Result<(), KafkaError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

pub struct KafkaSource {
    consumer: StreamConsumer<GroupContext>,
    schemas: WriterSchemas,
    settings: KafkaSourceSettings,
    pending: Arc<Mutex<Pending>>,
    assigned: Arc<AtomicUsize>,
    /// How many non-empty batches were handed out.
    batches: u64,
    last_commit: Instant,
    backoff: Backoff,
    /// Consumer lag per partition from librdkafka's statistics (end offset minus committed
    /// offset). With `stop_when_idle`, idle time counts only while every assigned partition's
    /// lag is 0, so a broker that goes silent with a backlog pending never looks like an
    /// exhausted source.
    lag: Lag,
}

/// A message copied out of librdkafka's buffer.
struct Raw {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn read_err(reason: impl Into<String>) -> SourceError {
    SourceError::Read {
        what: "Kafka".into(),
        reason: reason.into(),
    }
}

impl KafkaSource {
    /// Creates the consumer and subscribes. Bad properties are reported here, before any
    /// message is read.
    pub fn open(
        settings: KafkaSourceSettings,
        schemas: WriterSchemas,
    ) -> Result<Self, SourceError> {
        if settings.topics.is_empty() {
            return Err(read_err(
                "the kafka source names no topics: add `topics: [...]`",
            ));
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("auto.offset.reset", "earliest")
            .set("client.id", "profile-sync")
            // Statistics feed the consumer lag gauge; a pipeline file may change the interval.
            .set("statistics.interval.ms", "5000")
            // Prefetch at most 16 MiB (librdkafka: 64 MiB): a batch of 2,000 events is ~2 MB,
            // and the worker's memory stays under 200 MB on a backlog (BENCHMARKS.md).
            .set("queued.max.messages.kbytes", "16384");
        for (k, v) in &settings.properties {
            config.set(k, v);
        }
        // The at-least-once rule depends on these: offsets move only when the sinks are done.
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let pending = Arc::new(Mutex::new(Pending::default()));
        let assigned = Arc::new(AtomicUsize::new(0));
        let lag = Lag::default();
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(GroupContext {
                pending: pending.clone(),
                assigned: assigned.clone(),
                lag: lag.clone(),
            })
            .map_err(|e| {
                read_err(format!(
                    "cannot create the Kafka consumer ({e}): check `properties` in the pipeline file and PROFILE_SYNC_KAFKA_* variables"
                ))
            })?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| read_err(format!("cannot subscribe to {topics:?}: {e}")))?;
        Ok(Self {
            consumer,
            schemas,
            settings,
            pending,
            assigned,
            batches: 0,
            last_commit: Instant::now(),
            backoff: Backoff::default(),
            lag,
        })
    }

    /// Whether every assigned partition is known, from the last statistics, to be read and
    /// committed to its end.
    fn caught_up(&self) -> bool {
        let (Ok(assignment), Ok(lag)) = (self.consumer.assignment(), self.lag.lock()) else {
            return false;
        };
        assignment.count() > 0
            && assignment
                .elements()
                .iter()
                .all(|e| lag.get(&(e.topic().to_string(), e.partition())) == Some(&0))
    }

    /// The next message, or `None` when `wait` passed without one. Consumer errors (broker
    /// down, transport) are logged, counted and waited out: they never end the worker.
    async fn next_message(&mut self, wait: Duration) -> Option<Raw> {
        let deadline = Instant::now() + wait;
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.consumer.recv()).await {
                Err(_) => return None,
                Ok(Ok(m)) => {
                    return Some(Raw {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        headers: m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                }
                Ok(Err(e)) => {
                    attempt += 1;
                    let delay = self.backoff.delay(attempt).min(left);
                    tracing::warn!(error = %e, attempt, "Kafka consumer error; retrying");
                    metrics::counter!(crate::telemetry::KAFKA_TRANSIENT_ERRORS).increment(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn maybe_commit(&mut self, force: bool) -> Result<(), SourceError> {
        let Ok(mut pending) = self.pending.lock() else {
            return Err(read_err("offset bookkeeping lock poisoned"));
        };
        let due = pending.events >= self.settings.commit_every_events
            || self.last_commit.elapsed() >= self.settings.commit_interval;
        if pending.offsets.is_empty() || !(force || due) {
            return Ok(());
        }
        match commit_offsets(&self.consumer, &pending.offsets) {
            Ok(()) => {
                pending.offsets.clear();
                pending.events = 0;
                self.last_commit = Instant::now();
                metrics::counter!(crate::telemetry::KAFKA_COMMITS).increment(1);
            }
            Err(e) => {
                // Kept pending: retried on the next commit; never skipped past.
                tracing::warn!(error = %e, "offset commit failed; will retry");
                metrics::counter!(crate::telemetry::KAFKA_COMMIT_FAILURES).increment(1);
                self.last_commit = Instant::now();
            }
        }
        Ok(())
    }

    /// The record for a message: resolves the writer schema, waiting out registry outages.
    async fn record(&self, raw: Raw) -> SourceRecord {
        let position = format!("{}/{}@{}", raw.topic, raw.partition, raw.offset);
        let size = raw.value.len();
        let payload = match schema_id(&raw.value) {
            _ if size > self.settings.max_event_bytes => Payload::Unreadable {
                bytes: raw.value,
                class: "too_large",
                reason: format!(
                    "the value is {size} bytes, over source.max_event_bytes ({})",
                    self.settings.max_event_bytes
                ),
            },
            Err(reason) => Payload::Unreadable {
                bytes: raw.value,
                class: "malformed",
                reason: reason.into(),
            },
            Ok(id) => {
                let mut attempt = 0;
                loop {
                    match self.schemas.get(id).await {
                        Ok(writer) => {
                            break Payload::ConfluentAvro {
                                bytes: raw.value,
                                writer,
                            }
                        }
                        Err(Lookup::Unknown(reason)) => {
                            break Payload::Unreadable {
                                bytes: raw.value,
                                class: "schema",
                                reason,
                            }
                        }
                        Err(Lookup::Unavailable(reason)) => {
                            attempt += 1;
                            let delay = self.backoff.delay(attempt);
                            tracing::warn!(%reason, attempt, delay_ms = delay.as_millis() as u64, "schema registry unavailable; retrying (the event is not dead-lettered)");
                            metrics::counter!(crate::telemetry::REGISTRY_TRANSIENT_ERRORS)
                                .increment(1);
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            }
        };
        SourceRecord {
            position,
            key: raw.key,
            payload,
            meta: RecordMeta {
                origin: Some((raw.topic, raw.partition, raw.offset)),
                headers: raw.headers,
            },
        }
    }
}

#[async_trait]
impl EventSource for KafkaSource {
    fn assigned_partitions(&self) -> Option<Arc<AtomicUsize>> {
        Some(self.assigned.clone())
    }

    /// Broker metadata for every topic (each must exist), then the schema registry.
    async fn check(&mut self) -> Result<String, String> {
        let mut partitions = 0;
        for topic in &self.settings.topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map_err(|e| {
                    format!(
                        "no metadata from the brokers at {} ({e}): check `source.brokers` and that the brokers are up",
                        self.settings.brokers
                    )
                })?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .ok_or_else(|| {
                    format!("topic `{topic}` does not exist: create it, or fix `source.topics`")
                })?;
            partitions += found.partitions().len();
        }
        let registry = self.schemas.check().await?;
        Ok(format!(
            "{} topic(s), {partitions} partitions; {registry}",
            self.settings.topics.len()
        ))
    }

    fn acknowledger(&self) -> Arc<dyn Acknowledger> {
        Arc::new(KafkaAcks {
            pending: self.pending.clone(),
        })
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<SourceRecord>, SourceError> {
        // Batches acknowledged while the last one was fetched are committed on the cadence.
        self.maybe_commit(false)?;
        let mut idle_since = Instant::now();
        // Wait for a first message, committing due offsets while idle.
        let first = loop {
            let mut wait = self.settings.commit_interval.max(Duration::from_millis(50));
            // Idle means "my partitions are read to their end": waiting for an assignment, or
            // for a broker that went silent with events pending, is not idle.
            if self.settings.stop_when_idle.is_some()
                && (self.assigned.load(Ordering::Relaxed) == 0 || !self.caught_up())
            {
                idle_since = Instant::now();
            }
            if let Some(idle) = self.settings.stop_when_idle {
                let left = idle.saturating_sub(idle_since.elapsed());
                if left.is_zero() {
                    return Ok(Vec::new());
                }
                wait = wait.min(left);
            }
            if let Some(m) = self.next_message(wait).await {
                break m;
            }
            self.maybe_commit(false)?;
        };
        let mut raws = vec![first];
        let linger_until = Instant::now() + self.settings.linger;
        while raws.len() < max {
            let left = linger_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next_message(left).await {
                Some(m) => raws.push(m),
                None => break,
            }
        }
        // A revocation during the linger: those messages belong to the new owner now.
        if let Ok(assigned) = self.consumer.assignment() {
            let owned: HashSet<(String, i32)> = assigned
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            let before = raws.len();
            raws.retain(|r| owned.contains(&(r.topic.clone(), r.partition)));
            if raws.len() < before {
                tracing::info!(
                    dropped = before - raws.len(),
                    "dropped buffered messages of revoked partitions"
                );
            }
            // An empty batch means "source exhausted" to the pipeline: fetch again instead.
            if raws.is_empty() {
                return self.next_batch(max).await;
            }
        }
        let mut next_offsets: HashMap<(String, i32), i64> = HashMap::new();
        let mut batch = Vec::with_capacity(raws.len());
        for raw in raws {
            let next = raw.offset + 1;
            let slot = next_offsets
                .entry((raw.topic.clone(), raw.partition))
                .or_insert(next);
            *slot = (*slot).max(next);
            batch.push(self.record(raw).await);
        }
        self.batches += 1;
        {
            let Ok(mut pending) = self.pending.lock() else {
                return Err(read_err("offset bookkeeping lock poisoned"));
            };
            pending.in_flight.push_back(HandedOut {
                batch: self.batches,
                next: next_offsets,
                events: batch.len(),
            });
        }
        metrics::counter!(crate::telemetry::KAFKA_MESSAGES).increment(batch.len() as u64);
        Ok(batch)
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        // Pending offsets were all acknowledged; a failed final commit only means a replay.
        let offsets = match self.pending.lock() {
            Ok(p) => p.offsets.clone(),
            Err(_) => return Err(read_err("offset bookkeeping lock poisoned")),
        };
        let mut attempt = 0;
        loop {
            match commit_offsets(&self.consumer, &offsets) {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "final commit failed; retrying");
                    tokio::time::sleep(self.backoff.delay(attempt)).await;
                }
                Err(e) => {
                    return Err(read_err(format!(
                        "final offset commit failed ({e}): the uncommitted events will be replayed on restart, harmlessly"
                    )))
                }
            }
        }
        if let Ok(mut p) = self.pending.lock() {
            p.offsets.clear();
            p.events = 0;
        }
        self.consumer.unsubscribe();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::registry::settings;

    fn open_with(properties: &[(&str, &str)]) -> Result<KafkaSource, SourceError> {
        KafkaSource::open(
            KafkaSourceSettings {
                brokers: "127.0.0.1:1".into(),
                topics: vec!["profile-changes".into()],
                group_id: "unit".into(),
                properties: properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                linger: Duration::from_millis(10),
                commit_every_events: 10,
                commit_interval: Duration::from_secs(1),
                stop_when_idle: None,
                max_event_bytes: 1 << 20,
            },
            WriterSchemas::new(
                settings("http://127.0.0.1:1", Duration::from_secs(1), false).unwrap(),
            ),
        )
    }

    #[tokio::test]
    async fn the_client_is_built_with_tls_and_scram_for_managed_clusters() {
        let source = open_with(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "profile-sync"),
            ("sasl.password", "unit-test"),
        ]);
        assert!(source.is_ok(), "{:?}", source.err());
    }

    #[tokio::test]
    async fn an_unknown_librdkafka_property_is_reported_at_startup() {
        let Err(e) = open_with(&[("no.such.property", "1")]) else {
            panic!("accepted an unknown property");
        };
        assert!(e.to_string().contains("properties"), "{e}");
    }
}
