//! The domain values that flow between the stages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Profile fields by name, as JSON values. Timestamps are RFC 3339 text, dates `YYYY-MM-DD`.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// One decoded and validated change to one user's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileChange {
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub operation: Operation,
    /// Per-user, strictly increasing: the highest version wins.
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    /// The whole profile after the change; only for an upsert.
    pub profile: Option<Fields>,
    /// The consent decision; only for a consent event.
    pub consent: Option<ConsentChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Upsert,
    Delete,
    /// Crypto-shred the user: key deleted, profile replaced by a tombstone.
    Erase,
    /// A consent decision for one purpose.
    Consent,
}

/// A consent decision carried by a consent event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentChange {
    pub purpose: String,
    pub granted: bool,
    pub policy_version: String,
}

/// Where the user was last seen, derived from the IP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// ISO 3166-1 alpha-2, or `unknown`.
    pub country: String,
    /// ISO 3166-2 suffix (e.g. `BY` for DE-BY), when the database has one.
    pub subdivision: Option<String>,
    /// MaxMind continent code (EU, NA, …), or `unknown`.
    pub continent: String,
    /// A zone from the pipeline file's residency map, `OTHER`, or `unknown`.
    pub residency_zone: String,
}

impl Region {
    pub const UNKNOWN: &'static str = "unknown";

    /// A derived region field by the name rules and the index use (`country`, `subdivision`,
    /// `continent`, `residency_zone`); `None` for a field without a value or another name.
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "country" => Some(&self.country),
            "subdivision" => self.subdivision.as_deref(),
            "continent" => Some(&self.continent),
            "residency_zone" => Some(&self.residency_zone),
            _ => None,
        }
    }

    /// The explicit region of an IP that is missing, private or not in the database.
    pub fn unknown() -> Self {
        Self {
            country: Self::UNKNOWN.into(),
            subdivision: None,
            continent: Self::UNKNOWN.into(),
            residency_zone: Self::UNKNOWN.into(),
        }
    }
}

/// A change with its derived fields.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichedChange {
    pub change: ProfileChange,
    /// `None` for a delete.
    pub region: Option<Region>,
    /// Sorted segment names.
    pub segments: Vec<String>,
}

/// The stage an event was rejected in; written to the dead-letter sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Source,
    Decode,
    Enrich,
    Protect,
    Project,
    Store,
    Index,
    /// Consent and erasure rules (e.g. an event for an erased user).
    Privacy,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Decode => "decode",
            Stage::Enrich => "enrich",
            Stage::Protect => "protect",
            Stage::Project => "project",
            Stage::Store => "store",
            Stage::Index => "index",
            Stage::Privacy => "privacy",
        }
    }
}

/// Why an event cannot be applied. Reasons name fields and rules, never values: they are
/// written to dead-letter records and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub stage: Stage,
    /// A short machine-readable class: `malformed`, `schema`, `invalid`, `rule`, `key`, `rejected`.
    pub class: &'static str,
    pub reason: String,
    /// The event's user, when the event got far enough to name one (its dead letter is sealed
    /// under that user's key).
    pub user_id: Option<Uuid>,
}

impl Rejection {
    pub fn new(stage: Stage, class: &'static str, reason: impl Into<String>) -> Self {
        Self {
            stage,
            class,
            reason: reason.into(),
            user_id: None,
        }
    }

    /// The same rejection, of `user`'s event.
    pub fn of_user(self, user: Option<Uuid>) -> Self {
        Self {
            user_id: user,
            ..self
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.stage.as_str(),
            self.class,
            self.reason
        )
    }
}

/// A profile as the canonical store holds it: public and sensitive fields as they are, PII
/// fields only as ciphertexts (see ARCHITECTURE.md for the format), and the derived fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectedRecord {
    pub event_id: Uuid,
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    /// Public and sensitive profile fields.
    pub profile: Fields,
    /// PII field name → ciphertext. A PII field that was null has no entry.
    pub encrypted: std::collections::BTreeMap<String, String>,
    /// The version of the user key the ciphertexts are bound to.
    pub key_version: u32,
    pub region: Region,
    pub segments: Vec<String>,
    /// The user's recent segment changes, when the segment change feed is on: a redelivery
    /// of one of those versions emits its change again, with the same content. Stored beside
    /// the record (its own column or attribute), not in its JSON: the feed reads it before
    /// every write, and a small value of its own is read without parsing the whole record.
    #[serde(skip)]
    pub segment_history: Option<SegmentHistory>,
    /// HMAC of the normalised email, for lookup by email (see `crypto::BlindIndexKey`).
    #[serde(default)]
    pub email_index: Option<String>,
}

/// A change ready for the sinks: nothing in it is plaintext PII.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectedChange {
    pub user_id: Uuid,
    pub version: i64,
    pub operation: Operation,
    pub occurred_at: DateTime<Utc>,
    /// `None` for a delete.
    pub record: Option<ProtectedRecord>,
}

/// The last [`SegmentHistory::KEPT`] changes of a user's segment set, kept in the stored record
/// so that events delivered again (after a crash between the store and the segment feed) emit
/// the changes they made the first time, even when later versions are stored already.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHistory {
    /// The set before the first step, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Vec<String>>,
    #[serde(default)]
    pub steps: Vec<SegmentStep>,
}

/// One change of the set: the version that made it, the set after it and the zone then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStep {
    #[serde(rename = "v")]
    pub version: i64,
    /// The set after this version (empty for a delete).
    #[serde(rename = "s", default)]
    pub segments: Vec<String>,
    #[serde(rename = "z", default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// A delete: the user left every segment (a profile stored again after it starts here).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
}

impl SegmentHistory {
    /// Steps kept per user: a redelivery further back than this emits nothing.
    pub const KEPT: usize = 16;

    /// The history of a profile first stored with `before` (empty for a new user).
    pub fn starting_from(before: Vec<String>) -> Self {
        Self {
            base: Some(before),
            steps: Vec::new(),
        }
    }

    /// The history of a profile stored again after the delete at `version`.
    pub fn after_delete(version: i64) -> Self {
        Self {
            base: None,
            steps: vec![SegmentStep {
                version,
                segments: Vec::new(),
                zone: None,
                gone: true,
            }],
        }
    }

    /// Records a change; the oldest step goes when more than [`Self::KEPT`] are held.
    pub fn push(&mut self, step: SegmentStep) {
        self.steps.push(step);
        if self.steps.len() > Self::KEPT {
            let dropped = self.steps.remove(0);
            self.base = Some(dropped.segments);
        }
    }

    /// The set after the last step: the stored set of the record this history is kept with.
    pub fn current(&self) -> &[String] {
        match self.steps.last() {
            Some(step) => &step.segments,
            None => self.base.as_deref().unwrap_or_default(),
        }
    }

    /// The step of `version`, and the set before it when known.
    pub fn find(&self, version: i64) -> Option<(&SegmentStep, Option<&[String]>)> {
        let i = self.steps.iter().position(|s| s.version == version)?;
        let before = match i {
            0 => self.base.as_deref(),
            _ => Some(self.steps[i - 1].segments.as_slice()),
        };
        Some((&self.steps[i], before))
    }
}
