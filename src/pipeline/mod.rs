//! The pipeline: stages in order, then the fan-out to the sinks, one batch at a time.
//!
//! A batch is acknowledged to its source only after the store, the index and the dead-letter
//! sink have all taken what they were given. A transient failure retries the whole batch,
//! which is harmless because every write is versioned.

mod build;

pub use build::{
    build, open_data_keys, open_index, open_source, open_store, opensearch_settings, schemas,
    BuildError, Components,
};

use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};
use crate::event::{Rejection, Stage};
use crate::indexes::{IndexError, IndexOutcome, SearchIndex};
use crate::keys::KeyError;
use crate::retry::Backoff;
use crate::sources::{EventSource, SourceError, SourceRecord};
use crate::stages::decode::Decoder;
use crate::stages::enrich::Enricher;
use crate::stages::project::Projection;
use crate::stages::protect::Protector;
use crate::stores::{ProfileStore, StoreError, WriteOutcome};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What happened to the events of a run. `written + stale + dead_lettered = read`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub read: u64,
    /// Applied to the store (and the index).
    pub written: u64,
    /// Older than or equal to what the store holds: skipped.
    pub stale: u64,
    pub dead_lettered: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.read += other.read;
        self.written += other.written;
        self.stale += other.stale;
        self.dead_lettered += other.dead_lettered;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
}

impl PipelineError {
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Keys(e) => e.is_transient(),
            PipelineError::Store(e) => e.is_transient(),
            PipelineError::Index(e) => e.is_transient(),
            PipelineError::Source(_) | PipelineError::DeadLetter(_) => false,
        }
    }
}

pub struct Pipeline {
    pub decoder: Decoder,
    pub enricher: Enricher,
    pub protector: Protector,
    pub projection: Projection,
    pub store: Arc<dyn ProfileStore>,
    pub index: Arc<dyn SearchIndex>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
}

impl Pipeline {
    /// Takes one batch through every stage and sink. On error nothing is acknowledged, and
    /// processing the same batch again is safe.
    pub async fn process(&self, records: &[SourceRecord]) -> Result<Counts, PipelineError> {
        let mut counts = Counts {
            read: records.len() as u64,
            ..Counts::default()
        };
        let mut rejected: Vec<(usize, Rejection)> = Vec::new();

        let mut enriched = Vec::with_capacity(records.len());
        let mut origin = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            match self
                .decoder
                .decode(&record.payload)
                .and_then(|c| self.enricher.enrich(c))
            {
                Ok(e) => {
                    enriched.push(e);
                    origin.push(i);
                }
                Err(r) => rejected.push((i, r)),
            }
        }

        let protected_all = self.protector.protect(enriched).await?;
        let mut protected = Vec::with_capacity(protected_all.len());
        let mut protected_origin = Vec::with_capacity(protected_all.len());
        for (result, i) in protected_all.into_iter().zip(origin) {
            match result {
                Ok(p) => {
                    protected.push(p);
                    protected_origin.push(i);
                }
                Err(r) => rejected.push((i, r)),
            }
        }

        let outcomes = self.store.apply(&protected).await?;
        let mut ops = Vec::new();
        let mut op_origin = Vec::new();
        for ((change, outcome), i) in protected.iter().zip(&outcomes).zip(&protected_origin) {
            match outcome {
                WriteOutcome::Applied => counts.written += 1,
                WriteOutcome::Replayed | WriteOutcome::Stale => counts.stale += 1,
            }
            if matches!(outcome, WriteOutcome::Applied | WriteOutcome::Replayed) {
                ops.push(self.projection.op(change));
                op_origin.push(*i);
            }
        }
        for (outcome, i) in self.index.apply(ops).await?.into_iter().zip(op_origin) {
            if let IndexOutcome::Rejected(reason) = outcome {
                rejected.push((i, Rejection::new(Stage::Index, "rejected", reason)));
            }
        }

        counts.dead_lettered = rejected.len() as u64;
        if !rejected.is_empty() {
            let at = chrono::Utc::now();
            let letters = rejected
                .into_iter()
                .map(|(i, r)| DeadLetter {
                    at,
                    position: records[i].position.clone(),
                    stage: r.stage,
                    class: r.class,
                    reason: r.reason,
                    key: records[i].key.clone(),
                    payload: records[i].payload.bytes().to_vec(),
                })
                .collect();
            self.dead_letters.send(letters).await?;
        }
        Ok(counts)
    }

    /// Runs the source to its end (or forever, for an endless one).
    pub async fn run(
        &self,
        source: &mut dyn EventSource,
        batch_size: usize,
        mut progress: impl FnMut(&Counts),
    ) -> Result<Counts, PipelineError> {
        let mut total = Counts::default();
        let backoff = Backoff::default();
        loop {
            let batch = source.next_batch(batch_size).await?;
            if batch.is_empty() {
                break;
            }
            let started = Instant::now();
            let mut attempt = 0;
            let counts = loop {
                match self.process(&batch).await {
                    Ok(c) => break c,
                    Err(e) if e.is_transient() => {
                        attempt += 1;
                        let delay = backoff.delay(attempt);
                        tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "batch failed transiently; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            source.acknowledge().await?;
            tracing::debug!(
                first = %batch[0].position,
                last = %batch[batch.len() - 1].position,
                read = counts.read,
                written = counts.written,
                stale = counts.stale,
                dead_lettered = counts.dead_lettered,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "batch done"
            );
            total.add(counts);
            progress(&total);
        }
        Ok(total)
    }
}
