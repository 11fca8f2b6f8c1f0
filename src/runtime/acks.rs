//! Where the acknowledgement is decided: a batch is done when its dead letters are durable,
//! an index commit covers it and (with a segment change feed) its segment changes are durable, and batches are acknowledged to the source only as a contiguous
//! prefix, so a committed position never passes a batch that is still unfinished.

use crate::pipeline::Counts;
use std::collections::BTreeMap;
use std::time::Instant;

/// Batches between the index stage and their acknowledgement, by number (1, 2, 3, …).
#[derive(Debug, Default)]
pub struct AckTracker {
    /// Every batch up to this one was acknowledged.
    acknowledged: u64,
    /// The index commit covers every batch up to this one.
    committed: u64,
    /// With a segment change feed: the feed is durable for every batch up to this one.
    fed: Option<u64>,
    waiting: BTreeMap<u64, Waiting>,
}

#[derive(Debug)]
struct Waiting {
    counts: Counts,
    fetched_at: Instant,
    letters_durable: bool,
}

/// The batches one [`AckTracker::advance`] took in.
#[derive(Debug, PartialEq)]
pub struct Acknowledged {
    /// Every batch up to this one is acknowledged now.
    pub through: u64,
    pub counts: Counts,
    /// When each batch taken in was fetched.
    pub fetched_at: Vec<Instant>,
}

impl AckTracker {
    /// Batch `batch` was indexed (not committed yet); its dead letters are being sent.
    pub fn indexed(&mut self, batch: u64, counts: Counts, fetched_at: Instant) {
        self.waiting.insert(
            batch,
            Waiting {
                counts,
                fetched_at,
                letters_durable: false,
            },
        );
    }

    /// The dead letters of `batch` are durable (or it had none).
    pub fn letters_durable(&mut self, batch: u64) {
        if let Some(w) = self.waiting.get_mut(&batch) {
            w.letters_durable = true;
        }
    }

    /// Batches wait for the segment change feed too ([`Self::fed`]).
    pub fn expect_feed(&mut self) {
        self.fed.get_or_insert(0);
    }

    /// The segment change feed is durable for every batch up to `through`.
    pub fn fed(&mut self, through: u64) {
        if let Some(fed) = &mut self.fed {
            *fed = (*fed).max(through);
        }
    }

    /// An index commit covers every batch up to `through`.
    pub fn committed(&mut self, through: u64) {
        self.committed = self.committed.max(through);
    }

    /// Moves the acknowledged prefix forward as far as finished batches allow, and says what it
    /// took in, if it moved.
    pub fn advance(&mut self) -> Option<Acknowledged> {
        let mut counts = Counts::default();
        let mut fetched_at = Vec::new();
        let start = self.acknowledged;
        while let Some(entry) = self.waiting.first_entry() {
            let batch = *entry.key();
            let done = batch == self.acknowledged + 1
                && batch <= self.committed
                && self.fed.is_none_or(|fed| batch <= fed)
                && entry.get().letters_durable;
            if !done {
                break;
            }
            let done = entry.remove();
            counts.add(done.counts);
            fetched_at.push(done.fetched_at);
            self.acknowledged = batch;
        }
        (self.acknowledged > start).then_some(Acknowledged {
            through: self.acknowledged,
            counts,
            fetched_at,
        })
    }

    /// Batches indexed and not acknowledged yet.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(n: u64) -> Counts {
        Counts {
            read: n,
            ..Counts::default()
        }
    }

    /// Where the prefix ends after `advance`, and what it took in.
    fn advanced(t: &mut AckTracker) -> Option<(u64, Counts)> {
        t.advance().map(|a| (a.through, a.counts))
    }

    fn index(t: &mut AckTracker, batch: u64, counts: Counts) {
        t.indexed(batch, counts, Instant::now());
    }

    #[test]
    fn a_batch_finishing_early_waits_for_every_batch_before_it() {
        let mut t = AckTracker::default();
        for b in 1..=4 {
            index(&mut t, b, read(10));
        }
        t.committed(4);
        // Batch 2's dead letters are slow; 1, 3 and 4 are done.
        t.letters_durable(3);
        t.letters_durable(4);
        t.letters_durable(1);
        assert_eq!(advanced(&mut t), Some((1, read(10))));
        assert_eq!(
            advanced(&mut t),
            None,
            "the prefix passed unfinished batch 2"
        );
        t.letters_durable(2);
        assert_eq!(advanced(&mut t), Some((4, read(30))));
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn nothing_is_acknowledged_before_the_index_commit_covers_it() {
        let mut t = AckTracker::default();
        index(&mut t, 1, read(5));
        index(&mut t, 2, read(5));
        t.letters_durable(1);
        t.letters_durable(2);
        assert_eq!(advanced(&mut t), None);
        t.committed(1);
        assert_eq!(advanced(&mut t), Some((1, read(5))));
        t.committed(2);
        assert_eq!(advanced(&mut t), Some((2, read(5))));
    }

    #[test]
    fn a_commit_announced_before_the_batch_arrives_still_counts() {
        let mut t = AckTracker::default();
        t.committed(2);
        index(&mut t, 1, read(1));
        t.letters_durable(1);
        assert_eq!(advanced(&mut t), Some((1, read(1))));
        index(&mut t, 2, read(1));
        assert_eq!(advanced(&mut t), None);
        t.letters_durable(2);
        assert_eq!(advanced(&mut t), Some((2, read(1))));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever order batches finish in, the acknowledged prefix never includes a batch
        /// that is not finished, and in the end every batch is acknowledged exactly once.
        #[test]
        fn the_prefix_never_passes_an_unfinished_batch(
            order in Just((1..=24u64).collect::<Vec<_>>()).prop_shuffle(),
            commits in proptest::collection::vec(1..=24u64, 0..6),
        ) {
            let mut t = AckTracker::default();
            let now = Instant::now();
            for b in 1..=24 {
                t.indexed(b, Counts { read: 1, ..Counts::default() }, now);
            }
            let mut finished = std::collections::BTreeSet::new();
            let mut committed = 0;
            let mut acknowledged = 0;
            let mut commits = commits.into_iter();
            for (step, b) in order.into_iter().enumerate() {
                t.letters_durable(b);
                finished.insert(b);
                if step % 4 == 3 {
                    if let Some(c) = commits.next() {
                        committed = committed.max(c);
                        t.committed(c);
                    }
                }
                if let Some(a) = t.advance() {
                    prop_assert_eq!(a.counts.read, a.through - acknowledged);
                    acknowledged = a.through;
                }
                prop_assert!((1..=acknowledged).all(|b| finished.contains(&b) && b <= committed));
            }
            t.committed(24);
            let last = t.advance().map_or(acknowledged, |a| a.through);
            prop_assert_eq!(last, 24);
            prop_assert_eq!(t.waiting(), 0);
        }
    }
}
