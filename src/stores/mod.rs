//! The canonical store port: profiles (PII encrypted), wrapped user keys and the audit trail.
//!
//! Every write is versioned: it applies only if its version is higher than the stored one, so
//! replays and out-of-order deliveries can never let older data win. A delete leaves a version
//! fence behind, so a replayed older upsert cannot bring a deleted profile back.

mod sqlite;

pub use sqlite::SqliteStore;

use crate::event::{ProtectedChange, ProtectedRecord};
use crate::keys::WrappedUserKey;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// What a versioned write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The write was newer and is now the stored state.
    Applied,
    /// The stored version equals this one: a redelivery. The store is unchanged, but the
    /// index is written again in case the first delivery stopped between the two sinks.
    Replayed,
    /// The stored version is newer: nothing changed.
    Stale,
}

/// A stored profile (or the fence a delete left).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProfile {
    pub user_id: Uuid,
    pub version: i64,
    /// `None` once deleted: the row is then only a version fence.
    pub record: Option<ProtectedRecord>,
    pub updated_at: DateTime<Utc>,
}

/// An append-only record of an access to or action on personal data. Names fields, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub user_id: Uuid,
    pub fields: Vec<String>,
    pub reason: String,
    pub request_id: Uuid,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    pub live: u64,
    pub deleted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying (busy, throttled, unreachable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store failed: {0}")]
    Failed(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Applies the changes in order, each only if newer than what is stored.
    async fn apply(&self, changes: &[ProtectedChange]) -> Result<Vec<WriteOutcome>, StoreError>;

    async fn get(&self, user: Uuid) -> Result<Option<StoredProfile>, StoreError>;

    /// The user whose normalised email has this blind index, if any.
    async fn find_by_email_index(&self, email_index: &str) -> Result<Option<Uuid>, StoreError>;

    async fn user_keys(&self, users: &[Uuid]) -> Result<HashMap<Uuid, WrappedUserKey>, StoreError>;

    /// Stores keys for users that have none; returns the stored key of each user, which is
    /// another writer's when it got there first.
    async fn insert_user_keys(
        &self,
        keys: Vec<WrappedUserKey>,
    ) -> Result<Vec<WrappedUserKey>, StoreError>;

    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;

    async fn audit_trail(&self, user: Uuid) -> Result<Vec<AuditRecord>, StoreError>;

    async fn counts(&self) -> Result<StoreCounts, StoreError>;

    /// A page of stored profiles (delete fences included, with `record: None`) and the cursor
    /// of the next page, `None` at the end.
    async fn scan(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<StoredProfile>, Option<String>), StoreError>;
}
