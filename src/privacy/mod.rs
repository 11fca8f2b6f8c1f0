//! Privacy operations: consent, erasure (crypto-shredding), export, retention, and the audit
//! trail they all write. The same code serves events in the pipeline and operators' commands,
//! against whichever store, index and key provider the pipeline file chose.

mod export;
mod migrate;
mod retention;

pub use export::export;
pub use migrate::{leave_zone, move_user, Moved, ZoneProfiles};
pub use retention::{retention, RetentionReport};

use crate::crypto::open_field;
use crate::event::{Fields, ProtectedRecord, SegmentHistory, SegmentStep};
use crate::event::{Operation, ProfileChange, ProtectedChange};
use crate::indexes::{IndexError, SearchIndex};
use crate::keys::{DataKeys, KeyError};
use crate::residency::Placement;
use crate::segment_changes::{Cause, Origin, SegmentChange};
use crate::stages::enrich::SegmentRules;
use crate::stages::project::{IndexOp, Projection};
use crate::stores::{
    AuditRecord, ConsentRecord, ConsentState, ProfileStore, StoreError, WriteOutcome,
};
use chrono::Utc;
use std::sync::Arc;
use uuid::Uuid;

/// What a masked field shows instead of its value.
pub const MASK: &str = "***";

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("nothing is stored for user {0}: no profile, and no dead letter sealed under a key of theirs")]
    NotFound(Uuid),
    #[error("user {0} was erased: their personal data no longer exists and cannot be decrypted")]
    Erased(Uuid),
    #[error("{0}")]
    Crypto(String),
    #[error("{0}")]
    Rule(String),
}

impl PrivacyError {
    pub fn is_transient(&self) -> bool {
        match self {
            PrivacyError::Store(e) => e.is_transient(),
            PrivacyError::Index(e) => e.is_transient(),
            PrivacyError::Keys(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What a consent event did to the stored profile.
#[derive(Debug, Default)]
pub struct Consented {
    /// The index operation that follows (the re-derived document).
    pub index_op: Option<IndexOp>,
    /// The segment change it made (or, delivered again, the one its first delivery made).
    pub segment_change: Option<SegmentChange>,
    /// Whether this delivery changed the store (not a redelivery).
    pub first: bool,
}

/// Who did something and why, for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub reason: String,
    /// Ties the audit record to a request or event; an event's id makes a retried event
    /// write its audit record once.
    pub request_id: Uuid,
}

/// The stored profiles: the canonical store, the search index and the users' keys, with the
/// privacy operations that act on all three at once.
#[derive(Clone)]
pub struct Profiles {
    pub store: Arc<dyn ProfileStore>,
    pub index: Arc<dyn SearchIndex>,
    pub keys: Arc<DataKeys>,
    pub projection: Projection,
    /// Where each user's data lives, when the pipeline file has residency zones (the store,
    /// index and keys above then route each user to their zone).
    pub placement: Option<Arc<Placement>>,
}

impl Profiles {
    /// The user whose normalised email this is, if any: the email's blind index under each
    /// blind-index key in use (one per residency zone), looked up in the store.
    pub async fn find_by_email(&self, email: &str) -> Result<Option<Uuid>, StoreError> {
        for key in self.keys.provider().blind_indexes() {
            if let Some(user) = self.store.find_by_email_index(&key.email(email)).await? {
                return Ok(Some(user));
            }
        }
        Ok(None)
    }

    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        user: Uuid,
        fields: Vec<String>,
    ) -> Result<(), StoreError> {
        self.store
            .append_audit(&AuditRecord {
                id: Uuid::new_v5(&actor.request_id, format!("{action}/{user}").as_bytes()),
                at: Utc::now(),
                actor: actor.name.clone(),
                action: action.into(),
                user_id: user,
                fields,
                reason: actor.reason.clone(),
                request_id: actor.request_id,
            })
            .await
    }

    /// Erases a user: the data key is deleted (every ciphertext of theirs, anywhere, becomes
    /// unreadable), the profile becomes a tombstone, the index document goes, and the audit
    /// trail says who did it and why. Idempotent. Returns the tombstone's version fence.
    /// `action` names it in the audit trail (`erase`, or `retention` for an anonymisation).
    pub async fn erase(
        &self,
        user: Uuid,
        version: i64,
        action: &str,
        fields: Vec<String>,
        actor: &Actor,
    ) -> Result<i64, PrivacyError> {
        let delete = self
            .erase_stored(user, version, action, fields, actor)
            .await?;
        let fence = delete.version();
        self.index.apply(std::slice::from_ref(&delete)).await?;
        Ok(fence)
    }

    /// Erases a user on a person's request (the `erase` command, the API), outside the
    /// pipeline: at the stored version, or fenced at 0 for a user with no profile but a key
    /// (their events were all dead-lettered, sealed under it); the index deletion committed.
    /// `fields` are the profile fields the audit record names.
    pub async fn erase_on_request(
        &self,
        user: Uuid,
        fields: Vec<String>,
        actor: &Actor,
    ) -> Result<i64, PrivacyError> {
        let version = match self.store.get(user).await? {
            Some(stored) => stored.version,
            None if !self.store.user_keys(&[user]).await?.is_empty() => 0,
            None => return Err(PrivacyError::NotFound(user)),
        };
        let fence = self.erase(user, version, "erase", fields, actor).await?;
        self.index.commit().await?;
        Ok(fence)
    }

    /// The store's part of an erasure (tombstone, key deleted, audit record) and the index
    /// deletion still to apply. The pipeline hands that deletion to its index stage, behind
    /// the operations of earlier batches, so an older upsert can never bring the document back.
    pub async fn erase_stored(
        &self,
        user: Uuid,
        version: i64,
        action: &str,
        fields: Vec<String>,
        actor: &Actor,
    ) -> Result<IndexOp, PrivacyError> {
        // An erasure delivered again completes what is missing, but counts once.
        let again = self
            .store
            .erasure_fences(&[user])
            .await?
            .contains_key(&user);
        let fence = self.store.erase(user, version, Utc::now()).await?;
        self.keys.forget(&user);
        self.audit(actor, action, user, fields).await?;
        if !again {
            crate::telemetry::erasure();
        }
        Ok(IndexOp::Erase {
            user_id: user,
            version: fence,
        })
    }

    /// Decrypts the PII fields of a stored record. Callers audit before they show the result.
    pub async fn reveal(
        &self,
        user: Uuid,
        record: &ProtectedRecord,
    ) -> Result<Fields, PrivacyError> {
        let mut profile = record.profile.clone();
        if record.encrypted.is_empty() {
            return Ok(profile);
        }
        let key = match self.keys.for_users(&[user], false).await?.remove(&user) {
            Some(Ok(key)) => key,
            Some(Err(reason)) => {
                return Err(PrivacyError::Crypto(format!(
                    "the data key of user {user} cannot be used: {reason}"
                )))
            }
            None => {
                return Err(PrivacyError::Crypto(format!(
                    "user {user} has no data key: their PII cannot be decrypted"
                )))
            }
        };
        for (field, sealed) in &record.encrypted {
            let plain = open_field(&key.key, user, field, sealed).map_err(|e| {
                PrivacyError::Crypto(format!(
                    "field {field} of user {user} does not decrypt: {e}"
                ))
            })?;
            let value = serde_json::from_slice(&plain).map_err(|_| {
                PrivacyError::Crypto(format!(
                    "field {field} of user {user} decrypts to something that is not JSON"
                ))
            })?;
            profile.insert(field.clone(), value);
        }
        Ok(profile)
    }

    /// Records a consent decision and, when it is newer than the stored profile, re-derives
    /// the profile's segments under the new consent state in the store. Returns the index
    /// operation that follows (the caller applies it in order with its other index writes) and
    /// the segment change it makes.
    pub async fn consent(
        &self,
        change: &ProfileChange,
        state: &ConsentState,
        segments: &SegmentRules,
        actor: &Actor,
    ) -> Result<Consented, PrivacyError> {
        let Some(consent) = &change.consent else {
            return Ok(Consented::default());
        };
        self.store
            .append_consent(&ConsentRecord {
                user_id: change.user_id,
                purpose: consent.purpose.clone(),
                granted: consent.granted,
                policy_version: consent.policy_version.clone(),
                source: change.source.clone(),
                occurred_at: change.occurred_at,
                version: change.version,
                event_id: change.event_id,
            })
            .await?;
        self.audit(
            actor,
            "consent",
            change.user_id,
            vec![format!("consent:{}", consent.purpose)],
        )
        .await?;
        crate::telemetry::consent_change(consent.granted);
        let Some(stored) = self.store.get(change.user_id).await? else {
            return Ok(Consented::default());
        };
        let Some(mut record) = stored.record else {
            return Ok(Consented::default());
        };
        let origin = Origin {
            user_id: change.user_id,
            version: change.version,
            occurred_at: change.occurred_at,
            cause: Cause::Consent,
        };
        if stored.version >= change.version {
            // Delivered again: the change its first application made, if the history holds
            // it. (An older consent event never applied is recorded, and it counts from the
            // next profile change on.)
            return Ok(Consented {
                segment_change: record
                    .segment_history
                    .as_ref()
                    .and_then(|h| SegmentChange::again(origin, h, &[])),
                ..Consented::default()
            });
        }
        let view = ProfileChange {
            profile: Some(record.profile.clone()),
            operation: Operation::Upsert,
            consent: None,
            ..change.clone()
        };
        let before = std::mem::replace(
            &mut record.segments,
            segments
                .evaluate(&view, &record.region, Some(state))
                .map_err(|r| PrivacyError::Rule(r.reason))?,
        );
        let segment_change = SegmentChange::between(
            origin,
            &before,
            &record.segments,
            Some(&record.region.residency_zone),
        );
        let mut history = record
            .segment_history
            .take()
            .unwrap_or_else(|| SegmentHistory::starting_from(before));
        if segment_change.is_some() {
            history.push(SegmentStep {
                version: change.version,
                segments: record.segments.clone(),
                zone: Some(record.region.residency_zone.clone()),
                gone: false,
            });
        }
        record.segment_history = Some(history);
        let updated = ProtectedChange {
            user_id: change.user_id,
            version: change.version,
            operation: Operation::Upsert,
            occurred_at: change.occurred_at,
            record: Some(record),
        };
        let outcome = self.store.apply(std::slice::from_ref(&updated)).await?;
        let applied = outcome.first() == Some(&WriteOutcome::Applied);
        Ok(Consented {
            index_op: matches!(
                outcome.first(),
                Some(WriteOutcome::Applied | WriteOutcome::Replayed)
            )
            .then(|| self.projection.op(&updated)),
            segment_change: segment_change.filter(|_| applied),
            first: applied,
        })
    }
}
