//! Enrich: derive the region from the last-seen IP, then evaluate the segment rules.

mod plan;
mod region;
mod segments;

pub use region::{RegionError, RegionResolver};
pub use segments::{SegmentError, SegmentRules};

use crate::event::{EnrichedChange, Operation, ProfileChange, Rejection};
use crate::stores::ConsentState;
use serde_json::Value as Json;

pub struct Enricher {
    pub regions: RegionResolver,
    pub segments: SegmentRules,
}

impl Enricher {
    /// Derives region and segments; `consents` is the user's current consent state.
    pub fn enrich(
        &self,
        change: ProfileChange,
        consents: Option<&ConsentState>,
    ) -> Result<EnrichedChange, Rejection> {
        if change.operation != Operation::Upsert {
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
        let segments = self.segments.evaluate(&change, &region, consents)?;
        Ok(EnrichedChange {
            change,
            region: Some(region),
            segments,
        })
    }
}
