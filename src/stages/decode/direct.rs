//! The fast path of decoding: a datum written with the reader schema itself (the common case)
//! is read straight into a change by apache-avro's schema-aware deserializer, without building
//! an Avro `Value` tree and converting it to the fields the pipeline carries.
//!
//! It gives exactly what the `Value` path gives, or nothing: a datum it cannot turn into a
//! valid change (a rejection, or a shape it does not cover) is read again the `Value` way,
//! whose rejection is the one reported. A test compares the two paths on generated events.

use super::{date_text, operation_of, timestamp_text, validate};
use crate::event::{ConsentChange, Fields, ProfileChange};
use apache_avro::schema::Schema;
use chrono::{DateTime, Utc};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;
use serde_json::Value as Json;
use std::fmt;
use uuid::Uuid;

/// What the direct read needs of the reader schema: where its profile holds values the
/// pipeline carries as text (dates, timestamps, UUIDs arrive as numbers or raw strings).
#[derive(Debug)]
pub(super) struct Direct {
    text: Vec<(Vec<String>, AsText)>,
}

#[derive(Debug, Clone, Copy)]
enum AsText {
    Date,
    TimestampMillis,
    Uuid,
}

impl Direct {
    /// `None` when the reader schema's profile holds something whose conversion the direct
    /// read cannot place (a date or timestamp inside a list, a map or a nested record, another
    /// time type, a reference to a named type): its events are then all read the `Value` way.
    pub(super) fn for_schema(reader: &Schema) -> Option<Self> {
        let Schema::Record(envelope) = reader else {
            return None;
        };
        let mut text = Vec::new();
        let Some(profile) = envelope.fields.iter().find(|f| f.name == "profile") else {
            return Some(Self { text });
        };
        let Schema::Record(profile) = non_null(&profile.schema)? else {
            return None;
        };
        for field in &profile.fields {
            let schema = non_null(&field.schema)?;
            if let Schema::Record(record) = schema {
                for leaf in &record.fields {
                    let path = vec![field.name.clone(), leaf.name.clone()];
                    classify(non_null(&leaf.schema)?, path, &mut text)?;
                }
            } else {
                classify(schema, vec![field.name.clone()], &mut text)?;
            }
        }
        Some(Self { text })
    }

    /// The change in `bytes` when it is valid and read whole; `None` sends it the `Value` way.
    pub(super) fn read(
        &self,
        reader: &apache_avro::reader::datum::GenericDatumReader<'_>,
        bytes: &[u8],
    ) -> Option<ProfileChange> {
        let mut slice = bytes;
        let envelope: Envelope = reader.read_deser(&mut slice).ok()?;
        if !slice.is_empty() {
            return None;
        }
        let mut change = envelope.into_change()?;
        if let Some(profile) = &mut change.profile {
            for (path, as_text) in &self.text {
                to_text(profile, path, *as_text)?;
            }
        }
        validate(change).ok()
    }
}

/// The one branch of `["null", X]`, or the schema itself; `None` for other unions.
fn non_null(schema: &Schema) -> Option<&Schema> {
    match schema {
        Schema::Union(u) => {
            let mut branches = u.variants().iter().filter(|s| !matches!(s, Schema::Null));
            let one = branches.next()?;
            branches.next().is_none().then_some(one)
        }
        other => Some(other),
    }
}

/// Notes where a field needs converting; `None` when it holds what cannot be placed.
fn classify(
    schema: &Schema,
    path: Vec<String>,
    text: &mut Vec<(Vec<String>, AsText)>,
) -> Option<()> {
    match schema {
        Schema::Date => text.push((path, AsText::Date)),
        Schema::TimestampMillis => text.push((path, AsText::TimestampMillis)),
        Schema::Uuid(apache_avro::schema::UuidSchema::String) => text.push((path, AsText::Uuid)),
        other if plain(other) => {}
        _ => return None,
    }
    Some(())
}

/// A schema whose values read directly as the `Value` path carries them.
fn plain(schema: &Schema) -> bool {
    match schema {
        Schema::Null
        | Schema::Boolean
        | Schema::Int
        | Schema::Long
        | Schema::Float
        | Schema::Double
        | Schema::String
        | Schema::Enum(_)
        | Schema::Bytes
        | Schema::Fixed(_) => true,
        Schema::Array(a) => plain(&a.items),
        Schema::Map(m) => plain(&m.types),
        Schema::Record(r) => r.fields.iter().all(|f| plain(&f.schema)),
        Schema::Union(u) => u.variants().iter().all(plain),
        _ => false,
    }
}

/// The field at `path` as the `Value` path writes it; `None` for a value it would reject.
fn to_text(profile: &mut Fields, path: &[String], as_text: AsText) -> Option<()> {
    let slot = match path {
        [top] => profile.get_mut(top),
        [record, leaf] => profile.get_mut(record).and_then(|r| r.get_mut(leaf)),
        _ => None,
    };
    let Some(slot) = slot else { return Some(()) };
    let converted = match (as_text, &*slot) {
        (_, Json::Null) => return Some(()),
        (AsText::Date, Json::Number(n)) => date_text(n.as_i64()?)?,
        (AsText::TimestampMillis, Json::Number(n)) => timestamp_text(n.as_i64()?)?,
        (AsText::Uuid, Json::String(s)) => Uuid::parse_str(s).ok()?.to_string(),
        _ => return None,
    };
    *slot = Json::String(converted);
    Some(())
}

/// The top-level fields of an event; a missing one sends the datum the `Value` way.
#[derive(Default)]
struct Envelope {
    event_id: Option<String>,
    user_id: Option<String>,
    operation: Option<String>,
    version: Option<i64>,
    occurred_at: Option<i64>,
    source: Option<String>,
    consent: Option<ConsentChange>,
    profile: Option<Fields>,
}

impl Envelope {
    fn into_change(self) -> Option<ProfileChange> {
        let operation = operation_of(&self.operation?)?;
        Some(ProfileChange {
            event_id: Uuid::parse_str(&self.event_id?).ok()?,
            user_id: Uuid::parse_str(&self.user_id?).ok()?,
            operation,
            version: self.version?,
            occurred_at: DateTime::<Utc>::from_timestamp_millis(self.occurred_at?)?,
            source: self.source?,
            profile: self.profile,
            consent: self.consent,
        })
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a profile change record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut e = Envelope::default();
        while let Some(name) = map.next_key_seed(Name)? {
            match name.as_str() {
                "event_id" => e.event_id = Some(map.next_value()?),
                "user_id" => e.user_id = Some(map.next_value()?),
                "operation" => e.operation = Some(map.next_value::<Symbol>()?.0),
                "version" => e.version = Some(map.next_value()?),
                "occurred_at" => e.occurred_at = Some(map.next_value()?),
                "source" => e.source = Some(map.next_value()?),
                "consent" => e.consent = map.next_value::<Option<Consent>>()?.map(|c| c.0),
                "profile" => {
                    e.profile = match map.next_value::<Option<Datum>>()? {
                        None => None,
                        Some(Datum(Json::Object(fields))) => Some(fields),
                        Some(_) => return Err(de::Error::custom("profile is not a record")),
                    }
                }
                _ => {
                    map.next_value::<Datum>()?;
                }
            }
        }
        Ok(e)
    }
}

struct Consent(ConsentChange);

impl<'de> Deserialize<'de> for Consent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Datum(json) = Datum::deserialize(d)?;
        let field = |name: &str| json.get(name);
        match (field("purpose"), field("granted"), field("policy_version")) {
            (Some(Json::String(p)), Some(Json::Bool(g)), Some(Json::String(v))) => {
                Ok(Consent(ConsentChange {
                    purpose: p.clone(),
                    granted: *g,
                    policy_version: v.clone(),
                }))
            }
            _ => Err(de::Error::custom(
                "consent is not a complete consent record",
            )),
        }
    }
}

/// A record field's name or a map key.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_identifier(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// An enum symbol.
struct Symbol(String);

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_enum("", &[], DatumVisitor)
            .and_then(|Datum(j)| match j {
                Json::String(s) => Ok(Symbol(s)),
                _ => Err(de::Error::custom("not an enum symbol")),
            })
    }
}

/// Any Avro value as the `Value` path carries it (`to_json`): enums as their symbol, bytes
/// and fixed as null, maps and records as objects. Dates, timestamps and UUIDs arrive as
/// numbers and raw strings; [`to_text`] converts them where the schema has them.
struct Datum(Json);

impl<'de> Deserialize<'de> for Datum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DatumVisitor)
    }
}

struct DatumVisitor;

fn number(v: f64) -> Json {
    serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number)
}

impl<'de> Visitor<'de> for DatumVisitor {
    type Value = Datum;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an Avro value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Datum, E> {
        Ok(Datum(Json::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Datum, E> {
        Ok(Datum(Json::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Datum, D::Error> {
        Datum::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Datum, E> {
        Ok(Datum(Json::Bool(v)))
    }

    fn visit_i32<E: de::Error>(self, v: i32) -> Result<Datum, E> {
        Ok(Datum(Json::from(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Datum, E> {
        Ok(Datum(Json::from(v)))
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Datum, E> {
        Ok(Datum(number(f64::from(v))))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Datum, E> {
        Ok(Datum(number(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Datum, E> {
        Ok(Datum(Json::String(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Datum, E> {
        Ok(Datum(Json::String(v)))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Datum, E> {
        Ok(Datum(Json::Null))
    }

    fn visit_byte_buf<E: de::Error>(self, _: Vec<u8>) -> Result<Datum, E> {
        Ok(Datum(Json::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Datum, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Datum(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Datum(Json::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Datum, A::Error> {
        let mut fields = Fields::new();
        while let Some(name) = map.next_key_seed(Name)? {
            let Datum(value) = map.next_value()?;
            fields.insert(name, value);
        }
        Ok(Datum(Json::Object(fields)))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Datum, A::Error> {
        let (symbol, variant) = data.variant_seed(Name)?;
        variant.unit_variant()?;
        Ok(Datum(Json::String(symbol)))
    }
}
