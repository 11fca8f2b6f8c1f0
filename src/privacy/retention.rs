//! Retention: profiles inactive for too long are anonymised (erased: PII and key gone, a
//! tombstone left), and audit records past their time expire.

use super::{Actor, PrivacyError, Profiles};
use crate::config::RetentionConfig;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    pub as_of: DateTime<Utc>,
    /// Profiles whose last change is older than this were (or would be) anonymised.
    pub inactive_before: Option<DateTime<Utc>>,
    pub anonymised: Vec<Uuid>,
    /// Audit records older than this expired.
    pub audit_before: Option<DateTime<Utc>>,
    pub audit_expired: u64,
}

/// Applies the retention rules as of `as_of`; with `dry_run`, only reports what it would do.
pub async fn retention(
    ops: &Profiles,
    rules: &RetentionConfig,
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
        audit_before,
        audit_expired: 0,
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
                    ops.erase(profile.user_id, profile.version, "retention", fields, actor)
                        .await?;
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
    Ok(report)
}
