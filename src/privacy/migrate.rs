//! A zone migration (`profile-sync zones move`): the one way a user's data changes residency
//! zone. Everything of the user is written to the new zone under a new data key of that zone
//! ([`move_user`]), then removed from the old zone with the care of an erasure
//! ([`leave_zone`]); the move is audited.

use super::{Actor, PrivacyError, Profiles};
use crate::crypto::seal_field;
use crate::event::{Operation, ProtectedChange};
use crate::indexes::IndexOp;
use crate::stores::{StoredProfile, WriteOutcome};
use serde::Serialize;
use serde_json::Value as Json;
use uuid::Uuid;

/// What a move did.
#[derive(Debug, Serialize)]
pub struct Moved {
    pub user_id: Uuid,
    pub from: String,
    pub to: String,
    /// The profile's version, kept: later events are decided against it in the new zone.
    pub version: Option<i64>,
    /// The PII fields re-encrypted under the new zone's key.
    pub reencrypted: Vec<String>,
    pub consent_records: usize,
    pub audit_records: usize,
    /// Rows or items removed from the old zone's store (by [`leave_zone`]).
    pub removed: u64,
    /// The user's segments and derived residency zone, when they have a live profile (for the
    /// segment change feeds: the old zone's sees them leave, the new zone's sees them arrive).
    pub segments: Option<Vec<String>>,
    pub residency_zone: Option<String>,
}

/// One zone's adapters and its name.
pub struct ZoneProfiles<'a> {
    pub name: &'a str,
    pub profiles: &'a Profiles,
}

/// Copies everything of `user` from one zone to another; [`leave_zone`] then removes it from
/// the old one. Safe to run again after a failure at any step: the new zone's key, record and
/// records are written idempotently before anything of the old zone is removed, and a user
/// found in both zones is what a stopped move leaves.
pub async fn move_user(
    from: ZoneProfiles<'_>,
    to: ZoneProfiles<'_>,
    user: Uuid,
    actor: &Actor,
) -> Result<Moved, PrivacyError> {
    let stored = from.profiles.store.get(user).await?;
    let consents = from.profiles.store.consent_history(user).await?;
    if stored.is_none() && consents.is_empty() {
        return Err(PrivacyError::NotFound(user));
    }
    if stored.as_ref().is_some_and(|s| s.erased_at.is_some()) {
        return Err(PrivacyError::Erased(user));
    }
    let mut moved = Moved {
        user_id: user,
        from: from.name.to_string(),
        to: to.name.to_string(),
        version: stored.as_ref().map(|s| s.version),
        reencrypted: Vec::new(),
        consent_records: consents.len(),
        audit_records: 0,
        removed: 0,
        segments: stored
            .as_ref()
            .and_then(|s| s.record.as_ref())
            .map(|r| r.segments.clone()),
        residency_zone: stored
            .as_ref()
            .and_then(|s| s.record.as_ref())
            .map(|r| r.region.residency_zone.clone()),
    };
    // The new zone first: key, consent and audit records, then the profile.
    let change = match &stored {
        Some(stored) => Some(reencrypt(&from, &to, user, stored, &mut moved).await?),
        None => None,
    };
    for record in &consents {
        to.profiles.store.append_consent(record).await?;
    }
    let trail = from.profiles.store.audit_trail(user).await?;
    moved.audit_records = trail.len();
    for record in &trail {
        to.profiles.store.append_audit(record).await?;
    }
    to.profiles
        .audit(actor, "zone_move", user, moved.reencrypted.clone())
        .await?;
    if let Some(change) = change {
        let outcome = to
            .profiles
            .store
            .apply(std::slice::from_ref(&change))
            .await?;
        if outcome.first() == Some(&WriteOutcome::Stale) {
            return Err(PrivacyError::Crypto(format!(
                "zone {} holds a newer version of user {user} than zone {}: move them the other way, or finish the newer zone's events first",
                to.name, from.name
            )));
        }
        if let Some(written) = to.profiles.store.get(user).await? {
            to.profiles
                .index
                .apply(&[to.profiles.projection.stored_op(&written)])
                .await?;
            to.profiles.index.commit().await?;
        }
    }
    Ok(moved)
}

/// The last step of a move, once the new zone holds everything ([`move_user`]): nothing of the
/// user is left in the old zone — the index document purged, every row removed, and the key
/// with it (its ciphertexts in backups can no longer be opened). Rows or items removed.
pub async fn leave_zone(from: &Profiles, user: Uuid, version: i64) -> Result<u64, PrivacyError> {
    from.index
        .apply(&[IndexOp::Erase {
            user_id: user,
            version,
        }])
        .await?;
    from.index.commit().await?;
    let removed = from.store.remove_user(user).await?;
    from.keys.forget(&user);
    Ok(removed)
}

/// The stored profile as the new zone stores it: the PII fields decrypted with the old zone's
/// key and sealed under the user's key in the new zone, the email's blind index under the new
/// zone's blind-index key.
async fn reencrypt(
    from: &ZoneProfiles<'_>,
    to: &ZoneProfiles<'_>,
    user: Uuid,
    stored: &StoredProfile,
    moved: &mut Moved,
) -> Result<ProtectedChange, PrivacyError> {
    let Some(record) = &stored.record else {
        // A delete's fence moves as it is.
        return Ok(ProtectedChange {
            user_id: user,
            version: stored.version,
            operation: Operation::Delete,
            occurred_at: stored.updated_at,
            record: None,
        });
    };
    let mut record = record.clone();
    if !record.encrypted.is_empty() {
        let plain = from.profiles.reveal(user, &record).await?;
        let key = match to
            .profiles
            .keys
            .for_users(&[user], true)
            .await?
            .remove(&user)
        {
            Some(Ok(key)) => key,
            Some(Err(reason)) => {
                return Err(PrivacyError::Crypto(format!(
                    "the new data key of user {user} in zone {}: {reason}",
                    to.name
                )))
            }
            None => {
                return Err(PrivacyError::Crypto(format!(
                    "no data key for user {user} could be made in zone {}",
                    to.name
                )))
            }
        };
        for (field, sealed) in record.encrypted.iter_mut() {
            let value = plain.get(field).unwrap_or(&Json::Null);
            let bytes = serde_json::to_vec(value).expect("JSON value serialises");
            *sealed = seal_field(&key.key, user, field, key.version, &bytes)
                .map_err(|e| PrivacyError::Crypto(e.to_string()))?;
            moved.reencrypted.push(field.clone());
        }
        record.key_version = key.version;
        record.email_index = plain.get("email").and_then(Json::as_str).map(|email| {
            to.profiles
                .keys
                .provider()
                .blind_index_for(user)
                .email(email)
        });
    }
    Ok(ProtectedChange {
        user_id: user,
        version: stored.version,
        operation: Operation::Upsert,
        occurred_at: record.occurred_at,
        record: Some(record),
    })
}
