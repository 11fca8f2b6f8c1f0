//! The Confluent wire format and the Schema Registry calls profile-sync makes: resolving a
//! writer schema by id (cached, through `schema_registry_converter`), and registering or
//! checking the schemas in `schemas/` under their subjects.
//!
//! A registry that cannot be reached is [`Lookup::Unavailable`] (retry, never dead-letter); an
//! id the registry does not know is [`Lookup::Unknown`] (dead-letter the event).

use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_subject_and_version, is_compatible_schema, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType, SuppliedSchema};
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

/// The first byte of a Confluent wire-format message.
pub const MAGIC_BYTE: u8 = 0;

/// Confluent's error code for "schema not found".
pub const SCHEMA_NOT_FOUND: u32 = 40403;
/// Confluent's error code for "subject not found".
pub const SUBJECT_NOT_FOUND: u32 = 40401;

/// The subject of a topic's values under the default TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// Magic byte, big-endian schema id, datum.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// The schema id of a wire-format message, or why the bytes are not one.
pub fn schema_id(bytes: &[u8]) -> Result<u32, &'static str> {
    match bytes {
        [] => Err("empty message value (a tombstone or no payload)"),
        [first, ..] if *first != MAGIC_BYTE => {
            Err("value does not start with the Confluent wire-format magic byte 0")
        }
        [_, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err("value is shorter than the 5-byte Confluent wire-format header"),
    }
}

/// What a writer-schema lookup came to.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The registry does not have this id, or its schema is not usable Avro: dead-letter.
    Unknown(String),
    /// The registry could not be asked (down, timing out, 5xx): retry later.
    Unavailable(String),
}

/// Settings for talking to a registry: its URL(s) and an optional basic-auth user. A URL
/// must not carry credentials, and must be https unless it is this machine's (or `allow_http`).
pub fn settings(url: &str, timeout: Duration, allow_http: bool) -> Result<SrSettings, String> {
    let urls: Vec<&str> = url
        .split(',')
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .collect();
    let Some(first) = urls.first() else {
        return Err("the schema registry URL is empty".into());
    };
    for (n, u) in urls.iter().enumerate() {
        // Not quoted: a URL may hold a secret.
        let parsed = url::Url::parse(u)
            .map_err(|e| format!("schema registry URL {} is not a URL ({e})", n + 1))?;
        if crate::endpoint::carries_credentials(&parsed) {
            return Err(format!("schema registry URL {} carries credentials: take them out and set SCHEMA_REGISTRY_USER and SCHEMA_REGISTRY_PASSWORD instead", n + 1));
        }
        match parsed.scheme() {
            "https" => {}
            "http" if allow_http || !crate::endpoint::beyond_this_machine(&parsed) => {}
            "http" => {
                return Err(format!(
                    "schema registry URL {} is plain http to another machine ({}): use https (the writer schemas decide what every event's bytes mean), or set schema_registry.allow_http: true on a network you trust",
                    n + 1,
                    parsed.host_str().unwrap_or_default()
                ))
            }
            other => {
                return Err(format!(
                    "schema registry URL {} has scheme `{other}`: use https (or http on this machine)",
                    n + 1
                ))
            }
        }
    }
    let mut builder = SrSettings::new_builder(first.to_string());
    for u in &urls[1..] {
        builder.add_url(u.to_string());
    }
    builder.set_timeout(timeout);
    if let (Ok(user), Ok(pass)) = (
        std::env::var("SCHEMA_REGISTRY_USER"),
        std::env::var("SCHEMA_REGISTRY_PASSWORD"),
    ) {
        builder.set_basic_authorization(&user, Some(&pass));
    }
    builder
        .build()
        .map_err(|e| format!("cannot configure the schema registry client: {}", e.error))
}

/// The largest writer schema accepted (its JSON text). A profile change's is ~10 KiB; a
/// registry answering with more is not describing these events.
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;

/// Writer schemas by id, fetched once and cached for the life of the worker.
pub struct WriterSchemas {
    settings: SrSettings,
    decoder: AvroDecoder,
    parsed: dashmap_free::Cache,
}

/// A tiny id → schema map; the library caches the registry answer, this caches our `Arc`.
mod dashmap_free {
    use apache_avro::Schema;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub struct Cache(Mutex<HashMap<u32, Arc<Schema>>>);

    impl Cache {
        pub fn get(&self, id: u32) -> Option<Arc<Schema>> {
            self.0.lock().ok()?.get(&id).cloned()
        }
        pub fn put(&self, id: u32, schema: Arc<Schema>) {
            if let Ok(mut m) = self.0.lock() {
                m.insert(id, schema);
            }
        }
    }
}

impl WriterSchemas {
    pub fn new(settings: SrSettings) -> Self {
        Self {
            decoder: AvroDecoder::new(settings.clone()),
            settings,
            parsed: Default::default(),
        }
    }

    /// Preflight: the registry answers `GET /subjects`.
    pub async fn check(&self) -> Result<String, String> {
        schema_registry_converter::async_impl::schema_registry::get_all_subjects(&self.settings)
            .await
            .map(|subjects| format!("schema registry answers ({} subjects)", subjects.len()))
            .map_err(|e| {
                format!(
                    "the schema registry does not answer ({}): check `source.schema_registry.url` and that the registry is up",
                    e.error
                )
            })
    }

    /// The writer schema registered under `id`.
    pub async fn get(&self, id: u32) -> Result<Arc<Schema>, Lookup> {
        if let Some(s) = self.parsed.get(id) {
            return Ok(s);
        }
        match self.decoder.get_schema(id).await {
            Ok(s) if s.raw.len() > MAX_SCHEMA_BYTES => Err(Lookup::Unknown(format!(
                "the writer schema of id {id} is {} bytes, over the {} KiB a schema may have",
                s.raw.len(),
                MAX_SCHEMA_BYTES >> 10
            ))),
            Ok(s) => {
                let schema = Arc::new(s.parsed.clone());
                self.parsed.put(id, schema.clone());
                Ok(schema)
            }
            Err(e) => {
                let lookup = classify(&e, id);
                if matches!(lookup, Lookup::Unavailable(_)) {
                    // The library caches non-retriable answers (e.g. a 500); an outage must
                    // not stick, so forget them and ask again on the next attempt.
                    self.decoder.remove_errors_from_cache();
                }
                Err(lookup)
            }
        }
    }
}

/// The registry's error code behind a library error, when it sent one.
pub fn error_code(e: &SRCError) -> Option<u32> {
    e.source()
        .and_then(|s| s.downcast_ref::<RawError>())
        .map(|r| r.error_code)
}

fn classify(e: &SRCError, id: u32) -> Lookup {
    let code = error_code(e);
    if code == Some(SCHEMA_NOT_FOUND) || code == Some(40402) {
        return Lookup::Unknown(format!(
            "schema id {id} is not registered in the schema registry (error {})",
            code.unwrap_or_default()
        ));
    }
    if e.retriable || code.is_none_or(|c| c >= 50000 || c == 0) {
        return Lookup::Unavailable(format!(
            "schema registry unavailable while resolving schema id {id}: {}",
            e.error
        ));
    }
    // A 4xx other than "not found" (e.g. 422 unparseable schema, a non-Avro id).
    Lookup::Unknown(format!(
        "schema id {id} cannot be used as an Avro writer schema: {}",
        e.error
    ))
}

/// What `schemas register`/`check` found for one subject.
#[derive(Debug, Clone)]
pub struct SubjectStatus {
    pub subject: String,
    /// The latest registered version and id, if the subject exists.
    pub latest: Option<(u32, u32)>,
    pub compatible: bool,
    /// Human-readable differences between the latest registered schema and the local one.
    pub changes: Vec<String>,
    /// Same schema text as the latest version (registering is a no-op).
    pub unchanged: bool,
}

/// A registry call failed: names the call and what the registry said.
#[derive(Debug, thiserror::Error)]
#[error("schema registry {call} failed: {message}")]
pub struct RegistryError {
    pub call: &'static str,
    pub message: String,
    pub code: Option<u32>,
}

fn registry_error(call: &'static str, e: SRCError) -> RegistryError {
    let code = error_code(&e);
    let message = match (&e.cause, code) {
        (Some(cause), _) => format!("{} ({cause})", e.error),
        (None, _) => e.error.clone(),
    };
    RegistryError {
        call,
        message,
        code,
    }
}

/// The schema as the file has it: the canonical form would drop defaults, which decide
/// compatibility, and the classifications, which the readers of the registry want to see.
fn supplied(schema: &Schema, text: &str) -> SuppliedSchema {
    SuppliedSchema::new(
        schema.name().map(|n| n.fullname(None)),
        SchemaType::Avro,
        text.to_string(),
    )
}

/// Checks `schema` against the subject's latest version with the registry's own
/// compatibility rules (the subject's level, BACKWARD by default).
pub async fn check(
    settings: &SrSettings,
    subject: &str,
    schema: &Schema,
    text: &str,
) -> Result<SubjectStatus, RegistryError> {
    let latest = match get_schema_by_subject_and_version(settings, subject, None).await {
        Ok(r) => Some(r),
        Err(e) if error_code(&e) == Some(SUBJECT_NOT_FOUND) => None,
        Err(e) => return Err(registry_error("GET latest version", e)),
    };
    let Some(latest) = latest else {
        return Ok(SubjectStatus {
            subject: subject.into(),
            latest: None,
            compatible: true,
            changes: vec!["new subject: first version".into()],
            unchanged: false,
        });
    };
    let old = Schema::parse_str(&latest.schema).map_err(|e| RegistryError {
        call: "parse latest version",
        message: e.to_string(),
        code: None,
    })?;
    let compatible = is_compatible_schema(settings, subject.into(), supplied(schema, text))
        .await
        .map_err(|e| registry_error("compatibility check", e))?;
    Ok(SubjectStatus {
        subject: subject.into(),
        latest: Some((latest.version.unwrap_or_default(), latest.id)),
        compatible,
        changes: field_changes(&old, schema),
        unchanged: old.canonical_form() == schema.canonical_form(),
    })
}

/// Registers `schema` under `subject` (idempotent: the same schema returns its id).
pub async fn register(
    settings: &SrSettings,
    subject: &str,
    schema: &Schema,
    text: &str,
) -> Result<u32, RegistryError> {
    post_schema(settings, subject.into(), supplied(schema, text))
        .await
        .map(|r| r.id)
        .map_err(|e| registry_error("register", e))
}

/// Field-level differences, by dotted path: added, removed, type changed.
pub fn field_changes(old: &Schema, new: &Schema) -> Vec<String> {
    let mut a = Vec::new();
    let mut b = Vec::new();
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let mut out = Vec::new();
    for (name, ty) in &b {
        match a.iter().find(|(n, _)| n == name) {
            None => out.push(format!("added field {name} ({ty})")),
            Some((_, old_ty)) if old_ty != ty => {
                out.push(format!("changed field {name}: {old_ty} -> {ty}"))
            }
            _ => {}
        }
    }
    for (name, _) in &a {
        if !b.iter().any(|(n, _)| n == name) {
            out.push(format!("removed field {name}"));
        }
    }
    out
}

fn flatten(prefix: &str, schema: &Schema, out: &mut Vec<(String, String)>) {
    match schema {
        Schema::Record(r) => {
            for f in &r.fields {
                let name = if prefix.is_empty() {
                    f.name.clone()
                } else {
                    format!("{prefix}.{}", f.name)
                };
                out.push((name.clone(), type_name(&f.schema)));
                flatten(&name, &f.schema, out);
            }
        }
        Schema::Union(u) => {
            for v in u.variants() {
                flatten(prefix, v, out);
            }
        }
        _ => {}
    }
}

fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Union(u) => u
            .variants()
            .iter()
            .map(type_name)
            .collect::<Vec<_>>()
            .join("|"),
        Schema::Enum(e) => format!("enum{:?}", e.symbols),
        other => {
            let kind = format!("{:?}", apache_avro::schema::SchemaKind::from(other));
            kind.to_lowercase()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_beyond_this_machine_needs_https_and_no_url_carries_credentials() {
        let t = Duration::from_secs(1);
        assert!(settings("https://registry.example.com", t, false).is_ok());
        assert!(settings("http://127.0.0.1:8081", t, false).is_ok());
        assert!(settings("http://localhost:8081,https://sr.example.com/", t, false).is_ok());
        let e = settings("https://a.example.com,http://10.1.2.3:8081", t, false).unwrap_err();
        assert!(
            e.contains("URL 2 is plain http") && e.contains("allow_http"),
            "{e}"
        );
        assert!(settings("http://10.1.2.3:8081", t, true).is_ok());
        let e = settings("https://me:s3cret@registry.example.com", t, true).unwrap_err();
        assert!(
            e.contains("carries credentials") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(settings("ftp://registry.example.com", t, true).is_err());
        assert!(settings("registry.example.com:8081", t, true).is_err());
        assert!(settings(" , ", t, true).is_err());
    }

    #[test]
    fn wire_format_header_round_trips_and_refuses_other_bytes() {
        let bytes = frame(42, b"datum");
        assert_eq!(schema_id(&bytes), Ok(42));
        assert!(schema_id(b"").is_err());
        assert!(schema_id(&[1, 0, 0, 0, 1]).is_err());
        assert!(schema_id(&[0, 0, 0]).is_err());
    }

    #[test]
    fn field_changes_name_added_and_removed_fields() {
        let old = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#,
        )
        .unwrap();
        let new = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"c","type":["null","string"],"default":null}]}"#,
        )
        .unwrap();
        let changes = field_changes(&old, &new);
        assert!(
            changes.iter().any(|c| c.contains("added field c")),
            "{changes:?}"
        );
        assert!(
            changes.iter().any(|c| c.contains("removed field b")),
            "{changes:?}"
        );
    }
}
