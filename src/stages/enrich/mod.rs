//! Enrich: derive the region from the last-seen IP, then evaluate the segment rules.

mod region;
mod segments;

pub use region::{RegionError, RegionResolver};
pub use segments::{SegmentError, SegmentRules};

use crate::event::{EnrichedChange, Operation, ProfileChange, Rejection};
use serde_json::Value as Json;

pub struct Enricher {
    pub regions: RegionResolver,
    pub segments: SegmentRules,
}

impl Enricher {
    pub fn enrich(&self, change: ProfileChange) -> Result<EnrichedChange, Rejection> {
        if change.operation == Operation::Delete {
            return Ok(EnrichedChange {
                change,
                region: None,
                segments: Vec::new(),
            });
        }
        let ip = change
            .profile
            .as_ref()
            .and_then(|p| p.get("last_seen_ip"))
            .and_then(Json::as_str);
        let region = self.regions.resolve(ip);
        let segments = self.segments.evaluate(&change, &region)?;
        Ok(EnrichedChange {
            change,
            region: Some(region),
            segments,
        })
    }
}
