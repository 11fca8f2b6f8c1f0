//! The segment change port: personalization engines learn that a user entered or left a
//! segment without polling the store. A change is built from derived fields only (segment
//! names, the residency zone), like the index document, so the stream never holds PII.
//!
//! Delivery is at least once, after the store applied the change and before the batch is
//! acknowledged; a replay of a `(user_id, version)` carries the same content, so consumers
//! deduplicate by `(user_id, version, cause)`. The sink is told batches in order, so a user's
//! changes arrive in version order (the Kafka topic is keyed by user id).

mod file;
mod kafka;

pub use file::{read_lines, SegmentChangeFile};
pub use kafka::{SegmentChangeTopic, SegmentChangeTopicSettings};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The file, inside the schema folder, holding the Avro schema of a segment change.
pub const SCHEMA_FILE: &str = "segment_change.avsc";

/// What changed a user's segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Cause {
    Upsert,
    Delete,
    Erase,
    Consent,
    /// Not a change: the membership `segments backfill` found in the store.
    Snapshot,
}

impl Cause {
    /// The Avro enum symbols, in the schema's order.
    pub const SYMBOLS: [&'static str; 5] = ["UPSERT", "DELETE", "ERASE", "CONSENT", "SNAPSHOT"];

    pub fn symbol(self) -> &'static str {
        Self::SYMBOLS[self as usize]
    }

    fn from_symbol(symbol: &str) -> Option<Self> {
        [
            Cause::Upsert,
            Cause::Delete,
            Cause::Erase,
            Cause::Consent,
            Cause::Snapshot,
        ]
        .into_iter()
        .find(|c| c.symbol() == symbol)
    }
}

/// One change of a user's segment membership (or, marked [`Cause::Snapshot`], the current one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentChange {
    pub user_id: Uuid,
    pub version: i64,
    #[serde(with = "millis_text")]
    pub occurred_at: DateTime<Utc>,
    pub cause: Cause,
    pub entered: Vec<String>,
    pub exited: Vec<String>,
    /// The whole set after the change, sorted.
    pub segments: Vec<String>,
    pub residency_zone: Option<String>,
    /// With residency zones: the zone holding the user's data (stamped by the zoned sink, which
    /// sends the change to that zone's feed where it has one). Unlike `residency_zone`, which is
    /// derived from the user's latest address, it changes only with a zone move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The identity of the event that changed a user's segments.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub user_id: Uuid,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    pub cause: Cause,
}

impl SegmentChange {
    /// The change from `before` to `after` (sets of a few names; sorted or not); `None` when
    /// the set is the same.
    pub fn between(
        origin: Origin,
        before: &[String],
        after: &[String],
        residency_zone: Option<&str>,
    ) -> Option<Self> {
        let entered: Vec<String> = after
            .iter()
            .filter(|s| !before.contains(s))
            .cloned()
            .collect();
        let exited: Vec<String> = before
            .iter()
            .filter(|s| !after.contains(s))
            .cloned()
            .collect();
        if entered.is_empty() && exited.is_empty() {
            return None;
        }
        let sorted = |mut v: Vec<String>| {
            v.sort_unstable();
            v.dedup();
            v
        };
        Some(Self {
            user_id: origin.user_id,
            version: origin.version,
            occurred_at: origin.occurred_at,
            cause: origin.cause,
            entered: sorted(entered),
            exited: sorted(exited),
            segments: sorted(after.to_vec()),
            residency_zone: residency_zone.map(str::to_string),
            zone: None,
        })
    }

    /// The change the event `origin` names made when it was first applied, rebuilt from the
    /// stored `history`; `None` when the history does not hold it (never applied, too old, or
    /// it changed no segment).
    pub fn again(
        origin: Origin,
        history: &crate::event::SegmentHistory,
        declared: &[String],
    ) -> Option<Self> {
        let (step, before) = history.find(origin.version)?;
        if step.gone {
            return Some(Self::gone(origin, declared));
        }
        Self::between(origin, before?, &step.segments, step.zone.as_deref())
    }

    /// A delete or an erasure: the user leaves every `declared` segment. The tombstone keeps
    /// nothing about the user, so this content is the same on every delivery.
    pub fn gone(origin: Origin, declared: &[String]) -> Self {
        let mut exited = declared.to_vec();
        exited.sort();
        Self {
            user_id: origin.user_id,
            version: origin.version,
            occurred_at: origin.occurred_at,
            cause: origin.cause,
            entered: Vec::new(),
            exited,
            segments: Vec::new(),
            residency_zone: None,
            zone: None,
        }
    }

    /// The current membership of a stored user, for `segments backfill`.
    pub fn snapshot(
        user_id: Uuid,
        version: i64,
        occurred_at: DateTime<Utc>,
        segments: &[String],
        residency_zone: Option<&str>,
    ) -> Self {
        let mut segments = segments.to_vec();
        segments.sort();
        Self {
            user_id,
            version,
            occurred_at,
            cause: Cause::Snapshot,
            entered: segments.clone(),
            exited: Vec::new(),
            segments,
            residency_zone: residency_zone.map(str::to_string),
            zone: None,
        }
    }

    /// The JSON line of the file sink.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a segment change serialises")
    }

    /// The Avro datum under `schema` ([`SCHEMA_FILE`]).
    pub fn to_avro(&self, schema: &apache_avro::Schema) -> Result<Vec<u8>, SegmentChangeError> {
        use apache_avro::types::Value;
        let strings =
            |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
        let optional = |v: &Option<String>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(z) => Value::Union(1, Box::new(Value::String(z.clone()))),
        };
        let value = Value::Record(vec![
            ("user_id".into(), Value::Uuid(self.user_id)),
            ("version".into(), Value::Long(self.version)),
            (
                "occurred_at".into(),
                Value::TimestampMillis(self.occurred_at.timestamp_millis()),
            ),
            (
                "cause".into(),
                Value::Enum(self.cause as u32, self.cause.symbol().into()),
            ),
            ("entered".into(), strings(&self.entered)),
            ("exited".into(), strings(&self.exited)),
            ("segments".into(), strings(&self.segments)),
            ("residency_zone".into(), optional(&self.residency_zone)),
            ("zone".into(), optional(&self.zone)),
        ]);
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .map_err(|e| {
            SegmentChangeError(format!(
                "a segment change does not fit {SCHEMA_FILE} ({}): is the schema file the one this version ships?",
                crate::schema::avro_error_kind(&e)
            ))
        })
    }

    /// A datum written with `writer`, read as this version's schema `reader` expects.
    pub fn from_avro(
        mut datum: &[u8],
        writer: &apache_avro::Schema,
        reader: &apache_avro::Schema,
    ) -> Result<Self, SegmentChangeError> {
        use apache_avro::types::Value;
        let bad = |what: &str| SegmentChangeError(format!("not a segment change: {what}"));
        let value = apache_avro::reader::datum::GenericDatumReader::builder(writer)
            .reader_schema(reader)
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .map_err(|e| bad(&crate::schema::avro_error_kind(&e)))?;
        let Value::Record(fields) = value else {
            return Err(bad("not a record"));
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| bad(name))
        };
        let optional = |name: &str| {
            Ok(match field(name)? {
                Value::Union(_, v) => match v.as_ref() {
                    Value::String(z) => Some(z.clone()),
                    _ => None,
                },
                _ => None,
            })
        };
        let strings = |name: &str| match field(name)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(bad(name)),
                })
                .collect(),
            _ => Err(bad(name)),
        };
        Ok(Self {
            user_id: match field("user_id")? {
                Value::Uuid(u) => *u,
                Value::String(s) => Uuid::parse_str(s).map_err(|_| bad("user_id"))?,
                _ => return Err(bad("user_id")),
            },
            version: match field("version")? {
                Value::Long(v) => *v,
                _ => return Err(bad("version")),
            },
            occurred_at: match field("occurred_at")? {
                Value::TimestampMillis(ms) => {
                    DateTime::from_timestamp_millis(*ms).ok_or_else(|| bad("occurred_at"))?
                }
                _ => return Err(bad("occurred_at")),
            },
            cause: match field("cause")? {
                Value::Enum(_, symbol) => Cause::from_symbol(symbol).ok_or_else(|| bad("cause"))?,
                _ => return Err(bad("cause")),
            },
            entered: strings("entered")?,
            exited: strings("exited")?,
            segments: strings("segments")?,
            residency_zone: optional("residency_zone")?,
            zone: optional("zone")?,
        })
    }
}

/// Loads the segment change schema from the schema folder.
pub fn load_schema(dir: &std::path::Path) -> Result<(apache_avro::Schema, String), String> {
    let path = dir.join(SCHEMA_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let schema = apache_avro::Schema::parse_str(&text)
        .map_err(|e| format!("{} is not a valid Avro schema: {e}", path.display()))?;
    Ok((schema, text))
}

/// RFC 3339 text with milliseconds, as the other JSON files profile-sync writes.
mod millis_text {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SegmentChangeError(pub String);

#[async_trait]
pub trait SegmentChangeSink: Send + Sync {
    /// Makes `changes` durable, in order. Called with batches in order, one at a time, so a
    /// user's changes reach the sink in version order.
    async fn send(&self, changes: Vec<SegmentChange>) -> Result<(), SegmentChangeError>;

    /// Where the changes go, for logs and `check`.
    fn describe(&self) -> String;

    /// Preflight: can changes be written there?
    async fn check(&self) -> Result<String, String> {
        Ok(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(cause: Cause) -> Origin {
        Origin {
            user_id: Uuid::from_u128(7),
            version: 3,
            occurred_at: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            cause,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_change_names_what_was_entered_and_exited_and_the_whole_set_after() {
        let c = SegmentChange::between(
            origin(Cause::Upsert),
            &names(&["paying", "dormant"]),
            &names(&["paying", "high_value"]),
            Some("EU"),
        )
        .unwrap();
        assert_eq!(c.entered, names(&["high_value"]));
        assert_eq!(c.exited, names(&["dormant"]));
        assert_eq!(c.segments, names(&["high_value", "paying"]));
        assert!(SegmentChange::between(
            origin(Cause::Upsert),
            &names(&["a", "b"]),
            &names(&["b", "a"]),
            None
        )
        .is_none());
    }

    #[test]
    fn avro_and_json_lines_give_back_the_same_change() {
        let (schema, _) = load_schema(std::path::Path::new("schemas")).unwrap();
        for change in [
            SegmentChange::between(
                origin(Cause::Consent),
                &[],
                &names(&["newsletter_audience"]),
                Some("US"),
            )
            .unwrap(),
            SegmentChange::gone(origin(Cause::Erase), &names(&["b", "a"])),
        ] {
            let datum = change.to_avro(&schema).unwrap();
            assert_eq!(
                SegmentChange::from_avro(&datum, &schema, &schema).unwrap(),
                change
            );
            let back: SegmentChange = serde_json::from_str(&change.to_line()).unwrap();
            assert_eq!(back, change);
        }
    }
}
