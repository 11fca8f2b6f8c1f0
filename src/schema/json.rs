//! Avro's JSON encoding, driven by the schema: newline-delimited JSON events are read with
//! the same reader schema as binary ones, and the generator writes them.
//!
//! Errors name the field path and what was expected, never the value: they end up in
//! dead-letter records and logs, where a value could be PII.

use apache_avro::schema::{Schema, UnionSchema};
use apache_avro::types::Value;
use serde_json::Value as Json;
use std::collections::HashMap;

/// Converts one JSON value (Avro JSON encoding; plain JSON is accepted for unions and logical
/// types) into an Avro value of `schema`. Missing record fields take their schema default.
pub fn avro_json_to_value(json: &Json, schema: &Schema) -> Result<Value, String> {
    let mut path = Vec::new();
    convert(json, schema, &mut path)
}

fn convert(json: &Json, schema: &Schema, path: &mut Vec<String>) -> Result<Value, String> {
    let fail = |expected: &str, path: &[String]| {
        Err(format!(
            "{}: expected {expected}, found {}",
            display_path(path),
            json_kind(json)
        ))
    };
    Ok(match (schema, json) {
        (Schema::Null, Json::Null) => Value::Null,
        (Schema::Boolean, Json::Bool(b)) => Value::Boolean(*b),
        (Schema::Int, Json::Number(n)) => match n.as_i64().and_then(|v| i32::try_from(v).ok()) {
            Some(v) => Value::Int(v),
            None => return fail("a 32-bit integer", path),
        },
        (Schema::Long, Json::Number(n)) => match n.as_i64() {
            Some(v) => Value::Long(v),
            None => return fail("a 64-bit integer", path),
        },
        (Schema::Float, Json::Number(n)) => Value::Float(n.as_f64().unwrap_or_default() as f32),
        (Schema::Double, Json::Number(n)) => Value::Double(n.as_f64().unwrap_or_default()),
        (Schema::String, Json::String(s)) => Value::String(s.clone()),
        (Schema::Bytes, Json::String(s)) => Value::Bytes(s.chars().map(|c| c as u8).collect()),
        (Schema::Uuid(_), Json::String(s)) => match uuid::Uuid::parse_str(s) {
            Ok(u) => Value::Uuid(u),
            Err(_) => return fail("a UUID string", path),
        },
        (Schema::Date, Json::Number(n)) => match n.as_i64().and_then(|v| i32::try_from(v).ok()) {
            Some(v) => Value::Date(v),
            None => return fail("a date (days since 1970-01-01)", path),
        },
        (Schema::Date, Json::String(s)) => match chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(d) => Value::Date((d - chrono::NaiveDate::default()).num_days() as i32),
            Err(_) => return fail("a date (YYYY-MM-DD)", path),
        },
        (Schema::TimestampMillis, Json::Number(n)) => match n.as_i64() {
            Some(v) => Value::TimestampMillis(v),
            None => return fail("a timestamp in milliseconds", path),
        },
        (Schema::TimestampMillis, Json::String(s)) => match chrono::DateTime::parse_from_rfc3339(s)
        {
            Ok(t) => Value::TimestampMillis(t.timestamp_millis()),
            Err(_) => return fail("an RFC 3339 timestamp", path),
        },
        (Schema::Enum(e), Json::String(s)) => match e.symbols.iter().position(|x| x == s) {
            Some(i) => Value::Enum(i as u32, s.clone()),
            None => match &e.default {
                Some(d) => {
                    let i = e.symbols.iter().position(|x| x == d).unwrap_or(0);
                    Value::Enum(i as u32, d.clone())
                }
                None => return fail(&format!("one of {}", e.symbols.join(", ")), path),
            },
        },
        (Schema::Array(a), Json::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                out.push(convert(item, &a.items, path)?);
                path.pop();
            }
            Value::Array(out)
        }
        (Schema::Map(m), Json::Object(entries)) => {
            let mut out = HashMap::with_capacity(entries.len());
            for (k, v) in entries {
                path.push(k.clone());
                out.insert(k.clone(), convert(v, &m.types, path)?);
                path.pop();
            }
            Value::Map(out)
        }
        (Schema::Record(r), Json::Object(entries)) => {
            let mut out = Vec::with_capacity(r.fields.len());
            for field in &r.fields {
                path.push(field.name.clone());
                let given = entries
                    .get(&field.name)
                    .or_else(|| field.aliases.iter().find_map(|a| entries.get(a)));
                let value = match (given, &field.default) {
                    (Some(v), _) => convert(v, &field.schema, path)?,
                    (None, Some(default)) => convert_default(default, &field.schema, path)?,
                    (None, None) => {
                        return Err(format!("{}: required field is missing", display_path(path)))
                    }
                };
                path.pop();
                out.push((field.name.clone(), value));
            }
            Value::Record(out)
        }
        (Schema::Union(u), _) => convert_union(json, u, path)?,
        (Schema::Null, _) => return fail("null", path),
        (Schema::Boolean, _) => return fail("a boolean", path),
        (Schema::Int | Schema::Long, _) => return fail("an integer", path),
        (Schema::Float | Schema::Double, _) => return fail("a number", path),
        (Schema::String | Schema::Bytes | Schema::Uuid(_) | Schema::Enum(_), _) => {
            return fail("a string", path)
        }
        (Schema::Date | Schema::TimestampMillis, _) => return fail("a number or a string", path),
        (Schema::Array(_), _) => return fail("an array", path),
        (Schema::Map(_) | Schema::Record(_), _) => return fail("an object", path),
        _ => {
            return Err(format!(
                "{}: this schema type is not supported in JSON input",
                display_path(path)
            ))
        }
    })
}

/// A field default is written in the JSON form of the union's first branch (Avro spec).
fn convert_default(
    default: &Json,
    schema: &Schema,
    path: &mut Vec<String>,
) -> Result<Value, String> {
    match schema {
        Schema::Union(u) => {
            let first = u.variants().first().ok_or("empty union")?;
            Ok(Value::Union(0, Box::new(convert(default, first, path)?)))
        }
        other => convert(default, other, path),
    }
}

fn convert_union(
    json: &Json,
    union: &UnionSchema,
    path: &mut Vec<String>,
) -> Result<Value, String> {
    let variants = union.variants();
    if json.is_null() {
        if let Some(i) = variants.iter().position(|s| matches!(s, Schema::Null)) {
            return Ok(Value::Union(i as u32, Box::new(Value::Null)));
        }
    }
    // Avro JSON encoding: {"<branch type name>": value}.
    if let Json::Object(entries) = json {
        if entries.len() == 1 {
            let (name, inner) = entries.iter().next().expect("one entry");
            if let Some(i) = variants.iter().position(|s| branch_matches(s, name)) {
                return Ok(Value::Union(
                    i as u32,
                    Box::new(convert(inner, &variants[i], path)?),
                ));
            }
        }
    }
    // Plain JSON: the first branch that accepts the value.
    for (i, variant) in variants.iter().enumerate() {
        if matches!(variant, Schema::Null) {
            continue;
        }
        if let Ok(v) = convert(json, variant, path) {
            return Ok(Value::Union(i as u32, Box::new(v)));
        }
    }
    let names: Vec<String> = variants.iter().map(branch_name).collect();
    Err(format!(
        "{}: expected one of [{}], found {}",
        display_path(path),
        names.join(", "),
        json_kind(json)
    ))
}

fn branch_matches(schema: &Schema, name: &str) -> bool {
    let own = branch_name(schema);
    own == name || own.rsplit('.').next() == Some(name)
}

/// The name a union branch goes by in Avro's JSON encoding (logical types use their base type).
fn branch_name(schema: &Schema) -> String {
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int | Schema::Date | Schema::TimeMillis => "int".into(),
        Schema::Long | Schema::TimestampMillis | Schema::TimestampMicros | Schema::TimeMicros => {
            "long".into()
        }
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String | Schema::Uuid(_) => "string".into(),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

/// Writes an Avro value as Avro JSON encoding (unions wrapped in their branch name).
pub fn value_to_avro_json(value: &Value, schema: &Schema) -> Json {
    match (value, schema) {
        (Value::Union(i, inner), Schema::Union(u)) => match inner.as_ref() {
            Value::Null => Json::Null,
            v => {
                let branch = &u.variants()[*i as usize];
                let mut map = serde_json::Map::new();
                map.insert(branch_name(branch), value_to_avro_json(v, branch));
                Json::Object(map)
            }
        },
        (Value::Record(fields), Schema::Record(r)) => Json::Object(
            fields
                .iter()
                .zip(&r.fields)
                .map(|((name, v), f)| (name.clone(), value_to_avro_json(v, &f.schema)))
                .collect(),
        ),
        (Value::Map(entries), Schema::Map(m)) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), value_to_avro_json(v, &m.types)))
                .collect(),
        ),
        (Value::Array(items), Schema::Array(a)) => Json::Array(
            items
                .iter()
                .map(|v| value_to_avro_json(v, &a.items))
                .collect(),
        ),
        (Value::Null, _) => Json::Null,
        (Value::Boolean(b), _) => Json::Bool(*b),
        (Value::Int(v) | Value::Date(v), _) => Json::from(*v),
        (Value::Long(v) | Value::TimestampMillis(v), _) => Json::from(*v),
        (Value::Float(v), _) => Json::from(*v as f64),
        (Value::Double(v), _) => Json::from(*v),
        (Value::String(s), _) | (Value::Enum(_, s), _) => Json::String(s.clone()),
        (Value::Uuid(u), _) => Json::String(u.to_string()),
        (Value::Bytes(b), _) => Json::String(b.iter().map(|&c| c as char).collect()),
        _ => Json::Null,
    }
}

fn display_path(path: &[String]) -> String {
    if path.is_empty() {
        "event".into()
    } else {
        path.join(".")
    }
}

fn json_kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::parse_str(include_str!("../../schemas/profile_change.avsc")).unwrap()
    }

    #[test]
    fn avro_json_and_plain_json_unions_decode_alike() {
        let wrapped = serde_json::json!({
            "event_id": "6f1c1a4e-2d7b-4a53-9d55-0c1f3c2b9a10", "user_id": "0b5d1f7a-3c1e-4f2a-8b9d-1e2f3a4b5c6d",
            "operation": "UPSERT", "version": 3, "occurred_at": 1700000000000i64, "source": "t",
            "profile": {"io.profilesync.Profile": {"email": {"string": "a@b.example"}, "status": "ACTIVE"}}
        });
        let plain = serde_json::json!({
            "event_id": "6f1c1a4e-2d7b-4a53-9d55-0c1f3c2b9a10", "user_id": "0b5d1f7a-3c1e-4f2a-8b9d-1e2f3a4b5c6d",
            "operation": "UPSERT", "version": 3, "occurred_at": "2023-11-14T22:13:20Z", "source": "t",
            "profile": {"email": "a@b.example", "status": "ACTIVE"}
        });
        let s = schema();
        assert_eq!(
            avro_json_to_value(&wrapped, &s).unwrap(),
            avro_json_to_value(&plain, &s).unwrap()
        );
    }

    #[test]
    fn type_errors_name_the_path_but_never_the_value() {
        let bad = serde_json::json!({
            "event_id": "6f1c1a4e-2d7b-4a53-9d55-0c1f3c2b9a10", "user_id": "0b5d1f7a-3c1e-4f2a-8b9d-1e2f3a4b5c6d",
            "operation": "UPSERT", "version": "secret-value", "occurred_at": 1, "source": "t"
        });
        let err = avro_json_to_value(&bad, &schema()).unwrap_err();
        assert_eq!(err, "version: expected an integer, found a string");
    }

    #[test]
    fn round_trip_through_avro_json_keeps_the_value() {
        let s = schema();
        let plain = serde_json::json!({
            "event_id": "6f1c1a4e-2d7b-4a53-9d55-0c1f3c2b9a10", "user_id": "0b5d1f7a-3c1e-4f2a-8b9d-1e2f3a4b5c6d",
            "operation": "DELETE", "version": 9, "occurred_at": 5, "source": "t", "profile": null
        });
        let value = avro_json_to_value(&plain, &s).unwrap();
        let json = value_to_avro_json(&value, &s);
        assert_eq!(avro_json_to_value(&json, &s).unwrap(), value);
    }
}
