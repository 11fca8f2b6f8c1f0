//! The canonical store port: profiles (PII encrypted), wrapped user keys and the audit trail.
//!
//! Every write is versioned: it applies only if its version is higher than the stored one, so
//! replays and out-of-order deliveries can never let older data win. A delete leaves a version
//! fence behind, so a replayed older upsert cannot bring a deleted profile back.

pub mod dynamodb;
mod sqlite;

pub use dynamodb::DynamoStore;
pub use sqlite::SqliteStore;

use crate::event::{ProtectedChange, ProtectedRecord};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// A user's data key as stored: wrapped, with what is needed to unwrap it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedUserKey {
    pub user_id: Uuid,
    /// Bound into every field ciphertext's AAD; a new key for the same user gets a new version.
    pub key_version: u32,
    /// Which provider wrapped it (`local`, `kms`).
    pub provider: String,
    /// The KEK's id: a keyring key id, or a KMS key ARN.
    pub kek_id: String,
    /// The KEK itself, encrypted by the provider (KMS data-key ciphertext); empty for a keyring.
    pub encrypted_kek: Vec<u8>,
    /// `nonce ‖ ciphertext ‖ tag` of the DEK under the KEK.
    pub wrapped_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

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
    /// The user was erased (perhaps by a command or retention while the batch was on its
    /// way) and the store refuses to bring them back: nothing changed.
    Erased,
}

/// A stored profile (or the fence a delete or an erasure left).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProfile {
    pub user_id: Uuid,
    pub version: i64,
    /// `None` once deleted or erased: the row is then only a version fence.
    pub record: Option<ProtectedRecord>,
    pub updated_at: DateTime<Utc>,
    /// Set when the user was erased (crypto-shredded): the row is a tombstone.
    pub erased_at: Option<DateTime<Utc>>,
}

/// One consent decision, kept forever (append-only): who consented to what, when, under
/// which policy. The current state per purpose is the record with the highest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub user_id: Uuid,
    pub purpose: String,
    pub granted: bool,
    pub policy_version: String,
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    /// The user's event version that carried it.
    pub version: i64,
    pub event_id: Uuid,
}

/// Purpose → granted, derived from a user's consent records.
pub type ConsentState = std::collections::BTreeMap<String, bool>;

/// The current state per purpose: the highest-version record of each purpose wins.
pub fn consent_state<'a>(records: impl IntoIterator<Item = &'a ConsentRecord>) -> ConsentState {
    let mut latest: HashMap<&str, &ConsentRecord> = HashMap::new();
    for r in records {
        if latest
            .get(r.purpose.as_str())
            .is_none_or(|l| r.version >= l.version)
        {
            latest.insert(&r.purpose, r);
        }
    }
    latest
        .into_iter()
        .map(|(p, r)| (p.to_string(), r.granted))
        .collect()
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

/// What the segment change feed needs of a stored profile: its version and segments, and its
/// recent segment changes (when the feed was on as it was written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSegments {
    pub version: i64,
    /// `false` for a delete fence or a tombstone: the user is in no segment.
    pub live: bool,
    pub segments: Vec<String>,
    pub history: Option<crate::event::SegmentHistory>,
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

/// Where a key provider keeps its own encrypted settings (the KMS provider's blind-index key):
/// the key provider's view of the store, so that it depends on this port, not on an adapter.
#[async_trait]
pub trait SettingsStore: Send + Sync {
    /// The setting `name`, if stored.
    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores a setting unless one exists; returns the stored value (another writer's wins).
    async fn put_setting_if_absent(
        &self,
        name: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError>;
}

#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Preflight: can the store be reached and used? `Ok` says what was checked; `Err` says
    /// what is wrong and how to fix it. Never includes secrets.
    async fn check(&self) -> Result<String, String> {
        self.counts()
            .await
            .map(|c| format!("{} live profiles", c.live))
            .map_err(|e| e.to_string())
    }

    /// Applies the changes in order, each only if newer than what is stored.
    async fn apply(&self, changes: &[ProtectedChange]) -> Result<Vec<WriteOutcome>, StoreError>;

    async fn get(&self, user: Uuid) -> Result<Option<StoredProfile>, StoreError>;

    /// The stored version and segments of each of `users` that has a row (read before a write,
    /// for the segment change feed).
    async fn segment_sets(
        &self,
        users: &[Uuid],
    ) -> Result<HashMap<Uuid, StoredSegments>, StoreError>;

    /// Live profiles per segment (the members gauge's starting point). The default pages
    /// through [`Self::scan`]; a store that can count in place overrides it.
    async fn segment_members(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut members = BTreeMap::new();
        let mut cursor = None;
        loop {
            let (page, next) = self.scan(cursor, 1000).await?;
            for record in page.iter().filter_map(|p| p.record.as_ref()) {
                for segment in &record.segments {
                    *members.entry(segment.clone()).or_default() += 1;
                }
            }
            match next {
                Some(c) => cursor = Some(c),
                None => return Ok(members),
            }
        }
    }

    /// The user whose normalised email has this blind index, if any.
    async fn find_by_email_index(&self, email_index: &str) -> Result<Option<Uuid>, StoreError>;

    async fn user_keys(&self, users: &[Uuid]) -> Result<HashMap<Uuid, WrappedUserKey>, StoreError>;

    /// Stores keys for users that have none; returns the stored key of each user, which is
    /// another writer's when it got there first.
    async fn insert_user_keys(
        &self,
        keys: Vec<WrappedUserKey>,
    ) -> Result<Vec<WrappedUserKey>, StoreError>;

    /// Appends an audit record; one with the same id (the same action of the same request)
    /// that is stored already is not added twice.
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;

    async fn audit_trail(&self, user: Uuid) -> Result<Vec<AuditRecord>, StoreError>;

    async fn counts(&self) -> Result<StoreCounts, StoreError>;

    /// One page of stored profiles (delete fences included, with `record: None`) and the
    /// cursor of the next page, `None` after the last. For reindexing, retention and audits.
    async fn scan(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<StoredProfile>, Option<String>), StoreError>;

    /// Appends a consent record; a record with the same user and event id is not added twice.
    async fn append_consent(&self, record: &ConsentRecord) -> Result<(), StoreError>;

    /// Every consent record of a user, oldest version first.
    async fn consent_history(&self, user: Uuid) -> Result<Vec<ConsentRecord>, StoreError>;

    /// The current consent state of each of `users` that has any consent record.
    async fn consent_states(
        &self,
        users: &[Uuid],
    ) -> Result<HashMap<Uuid, ConsentState>, StoreError>;

    /// Erases a user: in one atomic step, deletes their wrapped data key (crypto-shredding:
    /// every ciphertext of theirs becomes unreadable) and replaces the profile with a tombstone
    /// (no record, `erased_at` set) fenced at `max(stored version, version)`. Returns the fence.
    async fn erase(&self, user: Uuid, version: i64, at: DateTime<Utc>) -> Result<i64, StoreError>;

    /// One page of stored keys (users' and dead-letter keys) in a stable order, and the cursor
    /// of the next page, `None` after the last. For key rotation and the KEK inventory.
    async fn scan_user_keys(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<WrappedUserKey>, Option<String>), StoreError>;

    /// Replaces a stored key with `new` only if it is still `old` (not erased or replaced
    /// meanwhile); whether it was replaced.
    async fn replace_user_key(
        &self,
        old: &WrappedUserKey,
        new: &WrappedUserKey,
    ) -> Result<bool, StoreError>;

    /// Deletes the stored keys of `owners` and nothing else (the dead-letter keys of expired
    /// days: crypto-shredding their letters), with the same care as `erase` that the bytes
    /// are gone. A user's key goes only with [`Self::erase`]. Returns how many were deleted.
    async fn shred_keys(&self, owners: &[Uuid]) -> Result<u64, StoreError>;

    /// For each of `users` that was erased, the version fence of the tombstone.
    async fn erasure_fences(&self, users: &[Uuid]) -> Result<HashMap<Uuid, i64>, StoreError>;

    /// Removes audit records older than `before` (retention expiry).
    async fn expire_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Removes everything stored of a user, with the same care as `erase` that the bytes are
    /// gone: profile row (no fence is left), key, consent and audit records. Only for a zone
    /// migration that has written all of it to the user's new zone first. How many rows or
    /// items were removed.
    async fn remove_user(&self, user: Uuid) -> Result<u64, StoreError>;
}
