//! The search index port over several zones' indices: each user's operations go to the user's
//! zone only; a search asks every zone and names, in each hit, the zone it came from.

use super::{Placement, Zone};
use crate::indexes::{
    Aggregation, Bucket, IndexError, IndexOp, IndexOutcome, SearchIndex, SearchResults,
};
use async_trait::async_trait;
use futures::future::try_join_all;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::Arc;

pub struct ZonedIndex {
    placement: Arc<Placement>,
    /// Per zone, in the placement's order.
    indexes: Vec<Arc<dyn SearchIndex>>,
}

impl ZonedIndex {
    pub fn new(placement: Arc<Placement>, indexes: Vec<Arc<dyn SearchIndex>>) -> Self {
        assert_eq!(placement.names().len(), indexes.len(), "an index per zone");
        Self { placement, indexes }
    }

    /// The index of one zone (`search --zone`).
    pub fn zone(&self, name: &str) -> Option<Arc<dyn SearchIndex>> {
        self.placement
            .zone_named(name)
            .map(|z| self.indexes[z].clone())
    }

    fn named(&self, zone: Zone, e: IndexError) -> IndexError {
        let name = self.placement.name(zone);
        match e {
            IndexError::Unavailable(m) => IndexError::Unavailable(format!("zone {name}: {m}")),
            IndexError::Failed(m) => IndexError::Failed(format!("zone {name}: {m}")),
            IndexError::InUse(m) => IndexError::InUse(format!("zone {name}: {m}")),
            query @ IndexError::Query(_) => query,
        }
    }
}

#[async_trait]
impl SearchIndex for ZonedIndex {
    async fn check(&self) -> Result<String, String> {
        self.placement
            .check_each(&self.indexes, |i| i.check())
            .await
    }

    async fn apply(&self, ops: &[IndexOp]) -> Result<Vec<IndexOutcome>, IndexError> {
        // The store stage wrote these users before: each is found in its zone's store.
        let zones = self
            .placement
            .place(ops.iter().map(|op| (op.user_id(), None)))
            .await
            .map_err(|e| IndexError::Unavailable(e.to_string()))?;
        let groups = Placement::split(&zones, ops, IndexOp::user_id, 0);
        let results = try_join_all(groups.iter().map(|(zone, positions)| {
            let part: Vec<IndexOp> = positions.iter().map(|i| ops[*i].clone()).collect();
            let index = self.indexes[*zone].clone();
            let zone = *zone;
            async move { index.apply(&part).await.map_err(|e| self.named(zone, e)) }
        }))
        .await?;
        let mut outcomes = vec![IndexOutcome::Stale; ops.len()];
        for ((_, positions), result) in groups.iter().zip(results) {
            for (i, outcome) in positions.iter().zip(result) {
                outcomes[*i] = outcome;
            }
        }
        Ok(outcomes)
    }

    async fn commit(&self) -> Result<(), IndexError> {
        try_join_all(
            self.indexes
                .iter()
                .enumerate()
                .map(|(zone, index)| async move {
                    index.commit().await.map_err(|e| self.named(zone, e))
                }),
        )
        .await?;
        Ok(())
    }

    /// Every zone's best `limit` hits, taken in turn from each zone, each with its `zone`.
    async fn search(&self, query: &str, limit: usize) -> Result<SearchResults, IndexError> {
        let results = try_join_all(self.indexes.iter().enumerate().map(
            |(zone, index)| async move {
                index
                    .search(query, limit)
                    .await
                    .map_err(|e| self.named(zone, e))
            },
        ))
        .await?;
        let total = results.iter().map(|r| r.total).sum();
        let mut queues: Vec<_> = results
            .into_iter()
            .enumerate()
            .map(|(zone, r)| (zone, r.hits.into_iter()))
            .collect();
        let mut hits = Vec::with_capacity(limit);
        while hits.len() < limit {
            let before = hits.len();
            for (zone, queue) in &mut queues {
                if hits.len() == limit {
                    break;
                }
                if let Some(mut hit) = queue.next() {
                    if let Json::Object(fields) = &mut hit {
                        fields.insert("zone".into(), Json::from(self.placement.name(*zone)));
                    }
                    hits.push(hit);
                }
            }
            if hits.len() == before {
                break;
            }
        }
        Ok(SearchResults { total, hits })
    }

    /// The zones' counts added up. Like a sharded cluster's, a value outside one zone's first
    /// `size` buckets is counted in that zone's `other`, not in its bucket.
    async fn aggregate(
        &self,
        query: &str,
        field: &str,
        size: usize,
    ) -> Result<Aggregation, IndexError> {
        let parts = try_join_all(
            self.indexes
                .iter()
                .enumerate()
                .map(|(zone, index)| async move {
                    index
                        .aggregate(query, field, size)
                        .await
                        .map_err(|e| self.named(zone, e))
                }),
        )
        .await?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        let (mut total, mut other) = (0, 0);
        for part in parts {
            total += part.total;
            other += part.other;
            for bucket in part.buckets {
                *counts.entry(bucket.key).or_default() += bucket.count;
            }
        }
        let mut buckets: Vec<Bucket> = counts
            .into_iter()
            .map(|(key, count)| Bucket { key, count })
            .collect();
        buckets.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        other += buckets.iter().skip(size).map(|b| b.count).sum::<u64>();
        buckets.truncate(size);
        Ok(Aggregation {
            field: field.to_string(),
            total,
            buckets,
            other,
        })
    }
}
