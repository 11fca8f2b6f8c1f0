//! Erasures made outside the pipeline (the `erase` and `retention` commands, the API's erase)
//! announced on the segment change feed, as an `ERASE` event through the pipeline would be.

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
