//! The pipeline: the stages of one batch, composed in order, with no concurrency of their
//! own. [`Pipeline::decode`] is pure; [`Pipeline::derive`] enriches and protects, and
//! [`Pipeline::store`] makes the versioned writes and applies privacy events, returning the
//! index operations that follow;
//! the index and dead-letter writes are the runtime module's, which runs these
//! pieces concurrently for different batches and decides when a batch is acknowledged.
//!
//! Every store write is versioned, so applying the same batch again after a transient failure
//! is harmless.

mod announce;
mod build;

pub use announce::{announce_erasures, announce_move};
pub use build::{
    build, local_keyring, open_data_keys, open_dead_letters, open_dynamodb, open_index, open_kms,
    open_placed_index, open_placement, open_profiles, open_segment_changes, open_source,
    open_store, opensearch_settings, schemas, segment_topic_endpoints, zone_file, BuildError,
    Components, IndexAccess,
};

use crate::config::{ErasedUserEvents, PrivacyConfig};
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink, Sealing};
use crate::event::{Operation, ProfileChange, ProtectedChange, SegmentHistory, SegmentStep};
use crate::event::{Rejection, Stage};
use crate::indexes::IndexError;
use crate::keys::KeyError;
use crate::privacy::{Actor, PrivacyError, Profiles};
use crate::segment_changes::{Cause, Origin, SegmentChange, SegmentChangeSink};
use crate::sources::{SourceError, SourceRecord};
use crate::stages::decode::Decoder;
use crate::stages::enrich::Enricher;
use crate::stages::project::IndexOp;
use crate::stages::protect::Protector;
use crate::stages::seal::{LetterSealer, Owner, Quarantined};
use crate::stores::{ConsentState, StoreError, WriteOutcome};
use crate::telemetry::{self, Health};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
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
    pub fn add(&mut self, other: Counts) {
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
    #[error(transparent)]
    SegmentChanges(#[from] crate::segment_changes::SegmentChangeError),
    /// The runtime itself (a task that ended abnormally).
    #[error("{0}")]
    Runtime(String),
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
            PipelineError::SegmentChanges(_) => "segment_changes",
            PipelineError::Runtime(_) => "runtime",
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Keys(e) => e.is_transient(),
            PipelineError::Store(e) => e.is_transient(),
            PipelineError::Index(e) => e.is_transient(),
            PipelineError::Source(_)
            | PipelineError::DeadLetter(_)
            | PipelineError::SegmentChanges(_)
            | PipelineError::Runtime(_) => false,
        }
    }
}

pub struct Pipeline {
    pub decoder: Decoder,
    pub enricher: Enricher,
    pub protector: Protector,
    /// The store, the index and the users' keys.
    pub profiles: Profiles,
    /// Seals dead letters' payloads before they go to `dead_letters`.
    pub sealer: LetterSealer,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    /// Where segment changes go; `None`: the feed is off and nothing of it is computed.
    pub segment_changes: Option<Arc<dyn SegmentChangeSink>>,
    pub privacy: PrivacyConfig,
    /// What `/readyz` reports.
    pub health: Arc<Health>,
}

/// A batch after decoding. Positions are indices into the batch's records.
#[derive(Debug, Default)]
pub struct Decoded {
    pub changes: Vec<(usize, ProfileChange)>,
    pub rejected: Vec<(usize, Rejection)>,
}

/// What the store stage did with a batch's changes.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// `written` and `stale`; the runtime adds `read` and `dead_lettered`.
    pub counts: Counts,
    /// What the index must do, in order, with the record each comes from: the documents of
    /// changes the store applied (or saw replayed), and the deletions of erasures.
    pub index_ops: Vec<(usize, IndexOp)>,
    pub rejected: Vec<(usize, Rejection)>,
    /// The segment changes of the batch, in order (empty when the feed is off).
    pub segment_changes: Vec<SegmentChange>,
}

/// A batch after [`Pipeline::derive`], for [`Pipeline::store`].
#[derive(Debug)]
pub struct Derived {
    /// Users with a consent or erase event in this batch.
    pub privacy_users: HashSet<Uuid>,
    states: UserStates,
    /// The protected changes of the other users, and the record each comes from.
    plain: Protected,
    ordered: Vec<(usize, ProfileChange)>,
    out: Applied,
}

impl Derived {
    /// The protected changes the store will write first ([`Pipeline::foresee`] reads for them).
    pub fn pending(&self) -> &[ProtectedChange] {
        &self.plain.changes
    }

    /// What [`Pipeline::foresee`] decided for [`Self::pending`].
    pub fn foreseen(&mut self, foreseen: Vec<Foreseen>) {
        self.plain.foreseen(foreseen);
    }

    /// Whether the store's part of this batch is one write: no user of it has a consent or
    /// erase event in it.
    pub fn is_plain(&self) -> bool {
        self.ordered.is_empty()
    }
}

/// Plain batches ([`Derived::is_plain`]) stored as one write, in one transaction where the
/// store has them: the store's pages a batch of random users touches are written once for
/// the group instead of once per batch. The decisions are those of storing them one by one.
#[derive(Debug)]
pub struct StoredTogether {
    changes: Vec<ProtectedChange>,
    foreseen: Vec<Foreseen>,
    /// Per batch, in order: the record each of its changes comes from, and what derive left.
    batches: Vec<(Vec<usize>, Applied)>,
}

impl StoredTogether {
    /// Panics (in debug builds) on a batch that is not plain: its privacy events must be
    /// applied in order with its other changes.
    pub fn new(batches: Vec<Derived>) -> Self {
        let mut changes = Vec::with_capacity(batches.iter().map(|d| d.plain.changes.len()).sum());
        let batches = batches
            .into_iter()
            .map(|d| {
                debug_assert!(d.is_plain(), "only plain batches are stored together");
                changes.extend(d.plain.changes);
                (d.plain.origin, d.out)
            })
            .collect();
        Self {
            changes,
            foreseen: Vec::new(),
            batches,
        }
    }
}

/// Protected changes and, beside them, the record each comes from.
#[derive(Debug, Default)]
struct Protected {
    origin: Vec<usize>,
    changes: Vec<ProtectedChange>,
    /// Beside each change, what it emits to the segment change feed ([`Pipeline::foresee`]).
    foreseen: Vec<Foreseen>,
}

/// What a change emits to the segment change feed, decided from the stored segments read
/// just before its write: one change if the store applies it, another (the one its first
/// application emitted, rebuilt from the stored history) if the store has it already.
#[derive(Debug, Clone, Default)]
pub struct Foreseen {
    /// The history its record is stored with, if it is applied.
    history: Option<SegmentHistory>,
    applied: Option<SegmentChange>,
    again: Option<SegmentChange>,
    /// For a delete, the segments the user really had (the members gauge; an upsert moves it
    /// by its change's `entered` and `exited`).
    left: Option<Vec<String>>,
}

impl StoredTogether {
    /// The protected changes of every batch, in order.
    pub fn pending(&self) -> &[ProtectedChange] {
        &self.changes
    }

    /// What [`Pipeline::foresee`] decided for [`Self::pending`].
    pub fn foreseen(&mut self, mut foreseen: Vec<Foreseen>) {
        set_history(&mut self.changes, &mut foreseen);
        self.foreseen = foreseen;
    }
}

impl Protected {
    fn foreseen(&mut self, mut foreseen: Vec<Foreseen>) {
        set_history(&mut self.changes, &mut foreseen);
        self.foreseen = foreseen;
    }
}

/// Each upsert's record keeps the user's recent segment changes (moved out of `foreseen`), so
/// that a redelivery of any of them emits the same segment change.
fn set_history(changes: &mut [ProtectedChange], foreseen: &mut [Foreseen]) {
    for (change, f) in changes.iter_mut().zip(foreseen) {
        if let Some(record) = change.record.as_mut() {
            if let Some(history) = f.history.take() {
                record.segment_history = Some(history);
            }
        }
    }
}

/// Per-batch knowledge of the users in it: erasure fences and consent states.
#[derive(Debug, Clone)]
struct UserStates {
    fences: HashMap<Uuid, i64>,
    consents: HashMap<Uuid, ConsentState>,
}

impl Pipeline {
    /// Decodes and validates every record of a batch. Pure, so batches decode in parallel.
    pub fn decode(&self, records: &[SourceRecord]) -> Decoded {
        let started = Instant::now();
        let mut out = Decoded::default();
        out.changes.reserve(records.len());
        for (i, record) in records.iter().enumerate() {
            match self.decoder.decode(&record.payload) {
                Ok(change) => out.changes.push((i, change)),
                Err(r) => out.rejected.push((i, r)),
            }
        }
        telemetry::stage("decode", started.elapsed().as_secs_f64());
        out
    }

    /// The part of a batch's work that writes no profile: erasure fences and consent states
    /// read, and every change of a user without a privacy event in this batch enriched and
    /// protected (new users' keys are stored here, before any ciphertext of theirs). It may run
    /// while the store takes the previous batch, as long as that batch has no privacy event
    /// of a user in this one ([`Derived::privacy_users`]).
    pub async fn derive(
        &self,
        changes: Vec<(usize, ProfileChange)>,
    ) -> Result<Derived, PipelineError> {
        let mut out = Applied::default();
        let mut users: Vec<Uuid> = changes.iter().map(|(_, c)| c.user_id).collect();
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
        // The users with a consent or erase event in this batch have their events applied in
        // order by `store`, the changes before each privacy event written before it. Every
        // other user's changes go to the store in one write.
        let privacy_users: HashSet<Uuid> = changes
            .iter()
            .filter(|(_, c)| matches!(c.operation, Operation::Consent | Operation::Erase))
            .map(|(_, c)| c.user_id)
            .collect();
        let mut plain = Vec::with_capacity(changes.len());
        let mut ordered = Vec::new();
        for (i, change) in changes {
            if privacy_users.contains(&change.user_id) {
                ordered.push((i, change));
            } else if self.admit(&mut states, i, &change, &mut out) {
                plain.push((i, change));
            }
        }
        let plain = self.protect_changes(plain, &states, &mut out).await?;
        Ok(Derived {
            privacy_users,
            states,
            plain,
            ordered,
            out,
        })
    }

    /// The store's part of a batch: the protected changes in one write, then the users with
    /// privacy events, in order. Batches must be stored in order; the same `Derived` may be
    /// stored again after a transient failure.
    pub async fn store(&self, derived: &Derived) -> Result<Applied, PipelineError> {
        let mut out = derived.out.clone();
        let mut states = derived.states.clone();
        self.store_changes(&derived.plain, &mut out).await?;
        let mut run = Vec::new();
        for (i, change) in derived.ordered.iter().cloned() {
            let replay = Self::replays_an_erasure(&states, &change);
            if !self.admit(&mut states, i, &change, &mut out) {
                continue;
            }
            match change.operation {
                Operation::Upsert | Operation::Delete => run.push((i, change)),
                Operation::Consent | Operation::Erase => {
                    self.apply_changes(std::mem::take(&mut run), &states, &mut out)
                        .await?;
                    match self.apply_privacy(change, &mut states).await? {
                        Ok((op, segment_change)) => {
                            if replay {
                                out.counts.stale += 1;
                            } else {
                                out.counts.written += 1;
                            }
                            out.index_ops.extend(op.map(|op| (i, op)));
                            if self.segment_changes.is_some() {
                                out.segment_changes.extend(segment_change);
                            }
                        }
                        Err(r) => out.rejected.push((i, r)),
                    }
                }
            }
        }
        self.apply_changes(run, &states, &mut out).await?;
        Ok(out)
    }

    /// The store's part of several plain batches in one write; what each batch's own
    /// [`Self::store`] would have given, in order. May be stored again after a transient failure.
    pub async fn store_together(
        &self,
        together: &StoredTogether,
    ) -> Result<Vec<Applied>, PipelineError> {
        let outcomes = self.write(&together.changes).await?;
        let mut offset = 0;
        let mut applied = Vec::with_capacity(together.batches.len());
        for (origin, out) in &together.batches {
            let mut out = out.clone();
            let end = offset + origin.len();
            self.account(
                origin,
                &together.changes[offset..end],
                together.foreseen.get(offset..end).unwrap_or_default(),
                &outcomes[offset..end],
                &mut out,
            );
            offset = end;
            applied.push(out);
        }
        Ok(applied)
    }

    /// Whether a change goes on past the user's erasure fence. A change at or below the fence
    /// is stale, except an erasure: erasing is idempotent, so a replayed one is applied again
    /// and completes whatever its first delivery left undone (the index deletion, the audit
    /// record), while it still counts as stale ([`Self::replays_an_erasure`]).
    fn admit(
        &self,
        states: &mut UserStates,
        i: usize,
        change: &ProfileChange,
        out: &mut Applied,
    ) -> bool {
        let Some(&fence) = states.fences.get(&change.user_id) else {
            return true;
        };
        if change.operation == Operation::Erase {
            return true;
        }
        if change.version <= fence {
            out.counts.stale += 1;
            return false;
        }
        if self.privacy.erased_user_events == ErasedUserEvents::Refuse
            && change.operation != Operation::Erase
        {
            out.rejected.push((i, erased_rejection()));
            return false;
        }
        if matches!(change.operation, Operation::Upsert | Operation::Delete) {
            states.fences.remove(&change.user_id);
        }
        true
    }

    /// Enrich, protect and store a run of upserts and deletes.
    async fn apply_changes(
        &self,
        run: Vec<(usize, ProfileChange)>,
        states: &UserStates,
        out: &mut Applied,
    ) -> Result<(), PipelineError> {
        let mut protected = self.protect_changes(run, states, out).await?;
        let foreseen = self.foresee(&protected.changes).await?;
        protected.foreseen(foreseen);
        self.store_changes(&protected, out).await
    }

    /// An erasure at or below the user's erasure fence: one already applied, delivered again.
    fn replays_an_erasure(states: &UserStates, change: &ProfileChange) -> bool {
        change.operation == Operation::Erase
            && states
                .fences
                .get(&change.user_id)
                .is_some_and(|fence| change.version <= *fence)
    }

    /// Enrich and protect a run of upserts and deletes.
    async fn protect_changes(
        &self,
        run: Vec<(usize, ProfileChange)>,
        states: &UserStates,
        out: &mut Applied,
    ) -> Result<Protected, PipelineError> {
        if run.is_empty() {
            return Ok(Protected::default());
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
                Err(r) => out.rejected.push((i, r)),
            }
        }
        telemetry::stage("enrich", started.elapsed().as_secs_f64());
        if let Some(placement) = &self.profiles.placement {
            // Each user's zone is decided before their key is made: their recorded zone,
            // else the one just derived.
            placement
                .place(enriched.iter().map(|e| {
                    let zone = e.region.as_ref().map(|r| r.residency_zone.as_str());
                    (e.change.user_id, zone)
                }))
                .await?;
        }
        let started = Instant::now();
        let protected_all = self.protector.protect(enriched).await?;
        telemetry::stage("protect", started.elapsed().as_secs_f64());
        let mut protected = Protected::default();
        for (result, i) in protected_all.into_iter().zip(origin) {
            match result {
                Ok(p) => {
                    protected.origin.push(i);
                    protected.changes.push(p);
                }
                Err(r) => out.rejected.push((i, r)),
            }
        }
        Ok(protected)
    }

    /// Versioned store write of protected changes, and the index operations that follow.
    async fn store_changes(
        &self,
        protected: &Protected,
        out: &mut Applied,
    ) -> Result<(), PipelineError> {
        let outcomes = self.write(&protected.changes).await?;
        self.account(
            &protected.origin,
            &protected.changes,
            &protected.foreseen,
            &outcomes,
            out,
        );
        Ok(())
    }

    /// Seals dead letters. With residency zones, a letter of a user whom no zone holds yet is
    /// sealed under the day key (kept in the default zone) instead of a new key of the user's:
    /// that key would place the user in the default zone before their first change decides
    /// their zone.
    pub async fn seal_letters(
        &self,
        letters: &[Quarantined],
        today: chrono::NaiveDate,
    ) -> Result<Vec<DeadLetter>, PipelineError> {
        let mut unplaced = HashSet::new();
        if let Some(placement) = &self.profiles.placement {
            let owners: Vec<Uuid> = letters
                .iter()
                .filter_map(|q| match q.owner {
                    Owner::User(u) => Some(u),
                    _ => None,
                })
                .collect();
            let placed = placement.locate(&owners).await?;
            unplaced.extend(owners.into_iter().filter(|u| !placed.contains_key(u)));
        }
        let mut sealed = self.sealer.seal(letters, today, &unplaced).await?;
        if let Some(placement) = &self.profiles.placement {
            for letter in &mut sealed {
                let zone = match letter.sealing {
                    Sealing::User { user_id, .. } => placement.known(&user_id).unwrap_or(0),
                    Sealing::Day { .. } | Sealing::Withheld => 0,
                };
                letter.zone = Some(placement.name(zone).to_string());
            }
        }
        Ok(sealed)
    }

    /// One versioned store write.
    async fn write(&self, changes: &[ProtectedChange]) -> Result<Vec<WriteOutcome>, PipelineError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let outcomes = self.profiles.store.apply(changes).await?;
        telemetry::sink_request("store", changes.len(), started.elapsed().as_secs_f64());
        Ok(outcomes)
    }

    /// What each of `changes` will emit to the segment change feed, from the stored segments
    /// read now (the store stage is the only writer, so nothing moves them before the write).
    /// Empty when the feed is off. Pure read: may be retried.
    pub async fn foresee(
        &self,
        changes: &[ProtectedChange],
    ) -> Result<Vec<Foreseen>, PipelineError> {
        if self.segment_changes.is_none() || changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut users: Vec<Uuid> = changes.iter().map(|c| c.user_id).collect();
        users.sort_unstable();
        users.dedup();
        let mut current = self.profiles.store.segment_sets(&users).await?;
        let declared = self.enricher.segments.names();
        // Changes of each user still to come: the last one takes the user's state instead of
        // copying it (a history is up to 16 steps of names).
        let mut left: HashMap<Uuid, usize> = HashMap::with_capacity(users.len());
        for c in changes {
            *left.entry(c.user_id).or_default() += 1;
        }
        Ok(changes
            .iter()
            .map(|change| {
                let last = left.get_mut(&change.user_id).is_some_and(|n| {
                    *n -= 1;
                    *n == 0
                });
                let delete = change.record.is_none() || change.operation == Operation::Delete;
                let origin = Origin {
                    user_id: change.user_id,
                    version: change.version,
                    occurred_at: change.occurred_at,
                    cause: if delete { Cause::Delete } else { Cause::Upsert },
                };
                let stored = current.get(&change.user_id);
                if let Some(s) = stored.filter(|s| s.version >= change.version) {
                    // Delivered again (or never applied): what its first application emitted,
                    // if the stored history holds it.
                    return Foreseen {
                        again: match (&s.history, s.version == change.version && delete) {
                            (_, true) => Some(SegmentChange::gone(origin, &declared)),
                            (Some(h), false) => SegmentChange::again(origin, h, &declared),
                            (None, false) => None,
                        },
                        ..Foreseen::default()
                    };
                }
                let stored = if last {
                    current.remove(&change.user_id)
                } else {
                    stored.cloned()
                };
                let (before, mut history) = match stored {
                    Some(s) if s.live => {
                        let history = match s.history {
                            Some(h) => h,
                            None => SegmentHistory::starting_from(s.segments.clone()),
                        };
                        (s.segments, history)
                    }
                    Some(s) => (Vec::new(), SegmentHistory::after_delete(s.version)),
                    None => (Vec::new(), SegmentHistory::starting_from(Vec::new())),
                };
                let (applied, after, zone) = match &change.record {
                    Some(r) if !delete => (
                        SegmentChange::between(
                            origin,
                            &before,
                            &r.segments,
                            Some(&r.region.residency_zone),
                        ),
                        r.segments.clone(),
                        Some(r.region.residency_zone.clone()),
                    ),
                    _ => (
                        Some(SegmentChange::gone(origin, &declared)),
                        Vec::new(),
                        None,
                    ),
                };
                if !delete && applied.is_some() {
                    history.push(SegmentStep {
                        version: change.version,
                        segments: after.clone(),
                        zone: zone.clone(),
                        gone: false,
                    });
                }
                let history = (!delete).then_some(history);
                if !last {
                    current.insert(
                        change.user_id,
                        crate::stores::StoredSegments {
                            version: change.version,
                            live: !delete,
                            segments: after.clone(),
                            history: history.clone(),
                        },
                    );
                }
                Foreseen {
                    history,
                    applied,
                    again: None,
                    left: delete.then_some(before),
                }
            })
            .collect())
    }

    /// Counts a write's outcomes and adds the index operations and segment changes that follow
    /// them.
    fn account(
        &self,
        origin: &[usize],
        changes: &[ProtectedChange],
        foreseen: &[Foreseen],
        outcomes: &[WriteOutcome],
        out: &mut Applied,
    ) {
        let now = chrono::Utc::now();
        let mut moved = telemetry::MembersMoved::default();
        for (k, ((i, change), outcome)) in origin.iter().zip(changes).zip(outcomes).enumerate() {
            if let Some(f) = foreseen.get(k) {
                let emitted = match outcome {
                    WriteOutcome::Applied => {
                        match (&f.left, &f.applied) {
                            (Some(left), _) => moved.add(&[], left),
                            (None, Some(c)) => moved.add(&c.entered, &c.exited),
                            (None, None) => {}
                        }
                        &f.applied
                    }
                    WriteOutcome::Replayed | WriteOutcome::Stale => &f.again,
                    WriteOutcome::Erased => &None,
                };
                out.segment_changes.extend(emitted.clone());
            }
            match outcome {
                WriteOutcome::Applied => {
                    out.counts.written += 1;
                    telemetry::event_latency((now - change.occurred_at).as_seconds_f64());
                }
                WriteOutcome::Replayed | WriteOutcome::Stale => out.counts.stale += 1,
                WriteOutcome::Erased => out.rejected.push((*i, erased_rejection())),
            }
            if matches!(outcome, WriteOutcome::Applied | WriteOutcome::Replayed) {
                out.index_ops
                    .push((*i, self.profiles.projection.op(change)));
            }
        }
        moved.record();
    }

    /// A consent or erase event, and the index operation and segment change that follow it.
    /// The outer error is for the batch (retry it); the inner one rejects only this event.
    async fn apply_privacy(
        &self,
        change: ProfileChange,
        states: &mut UserStates,
    ) -> Result<Result<(Option<IndexOp>, Option<SegmentChange>), Rejection>, PipelineError> {
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
                // The members gauge moves by the segments the user really had.
                let left = match self.segment_changes {
                    Some(_) => self
                        .profiles
                        .store
                        .segment_sets(&[change.user_id])
                        .await?
                        .remove(&change.user_id)
                        .filter(|s| s.live)
                        .map(|s| s.segments)
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                self.profiles
                    .erase_stored(change.user_id, change.version, "erase", fields, &actor)
                    .await
                    .map(|delete| {
                        states.fences.insert(change.user_id, delete.version());
                        telemetry::segment_members_moved(&[], &left);
                        let origin = Origin {
                            user_id: change.user_id,
                            version: change.version,
                            occurred_at: change.occurred_at,
                            cause: Cause::Erase,
                        };
                        let gone = SegmentChange::gone(origin, &self.enricher.segments.names());
                        (Some(delete), Some(gone))
                    })
            }
            _ => {
                let Some(consent) = &change.consent else {
                    return Ok(Ok((None, None)));
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
                    .map(|c| {
                        if let (true, true, Some(sc)) =
                            (c.first, self.segment_changes.is_some(), &c.segment_change)
                        {
                            telemetry::segment_members_moved(&sc.entered, &sc.exited);
                        }
                        (c.index_op, c.segment_change)
                    })
            }
        };
        match result {
            Ok(op) => Ok(Ok(op)),
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
}

/// The dead letters of a batch's rejections, to be sealed: the records as they arrived, with
/// the reasons. `users` holds, per record, the user of the event when it decoded.
pub fn dead_letters(
    records: &[SourceRecord],
    users: &[Option<Uuid>],
    rejected: Vec<(usize, Rejection)>,
) -> Vec<Quarantined> {
    let at = chrono::Utc::now();
    rejected
        .into_iter()
        .map(|(i, r)| {
            telemetry::dead_lettered(r.stage.as_str());
            let owner = match users.get(i).copied().flatten().or(r.user_id) {
                _ if r.class == ERASED => Owner::Erased,
                Some(user) => Owner::User(user),
                None => Owner::Unknown,
            };
            Quarantined {
                letter: DeadLetter {
                    at,
                    position: records[i].position.clone(),
                    stage: r.stage,
                    class: r.class,
                    reason: r.reason,
                    key: records[i].key.clone(),
                    payload: Vec::new(),
                    sealing: Sealing::Withheld,
                    meta: records[i].meta.clone(),
                    zone: None,
                },
                plaintext: records[i].payload.bytes().to_vec(),
                owner,
            }
        })
        .collect()
}

/// The rejection class of an event of an erased user.
const ERASED: &str = "erased";

/// An event of an erased user, refused (`privacy.erased_user_events: refuse`).
fn erased_rejection() -> Rejection {
    Rejection::new(
        Stage::Privacy,
        ERASED,
        "erased: the user was erased, and events newer than the erasure are refused (privacy.erased_user_events)",
    )
}
