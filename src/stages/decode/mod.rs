//! Decode and validate: raw bytes in, a [`ProfileChange`] or a [`Rejection`] out.
//!
//! Binary Avro is resolved from its writer schema to the reader schema in `schemas/`, so
//! producers that add fields with defaults, drop fields or rename with aliases keep working.
//! A datum written with the reader schema itself is read directly into the change
//! ([`direct`]); the others through an Avro `Value` tree.

mod direct;

use crate::event::{ConsentChange, Fields, Operation, ProfileChange, Rejection, Stage};
use crate::schema::{avro_error_kind, avro_json_to_value};
use crate::sources::Payload;
use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

/// Emails longer than this are refused (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;

pub use crate::schema::{limit_allocations, MAX_DATUM_ALLOCATION};

/// Writer schemas remembered (sources hold one `Arc` per schema they know, so a handful
/// suffice); past this the oldest is forgotten.
const KNOWN_WRITERS: usize = 16;

type GenericReader<'s> = apache_avro::reader::datum::GenericDatumReader<'s>;

self_cell::self_cell!(
    /// A datum reader for one writer schema, built once: building one resolves every named
    /// type of its schemas, which cost as much as decoding a datum. Owns the schemas it reads
    /// with: the writer's and the reader's when datums must be resolved, else the reader's.
    struct DatumReader {
        owner: (Arc<Schema>, Option<Arc<Schema>>),
        #[covariant]
        dependent: GenericReader,
    }
);

impl DatumReader {
    fn prepare(
        schema: Arc<Schema>,
        resolve_to: Option<Arc<Schema>>,
    ) -> apache_avro::AvroResult<Self> {
        Self::try_new((schema, resolve_to), |(schema, resolve_to)| {
            GenericReader::builder(schema)
                .maybe_reader_schema(resolve_to.as_deref())
                .build()
        })
    }

    fn resolves(&self) -> bool {
        self.borrow_owner().1.is_some()
    }
}

/// Writer schemas seen (by `Arc` identity), each with its reader.
type KnownWriters = Arc<RwLock<Vec<(Arc<Schema>, Arc<DatumReader>)>>>;

#[derive(Clone)]
pub struct Decoder {
    reader: Arc<Schema>,
    writers: KnownWriters,
    /// How datums of the reader schema itself are read directly, unless its shape rules it out.
    direct: Option<Arc<direct::Direct>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("reader", &self.reader.name())
            .finish_non_exhaustive()
    }
}

impl Decoder {
    pub fn new(reader: Schema) -> Self {
        limit_allocations();
        Self {
            direct: direct::Direct::for_schema(&reader).map(Arc::new),
            reader: Arc::new(reader),
            writers: Arc::default(),
        }
    }

    /// The reader for datums of `writer`, prepared on first sight of it. Datums are resolved
    /// to the reader schema unless both schemas have the same Parsing Canonical Form: the binary
    /// encoding depends only on what that form keeps (names, types, field order, symbols,
    /// sizes), so such datums are read with the reader schema directly, which gives what
    /// resolution would (the reader's logical types and defaults) at half the cost.
    fn datum_reader(&self, writer: &Arc<Schema>) -> Result<Arc<DatumReader>, apache_avro::Error> {
        let known = |list: &[(Arc<Schema>, Arc<DatumReader>)]| {
            list.iter()
                .find(|(w, _)| Arc::ptr_eq(w, writer))
                .map(|(_, r)| r.clone())
        };
        if let Some(reader) = known(&self.writers.read().expect("decoder lock")) {
            return Ok(reader);
        }
        // `canonical_form` cannot fail once the schema serialises; check that first.
        let differs = serde_json::to_value(&**writer).is_err()
            || writer.canonical_form() != self.reader.canonical_form();
        let prepared = Arc::new(if differs {
            DatumReader::prepare(writer.clone(), Some(self.reader.clone()))?
        } else {
            DatumReader::prepare(self.reader.clone(), None)?
        });
        let mut list = self.writers.write().expect("decoder lock");
        if let Some(reader) = known(&list) {
            return Ok(reader);
        }
        if list.len() >= KNOWN_WRITERS {
            list.remove(0);
        }
        list.push((writer.clone(), prepared.clone()));
        Ok(prepared)
    }

    #[cfg(test)]
    fn needs_resolution(&self, writer: &Arc<Schema>) -> bool {
        self.datum_reader(writer).unwrap().resolves()
    }

    pub fn decode(&self, payload: &Payload) -> Result<ProfileChange, Rejection> {
        let value = match payload {
            Payload::AvroDatum { bytes, writer } => return self.avro(bytes, writer),
            Payload::ConfluentAvro { bytes, writer } => {
                // The source checked the 5-byte header when it resolved the writer schema.
                return self.avro(bytes.get(5..).unwrap_or_default(), writer);
            }
            Payload::Unreadable { class, reason, .. } => {
                return Err(Rejection::new(Stage::Decode, class, reason.clone()))
            }
            Payload::Json(bytes) => {
                let json: Json = serde_json::from_slice(bytes).map_err(|e| {
                    Rejection::new(
                        Stage::Decode,
                        "malformed",
                        format!(
                            "not valid JSON ({:?} at line {} column {})",
                            e.classify(),
                            e.line(),
                            e.column()
                        ),
                    )
                })?;
                avro_json_to_value(&json, &self.reader)
                    .map_err(|reason| Rejection::new(Stage::Decode, "schema", reason))?
            }
        };
        to_change(value)
    }

    /// One Avro binary datum, resolved from `writer` to the reader schema.
    fn avro(&self, bytes: &[u8], writer: &Arc<Schema>) -> Result<ProfileChange, Rejection> {
        // The Avro specification resolves a record only from a record of the same name;
        // apache-avro does not check it, and a writer schema of another record whose fields
        // happen to share names would be read as a profile change.
        if let (Some(w), Some(r)) = (writer.name(), self.reader.name()) {
            if w != r {
                return Err(Rejection::new(
                    Stage::Decode,
                    "schema",
                    format!(
                        "the writer schema is record `{}`, not `{}`: it describes other events",
                        w.fullname(None),
                        r.fullname(None)
                    ),
                ));
            }
        }
        let reader = self.datum_reader(writer);
        if let (Ok(reader), Some(direct)) = (&reader, &self.direct) {
            if !reader.resolves() {
                if let Some(change) = direct.read(reader.borrow_dependent(), bytes) {
                    return Ok(change);
                }
            }
        }
        let mut slice = bytes;
        let value = reader
            .and_then(|r| r.borrow_dependent().read_value(&mut slice))
            .map_err(|e| {
                if let apache_avro::error::Details::MemoryAllocation { .. } = e.details() {
                    return Rejection::new(
                        Stage::Decode,
                        "malformed",
                        format!(
                            "a length in the datum claims more than the {} MiB one datum may allocate",
                            MAX_DATUM_ALLOCATION >> 20
                        ),
                    );
                }
                Rejection::new(
                    Stage::Decode,
                    "schema",
                    format!(
                        "bytes are not a valid Avro datum of the writer schema, or it does not resolve to the reader schema ({})",
                        avro_error_kind(&e)
                    ),
                )
            })?;
        if !slice.is_empty() {
            return Err(Rejection::new(
                Stage::Decode,
                "malformed",
                format!("{} trailing bytes after the Avro datum", slice.len()),
            ));
        }
        to_change(value)
    }
}

fn invalid(reason: impl Into<String>) -> Rejection {
    Rejection::new(Stage::Decode, "invalid", reason)
}

/// Turns a record of the reader schema into a change, checking what a schema cannot say. A
/// rejection names the event's user when its `user_id` was readable.
fn to_change(value: Value) -> Result<ProfileChange, Rejection> {
    let Value::Record(fields) = value else {
        return Err(invalid("event is not a record"));
    };
    let mut fields = fields.into_iter();
    let mut user = None;
    record_to_change(&mut fields, &mut user).map_err(|r| {
        // The user read already, or else further on in the record: looked for only when the
        // event is rejected, so a valid event's user id is parsed once.
        let user = user.or_else(|| {
            fields
                .find(|(name, _)| name == "user_id")
                .and_then(|(_, v)| uuid_of(&v, "user_id").ok())
        });
        r.of_user(user.filter(|u| !u.is_nil()))
    })
}

/// The fields of a record, in order, into a change; `user_id` is set as soon as it is read.
fn record_to_change(
    fields: &mut std::vec::IntoIter<(String, Value)>,
    user_id: &mut Option<Uuid>,
) -> Result<ProfileChange, Rejection> {
    let mut event_id = None;
    let mut operation = None;
    let mut version = None;
    let mut occurred_at = None;
    let mut source = None;
    let mut profile = None;
    let mut consent = None;
    for (name, value) in fields.by_ref() {
        match name.as_str() {
            "event_id" => event_id = Some(uuid_of(&value, "event_id")?),
            "user_id" => *user_id = Some(uuid_of(&value, "user_id")?),
            "operation" => {
                let symbol = match &value {
                    Value::Enum(_, s) => operation_of(s),
                    _ => None,
                };
                operation = Some(symbol.ok_or_else(|| {
                    invalid("operation is not one this worker supports (UPSERT, DELETE, ERASE, CONSENT)")
                })?)
            }
            "version" => {
                version = Some(long_of(&value).ok_or_else(|| invalid("version is not a long"))?)
            }
            "occurred_at" => {
                let millis =
                    long_of(&value).ok_or_else(|| invalid("occurred_at is not a timestamp"))?;
                occurred_at = Some(
                    DateTime::<Utc>::from_timestamp_millis(millis)
                        .ok_or_else(|| invalid("occurred_at is out of range"))?,
                );
            }
            "source" => {
                source = Some(match value {
                    Value::String(s) => s,
                    _ => return Err(invalid("source is not a string")),
                })
            }
            "consent" => {
                consent = match unwrap_union(value) {
                    Value::Null => None,
                    Value::Record(r) => Some(consent_of(r)?),
                    _ => return Err(invalid("consent is not a record")),
                }
            }
            "profile" => {
                profile = match unwrap_union(value) {
                    Value::Null => None,
                    Value::Record(r) => Some(record_to_fields(r).map_err(|field| {
                        invalid(format!(
                            "profile.{field} holds a date or timestamp outside the calendar"
                        ))
                    })?),
                    _ => return Err(invalid("profile is not a record")),
                }
            }
            _ => {}
        }
    }
    let missing = |f: &str| invalid(format!("{f} is missing"));
    let change = ProfileChange {
        event_id: event_id.ok_or_else(|| missing("event_id"))?,
        user_id: user_id.ok_or_else(|| missing("user_id"))?,
        operation: operation.ok_or_else(|| missing("operation"))?,
        version: version.ok_or_else(|| missing("version"))?,
        occurred_at: occurred_at.ok_or_else(|| missing("occurred_at"))?,
        source: source.ok_or_else(|| missing("source"))?,
        profile,
        consent,
    };
    validate(change)
}

fn validate(mut change: ProfileChange) -> Result<ProfileChange, Rejection> {
    if change.version < 1 {
        return Err(invalid("version must be 1 or more"));
    }
    if change.user_id.is_nil() {
        return Err(invalid("user_id must not be the nil UUID"));
    }
    match change.operation {
        Operation::Delete | Operation::Erase => {
            change.profile = None;
            change.consent = None;
        }
        Operation::Consent => {
            change.profile = None;
            match &change.consent {
                None => return Err(invalid("a CONSENT event must carry a consent")),
                Some(c) if c.purpose.trim().is_empty() => {
                    return Err(invalid("consent.purpose must not be empty"))
                }
                Some(_) => {}
            }
        }
        Operation::Upsert => {
            change.consent = None;
            let Some(profile) = &change.profile else {
                return Err(invalid("an UPSERT must carry a profile"));
            };
            if let Some(Json::String(email)) = profile.get("email") {
                let at = email.find('@');
                let ok = email.len() <= MAX_EMAIL_LEN
                    && at.is_some_and(|i| i > 0 && i + 1 < email.len())
                    && !email.chars().any(char::is_whitespace);
                if !ok {
                    return Err(invalid("profile.email is not an email address"));
                }
            }
            if let Some(Json::String(ip)) = profile.get("last_seen_ip") {
                if ip.parse::<IpAddr>().is_err() {
                    return Err(invalid(
                        "profile.last_seen_ip is not an IPv4 or IPv6 address",
                    ));
                }
            }
        }
    }
    Ok(change)
}

fn consent_of(fields: Vec<(String, Value)>) -> Result<ConsentChange, Rejection> {
    let (mut purpose, mut granted, mut policy_version) = (None, None, None);
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("purpose", Value::String(s)) => purpose = Some(s),
            ("granted", Value::Boolean(b)) => granted = Some(b),
            ("policy_version", Value::String(s)) => policy_version = Some(s),
            _ => {}
        }
    }
    Ok(ConsentChange {
        purpose: purpose.ok_or_else(|| invalid("consent.purpose is missing"))?,
        granted: granted.ok_or_else(|| invalid("consent.granted is missing"))?,
        policy_version: policy_version
            .ok_or_else(|| invalid("consent.policy_version is missing"))?,
    })
}

fn unwrap_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => unwrap_union(*inner),
        other => other,
    }
}

fn uuid_of(value: &Value, field: &str) -> Result<Uuid, Rejection> {
    match value {
        Value::Uuid(u) => Ok(*u),
        Value::String(s) => {
            Uuid::parse_str(s).map_err(|_| invalid(format!("{field} is not a UUID")))
        }
        _ => Err(invalid(format!("{field} is not a UUID"))),
    }
}

fn long_of(value: &Value) -> Option<i64> {
    match value {
        Value::Long(v) | Value::TimestampMillis(v) => Some(*v),
        Value::Int(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// A record's fields as JSON; `Err` names the first field that cannot be carried.
fn record_to_fields(fields: Vec<(String, Value)>) -> Result<Fields, String> {
    fields
        .into_iter()
        .map(|(name, value)| match to_json(value) {
            Some(json) => Ok((name, json)),
            None => Err(name),
        })
        .collect()
}

/// An operation symbol of the schema's enum, if this worker supports it.
fn operation_of(symbol: &str) -> Option<Operation> {
    Some(match symbol {
        "UPSERT" => Operation::Upsert,
        "DELETE" => Operation::Delete,
        "ERASE" => Operation::Erase,
        "CONSENT" => Operation::Consent,
        _ => return None,
    })
}

/// A `date` (days since 1970-01-01) as the pipeline carries it; `None` outside the calendar.
fn date_text(days: i64) -> Option<String> {
    Some(
        chrono::NaiveDate::default()
            .checked_add_signed(chrono::Duration::days(days))?
            .format("%Y-%m-%d")
            .to_string(),
    )
}

/// A `timestamp-millis` as the pipeline carries it; `None` outside the calendar.
fn timestamp_text(millis: i64) -> Option<String> {
    Some(
        DateTime::<Utc>::from_timestamp_millis(millis)?
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// Avro values as the JSON the rest of the pipeline carries; `None` for a date or timestamp
/// outside the calendar (a schema-valid `date` can be 5 million years away).
fn to_json(value: Value) -> Option<Json> {
    Some(match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(v) => Json::from(v),
        Value::Long(v) => Json::from(v),
        Value::Float(v) => {
            serde_json::Number::from_f64(f64::from(v)).map_or(Json::Null, Json::Number)
        }
        Value::Double(v) => serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Date(days) => Json::String(date_text(i64::from(days))?),
        Value::TimestampMillis(ms) => Json::String(timestamp_text(ms)?),
        Value::Union(_, inner) => to_json(*inner)?,
        Value::Array(items) => Json::Array(items.into_iter().map(to_json).collect::<Option<_>>()?),
        Value::Map(entries) => {
            let mut sorted: Vec<_> = entries.into_iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| Some((k, to_json(v)?)))
                    .collect::<Option<_>>()?,
            )
        }
        Value::Record(fields) => Json::Object(record_to_fields(fields).ok()?),
        _ => Json::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::direct::Direct;
    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(
            Schema::parse_str(include_str!("../../../schemas/profile_change.avsc")).unwrap(),
        )
    }

    fn json(line: &str) -> Payload {
        Payload::Json(line.as_bytes().to_vec())
    }

    const HEAD: &str = r#""event_id":"6f1c1a4e-2d7b-4a53-9d55-0c1f3c2b9a10","user_id":"0b5d1f7a-3c1e-4f2a-8b9d-1e2f3a4b5c6d","occurred_at":1700000000000,"source":"test""#;

    #[test]
    fn a_writer_schema_of_another_record_is_refused_even_when_its_fields_resolve() {
        let reader = r#"{"type":"record","name":"R","namespace":"io.profilesync","fields":[{"name":"a","type":"string"}]}"#;
        let d = Decoder::new(Schema::parse_str(reader).unwrap());
        let other = Arc::new(Schema::parse_str(&reader.replace("\"R\"", "\"Other\"")).unwrap());
        let mut bytes = Vec::new();
        apache_avro::writer::datum::GenericDatumWriter::builder(&other)
            .build()
            .unwrap()
            .write_value(
                &mut bytes,
                Value::Record(vec![("a".into(), Value::String("x".into()))]),
            )
            .unwrap();
        let e = d
            .decode(&Payload::AvroDatum {
                bytes: bytes.clone(),
                writer: other,
            })
            .unwrap_err();
        assert_eq!(e.class, "schema");
        assert!(e.reason.contains("`io.profilesync.Other`"), "{}", e.reason);
        // The same bytes under a writer schema of the reader's record do resolve.
        let same = Arc::new(Schema::parse_str(reader).unwrap());
        let e = d
            .decode(&Payload::AvroDatum {
                bytes,
                writer: same,
            })
            .unwrap_err();
        assert_ne!(e.class, "schema", "{}", e.reason);
    }

    #[test]
    fn a_length_prefix_claiming_more_than_the_allocation_cap_is_rejected_before_allocating() {
        // A map of 2,000,000 entries claimed by four bytes: ~100 MB to reserve, under
        // apache-avro's own 512 MiB cap but over ours.
        let schema = r#"{"type":"record","name":"R","fields":[{"name":"m","type":{"type":"map","values":"null"}}]}"#;
        let d = Decoder::new(Schema::parse_str(schema).unwrap());
        let mut bytes = Vec::new();
        let mut zigzag = 2_000_000u64 << 1;
        while zigzag >= 0x80 {
            bytes.push((zigzag as u8) | 0x80);
            zigzag >>= 7;
        }
        bytes.push(zigzag as u8);
        let writer = d.reader.clone();
        assert_eq!(
            apache_avro::util::max_allocation_bytes(0),
            MAX_DATUM_ALLOCATION,
            "every Avro read path sets the cap first"
        );
        let e = d.decode(&Payload::AvroDatum { bytes, writer }).unwrap_err();
        assert_eq!(e.class, "malformed", "{}", e.reason);
        assert!(e.reason.contains("32 MiB"), "{}", e.reason);
    }

    #[test]
    fn upsert_without_profile_is_rejected_as_invalid() {
        let r = decoder()
            .decode(&json(&format!(
                r#"{{{HEAD},"operation":"UPSERT","version":1}}"#
            )))
            .unwrap_err();
        assert_eq!((r.stage, r.class), (Stage::Decode, "invalid"));
        assert!(r.reason.contains("must carry a profile"));
    }

    #[test]
    fn unparseable_ip_is_rejected_without_quoting_it() {
        let r = decoder()
            .decode(&json(&format!(
                r#"{{{HEAD},"operation":"UPSERT","version":1,"profile":{{"last_seen_ip":"999.1.2.3","status":"ACTIVE"}}}}"#
            )))
            .unwrap_err();
        assert!(r.reason.contains("last_seen_ip") && !r.reason.contains("999.1.2.3"));
    }

    #[test]
    fn a_date_outside_the_calendar_is_rejected_not_a_panic() {
        // Found by cargo-fuzz: 960,056,666 days after 1970 is past chrono's last date.
        let r = decoder()
            .decode(&json(&format!(
                r#"{{{HEAD},"operation":"UPSERT","version":1,"profile":{{"birth_date":{{"int":960056666}},"status":"ACTIVE"}}}}"#
            )))
            .unwrap_err();
        assert_eq!((r.stage, r.class), (Stage::Decode, "invalid"));
        assert!(r.reason.contains("profile.birth_date") && !r.reason.contains("960056666"));
    }

    #[test]
    fn newer_operation_resolves_to_unknown_and_is_rejected() {
        let r = decoder()
            .decode(&json(&format!(
                r#"{{{HEAD},"operation":"MERGE","version":1}}"#
            )))
            .unwrap_err();
        assert!(r.reason.contains("operation"));
    }

    #[test]
    fn truncated_avro_is_a_schema_rejection() {
        let d = decoder();
        let schema = d.reader.clone();
        let r = d
            .decode(&Payload::AvroDatum {
                bytes: vec![0x48, 0x36],
                writer: schema,
            })
            .unwrap_err();
        assert_eq!(r.class, "schema");
    }

    /// Generated events written with `writer` decode to what resolving them to the reader
    /// schema gives (the one-call datum helpers are the plainest reference for that).
    #[allow(deprecated)]
    fn assert_decodes_as_resolution_would(d: &Decoder, writer: &Arc<Schema>, seed: u64) {
        let mut gen = crate::generate::EventGenerator::new(seed, 40, 0.0, false);
        for _ in 0..40 {
            let crate::generate::GeneratedEvent::Record { value, .. } = gen.next_event() else {
                continue;
            };
            let bytes = apache_avro::to_avro_datum(writer, value).unwrap();
            let resolved =
                apache_avro::from_avro_datum(writer, &mut bytes.as_slice(), Some(&*d.reader))
                    .unwrap();
            let decoded = d.decode(&Payload::AvroDatum {
                bytes,
                writer: writer.clone(),
            });
            assert_eq!(decoded, to_change(resolved));
        }
    }

    /// The `Value` way alone, as every datum went before the direct read.
    fn via_value(d: &Decoder, bytes: &[u8]) -> Result<ProfileChange, Rejection> {
        let value = d
            .datum_reader(&d.reader)
            .unwrap()
            .borrow_dependent()
            .read_value(&mut &bytes[..])
            .map_err(|_| invalid("unreadable"))?;
        to_change(value)
    }

    #[test]
    #[allow(deprecated)]
    fn the_direct_read_gives_what_the_value_tree_gives_and_leaves_it_only_the_rejections() {
        let d = decoder();
        let direct = d
            .direct
            .clone()
            .expect("the shipped schema is read directly");
        let reader = d.datum_reader(&d.reader).unwrap();
        let mut gen = crate::generate::EventGenerator::new(5, 3_000, 0.2, false);
        let (mut direct_reads, mut rejections) = (0, 0);
        for _ in 0..3_000 {
            let crate::generate::GeneratedEvent::Record { value, .. } = gen.next_event() else {
                continue;
            };
            let bytes = apache_avro::to_avro_datum(&d.reader, value).unwrap();
            let expected = via_value(&d, &bytes);
            match direct.read(reader.borrow_dependent(), &bytes) {
                Some(change) => {
                    assert_eq!(Ok(&change), expected.as_ref());
                    direct_reads += 1;
                }
                None => {
                    assert!(
                        expected.is_err(),
                        "a valid event left to the Value way: {expected:?}"
                    );
                    rejections += 1;
                }
            }
            assert_eq!(
                d.decode(&Payload::AvroDatum {
                    bytes,
                    writer: d.reader.clone()
                }),
                expected
            );
        }
        assert!(
            direct_reads > 2_000 && rejections > 300,
            "{direct_reads} direct, {rejections} rejected"
        );
    }

    #[test]
    fn a_profile_with_a_date_where_the_direct_read_cannot_place_it_is_read_the_value_way() {
        let mut schema: Json =
            serde_json::from_str(include_str!("../../../schemas/profile_change.avsc")).unwrap();
        let profile = schema["fields"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["name"] == "profile")
            .unwrap();
        profile["type"][1]["fields"].as_array_mut().unwrap().push(serde_json::json!(
            {"name": "dates", "type": {"type": "array", "items": {"type": "int", "logicalType": "date"}}, "default": []}
        ));
        let d = Decoder::new(Schema::parse(&schema).unwrap());
        assert!(d.direct.is_none());
        assert!(Direct::for_schema(&decoder().reader).is_some());
    }

    #[test]
    fn decoding_without_resolution_for_the_reader_schema_itself_changes_nothing() {
        let d = decoder();
        let writer = d.reader.clone();
        assert_decodes_as_resolution_would(&d, &writer, 7);
        assert!(!d.needs_resolution(&writer));
    }

    #[test]
    fn a_writer_schema_differing_only_in_docs_is_read_without_resolution_to_the_same_change() {
        fn strip(j: &mut Json) {
            match j {
                Json::Object(m) => {
                    m.remove("doc");
                    m.remove("classification");
                    m.values_mut().for_each(strip);
                }
                Json::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let d = decoder();
        let mut stripped = serde_json::to_value(&*d.reader).unwrap();
        strip(&mut stripped);
        let writer = Arc::new(Schema::parse(&stripped).unwrap());
        assert!(!d.needs_resolution(&writer));
        let mut with_field = stripped.clone();
        with_field["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "extra", "type": "int", "default": 0}));
        assert!(d.needs_resolution(&Arc::new(Schema::parse(&with_field).unwrap())));
        assert_decodes_as_resolution_would(&d, &writer, 11);
    }

    #[test]
    fn delete_drops_any_profile_it_carries() {
        let c = decoder()
            .decode(&json(&format!(
                r#"{{{HEAD},"operation":"DELETE","version":4,"profile":{{"email":"x@y.example"}}}}"#
            )))
            .unwrap();
        assert_eq!((c.operation, c.profile), (Operation::Delete, None));
    }
}
