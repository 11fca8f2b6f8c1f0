//! The event source port: where profile change events come from.
//!
//! A source hands out batches of raw records (bytes plus how to read them) and is told, through
//! its [`Acknowledger`], which batches have been fully handled, so it can commit their
//! positions. Several batches may be in flight at once; the runtime acknowledges a contiguous
//! prefix of them. Decoding is the decode stage's job, not the source's, so that every source
//! shares one validation path.

mod file;
mod kafka;

pub use file::FileSource;
pub use kafka::{KafkaSource, KafkaSourceSettings};

use apache_avro::Schema;
use async_trait::async_trait;
use std::sync::Arc;

/// The bytes of one event and the encoding they are in.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An Avro binary datum written with `writer` (resolved to the reader schema when decoded).
    AvroDatum { bytes: Vec<u8>, writer: Arc<Schema> },
    /// One line of JSON in Avro's JSON encoding.
    Json(Vec<u8>),
    /// A Confluent wire-format message (magic byte 0, 4-byte schema id, Avro datum) whose
    /// writer schema the source resolved by id. `bytes` is the whole message, unchanged.
    ConfluentAvro { bytes: Vec<u8>, writer: Arc<Schema> },
    /// Bytes the source could already tell cannot be decoded (no wire-format header, unknown
    /// schema id): the decode stage turns this into a rejection, so it is dead-lettered.
    Unreadable {
        bytes: Vec<u8>,
        class: &'static str,
        reason: String,
    },
}

impl Payload {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::AvroDatum { bytes, .. } => bytes,
            Payload::Json(bytes) => bytes,
            Payload::ConfluentAvro { bytes, .. } => bytes,
            Payload::Unreadable { bytes, .. } => bytes,
        }
    }
}

/// One raw event and where it came from.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// Human-readable position, e.g. `events.jsonl:42` or `profiles/3@1200`.
    pub position: String,
    pub key: Option<Vec<u8>>,
    pub payload: Payload,
    /// Where a record came from in a log-based source, and the headers it carried.
    pub meta: RecordMeta,
}

/// Source details a dead letter repeats so the event can be found and replayed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordMeta {
    /// Topic, partition and offset, for a Kafka record.
    pub origin: Option<(String, i32, i64)>,
    /// The record's headers, unchanged (a header without a value has `None`).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {what}: {reason}")]
    Read { what: String, reason: String },
}

#[async_trait]
pub trait EventSource: Send {
    /// For a source that shares its input with a group of workers (Kafka): how many
    /// partitions this worker holds now. `/readyz` is not ready while it is zero.
    fn assigned_partitions(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
        None
    }

    /// Preflight: can events be read? Never includes secrets.
    async fn check(&mut self) -> Result<String, String> {
        Ok(match self.size_hint() {
            Some(n) => format!("{n} events to read"),
            None => "open".into(),
        })
    }

    /// Up to `max` records; an empty batch means a finite source is exhausted. Non-empty
    /// batches are numbered 1, 2, 3, … in the order they are returned: that number is what
    /// [`Acknowledger::acknowledge`] takes.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SourceRecord>, SourceError>;

    /// How the runtime tells this source that batches are done. It is called from other tasks
    /// while `next_batch` may be waiting, so it holds only shared state.
    fn acknowledger(&self) -> Arc<dyn Acknowledger> {
        Arc::new(NothingToCommit)
    }

    /// The worker is stopping and nothing is in flight: commit whatever was acknowledged but
    /// not committed yet, and leave (e.g. a consumer group) cleanly.
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// How many records there are in all, when the source knows (for progress).
    fn size_hint(&self) -> Option<u64> {
        None
    }
}

/// Takes acknowledgements: every record of batches `1..=through` has reached the store, the
/// index (committed) and the dead-letter sink. The runtime only ever passes a contiguous
/// prefix, so committing the positions of those batches never skips an unfinished record.
pub trait Acknowledger: Send + Sync {
    fn acknowledge(&self, through: u64) -> Result<(), SourceError>;
}

/// For a source with no positions to commit (a file is re-read from the start on every run,
/// and versioned writes make the replay harmless).
pub struct NothingToCommit;

impl Acknowledger for NothingToCommit {
    fn acknowledge(&self, _through: u64) -> Result<(), SourceError> {
        Ok(())
    }
}
