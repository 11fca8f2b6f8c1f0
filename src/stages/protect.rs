//! Protect: encrypt every field the schema classifies as PII under the user's data key, and
//! compute the email blind index. After this stage no plaintext PII is left in the change.

use crate::crypto::seal_field;
use crate::event::{EnrichedChange, Operation, ProtectedChange, ProtectedRecord, Rejection, Stage};
use crate::keys::{DataKeys, KeyError};
use crate::schema::{Catalog, Classification};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

pub struct Protector {
    keys: Arc<DataKeys>,
    /// Names of the top-level profile fields classified pii.
    pii_fields: Vec<String>,
}

impl Protector {
    pub fn new(keys: Arc<DataKeys>, catalog: &Catalog) -> Self {
        let pii_fields = catalog
            .top_level()
            .iter()
            .filter(|(_, c)| *c == Classification::Pii)
            .map(|(n, _)| n.clone())
            .collect();
        Self { keys, pii_fields }
    }

    /// The top-level profile fields classified pii.
    pub fn pii_fields(&self) -> &[String] {
        &self.pii_fields
    }

    /// Protects a batch. A transient key failure fails the batch (to be retried); a permanent
    /// one rejects only the events of the users concerned. New users' keys are made first and
    /// stored after the sealing, before anything sealed leaves this stage; if another worker
    /// stored a key for one of them first, the batch fails transiently and its retry seals
    /// under the stored key (a race only a rebalance makes possible).
    pub async fn protect(
        &self,
        batch: Vec<EnrichedChange>,
    ) -> Result<Vec<Result<ProtectedChange, Rejection>>, KeyError> {
        let users: Vec<Uuid> = batch
            .iter()
            .filter(|e| e.change.operation == Operation::Upsert && self.has_pii(e))
            .map(|e| e.change.user_id)
            .collect();
        let (keys, new) = self.keys.prepare(&users, true).await?;
        let protected = self.seal(batch, &keys);
        let lost = self.keys.store_new(new).await?;
        if !lost.is_empty() {
            return Err(KeyError::Unavailable(format!(
                "another worker stored data keys for {} new user(s) of this batch first; the batch is sealed again under those",
                lost.len()
            )));
        }
        Ok(protected)
    }

    fn seal(
        &self,
        batch: Vec<EnrichedChange>,
        keys: &crate::keys::KeyLookup,
    ) -> Vec<Result<ProtectedChange, Rejection>> {
        let provider = self.keys.provider();
        batch
            .into_iter()
            .map(|enriched| {
                let EnrichedChange {
                    change,
                    region,
                    segments,
                } = enriched;
                let (Operation::Upsert, Some(mut profile)) = (change.operation, change.profile)
                else {
                    return Ok(ProtectedChange {
                        user_id: change.user_id,
                        version: change.version,
                        operation: Operation::Delete,
                        occurred_at: change.occurred_at,
                        record: None,
                    });
                };
                let email_index = profile
                    .get("email")
                    .and_then(Json::as_str)
                    .map(|e| provider.blind_index_for(change.user_id).email(e));
                let mut encrypted = BTreeMap::new();
                let mut key_version = 0;
                for field in &self.pii_fields {
                    let Some(value) = profile.remove(field) else {
                        continue;
                    };
                    if value.is_null() {
                        continue;
                    }
                    let key = match keys.get(&change.user_id) {
                        Some(Ok(k)) => k,
                        Some(Err(reason)) => {
                            return Err(Rejection::new(Stage::Protect, "key", reason.clone()))
                        }
                        None => {
                            return Err(Rejection::new(
                                Stage::Protect,
                                "key",
                                "no data key could be had for this user",
                            ))
                        }
                    };
                    key_version = key.version;
                    let plaintext = serde_json::to_vec(&value).expect("JSON value serialises");
                    let sealed =
                        seal_field(&key.key, change.user_id, field, key.version, &plaintext)
                            .map_err(|e| Rejection::new(Stage::Protect, "key", e.to_string()))?;
                    encrypted.insert(field.clone(), sealed);
                }
                Ok(ProtectedChange {
                    user_id: change.user_id,
                    version: change.version,
                    operation: Operation::Upsert,
                    occurred_at: change.occurred_at,
                    record: Some(ProtectedRecord {
                        event_id: change.event_id,
                        source: change.source,
                        occurred_at: change.occurred_at,
                        profile,
                        encrypted,
                        key_version,
                        region: region.unwrap_or_else(crate::event::Region::unknown),
                        segments,
                        segment_history: None,
                        email_index,
                    }),
                })
            })
            .collect()
    }

    fn has_pii(&self, e: &EnrichedChange) -> bool {
        e.change.profile.as_ref().is_some_and(|p| {
            self.pii_fields
                .iter()
                .any(|f| p.get(f).is_some_and(|v| !v.is_null()))
        })
    }
}
