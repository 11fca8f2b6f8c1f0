//! `profile-sync reindex`: builds the next index version from the canonical store while the
//! live pipeline keeps writing, then swaps the read alias atomically.
//!
//! Order of events, and why it is safe:
//! 1. The template gets the current mapping; `<name>-v<N+1>` is created.
//! 2. The write alias moves to it in one `_aliases` call, so from then on every write of the
//!    live pipeline lands in the new version (readers still see the old one).
//! 3. The store is scanned page by page into the new version. A profile the pipeline updated
//!    after the scan saw it has a higher version, so the backfill's older write is a 409
//!    (counted as stale); one it updated before was already in the store for the scan to read.
//! 4. When the scan has caught up, the read alias moves to the new version in one call.
//!
//! A reindex that stops half-way is resumed by running it again: the write alias already
//! points at the newest version, which is filled again (external versions make that harmless).

use super::client::Body;
use super::{OpenSearchIndex, ATTEMPTS};
use crate::indexes::{IndexError, IndexOutcome};
use crate::stores::{ProfileStore, StoreError};
use opensearch::http::Method;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the backfill did. `indexed + deleted + stale + failed = scanned`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReindexCounts {
    /// Profiles and delete fences read from the store.
    pub scanned: u64,
    /// Live profiles written to the new version.
    pub indexed: u64,
    /// Delete fences written as versioned deletes.
    pub deleted: u64,
    /// The new version already held this version or a newer one (the live pipeline got there).
    pub stale: u64,
    /// Refused by OpenSearch; by reason (no values in reasons).
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// The index the backfill wrote to.
    pub index: String,
    /// The index the read alias pointed at before, if any.
    pub previous: Option<String>,
    /// Whether the read alias now points at `index`.
    pub swapped: bool,
}

impl OpenSearchIndex {
    /// Steps 1 and 2: the index to fill, and the one readers see now.
    async fn begin_reindex(&self) -> Result<(String, Option<String>), IndexError> {
        let state = self.alias_state().await?;
        let previous = state.read.first().cloned();
        if let Some(write) = &state.write {
            let resumable = Some(write) != previous.as_ref()
                && state.versions.get(write) == Some(&state.latest())
                && self.check_fingerprint(write).await.is_ok();
            if resumable {
                return Ok((write.clone(), previous));
            }
        }
        self.put_template().await?;
        let next = self.index_name(state.latest() + 1);
        let answer = self
            .client
            .send(Method::Put, &format!("/{next}"), None, ATTEMPTS)
            .await?;
        if !answer.ok() {
            return Err(IndexError::Failed(format!(
                "cannot create the OpenSearch index {next}: {}",
                answer.error()
            )));
        }
        self.check_fingerprint(&next).await?;
        let alias = &self.settings.write_alias;
        let mut actions = Vec::new();
        if let Some(old) = &state.write {
            actions.push(json!({ "remove": { "index": old, "alias": alias } }));
        }
        actions.push(json!({ "add": { "index": next, "alias": alias, "is_write_index": true } }));
        self.update_aliases(actions).await?;
        Ok((next, previous))
    }

    /// Step 4: readers move to `index` in one atomic call.
    async fn finish_reindex(&self, index: &str) -> Result<(), IndexError> {
        let refresh = self
            .client
            .send(Method::Post, &format!("/{index}/_refresh"), None, ATTEMPTS)
            .await?;
        if !refresh.ok() {
            return Err(IndexError::Failed(format!(
                "cannot refresh {index}: {}",
                refresh.error()
            )));
        }
        let state = self.alias_state().await?;
        let alias = &self.settings.read_alias;
        let mut actions: Vec<_> = state
            .read
            .iter()
            .filter(|i| i.as_str() != index)
            .map(|old| json!({ "remove": { "index": old, "alias": alias } }))
            .collect();
        actions.push(json!({ "add": { "index": index, "alias": alias } }));
        self.update_aliases(actions).await
    }

    async fn update_aliases(&self, actions: Vec<serde_json::Value>) -> Result<(), IndexError> {
        let answer = self
            .client
            .send(
                Method::Post,
                "/_aliases",
                Some(&Body::Json(json!({ "actions": actions }))),
                ATTEMPTS,
            )
            .await?;
        if !answer.ok() {
            return Err(IndexError::Failed(format!(
                "cannot move the aliases: {}",
                answer.error()
            )));
        }
        Ok(())
    }
}

/// Rebuilds the index from the store: backfills the next version and swaps the read alias,
/// unless some documents failed (then readers keep the old version; run it again once fixed).
pub async fn reindex(
    index: &OpenSearchIndex,
    store: &dyn ProfileStore,
    op_of: impl Fn(&crate::stores::StoredProfile) -> crate::indexes::IndexOp,
    page_size: usize,
    mut progress: impl FnMut(&ReindexCounts),
) -> Result<ReindexCounts, ReindexError> {
    let (target, previous) = index.begin_reindex().await?;
    let mut counts = ReindexCounts {
        index: target.clone(),
        previous,
        ..ReindexCounts::default()
    };
    let mut cursor = None;
    loop {
        let (page, next) = store.scan(cursor, page_size.max(1)).await?;
        let ops: Vec<_> = page.iter().map(&op_of).collect();
        let outcomes = index.write(&target, &ops).await?;
        for (profile, outcome) in page.iter().zip(outcomes) {
            counts.scanned += 1;
            match outcome {
                IndexOutcome::Applied if profile.record.is_some() => counts.indexed += 1,
                IndexOutcome::Applied => counts.deleted += 1,
                IndexOutcome::Stale => counts.stale += 1,
                IndexOutcome::Rejected(reason) => {
                    counts.failed += 1;
                    *counts.failures.entry(reason).or_default() += 1;
                }
            }
        }
        progress(&counts);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if counts.failed == 0 {
        index.finish_reindex(&target).await?;
        counts.swapped = true;
    }
    Ok(counts)
}
