//! The segment change port over several zones' feeds: each change is stamped with the zone
//! holding the user's data and goes to that zone's feed where it has one of its own, else to
//! the pipeline's. A user's changes all go to one feed, in order.

use super::Placement;
use crate::segment_changes::{SegmentChange, SegmentChangeError, SegmentChangeSink};
use async_trait::async_trait;
use futures::future::try_join_all;
use std::sync::Arc;
use uuid::Uuid;

pub struct ZonedSegmentChanges {
    placement: Arc<Placement>,
    /// The pipeline's feed: the default zone's, and every zone's without its own.
    default: Arc<dyn SegmentChangeSink>,
    /// The zones with a feed of their own.
    zones: Vec<(String, Arc<dyn SegmentChangeSink>)>,
}

impl ZonedSegmentChanges {
    pub fn new(
        placement: Arc<Placement>,
        default: Arc<dyn SegmentChangeSink>,
        zones: Vec<(String, Arc<dyn SegmentChangeSink>)>,
    ) -> Self {
        Self {
            placement,
            default,
            zones,
        }
    }

    fn sink(&self, i: usize) -> &Arc<dyn SegmentChangeSink> {
        match i {
            0 => &self.default,
            i => &self.zones[i - 1].1,
        }
    }
}

#[async_trait]
impl SegmentChangeSink for ZonedSegmentChanges {
    async fn send(&self, mut changes: Vec<SegmentChange>) -> Result<(), SegmentChangeError> {
        let users: Vec<Uuid> = changes.iter().map(|c| c.user_id).collect();
        let zones = self
            .placement
            .locate(&users)
            .await
            .map_err(|e| SegmentChangeError(format!("the zones of the changes' users: {e}")))?;
        let mut by_sink: Vec<Vec<SegmentChange>> = vec![Vec::new(); self.zones.len() + 1];
        for mut change in changes.drain(..) {
            // A user no zone holds (an erasure of someone never stored) is the default zone's.
            let zone = self
                .placement
                .name(zones.get(&change.user_id).copied().unwrap_or(0));
            let sink = self
                .zones
                .iter()
                .position(|(name, _)| name == zone)
                .map_or(0, |i| i + 1);
            change.zone = Some(zone.to_string());
            by_sink[sink].push(change);
        }
        try_join_all(
            by_sink
                .into_iter()
                .enumerate()
                .filter(|(_, part)| !part.is_empty())
                .map(|(i, part)| self.sink(i).send(part)),
        )
        .await?;
        Ok(())
    }

    fn describe(&self) -> String {
        std::iter::once(self.default.describe())
            .chain(
                self.zones
                    .iter()
                    .map(|(zone, sink)| format!("zone {zone}: {}", sink.describe())),
            )
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn check(&self) -> Result<String, String> {
        let mut said = vec![self.default.check().await?];
        for (zone, sink) in &self.zones {
            said.push(format!(
                "zone {zone}: {}",
                sink.check()
                    .await
                    .map_err(|e| format!("zone {zone}: {e}"))?
            ));
        }
        Ok(said.join("; "))
    }
}
