//! Retention: profiles inactive for too long are anonymised (erased: PII and key gone, a
//! tombstone left), audit records past their time expire, and so do the dead-letter keys of
//! days older than `dead_letter.retention_days` (the letters sealed under them become
//! unreadable).

use super::{Actor, PrivacyError, Profiles};
use crate::config::RetentionConfig;
use crate::stages::seal::expired_day_key_owners;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    pub as_of: DateTime<Utc>,
    /// Profiles whose last change is older than this were (or would be) anonymised.
    pub inactive_before: Option<DateTime<Utc>>,
    pub anonymised: Vec<Uuid>,
    /// Each anonymised user with its tombstone's version fence (not a dry run's).
    #[serde(skip)]
    pub fences: Vec<(Uuid, i64)>,
    /// Audit records older than this expired.
    pub audit_before: Option<DateTime<Utc>>,
    pub audit_expired: u64,
    /// The dead-letter keys of the days before this one were (or would be) deleted.
    pub dead_letter_keys_before: NaiveDate,
    pub dead_letter_keys_deleted: u64,
}

/// Applies the retention rules as of `as_of`; with `dry_run`, only reports what it would do.
pub async fn retention(
    ops: &Profiles,
    rules: &RetentionConfig,
    dead_letter_days: u32,
    as_of: DateTime<Utc>,
    dry_run: bool,
    actor: &Actor,
) -> Result<RetentionReport, PrivacyError> {
    let inactive_before = rules
        .inactive_profile_days
        .map(|d| as_of - Duration::days(i64::from(d)));
    let audit_before = rules
        .audit_days
        .map(|d| as_of - Duration::days(i64::from(d)));
    let mut report = RetentionReport {
        dry_run,
        as_of,
        inactive_before,
        anonymised: Vec::new(),
        fences: Vec::new(),
        audit_before,
        audit_expired: 0,
        dead_letter_keys_before: (as_of - Duration::days(i64::from(dead_letter_days))).date_naive(),
        dead_letter_keys_deleted: 0,
    };
    if let Some(cutoff) = inactive_before {
        let mut cursor = None;
        loop {
            let (page, next) = ops.store.scan(cursor, 500).await?;
            for profile in page {
                let Some(record) = &profile.record else {
                    continue;
                };
                if record.occurred_at >= cutoff {
                    continue;
                }
                if !dry_run {
                    let fields = record.encrypted.keys().cloned().collect();
                    let fence = ops
                        .erase(profile.user_id, profile.version, "retention", fields, actor)
                        .await?;
                    report.fences.push((profile.user_id, fence));
                }
                report.anonymised.push(profile.user_id);
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    }
    if let (Some(cutoff), false) = (audit_before, dry_run) {
        report.audit_expired = ops.store.expire_audit(cutoff).await?;
    }
    let owners: Vec<Uuid> = expired_day_key_owners(report.dead_letter_keys_before)
        .into_iter()
        .map(|(_, owner)| owner)
        .collect();
    report.dead_letter_keys_deleted = if dry_run {
        ops.store.user_keys(&owners).await?.len() as u64
    } else {
        let deleted = ops.store.shred_keys(&owners).await?;
        for owner in &owners {
            ops.keys.forget(owner);
        }
        deleted
    };
    Ok(report)
}
