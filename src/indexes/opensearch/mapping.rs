//! The OpenSearch mapping and documents, both generated from the projection: the index can hold
//! only the fields the schema classifies public or derived, and `dynamic: strict` makes the
//! server refuse any other field even if a document carried one.

use crate::indexes::IndexDocument;
use crate::schema::{FieldKind, FieldSpec};
use serde_json::{json, Map, Value as Json};

/// Fields every document has besides the projected ones.
pub const ID_FIELDS: &[(&str, &str)] = &[
    ("user_id", "keyword"),
    ("version", "long"),
    ("occurred_at", "date"),
];

/// The projected fields with their OpenSearch types, in projection order.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    fields: Vec<(FieldSpec, &'static str)>,
}

fn type_of(kind: FieldKind) -> Option<&'static str> {
    Some(match kind {
        FieldKind::String | FieldKind::StringList => "keyword",
        FieldKind::Long => "long",
        FieldKind::Double => "double",
        FieldKind::Boolean => "boolean",
        FieldKind::Timestamp | FieldKind::Date => "date",
        // The projection refuses these; never map them.
        FieldKind::Map | FieldKind::Record => return None,
    })
}

impl Mapping {
    pub fn new(projected: &[FieldSpec]) -> Self {
        let fields = projected
            .iter()
            .filter_map(|f| type_of(f.kind).map(|t| (f.clone(), t)))
            .collect();
        Self { fields }
    }

    /// Every field name with its type, ids first.
    pub fn types(&self) -> impl Iterator<Item = (&str, &'static str)> {
        ID_FIELDS.iter().copied().chain(
            self.fields
                .iter()
                .map(|(spec, t)| (spec.flat_name.as_str(), *t)),
        )
    }

    pub fn has_field(&self, name: &str) -> bool {
        self.types().any(|(n, _)| n == name)
    }

    /// The keyword fields: what a query without a field name searches (as in tantivy).
    pub fn keyword_fields(&self) -> Vec<&str> {
        self.types()
            .filter(|(_, t)| *t == "keyword")
            .map(|(n, _)| n)
            .collect()
    }

    /// A short, stable description of the field set, kept in the mapping's `_meta`: a new
    /// projection is a new fingerprint, which calls for a new index version.
    pub fn fingerprint(&self) -> String {
        let mut parts: Vec<String> = self.types().map(|(n, t)| format!("{n}:{t}")).collect();
        parts.sort();
        parts.join(",")
    }

    /// The `mappings` object of the index template.
    pub fn to_json(&self) -> Json {
        let properties: Map<String, Json> = self
            .types()
            .map(|(name, t)| (name.to_string(), json!({ "type": t })))
            .collect();
        json!({
            "dynamic": "strict",
            "_meta": { "profile_sync": { "fingerprint": self.fingerprint() } },
            "properties": properties,
        })
    }

    /// The source of one document. Iterates the mapping, not the document: a field outside the
    /// projection cannot reach the index from here.
    pub fn document(&self, doc: &IndexDocument) -> Json {
        let mut out = Map::new();
        out.insert("user_id".into(), Json::from(doc.user_id.to_string()));
        out.insert("version".into(), Json::from(doc.version));
        out.insert(
            "occurred_at".into(),
            Json::from(
                doc.occurred_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        );
        for (spec, _) in &self.fields {
            match doc.fields.get(&spec.flat_name) {
                None | Some(Json::Null) => {}
                Some(value) => {
                    out.insert(spec.flat_name.clone(), value.clone());
                }
            }
        }
        Json::Object(out)
    }
}

/// The fingerprint an existing index was created with, from its `GET _mapping` answer.
pub fn fingerprint_of(mapping_response: &Json, index: &str) -> Option<String> {
    mapping_response
        .get(index)?
        .get("mappings")?
        .get("_meta")?
        .get("profile_sync")?
        .get("fingerprint")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Classification;
    use crate::stages::project::Projection;

    fn projection(fields: &[&str]) -> Projection {
        let catalog = crate::schema::ProfileSchemas::parse(include_str!(
            "../../../schemas/profile_change.avsc"
        ))
        .unwrap()
        .catalog;
        let names: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        Projection::new(&catalog, &names).unwrap()
    }

    #[test]
    fn the_mapping_is_strict_and_holds_only_ids_and_projected_fields() {
        let p = projection(&["plan", "lifetime_value", "last_seen_at"]);
        let m = Mapping::new(p.fields()).to_json();
        assert_eq!(m["dynamic"], "strict");
        let props = m["properties"].as_object().unwrap();
        assert_eq!(props["user_id"]["type"], "keyword");
        assert_eq!(props["version"]["type"], "long");
        assert_eq!(props["plan"]["type"], "keyword");
        assert_eq!(props["lifetime_value"]["type"], "double");
        assert_eq!(props["last_seen_at"]["type"], "date");
        assert_eq!(props["segments"]["type"], "keyword");
        assert_eq!(props["country"]["type"], "keyword");
        for name in [
            "email",
            "phone",
            "display_name",
            "postal_address",
            "preferences",
        ] {
            assert!(!props.contains_key(name), "{name} must not be mapped");
        }
        for spec in p.fields() {
            assert!(
                matches!(
                    spec.classification,
                    Classification::Public | Classification::Derived
                ),
                "{}",
                spec.flat_name
            );
            assert!(props.contains_key(&spec.flat_name), "{}", spec.flat_name);
        }
        assert_eq!(props.len(), p.fields().len() + ID_FIELDS.len());
    }

    #[test]
    fn a_different_projection_has_a_different_fingerprint() {
        let a = Mapping::new(projection(&["plan"]).fields()).fingerprint();
        let b = Mapping::new(projection(&["plan", "status"]).fields()).fingerprint();
        assert_ne!(a, b);
        assert_eq!(
            a,
            Mapping::new(projection(&["plan"]).fields()).fingerprint()
        );
    }

    #[test]
    fn the_document_builder_emits_only_mapped_fields() {
        let mapping = Mapping::new(projection(&["plan"]).fields());
        let mut fields = crate::event::Fields::new();
        fields.insert("plan".into(), Json::from("pro"));
        fields.insert("email".into(), Json::from("someone@example.com"));
        fields.insert("country".into(), Json::from("DE"));
        let doc = IndexDocument {
            user_id: uuid::Uuid::nil(),
            version: 3,
            occurred_at: chrono::DateTime::from_timestamp_millis(0).unwrap(),
            fields,
        };
        let out = mapping.document(&doc);
        assert_eq!(out["plan"], "pro");
        assert_eq!(out["country"], "DE");
        assert_eq!(out["version"], 3);
        assert!(out.get("email").is_none());
    }

    #[test]
    fn the_fingerprint_is_read_back_from_a_mapping_response() {
        let m = Mapping::new(projection(&["plan"]).fields());
        let response = json!({ "profiles-v1": { "mappings": m.to_json() } });
        assert_eq!(
            fingerprint_of(&response, "profiles-v1"),
            Some(m.fingerprint())
        );
        assert_eq!(fingerprint_of(&response, "profiles-v2"), None);
    }
}
