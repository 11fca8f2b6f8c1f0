//! The single-table item layout (documented in ARCHITECTURE.md): how each stored value maps
//! to a DynamoDB item and back. Nothing here talks to DynamoDB.

use crate::event::{Operation, ProtectedChange, ProtectedRecord, SegmentHistory};
use crate::stores::WrappedUserKey;
use crate::stores::{AuditRecord, ConsentRecord, StoreError, StoredProfile, StoredSegments};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use uuid::Uuid;

pub type Item = HashMap<String, AttributeValue>;

pub const PK: &str = "pk";
pub const SK: &str = "sk";
pub const PROFILE: &str = "PROFILE";
pub const KEY: &str = "KEY";
pub const CONSENT_PREFIX: &str = "CONSENT#";
pub const AUDIT_PREFIX: &str = "AUDIT#";
/// `AUDIT_ID#<id>`: one per audit record, written with it, so that a record appended again
/// (a retried erasure, a redelivered event) is found by its id although its `at` differs.
pub const AUDIT_ID_PREFIX: &str = "AUDIT_ID#";
pub const EMAIL_INDEX: &str = "email_index";
/// The GSI on `email_index` (sparse: only live profiles with an email carry the attribute).
pub const EMAIL_GSI: &str = "by_email_index";
/// The TTL attribute (epoch seconds) of audit records.
pub const TTL: &str = "expires_at";
/// The partition of table-wide settings (the KMS-encrypted blind-index key).
pub const SETTINGS_PK: &str = "SETTINGS";

pub fn user_pk(user: Uuid) -> String {
    format!("USER#{}", user.hyphenated())
}

pub fn key_of(pk: String, sk: &str) -> Item {
    HashMap::from([
        (PK.into(), AttributeValue::S(pk)),
        (SK.into(), AttributeValue::S(sk.into())),
    ])
}

pub fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn bad(what: &str, name: &str) -> StoreError {
    StoreError::Failed(format!(
        "a stored {what} item has no valid `{name}` attribute: was the table written by another program?"
    ))
}

pub fn get_s<'a>(item: &'a Item, what: &str, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(bad(what, name)),
    }
}

pub fn opt_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

pub fn get_n(item: &Item, what: &str, name: &str) -> Result<i64, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| bad(what, name)),
        _ => Err(bad(what, name)),
    }
}

pub fn get_b<'a>(item: &'a Item, what: &str, name: &str) -> Result<&'a [u8], StoreError> {
    match item.get(name) {
        Some(AttributeValue::B(v)) => Ok(v.as_ref()),
        _ => Err(bad(what, name)),
    }
}

fn get_uuid(item: &Item, what: &str, name: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(get_s(item, what, name)?).map_err(|_| bad(what, name))
}

fn parse_ts(v: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn strings(values: &[String]) -> AttributeValue {
    AttributeValue::L(values.iter().cloned().map(AttributeValue::S).collect())
}

fn get_strings(item: &Item, name: &str) -> Vec<String> {
    match item.get(name) {
        Some(AttributeValue::L(l)) => l.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
        _ => Vec::new(),
    }
}

/// The item of a profile change: the whole record as JSON in `record`, and the derived
/// fields (region, segments) as top-level attributes so any DynamoDB client can read them.
pub fn profile_item(change: &ProtectedChange) -> Item {
    let mut item = key_of(user_pk(change.user_id), PROFILE);
    item.insert("user_id".into(), s(change.user_id.hyphenated().to_string()));
    item.insert("version".into(), n(change.version));
    item.insert("updated_at".into(), s(ts(&change.occurred_at)));
    let record = match (change.operation, &change.record) {
        (Operation::Upsert, Some(r)) => Some(r),
        _ => None,
    };
    item.insert("deleted".into(), AttributeValue::Bool(record.is_none()));
    if let Some(r) = record {
        item.insert(
            "record".into(),
            s(serde_json::to_string(r).expect("a record serialises")),
        );
        item.insert("key_version".into(), n(r.key_version));
        item.insert("segments".into(), strings(&r.segments));
        if let Some(history) = &r.segment_history {
            item.insert(
                "segment_history".into(),
                s(serde_json::to_string(history).expect("a history serialises")),
            );
        }
        item.insert("country".into(), s(r.region.country.clone()));
        item.insert("continent".into(), s(r.region.continent.clone()));
        item.insert("residency_zone".into(), s(r.region.residency_zone.clone()));
        if let Some(sub) = &r.region.subdivision {
            item.insert("subdivision".into(), s(sub.clone()));
        }
        if let Some(e) = r.email_index.as_deref().filter(|e| !e.is_empty()) {
            item.insert(EMAIL_INDEX.into(), s(e));
        }
    }
    item
}

/// The segment attributes of a profile item read for the segment change feed.
pub fn parse_segments(item: &Item) -> Result<(Uuid, StoredSegments), StoreError> {
    let live = !matches!(item.get("deleted"), Some(AttributeValue::Bool(true)));
    Ok((
        get_uuid(item, "profile", "user_id")?,
        StoredSegments {
            version: get_n(item, "profile", "version")?,
            live,
            segments: get_strings(item, "segments"),
            history: segment_history(item)?,
        },
    ))
}

/// The tombstone an erasure leaves: a version fence with `erased_at`, no record, no email.
pub fn tombstone_item(user: Uuid, fence: i64, at: &DateTime<Utc>) -> Item {
    let mut item = key_of(user_pk(user), PROFILE);
    item.insert("user_id".into(), s(user.hyphenated().to_string()));
    item.insert("version".into(), n(fence));
    item.insert("deleted".into(), AttributeValue::Bool(true));
    item.insert("updated_at".into(), s(ts(at)));
    item.insert("erased_at".into(), s(ts(at)));
    item
}

/// The `segment_history` attribute (JSON), written beside the record with the feed on.
fn segment_history(item: &Item) -> Result<Option<SegmentHistory>, StoreError> {
    opt_s(item, "segment_history")
        .map(serde_json::from_str)
        .transpose()
        .map_err(|_| bad("profile", "segment_history"))
}

pub fn parse_profile(item: &Item) -> Result<StoredProfile, StoreError> {
    let user_id = get_uuid(item, "profile", "user_id")?;
    let record = match opt_s(item, "record") {
        Some(text) => {
            let mut record = serde_json::from_str::<ProtectedRecord>(text).map_err(|e| {
                StoreError::Failed(format!(
                    "stored record of user {user_id} does not parse: {}",
                    e.classify_name()
                ))
            })?;
            record.segment_history = segment_history(item)?;
            Some(record)
        }
        None => None,
    };
    Ok(StoredProfile {
        user_id,
        version: get_n(item, "profile", "version")?,
        record,
        updated_at: parse_ts(get_s(item, "profile", "updated_at")?),
        erased_at: opt_s(item, "erased_at").map(parse_ts),
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// The kind of a JSON error, never the text it quotes.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

pub fn key_item(key: &WrappedUserKey) -> Item {
    let mut item = key_of(user_pk(key.user_id), KEY);
    item.insert("user_id".into(), s(key.user_id.hyphenated().to_string()));
    item.insert("key_version".into(), n(key.key_version));
    item.insert("provider".into(), s(key.provider.clone()));
    item.insert("kek_id".into(), s(key.kek_id.clone()));
    item.insert(
        "encrypted_kek".into(),
        AttributeValue::B(Blob::new(key.encrypted_kek.clone())),
    );
    item.insert(
        "wrapped_key".into(),
        AttributeValue::B(Blob::new(key.wrapped_key.clone())),
    );
    item.insert("created_at".into(), s(ts(&key.created_at)));
    item
}

pub fn parse_key(item: &Item) -> Result<WrappedUserKey, StoreError> {
    const W: &str = "user key";
    Ok(WrappedUserKey {
        user_id: get_uuid(item, W, "user_id")?,
        key_version: u32::try_from(get_n(item, W, "key_version")?)
            .map_err(|_| bad(W, "key_version"))?,
        provider: get_s(item, W, "provider")?.into(),
        kek_id: get_s(item, W, "kek_id")?.into(),
        encrypted_kek: get_b(item, W, "encrypted_kek")?.to_vec(),
        wrapped_key: get_b(item, W, "wrapped_key")?.to_vec(),
        created_at: parse_ts(get_s(item, W, "created_at")?),
    })
}

/// Sorts by version as text: the i64 shifted to unsigned, zero-padded to 20 digits.
fn sortable(version: i64) -> String {
    format!("{:020}", (version as i128 - i64::MIN as i128) as u64)
}

pub fn consent_sk(r: &ConsentRecord) -> String {
    format!(
        "{CONSENT_PREFIX}{}#{}#{}",
        sortable(r.version),
        r.purpose,
        r.event_id.hyphenated()
    )
}

pub fn consent_item(r: &ConsentRecord) -> Item {
    let mut item = key_of(user_pk(r.user_id), &consent_sk(r));
    item.insert("user_id".into(), s(r.user_id.hyphenated().to_string()));
    item.insert("purpose".into(), s(r.purpose.clone()));
    item.insert("granted".into(), AttributeValue::Bool(r.granted));
    item.insert("policy_version".into(), s(r.policy_version.clone()));
    item.insert("source".into(), s(r.source.clone()));
    item.insert("occurred_at".into(), s(ts(&r.occurred_at)));
    item.insert("version".into(), n(r.version));
    item.insert("event_id".into(), s(r.event_id.hyphenated().to_string()));
    item
}

pub fn parse_consent(item: &Item) -> Result<ConsentRecord, StoreError> {
    const W: &str = "consent";
    Ok(ConsentRecord {
        user_id: get_uuid(item, W, "user_id")?,
        purpose: get_s(item, W, "purpose")?.into(),
        granted: matches!(item.get("granted"), Some(AttributeValue::Bool(true))),
        policy_version: get_s(item, W, "policy_version")?.into(),
        source: get_s(item, W, "source")?.into(),
        occurred_at: parse_ts(get_s(item, W, "occurred_at")?),
        version: get_n(item, W, "version")?,
        event_id: get_uuid(item, W, "event_id")?,
    })
}

pub fn audit_item(r: &AuditRecord, retention_days: u64) -> Item {
    let sk = format!("{AUDIT_PREFIX}{}#{}", ts(&r.at), r.id.hyphenated());
    let mut item = key_of(user_pk(r.user_id), &sk);
    item.insert("id".into(), s(r.id.hyphenated().to_string()));
    item.insert("at".into(), s(ts(&r.at)));
    item.insert("actor".into(), s(r.actor.clone()));
    item.insert("action".into(), s(r.action.clone()));
    item.insert("user_id".into(), s(r.user_id.hyphenated().to_string()));
    item.insert("fields".into(), strings(&r.fields));
    item.insert("reason".into(), s(r.reason.clone()));
    item.insert(
        "request_id".into(),
        s(r.request_id.hyphenated().to_string()),
    );
    item.insert(TTL.into(), n(audit_expiry(r, retention_days)));
    item
}

/// When an audit record (and its marker) expires: the TTL attribute, epoch seconds.
fn audit_expiry(r: &AuditRecord, retention_days: u64) -> i64 {
    r.at.timestamp() + (retention_days.min(100_000) as i64) * 86_400
}

/// The marker that says audit record `r` is stored (same TTL as the record).
pub fn audit_marker(r: &AuditRecord, retention_days: u64) -> Item {
    let mut item = key_of(user_pk(r.user_id), &audit_marker_sk(r.id));
    item.insert("at".into(), s(ts(&r.at)));
    item.insert(TTL.into(), n(audit_expiry(r, retention_days)));
    item
}

pub fn audit_marker_sk(id: uuid::Uuid) -> String {
    format!("{AUDIT_ID_PREFIX}{}", id.hyphenated())
}

pub fn parse_audit(item: &Item) -> Result<AuditRecord, StoreError> {
    const W: &str = "audit";
    Ok(AuditRecord {
        id: get_uuid(item, W, "id")?,
        at: parse_ts(get_s(item, W, "at")?),
        actor: get_s(item, W, "actor")?.into(),
        action: get_s(item, W, "action")?.into(),
        user_id: get_uuid(item, W, "user_id")?,
        fields: get_strings(item, "fields"),
        reason: get_s(item, W, "reason")?.into(),
        request_id: get_uuid(item, W, "request_id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_sort_keys_order_by_version_numerically() {
        let mut versions = [i64::MAX, 10, -3, 2, 0, i64::MIN, 100];
        let mut keys: Vec<String> = versions.iter().map(|v| sortable(*v)).collect();
        keys.sort();
        versions.sort();
        assert_eq!(
            keys,
            versions.iter().map(|v| sortable(*v)).collect::<Vec<_>>()
        );
    }
}
