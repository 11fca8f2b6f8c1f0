//! Right of access and portability: everything held about one user, in one JSON document.

use super::{Actor, PrivacyError, Profiles};
use crate::schema::{Catalog, Classification};
use crate::stores::consent_state;
use serde_json::{json, Value as Json};
use uuid::Uuid;

/// The user's profile with PII decrypted, derived fields, consent history and audit trail.
/// The export is audited before anything is decrypted, and the trail it returns includes it.
pub async fn export(
    ops: &Profiles,
    catalog: &Catalog,
    user: Uuid,
    actor: &Actor,
) -> Result<Json, PrivacyError> {
    let stored = ops.store.get(user).await?;
    let consents = ops.store.consent_history(user).await?;
    if stored.is_none() && consents.is_empty() {
        return Err(PrivacyError::NotFound(user));
    }
    let fields: Vec<String> = match stored.as_ref().and_then(|s| s.record.as_ref()) {
        Some(record) => catalog
            .top_level()
            .iter()
            .filter(|(name, class)| match class {
                Classification::Pii => record.encrypted.contains_key(name),
                _ => record.profile.contains_key(name),
            })
            .map(|(name, _)| name.clone())
            .collect(),
        None => Vec::new(),
    };
    ops.audit(actor, "export", user, fields).await?;
    let (profile, region, segments) = match stored.as_ref().and_then(|s| s.record.as_ref()) {
        Some(record) => (
            Json::Object(ops.reveal(user, record).await?),
            json!(record.region),
            json!(record.segments),
        ),
        None => (Json::Null, Json::Null, json!([])),
    };
    let audit = ops.store.audit_trail(user).await?;
    Ok(json!({
        "user_id": user,
        "exported_at": chrono::Utc::now(),
        "state": match &stored {
            Some(s) if s.erased_at.is_some() => "erased",
            Some(s) if s.record.is_none() => "deleted",
            Some(_) => "live",
            None => "no profile",
        },
        "version": stored.as_ref().map(|s| s.version),
        "updated_at": stored.as_ref().map(|s| s.updated_at),
        "erased_at": stored.as_ref().and_then(|s| s.erased_at),
        "profile": profile,
        "derived": {"region": region, "segments": segments},
        "consent": {"current": consent_state(&consents), "history": consents},
        "audit": audit,
    }))
}
