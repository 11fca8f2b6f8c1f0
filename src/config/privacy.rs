//! Consent purposes, events of erased users, retention.

use super::*;

/// Consent purposes, what happens to events for erased users, and retention.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The purposes users can consent to; a segment may need one of them.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// What to do with an event newer than a user's erasure: `refuse` dead-letters it with the
    /// reason "erased" (the default); `accept` starts a new profile with a new key.
    #[serde(default)]
    pub erased_user_events: ErasedUserEvents,
    #[serde(default)]
    pub retention: RetentionConfig,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ErasedUserEvents {
    #[default]
    Refuse,
    Accept,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Profiles with no change for this many days are anonymised (erased). None: never.
    #[serde(default)]
    pub inactive_profile_days: Option<u32>,
    /// Audit records older than this many days expire. None: kept forever.
    #[serde(default)]
    pub audit_days: Option<u32>,
}
