//! Erasures made outside the pipeline (the `erase` and `retention` commands, the API's erase)
//! announced on the segment change feed, as an `ERASE` event through the pipeline would be;
//! and zone moves, announced on both zones' feeds.

use crate::config;
use crate::segment_changes::{Cause, Origin, SegmentChange, SegmentChangeError};
use std::path::Path;
use uuid::Uuid;

/// Each erased user, with the fence of its tombstone, leaves every declared segment. Nothing
/// is written when the pipeline file has no feed.
pub async fn announce_erasures(
    file: &config::Pipeline,
    data_dir: &Path,
    erased: &[(Uuid, i64)],
) -> Result<(), SegmentChangeError> {
    let opened = super::open_segment_changes(file, data_dir)
        .map_err(|e| SegmentChangeError(e.to_string()))?;
    let Some(sink) = opened else {
        return Ok(());
    };
    let declared: Vec<String> = file.config.enrich.segments.keys().cloned().collect();
    let at = chrono::Utc::now();
    let changes = erased
        .iter()
        .map(|(user, fence)| {
            SegmentChange::gone(
                Origin {
                    user_id: *user,
                    version: *fence,
                    occurred_at: at,
                    cause: Cause::Erase,
                },
                &declared,
            )
        })
        .collect();
    sink.send(changes).await
}

/// A user moved from zone `from` to zone `to` with their profile at `version` in `segments`:
/// the old zone's feed sees them leave every declared segment (cause `DELETE`: the profile is
/// gone from that zone), then the new zone's feed gets a `SNAPSHOT` of their segments. Each
/// change names its zone. Nothing is written when the pipeline file has no feed.
pub async fn announce_move(
    file: &config::Pipeline,
    data_dir: &Path,
    user: Uuid,
    version: i64,
    (from, to): (&str, &str),
    segments: &[String],
    residency_zone: Option<&str>,
) -> Result<(), SegmentChangeError> {
    let declared: Vec<String> = file.config.enrich.segments.keys().cloned().collect();
    let at = chrono::Utc::now();
    let mut left = SegmentChange::gone(
        Origin {
            user_id: user,
            version,
            occurred_at: at,
            cause: Cause::Delete,
        },
        &declared,
    );
    left.zone = Some(from.to_string());
    let mut arrived = SegmentChange::snapshot(user, version, at, segments, residency_zone);
    arrived.zone = Some(to.to_string());
    for (zone, change) in [(from, left), (to, arrived)] {
        let zone_file =
            super::zone_file(file, Some(zone)).map_err(|e| SegmentChangeError(e.to_string()))?;
        let opened = super::open_segment_changes(&zone_file, data_dir)
            .map_err(|e| SegmentChangeError(e.to_string()))?;
        if let Some(sink) = opened {
            sink.send(vec![change]).await?;
        }
    }
    Ok(())
}
