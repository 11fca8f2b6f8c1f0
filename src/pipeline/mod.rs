//! The pipeline: stages in order, then the fan-out to the sinks, one batch at a time.
//!
//! A batch is acknowledged to its source only after the store, the index and the dead-letter
//! sink have all taken what they were given. A transient failure retries the whole batch,
//! which is harmless because every write is versioned.

mod build;

pub use build::{
    build, open_data_keys, open_dynamodb, open_index, open_kms, open_profiles, open_source,
    open_store, opensearch_settings, schemas, BuildError, Components, IndexAccess,
};

use crate::config::{ErasedUserEvents, PrivacyConfig};
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};
use crate::event::{Operation, ProfileChange};
use crate::event::{Rejection, Stage};
use crate::indexes::{IndexError, IndexOutcome};
use crate::keys::KeyError;
use crate::privacy::{Actor, PrivacyError, Profiles};
use crate::retry::Backoff;
use crate::sources::{EventSource, SourceError, SourceRecord};
use crate::stages::decode::Decoder;
use crate::stages::enrich::Enricher;
use crate::stages::protect::Protector;
use crate::stores::{ConsentState, StoreError, WriteOutcome};
use crate::telemetry::{self, Health};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

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
    /// What failed, as a metric label.
    pub fn cause(&self) -> &'static str {
        match self {
            PipelineError::Source(_) => "source",
            PipelineError::Keys(_) => "keys",
            PipelineError::Store(_) => "store",
            PipelineError::Index(_) => "index",
            PipelineError::DeadLetter(_) => "dead_letter",
        }
    }

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
    /// The store, the index and the users' keys.
    pub profiles: Profiles,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    pub privacy: PrivacyConfig,
    /// What `/readyz` reports.
    pub health: Arc<Health>,
}

/// Per-batch knowledge of the users in it: erasure fences and consent states.
struct UserStates {
    fences: HashMap<Uuid, i64>,
    consents: HashMap<Uuid, ConsentState>,
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
        let mut decoded = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            match self.decoder.decode(&record.payload) {
                Ok(change) => decoded.push((i, change)),
                Err(r) => rejected.push((i, r)),
            }
        }
        let mut users: Vec<Uuid> = decoded.iter().map(|(_, c)| c.user_id).collect();
        users.sort_unstable();
        users.dedup();
        let store = &self.profiles.store;
        let mut states = UserStates {
            fences: store.erasure_fences(&users).await?,
            consents: if self.privacy.purposes.is_empty() {
                HashMap::new()
            } else {
                store.consent_states(&users).await?
            },
        };

        // Profile changes run through the stages together; a privacy event (consent, erase)
        // first flushes the changes before it, so every user's events apply in order.
        let mut run = Vec::new();
        for (i, change) in decoded {
            if let Some(&fence) = states.fences.get(&change.user_id) {
                if change.version <= fence {
                    counts.stale += 1;
                    continue;
                }
                if self.privacy.erased_user_events == ErasedUserEvents::Refuse
                    && change.operation != Operation::Erase
                {
                    rejected.push((i, Rejection::new(Stage::Privacy, "erased", "erased: the user was erased, and events newer than the erasure are refused (privacy.erased_user_events)")));
                    continue;
                }
            }
            match change.operation {
                Operation::Upsert | Operation::Delete => {
                    states.fences.remove(&change.user_id);
                    run.push((i, change));
                }
                Operation::Consent | Operation::Erase => {
                    self.apply_changes(
                        std::mem::take(&mut run),
                        &states,
                        &mut counts,
                        &mut rejected,
                    )
                    .await?;
                    match self.apply_privacy(change, &mut states).await? {
                        Ok(()) => counts.written += 1,
                        Err(r) => rejected.push((i, r)),
                    }
                }
            }
        }
        self.apply_changes(run, &states, &mut counts, &mut rejected)
            .await?;
        self.profiles.index.commit().await?;

        counts.dead_lettered = rejected.len() as u64;
        if !rejected.is_empty() {
            let at = chrono::Utc::now();
            let letters: Vec<DeadLetter> = rejected
                .into_iter()
                .map(|(i, r)| {
                    telemetry::dead_lettered(r.stage.as_str());
                    DeadLetter {
                        at,
                        position: records[i].position.clone(),
                        stage: r.stage,
                        class: r.class,
                        reason: r.reason,
                        key: records[i].key.clone(),
                        payload: records[i].payload.bytes().to_vec(),
                        meta: records[i].meta.clone(),
                    }
                })
                .collect();
            let started = Instant::now();
            let n = letters.len();
            self.dead_letters.send(letters).await?;
            telemetry::sink_request("dead_letter", n, started.elapsed().as_secs_f64());
        }
        Ok(counts)
    }

    /// Enrich, protect, store and index a run of upserts and deletes.
    async fn apply_changes(
        &self,
        run: Vec<(usize, ProfileChange)>,
        states: &UserStates,
        counts: &mut Counts,
        rejected: &mut Vec<(usize, Rejection)>,
    ) -> Result<(), PipelineError> {
        if run.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut enriched = Vec::with_capacity(run.len());
        let mut origin = Vec::with_capacity(run.len());
        for (i, change) in run {
            let consents = states.consents.get(&change.user_id);
            match self.enricher.enrich(change, consents) {
                Ok(e) => {
                    enriched.push(e);
                    origin.push(i);
                }
                Err(r) => rejected.push((i, r)),
            }
        }
        telemetry::stage("enrich", started.elapsed().as_secs_f64());
        let started = Instant::now();
        let protected_all = self.protector.protect(enriched).await?;
        telemetry::stage("protect", started.elapsed().as_secs_f64());
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
        let started = Instant::now();
        let outcomes = self.profiles.store.apply(&protected).await?;
        telemetry::sink_request("store", protected.len(), started.elapsed().as_secs_f64());
        let now = chrono::Utc::now();
        let mut ops = Vec::new();
        let mut op_origin = Vec::new();
        for ((change, outcome), i) in protected.iter().zip(&outcomes).zip(&protected_origin) {
            match outcome {
                WriteOutcome::Applied => {
                    counts.written += 1;
                    telemetry::event_latency((now - change.occurred_at).as_seconds_f64());
                }
                WriteOutcome::Replayed | WriteOutcome::Stale => counts.stale += 1,
            }
            if matches!(outcome, WriteOutcome::Applied | WriteOutcome::Replayed) {
                ops.push(self.profiles.projection.op(change));
                op_origin.push(*i);
            }
        }
        let started = Instant::now();
        let n = ops.len();
        let index_outcomes = self.profiles.index.apply(ops).await?;
        telemetry::sink_request("index", n, started.elapsed().as_secs_f64());
        for (outcome, i) in index_outcomes.into_iter().zip(op_origin) {
            if let IndexOutcome::Rejected(reason) = outcome {
                rejected.push((i, Rejection::new(Stage::Index, "rejected", reason)));
            }
        }
        Ok(())
    }

    /// A consent or erase event. The outer error is for the batch (retry it); the inner one
    /// rejects only this event.
    async fn apply_privacy(
        &self,
        change: ProfileChange,
        states: &mut UserStates,
    ) -> Result<Result<(), Rejection>, PipelineError> {
        let actor = Actor {
            name: format!("event:{}", change.source),
            reason: format!(
                "{} event",
                if change.operation == Operation::Erase {
                    "erase"
                } else {
                    "consent"
                }
            ),
            request_id: change.event_id,
        };
        let result = match change.operation {
            Operation::Erase => {
                let fields = self.protector.pii_fields().to_vec();
                self.profiles
                    .erase(change.user_id, change.version, "erase", fields, &actor)
                    .await
                    .map(|fence| {
                        states.fences.insert(change.user_id, fence);
                    })
            }
            _ => {
                let Some(consent) = &change.consent else {
                    return Ok(Ok(()));
                };
                if !self.privacy.purposes.contains(&consent.purpose) {
                    return Ok(Err(Rejection::new(
                        Stage::Privacy,
                        "invalid",
                        format!(
                            "consent purpose `{}` is not declared in privacy.purposes",
                            consent.purpose
                        ),
                    )));
                }
                let state = states.consents.entry(change.user_id).or_default();
                state.insert(consent.purpose.clone(), consent.granted);
                let state = state.clone();
                self.profiles
                    .consent(&change, &state, &self.enricher.segments, &actor)
                    .await
            }
        };
        match result {
            Ok(()) => Ok(Ok(())),
            Err(PrivacyError::Store(e)) => Err(e.into()),
            Err(PrivacyError::Index(e)) => Err(e.into()),
            Err(PrivacyError::Keys(e)) => Err(e.into()),
            Err(other) => Ok(Err(Rejection::new(
                Stage::Privacy,
                "rejected",
                other.to_string(),
            ))),
        }
    }

    /// Runs the source to its end (or forever, for an endless one).
    pub async fn run(
        &self,
        source: &mut dyn EventSource,
        batch_size: usize,
        progress: impl FnMut(&Counts),
    ) -> Result<Counts, PipelineError> {
        let (_never, shutdown) = tokio::sync::watch::channel(false);
        self.run_until(source, batch_size, shutdown, progress).await
    }

    /// Like [`Self::run`], but stops fetching once `shutdown` turns true: the batch in flight
    /// is finished and acknowledged, then the source is closed (commits what was acknowledged).
    pub async fn run_until(
        &self,
        source: &mut dyn EventSource,
        batch_size: usize,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        mut progress: impl FnMut(&Counts),
    ) -> Result<Counts, PipelineError> {
        let mut total = Counts::default();
        let backoff = Backoff::default();
        loop {
            // Fetching is cancelled by a shutdown: nothing fetched is acknowledged, so nothing
            // is lost (it is read again after a restart).
            let batch = tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                batch = source.next_batch(batch_size) => batch?,
            };
            if batch.is_empty() {
                break;
            }
            let started = Instant::now();
            telemetry::in_flight(batch.len());
            let mut attempt = 0;
            let counts = loop {
                match self.process(&batch).await {
                    Ok(c) => break c,
                    Err(e) if e.is_transient() => {
                        self.health.failing();
                        attempt += 1;
                        let delay = backoff.delay(attempt);
                        tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "batch failed transiently; retrying");
                        telemetry::retry(e.cause());
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            source.acknowledge().await?;
            self.health.progressed();
            telemetry::in_flight(0);
            let keys = &self.profiles.keys;
            let (hits, misses) = keys.cache_stats();
            telemetry::keys(keys.provider().calls(), hits, misses);
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
            telemetry::batch(
                counts.read,
                counts.written,
                counts.stale,
                started.elapsed().as_secs_f64(),
            );
            total.add(counts);
            progress(&total);
        }
        source.close().await?;
        Ok(total)
    }
}

/// Resolves once `shutdown` is true; never, if its sender is gone without saying so.
async fn shutdown_requested(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
