//! The search index port: a PII-free projection of every live profile, for analysts.
//!
//! The index receives only [`IndexOp`]s built by the project stage, which cannot carry a PII
//! field. Writes follow the store's version decisions, so the index converges to the store.

pub mod opensearch;
mod tantivy;

pub use self::opensearch::{OpenSearchIndex, OpenSearchSettings};
pub use self::tantivy::TantivyIndex;

use crate::event::Fields;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use uuid::Uuid;

/// A PII-free document for the search index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDocument {
    pub user_id: Uuid,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    /// Projected fields by flat name.
    pub fields: Fields,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IndexOp {
    Upsert(IndexDocument),
    Delete {
        user_id: Uuid,
        version: i64,
    },
    /// An erasure: the document deleted, and every copy of it purged from the index's files
    /// and from every version of the index, not only marked deleted in the current one.
    Erase {
        user_id: Uuid,
        version: i64,
    },
}

impl IndexOp {
    pub fn user_id(&self) -> Uuid {
        match self {
            IndexOp::Upsert(d) => d.user_id,
            IndexOp::Delete { user_id, .. } | IndexOp::Erase { user_id, .. } => *user_id,
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            IndexOp::Upsert(d) => d.version,
            IndexOp::Delete { version, .. } | IndexOp::Erase { version, .. } => *version,
        }
    }
}

/// What the index did with one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOutcome {
    Applied,
    /// The index already holds a newer version (external versioning).
    Stale,
    /// The index refused this document for good (e.g. a mapping conflict): dead-letter it.
    Rejected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Worth retrying.
    #[error("search index unavailable: {0}")]
    Unavailable(String),
    #[error("search index failed: {0}")]
    Failed(String),
    #[error("query is not valid: {0}")]
    Query(String),
    /// Another process holds the index's writer (a running worker holds the embedded index).
    #[error("{0}")]
    InUse(String),
}

impl IndexError {
    pub fn is_transient(&self) -> bool {
        matches!(self, IndexError::Unavailable(_))
    }
}

/// Search results: the total number of matches and the first documents, as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchResults {
    pub total: u64,
    pub hits: Vec<Json>,
}

/// Counts of matching profiles by the values of one field (a terms aggregation).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Aggregation {
    pub field: String,
    /// Matching profiles.
    pub total: u64,
    /// The most frequent values, most frequent first.
    pub buckets: Vec<Bucket>,
    /// Values counted in no bucket shown (beyond `size`).
    pub other: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bucket {
    pub key: String,
    pub count: u64,
}

/// The error for an aggregation on a field the index does not hold.
pub(crate) fn not_aggregatable<'a>(field: &str, known: impl Iterator<Item = &'a str>) -> String {
    format!(
        "cannot aggregate on `{field}`: the index holds no such field (it holds: {})",
        known.collect::<Vec<_>>().join(", ")
    )
}

#[async_trait]
pub trait SearchIndex: Send + Sync {
    /// Preflight: can the index be reached and queried? Never includes secrets.
    async fn check(&self) -> Result<String, String> {
        self.search("*", 1)
            .await
            .map(|r| format!("{} documents", r.total))
            .map_err(|e| e.to_string())
    }

    /// Applies the operations in order. They are durable once [`SearchIndex::commit`] returns
    /// (an adapter whose writes are durable at once, like a bulk request, need not wait).
    async fn apply(&self, ops: &[IndexOp]) -> Result<Vec<IndexOutcome>, IndexError>;

    /// Makes every applied operation durable and visible. The pipeline calls it once per
    /// batch, before the batch is acknowledged.
    async fn commit(&self) -> Result<(), IndexError> {
        Ok(())
    }

    /// Runs a query in the index's query syntax (`segments:high_value AND country:DE`).
    async fn search(&self, query: &str, limit: usize) -> Result<SearchResults, IndexError>;

    /// Counts the profiles matching `query` by the values of `field`: the `size` most
    /// frequent values (`segments`, `country`, `residency_zone`, …).
    async fn aggregate(
        &self,
        query: &str,
        field: &str,
        size: usize,
    ) -> Result<Aggregation, IndexError>;
}
