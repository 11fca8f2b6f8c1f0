//! The dead-letter port: where events that cannot be applied go, with the reason, so that
//! nothing that fails is dropped silently and every event can be replayed after a fix. The
//! payloads reach a sink sealed (see [`Sealing`]): a dead letter holds no plaintext PII.

mod file;
mod kafka;

pub use file::{read_letters, DeadLetterFile, LetterLine};
pub use kafka::{DeadLetterTopic, HEADER_PREFIX, SEALING_HEADER, VALUE_OMITTED, ZONE_HEADER};

use crate::event::Stage;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// One event that could not be applied. `reason` names fields and rules, never values.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub at: DateTime<Utc>,
    /// Where the event was read (file and line, topic/partition@offset).
    pub position: String,
    pub stage: Stage,
    pub class: &'static str,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    /// The original bytes sealed as `sealing` says (`nonce ‖ ciphertext ‖ tag`); empty when
    /// withheld.
    pub payload: Vec<u8>,
    pub sealing: Sealing,
    /// The source's topic/partition/offset and original headers, when it has them.
    pub meta: crate::sources::RecordMeta,
    /// With residency zones, the zone whose key seals the payload (the user's zone; the
    /// default zone for a day key). Its sink is that zone's, where the zone has one.
    pub zone: Option<String>,
}

/// Under which key a dead letter's payload is sealed. Its text form (`user:<uuid>:<version>`,
/// `day:<yyyy-mm-dd>:<version>`, `withheld`) is what the sinks write beside the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// The data key of the event's user: erasing the user shreds the dead letter too.
    User { user_id: Uuid, key_version: u32 },
    /// The dead-letter key of a UTC day, for events whose user is not known (they did not
    /// decode); `retention run` deletes it `dead_letter.retention_days` after that day.
    Day { day: NaiveDate, key_version: u32 },
    /// Nothing kept: the event's user was erased.
    Withheld,
}

impl std::fmt::Display for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sealing::User {
                user_id,
                key_version,
            } => write!(f, "user:{user_id}:{key_version}"),
            Sealing::Day { day, key_version } => write!(f, "day:{day}:{key_version}"),
            Sealing::Withheld => f.write_str("withheld"),
        }
    }
}

impl std::str::FromStr for Sealing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a dead-letter sealing (user:UUID:N, day:DATE:N or withheld)");
        if s == "withheld" {
            return Ok(Sealing::Withheld);
        }
        let mut parts = s.splitn(3, ':');
        let (Some(kind), Some(owner), Some(version)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let key_version: u32 = version.parse().map_err(|_| bad())?;
        match kind {
            "user" => Ok(Sealing::User {
                user_id: owner.parse().map_err(|_| bad())?,
                key_version,
            }),
            "day" => Ok(Sealing::Day {
                day: owner.parse().map_err(|_| bad())?,
                key_version,
            }),
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("dead-letter sink failed: {0}")]
pub struct DeadLetterError(pub String);

/// What a preflight of the sink found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkProblem {
    /// Not reachable now (a broker down): worth waiting for.
    Unreachable(String),
    /// It answered, and it cannot take dead letters (no such topic, no right to write): a
    /// worker would never get past its first dead letter.
    Refused(String),
}

impl std::fmt::Display for SinkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkProblem::Unreachable(m) | SinkProblem::Refused(m) => f.write_str(m),
        }
    }
}

#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Preflight: can dead letters be written? Never includes secrets.
    async fn check(&self) -> Result<String, SinkProblem>;

    /// Stores the letters durably before returning: only then may their events be acknowledged.
    /// A permanent failure (the sink refuses them) is returned at once, not retried.
    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), DeadLetterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealing_reads_back_from_its_text() {
        for sealing in [
            Sealing::User {
                user_id: Uuid::new_v4(),
                key_version: 3,
            },
            Sealing::Day {
                day: NaiveDate::from_ymd_opt(2026, 12, 4).unwrap(),
                key_version: 1,
            },
            Sealing::Withheld,
        ] {
            assert_eq!(sealing.to_string().parse::<Sealing>(), Ok(sealing));
        }
        for junk in [
            "",
            "user",
            "user:x:1",
            "day:2026-13-01:1",
            "user:00000000-0000-0000-0000-000000000000:x",
            "key:a:1",
        ] {
            assert!(junk.parse::<Sealing>().is_err(), "{junk}");
        }
    }
}
