//! The event source port: where profile change events come from.
//!
//! A source hands out batches of raw records (bytes plus how to read them) and is told when a
//! batch has been fully handled, so it can acknowledge (commit) it. Decoding is the decode
//! stage's job, not the source's, so that every source shares one validation path.

mod file;

pub use file::FileSource;

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
}

impl Payload {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::AvroDatum { bytes, .. } => bytes,
            Payload::Json(bytes) => bytes,
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
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {what}: {reason}")]
    Read { what: String, reason: String },
}

#[async_trait]
pub trait EventSource: Send {
    /// Preflight: can events be read? Never includes secrets.
    async fn check(&mut self) -> Result<String, String> {
        Ok(match self.size_hint() {
            Some(n) => format!("{n} events to read"),
            None => "open".into(),
        })
    }

    /// Up to `max` records; an empty batch means a finite source is exhausted.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SourceRecord>, SourceError>;

    /// Every record handed out so far has reached its sinks (or the dead-letter sink).
    async fn acknowledge(&mut self) -> Result<(), SourceError>;

    /// How many records there are in all, when the source knows (for progress).
    fn size_hint(&self) -> Option<u64> {
        None
    }
}
