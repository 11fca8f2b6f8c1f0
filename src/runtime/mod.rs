//! The pipelined runtime: the source, the stages and the sinks work at once on different
//! batches, connected by bounded queues, and the only place in profile-sync that knows about
//! concurrency.
//!
//! ```text
//!  fetch ──▶ decode ×N ──▶ derive ────────▶ store ──────────▶ index ──────────▶ finish
//!  source     pure, in      fences, consents, versioned write,  apply in order;   dead letters
//!  (its own   parallel,     enrich, protect   privacy events    commit on a       (several at
//!  task)      order kept    (batch order)     (batch order)     cadence           once); ack
//!    ▲                                                                              │
//!    └───────────────────── Acknowledger::acknowledge(through) ◀───────────────────┘
//! ```
//!
//! The store writes plain batches (no consent or erase event) that wait for it together, in
//! one write: when the store is behind, its transactions grow instead of its queue.
//!
//! Derive works on batch N+1 while the store writes batch N, unless batch N (or another batch
//! not stored yet) has a consent or erase event of a user in N+1: then derive waits for it,
//! so every user's changes are still decided in order, under the consent state and erasure
//! fence their predecessors left.
//!
//! `max_batches_in_flight` batches at most are between fetch and the index stage (a semaphore
//! permit each), so memory is bounded by configuration, not by backlog. A batch is
//! acknowledged when an index commit covers it, its dead letters are durable, and every
//! batch before it is acknowledged too ([`acks::AckTracker`]). A transient failure retries the
//! failing stage's batch (versioned writes make that safe); any other failure stops the worker
//! with its reason, after the stages behind it finish what they already hold.

pub mod acks;
mod index;

pub use index::Cadence;

use crate::event::Rejection;
use crate::pipeline::{Counts, Decoded, Derived, Pipeline, PipelineError, StoredTogether};
use crate::retry::Backoff;
use crate::segment_changes::{SegmentChange, SegmentChangeSink};
use crate::sources::{EventSource, SourceRecord};
use crate::stages::project::IndexOp;
use crate::stages::seal::Quarantined;
use crate::telemetry::{self, Health};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// How a worker runs its pipeline; from the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub batch_size: usize,
    /// Batches fetched and not yet through the index stage.
    pub max_batches_in_flight: usize,
    /// Batches decoded at once (decoding is pure).
    pub decode_workers: usize,
    pub index_commit: Cadence,
}

impl Settings {
    /// The settings a pipeline file asks for.
    pub fn of(file: &crate::config::Pipeline) -> Self {
        let c = &file.config;
        let index_commit = match &c.index {
            crate::config::IndexConfig::Tantivy {
                commit_interval_ms,
                commit_every_docs,
                ..
            } => Cadence {
                interval: std::time::Duration::from_millis(*commit_interval_ms),
                max_ops: (*commit_every_docs).max(1),
            },
            // Bulk writes are durable when they return: nothing to wait for.
            crate::config::IndexConfig::Opensearch { .. } => Cadence {
                interval: std::time::Duration::ZERO,
                max_ops: 1,
            },
        };
        Settings {
            batch_size: c.batch_size,
            max_batches_in_flight: c.max_batches_in_flight,
            decode_workers: c
                .decode_workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            index_commit,
        }
    }
}

/// A batch as the source gave it.
struct Fetched {
    batch: u64,
    fetched_at: Instant,
    records: Vec<SourceRecord>,
    permit: OwnedSemaphorePermit,
}

/// A batch whose changes the store has, with the index operations that follow.
struct Stored {
    batch: u64,
    fetched_at: Instant,
    records: Vec<SourceRecord>,
    counts: Counts,
    index_ops: Vec<(usize, IndexOp)>,
    rejected: Vec<(usize, Rejection)>,
    /// Per record, the user of its event when it decoded (whose key seals its dead letter).
    users: Vec<Option<Uuid>>,
    segment_changes: Vec<SegmentChange>,
    permit: OwnedSemaphorePermit,
}

/// A batch the index has applied (not necessarily committed).
struct Indexed {
    batch: u64,
    fetched_at: Instant,
    counts: Counts,
    letters: Vec<Quarantined>,
    segment_changes: Vec<SegmentChange>,
}

/// Runs `source` through `pipeline` to its end, or until `shutdown` turns true: then fetching
/// stops, everything in flight is finished and acknowledged, and the source is closed.
/// `progress` sees the counts of the acknowledged batches.
pub async fn run(
    pipeline: Arc<Pipeline>,
    source: Box<dyn EventSource>,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
    mut progress: impl FnMut(&Counts),
) -> Result<Counts, PipelineError> {
    let lanes = settings.max_batches_in_flight.max(1);
    let (fetched_tx, fetched_rx) = mpsc::channel(lanes);
    let (decoded_tx, decoded_rx) = mpsc::channel::<DecodedBatch>(lanes);
    let (derived_tx, mut derived_rx) = mpsc::channel::<DerivedBatch>(lanes);
    let (stored_tx, stored_rx) = mpsc::channel(lanes);
    let (stored_through_tx, stored_through) = watch::channel(0u64);
    let (indexed_tx, mut indexed_rx) = mpsc::channel(lanes);
    let (committed_tx, mut committed_rx) = watch::channel(0u64);
    let acknowledger = source.acknowledger();

    let fetch = tokio::spawn(fetch(
        source,
        settings.batch_size,
        lanes,
        shutdown,
        fetched_tx,
    ));
    let decode = tokio::spawn(decode(
        pipeline.clone(),
        settings.decode_workers.max(1),
        fetched_rx,
        decoded_tx,
    ));
    let derive = tokio::spawn(derive(
        pipeline.clone(),
        decoded_rx,
        derived_tx,
        stored_through,
    ));
    let store = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            let mut next = derived_rx.recv().await;
            while let Some(first) = next.take() {
                // Plain batches already waiting behind a plain one join its write.
                let mut group = vec![first];
                while group.len() < lanes && group[0].derived.is_plain() {
                    match derived_rx.try_recv() {
                        Ok(d) if d.derived.is_plain() => group.push(d),
                        Ok(d) => {
                            next = Some(d);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                for stored in store(&pipeline, group).await? {
                    stored_through_tx.send_replace(stored.batch);
                    if stored_tx.send(stored).await.is_err() {
                        return Ok(());
                    }
                }
                if next.is_none() {
                    next = derived_rx.recv().await;
                }
            }
            Ok::<_, PipelineError>(())
        })
    };
    // The segment change feed, when there is one: batch order, one batch at a time.
    let (fed_tx, mut fed_rx) = watch::channel(0u64);
    let (mut feed_tx, feed) = match pipeline.segment_changes.clone() {
        Some(sink) => {
            let (tx, rx) = mpsc::channel(lanes);
            (Some(tx), Some(tokio::spawn(feed(sink, rx, fed_tx))))
        }
        None => (None, None),
    };
    let mut feeding = feed.is_some();
    let index = tokio::spawn(index::run(
        pipeline.profiles.index.clone(),
        settings.index_commit,
        pipeline.health.clone(),
        stored_rx,
        indexed_tx,
        committed_tx,
    ));

    // Finish, here: dead letters of several batches at once, acknowledgements in order.
    let mut tracker = acks::AckTracker::default();
    if feeding {
        tracker.expect_feed();
    }
    let mut sending = FuturesUnordered::new();
    let mut total = Counts::default();
    let mut failure: Option<PipelineError> = None;
    let mut indexing = true;
    let mut commits = true;
    while indexing || !sending.is_empty() || ((commits || feeding) && tracker.waiting() > 0) {
        tokio::select! {
            batch = indexed_rx.recv(), if indexing && sending.len() < lanes => match batch {
                Some(Indexed { batch, fetched_at, counts, letters, segment_changes }) => {
                    tracker.indexed(batch, counts, fetched_at);
                    if let Some(tx) = &feed_tx {
                        if tx.send((batch, segment_changes)).await.is_err() {
                            // The feed stopped on a failure; its task says which.
                            feed_tx = None;
                        }
                    }
                    let pipeline = pipeline.clone();
                    sending.push(async move {
                        send_letters(&pipeline, letters).await.map(|()| batch)
                    });
                }
                None => {
                    indexing = false;
                    feed_tx = None;
                }
            },
            changed = fed_rx.changed(), if feeding => match changed {
                Ok(()) => tracker.fed(*fed_rx.borrow_and_update()),
                Err(_) => {
                    tracker.fed(*fed_rx.borrow());
                    feeding = false;
                }
            },
            Some(sent) = sending.next() => match sent {
                Ok(batch) => tracker.letters_durable(batch),
                Err(e) => {
                    failure.get_or_insert(e);
                    break;
                }
            },
            changed = committed_rx.changed(), if commits => match changed {
                Ok(()) => tracker.committed(*committed_rx.borrow_and_update()),
                Err(_) => {
                    // The index stage ended; its last commit is what there is.
                    tracker.committed(*committed_rx.borrow());
                    commits = false;
                }
            },
            else => break,
        }
        if let Some(done) = tracker.advance() {
            if let Err(e) = acknowledger.acknowledge(done.through) {
                failure.get_or_insert(e.into());
                break;
            }
            pipeline.health.progressed();
            let c = done.counts;
            tracing::debug!(
                through = done.through,
                batches = done.fetched_at.len(),
                read = c.read,
                written = c.written,
                stale = c.stale,
                dead_lettered = c.dead_lettered,
                "batch done"
            );
            telemetry::batch(c.read, c.written, c.stale, &done.fetched_at);
            let keys = &pipeline.profiles.keys;
            let (hits, misses) = keys.cache_stats();
            telemetry::keys(keys.provider().calls(), hits, misses);
            total.add(c);
            progress(&total);
        }
    }
    drop(indexed_rx);
    drop(feed_tx);
    telemetry::in_flight(0);

    // The first failure upstream is the cause; later ones are its consequences.
    let feed_result = match feed {
        Some(feed) => joined(feed.await),
        None => Ok(()),
    };
    let index_result = joined(index.await);
    let store_result = joined(store.await);
    let derive_result = joined(derive.await);
    let decode_result = joined(decode.await);
    let (source, fetch_result) = match fetch.await {
        Ok((source, result)) => (Some(source), result),
        Err(e) => (None, Err(joined_err(e))),
    };
    let result = fetch_result
        .and(decode_result)
        .and(derive_result)
        .and(store_result)
        .and(index_result)
        .and(feed_result)
        .and(failure.map_or(Ok(()), Err));
    if let Some(mut source) = source {
        // Commits what was acknowledged (never more), on success and failure alike.
        let closed = source.close().await;
        result?;
        closed?;
    } else {
        result?;
    }
    Ok(total)
}

/// The source's task: a batch per free place in the pipeline, numbered as the source numbers
/// them. A shutdown cancels a fetch in progress: nothing fetched is acknowledged, so nothing
/// is lost (it is read again after a restart).
async fn fetch(
    mut source: Box<dyn EventSource>,
    batch_size: usize,
    lanes: usize,
    mut shutdown: watch::Receiver<bool>,
    out: mpsc::Sender<Fetched>,
) -> (Box<dyn EventSource>, Result<(), PipelineError>) {
    let places = Arc::new(Semaphore::new(lanes));
    let mut batch = 0;
    let result = loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown_requested(&mut shutdown) => break Ok(()),
            _ = out.closed() => break Ok(()),
            permit = places.clone().acquire_owned() => permit.expect("never closed"),
        };
        // Cancelled too when the stages behind have stopped (after a failure): what it
        // fetched was not acknowledged, so it is read again after a restart.
        let records = tokio::select! {
            biased;
            _ = shutdown_requested(&mut shutdown) => break Ok(()),
            _ = out.closed() => break Ok(()),
            records = source.next_batch(batch_size) => records,
        };
        let records = match records {
            Ok(r) if r.is_empty() => break Ok(()),
            Ok(r) => r,
            Err(e) => break Err(e.into()),
        };
        batch += 1;
        telemetry::in_flight((lanes - places.available_permits()) * batch_size);
        let fetched = Fetched {
            batch,
            fetched_at: Instant::now(),
            records,
            permit,
        };
        if out.send(fetched).await.is_err() {
            break Ok(());
        }
    };
    (source, result)
}

/// A batch after decoding, still holding its place and records.
struct DecodedBatch {
    fetched: Fetched,
    decoded: Decoded,
}

/// Decodes up to `workers` batches at once on the blocking pool, handing them on in order.
async fn decode(
    pipeline: Arc<Pipeline>,
    workers: usize,
    fetched: mpsc::Receiver<Fetched>,
    out: mpsc::Sender<DecodedBatch>,
) -> Result<(), PipelineError> {
    let mut fetched = fetched;
    let batches = futures::stream::poll_fn(move |cx| fetched.poll_recv(cx));
    let mut decoded = batches
        .map(|fetched| {
            let pipeline = pipeline.clone();
            tokio::task::spawn_blocking(move || {
                let decoded = pipeline.decode(&fetched.records);
                DecodedBatch { fetched, decoded }
            })
        })
        .buffered(workers);
    while let Some(d) = decoded.next().await {
        let d = d.map_err(joined_err)?;
        if out.send(d).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// A batch derived and waiting for the store.
struct DerivedBatch {
    fetched: Fetched,
    rejected: Vec<(usize, Rejection)>,
    users: Vec<Option<Uuid>>,
    derived: Derived,
}

/// Derives batches in order, each retried while its failure is transient (re-decoding the
/// records, which is cheaper than keeping a copy of every change). Waits before a batch with
/// a user whom an earlier batch, not stored yet, consents or erases.
async fn derive(
    pipeline: Arc<Pipeline>,
    mut decoded: mpsc::Receiver<DecodedBatch>,
    out: mpsc::Sender<DerivedBatch>,
    mut stored_through: watch::Receiver<u64>,
) -> Result<(), PipelineError> {
    let mut unstored: VecDeque<(u64, HashSet<Uuid>)> = VecDeque::new();
    while let Some(DecodedBatch { fetched, decoded }) = decoded.recv().await {
        loop {
            let through = *stored_through.borrow_and_update();
            unstored.retain(|(batch, _)| *batch > through);
            let waits = unstored.iter().any(|(_, users)| {
                decoded
                    .changes
                    .iter()
                    .any(|(_, c)| users.contains(&c.user_id))
            });
            if !waits {
                break;
            }
            if stored_through.changed().await.is_err() {
                return Ok(()); // the store stage has stopped
            }
        }
        let mut users = vec![None; fetched.records.len()];
        for (i, change) in &decoded.changes {
            users[*i] = Some(change.user_id);
        }
        let mut changes = Some(decoded.changes);
        let started = Instant::now();
        let derived = retrying(&pipeline.health, || {
            let changes = changes
                .take()
                .unwrap_or_else(|| pipeline.decode(&fetched.records).changes);
            pipeline.derive(changes)
        })
        .await?;
        telemetry::stage("derive", started.elapsed().as_secs_f64());
        if !derived.privacy_users.is_empty() {
            unstored.push_back((fetched.batch, derived.privacy_users.clone()));
        }
        let batch = DerivedBatch {
            fetched,
            rejected: decoded.rejected,
            users,
            derived,
        };
        if out.send(batch).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// The store stage for a batch, or for several plain ones in one write, retried while its
/// failure is transient.
async fn store(
    pipeline: &Pipeline,
    group: Vec<DerivedBatch>,
) -> Result<Vec<Stored>, PipelineError> {
    let started = Instant::now();
    let mut rest = Vec::with_capacity(group.len());
    let mut derived = Vec::with_capacity(group.len());
    for d in group {
        derived.push(d.derived);
        rest.push((d.fetched, d.rejected, d.users));
    }
    let applied = if derived.len() == 1 {
        let mut one = derived.pop().expect("one batch");
        let foreseen = retrying(&pipeline.health, || pipeline.foresee(one.pending())).await?;
        one.foreseen(foreseen);
        vec![retrying(&pipeline.health, || pipeline.store(&one)).await?]
    } else {
        let mut together = StoredTogether::new(derived);
        let foreseen = retrying(&pipeline.health, || pipeline.foresee(together.pending())).await?;
        together.foreseen(foreseen);
        retrying(&pipeline.health, || pipeline.store_together(&together)).await?
    };
    telemetry::stage("store", started.elapsed().as_secs_f64());
    Ok(rest
        .into_iter()
        .zip(applied)
        .map(|((fetched, mut rejected, users), applied)| {
            rejected.extend(applied.rejected);
            Stored {
                batch: fetched.batch,
                fetched_at: fetched.fetched_at,
                counts: Counts {
                    read: fetched.records.len() as u64,
                    ..applied.counts
                },
                records: fetched.records,
                index_ops: applied.index_ops,
                rejected,
                users,
                segment_changes: applied.segment_changes,
                permit: fetched.permit,
            }
        })
        .collect())
}

/// The segment change feed's task: each batch's changes made durable in batch order, one
/// batch at a time, so a user's changes reach the sink in version order; `fed` says through
/// which batch the feed is durable.
async fn feed(
    sink: Arc<dyn SegmentChangeSink>,
    mut batches: mpsc::Receiver<(u64, Vec<SegmentChange>)>,
    fed: watch::Sender<u64>,
) -> Result<(), PipelineError> {
    while let Some((batch, changes)) = batches.recv().await {
        if !changes.is_empty() {
            let started = Instant::now();
            let n = changes.len();
            sink.send(changes).await?;
            telemetry::sink_request("segment_changes", n, started.elapsed().as_secs_f64());
            telemetry::segment_changes(n);
        }
        fed.send_replace(batch);
    }
    Ok(())
}

/// Seals a batch's dead letters (retried while the key provider is unavailable) and sends them.
async fn send_letters(pipeline: &Pipeline, letters: Vec<Quarantined>) -> Result<(), PipelineError> {
    if letters.is_empty() {
        return Ok(());
    }

    let started = Instant::now();
    let n = letters.len();
    let today = chrono::Utc::now().date_naive();
    let letters = retrying(&pipeline.health, || pipeline.seal_letters(&letters, today)).await?;
    pipeline.dead_letters.send(letters).await?;
    telemetry::sink_request("dead_letter", n, started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `attempt` until it succeeds or fails for good; transient failures wait with the one
/// backoff policy and mark the worker failing (in `/readyz`) meanwhile.
async fn retrying<T, E, F, Fut>(health: &Health, mut attempt: F) -> Result<T, PipelineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<PipelineError>,
{
    let backoff = Backoff::default();
    let mut failures = 0;
    loop {
        match attempt().await.map_err(Into::into) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                health.failing();
                failures += 1;
                let delay = backoff.delay(failures);
                tracing::warn!(error = %e, attempt = failures, delay_ms = delay.as_millis() as u64, "failed transiently; retrying");
                telemetry::retry(e.cause());
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn joined(
    r: Result<Result<(), PipelineError>, tokio::task::JoinError>,
) -> Result<(), PipelineError> {
    r.map_err(joined_err)?
}

fn joined_err(e: tokio::task::JoinError) -> PipelineError {
    PipelineError::Runtime(format!("a pipeline task ended abnormally: {e}"))
}

/// Resolves once `shutdown` is true; never, if its sender is gone without saying so.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
