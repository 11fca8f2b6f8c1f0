//! The segment change port over several zones' feeds: each change is stamped with the zone
//! holding the user's data and goes to that zone's feed where it has one of its own, else to
//! the pipeline's. A user's changes all go to one feed, in order.

use super::feeds::ZoneFeeds;
use super::Placement;
use crate::segment_changes::{SegmentChange, SegmentChangeError, SegmentChangeSink};
use async_trait::async_trait;
use std::sync::Arc;
use uuid::Uuid;

pub struct ZonedSegmentChanges {
    placement: Arc<Placement>,
    feeds: ZoneFeeds<dyn SegmentChangeSink>,
}

impl ZonedSegmentChanges {
    pub fn new(
        placement: Arc<Placement>,
        default: Arc<dyn SegmentChangeSink>,
        zones: Vec<(String, Arc<dyn SegmentChangeSink>)>,
    ) -> Self {
        Self {
            placement,
            feeds: ZoneFeeds::new(default, zones),
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
        for change in &mut changes {
            // A user no zone holds (an erasure of someone never stored) is the default zone's.
            let zone = zones.get(&change.user_id).copied().unwrap_or(0);
            change.zone = Some(self.placement.name(zone).to_string());
        }
        self.feeds
            .send(changes, |c| c.zone.as_deref(), |feed, part| feed.send(part))
            .await
    }

    fn describe(&self) -> String {
        std::iter::once(self.feeds.default().describe())
            .chain(
                self.feeds
                    .zones()
                    .map(|(zone, sink)| format!("zone {zone}: {}", sink.describe())),
            )
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn check(&self) -> Result<String, String> {
        let mut said = vec![self.feeds.default().check().await?];
        for (zone, sink) in self.feeds.zones() {
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
