//! The index stage: applies each batch's index operations in batch order, and commits on a
//! cadence (`index.commit_interval_ms` / `index.commit_every_docs`) instead of per batch. A
//! commit is announced as "every batch up to N", which is what acknowledgements wait for.

use super::{retrying, Indexed, Stored};
use crate::event::{Rejection, Stage};
use crate::indexes::{IndexOutcome, SearchIndex};
use crate::pipeline::{dead_letters, PipelineError};
use crate::telemetry::{self, Health};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// When the index commits what it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// At the latest this long after the first uncommitted batch was applied (zero: after
    /// every batch, for an index whose writes are durable at once).
    pub interval: Duration,
    /// Or as soon as this many operations are uncommitted.
    pub max_ops: usize,
}

/// What is applied and not committed yet.
struct Uncommitted {
    through: u64,
    since: Instant,
    ops: usize,
}

pub(super) async fn run(
    index: Arc<dyn SearchIndex>,
    cadence: Cadence,
    health: Arc<Health>,
    mut stored: mpsc::Receiver<Stored>,
    indexed: mpsc::Sender<Indexed>,
    committed: watch::Sender<u64>,
) -> Result<(), PipelineError> {
    let mut open: Option<Uncommitted> = None;
    loop {
        let next = match &open {
            Some(u) => {
                let due = tokio::time::Instant::from_std(u.since + cadence.interval);
                tokio::select! {
                    batch = stored.recv() => batch,
                    _ = tokio::time::sleep_until(due) => {
                        commit(&*index, &health, &mut open, &committed).await?;
                        continue;
                    }
                }
            }
            None => stored.recv().await,
        };
        let Some(batch) = next else { break };
        let Stored {
            batch: number,
            fetched_at,
            records,
            mut counts,
            index_ops,
            mut rejected,
            users,
            segment_changes,
            permit,
        } = batch;
        let n = index_ops.len();
        let (origin, ops): (Vec<usize>, Vec<_>) = index_ops.into_iter().unzip();
        let started = Instant::now();
        let outcomes = retrying(&health, || index.apply(&ops)).await?;
        telemetry::sink_request("index", n, started.elapsed().as_secs_f64());
        for (outcome, i) in outcomes.into_iter().zip(origin) {
            if let IndexOutcome::Rejected(reason) = outcome {
                rejected.push((i, Rejection::new(Stage::Index, "rejected", reason)));
            }
        }
        counts.dead_lettered = rejected.len() as u64;
        let letters = dead_letters(&records, &users, rejected);
        // The records and the place in the pipeline are freed here: what waits for the commit
        // is only the batch's number, counts and dead letters.
        drop(records);
        drop(permit);
        let u = open.get_or_insert(Uncommitted {
            through: number,
            since: Instant::now(),
            ops: 0,
        });
        u.through = number;
        u.ops += n;
        let due = u.ops >= cadence.max_ops || u.since.elapsed() >= cadence.interval;
        if indexed
            .send(Indexed {
                batch: number,
                fetched_at,
                counts,
                letters,
                segment_changes,
            })
            .await
            .is_err()
        {
            break;
        }
        if due {
            commit(&*index, &health, &mut open, &committed).await?;
        }
    }
    // The source is done or the worker is stopping: what was applied is committed.
    commit(&*index, &health, &mut open, &committed).await
}

async fn commit(
    index: &dyn SearchIndex,
    health: &Health,
    open: &mut Option<Uncommitted>,
    committed: &watch::Sender<u64>,
) -> Result<(), PipelineError> {
    let Some(u) = open.take() else {
        return Ok(());
    };
    let started = Instant::now();
    retrying(health, || index.commit()).await?;
    telemetry::sink_request("index_commit", u.ops, started.elapsed().as_secs_f64());
    committed.send_replace(u.through);
    Ok(())
}
