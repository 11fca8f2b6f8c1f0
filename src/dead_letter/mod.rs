//! The dead-letter port: where events that cannot be applied go, with the reason, so that
//! nothing that fails is dropped silently and every event can be replayed after a fix.

mod file;
mod kafka;

pub use file::DeadLetterFile;
pub use kafka::{DeadLetterTopic, HEADER_PREFIX, VALUE_OMITTED};

use crate::event::Stage;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// One event that could not be applied. `reason` names fields and rules, never values.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub at: DateTime<Utc>,
    /// Where the event was read (file and line, topic/partition@offset).
    pub position: String,
    pub stage: Stage,
    pub class: &'static str,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    /// The original bytes, unchanged.
    pub payload: Vec<u8>,
    /// The source's topic/partition/offset and original headers, when it has them.
    pub meta: crate::sources::RecordMeta,
}

#[derive(Debug, thiserror::Error)]
#[error("dead-letter sink failed: {0}")]
pub struct DeadLetterError(pub String);

#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Stores the letters durably before returning: only then may their events be acknowledged.
    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), DeadLetterError>;
}
