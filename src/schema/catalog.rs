//! Reads the `classification` attribute of every profile field into a flat catalog.

use apache_avro::schema::{RecordSchema, Schema};
use std::collections::HashMap;

/// What the pipeline may do with a field. Set in the schema with `"classification": "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// Identifies a person: encrypted at rest, masked on read, never indexed.
    Pii,
    /// Personal but not identifying on its own: stored as is, masked on read, never indexed.
    Sensitive,
    /// Stored and indexable.
    Public,
    /// Computed by the pipeline (region, segments): stored and indexable.
    Derived,
}

impl Classification {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "pii" => Some(Self::Pii),
            "sensitive" => Some(Self::Sensitive),
            "public" => Some(Self::Public),
            "derived" => Some(Self::Derived),
            _ => None,
        }
    }

    /// Whether the search index may ever hold this field.
    pub fn indexable(self) -> bool {
        matches!(self, Self::Public | Self::Derived)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pii => "pii",
            Self::Sensitive => "sensitive",
            Self::Public => "public",
            Self::Derived => "derived",
        }
    }
}

/// The value type of a field, as far as the index and the rule engine care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Long,
    Double,
    Boolean,
    /// timestamp-millis; carried as RFC 3339 text in the pipeline.
    Timestamp,
    /// date; carried as `YYYY-MM-DD` text in the pipeline.
    Date,
    /// A map of strings.
    Map,
    /// A whole record kept as one unit (only for pii/sensitive records).
    Record,
    /// A list of strings (the derived `segments`).
    StringList,
}

/// One addressable profile field: a top-level field, or a leaf of a public record.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The name rules and index queries use: the field's own name, also for record leaves.
    pub flat_name: String,
    /// Path inside the profile, e.g. `["marketing", "plan"]`.
    pub path: Vec<String>,
    pub classification: Classification,
    pub kind: FieldKind,
}

/// The derived fields the enrich stage adds, with their kinds.
pub const DERIVED_FIELDS: &[(&str, FieldKind)] = &[
    ("country", FieldKind::String),
    ("subdivision", FieldKind::String),
    ("continent", FieldKind::String),
    ("residency_zone", FieldKind::String),
    ("segments", FieldKind::StringList),
];

/// Every classified profile field, top-level and flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// Top-level profile fields in schema order, with their classification.
    top_level: Vec<(String, Classification)>,
    /// Addressable fields (top-level fields, public record leaves, derived fields).
    fields: Vec<FieldSpec>,
    by_flat_name: HashMap<String, usize>,
}

impl Catalog {
    /// Builds the catalog from the `profile` field of the ProfileChange schema. Every top-level
    /// profile field must carry a classification; leaves inherit their record's unless they set one.
    pub fn from_schema(schema: &Schema) -> Result<Self, String> {
        let Schema::Record(event) = schema else {
            return Err("the profile change schema must be a record".into());
        };
        let profile_field = event
            .fields
            .iter()
            .find(|f| f.name == "profile")
            .ok_or("the profile change record has no `profile` field")?;
        let Some(Schema::Record(profile)) = non_null(&profile_field.schema) else {
            return Err(
                "the `profile` field must be a record (or a union of null and a record)".into(),
            );
        };
        let mut catalog = Catalog {
            top_level: Vec::new(),
            fields: Vec::new(),
            by_flat_name: HashMap::new(),
        };
        for field in &profile.fields {
            let class = classification_of(&field.custom_attributes)
                .transpose()?
                .ok_or_else(|| {
                    format!(
                        "profile field `{}` has no \"classification\" (one of pii, sensitive, public, derived)",
                        field.name
                    )
                })?;
            if class == Classification::Derived {
                return Err(format!(
                    "profile field `{}` is classified derived, but derived fields are computed by the pipeline, not sent in events",
                    field.name
                ));
            }
            catalog.top_level.push((field.name.clone(), class));
            match non_null(&field.schema) {
                Some(Schema::Record(record)) if class == Classification::Public => {
                    catalog.add_leaves(&field.name, record, class)?;
                }
                Some(inner) => {
                    let kind = kind_of(inner).ok_or_else(|| unsupported(&field.name))?;
                    catalog.add(FieldSpec {
                        flat_name: field.name.clone(),
                        path: vec![field.name.clone()],
                        classification: class,
                        kind,
                    })?;
                }
                None => return Err(unsupported(&field.name)),
            }
        }
        for (name, kind) in DERIVED_FIELDS {
            catalog.add(FieldSpec {
                flat_name: (*name).to_string(),
                path: vec![(*name).to_string()],
                classification: Classification::Derived,
                kind: *kind,
            })?;
        }
        Ok(catalog)
    }

    fn add_leaves(
        &mut self,
        parent: &str,
        record: &RecordSchema,
        inherited: Classification,
    ) -> Result<(), String> {
        for leaf in &record.fields {
            let class = classification_of(&leaf.custom_attributes)
                .transpose()?
                .unwrap_or(inherited);
            let path = format!("{parent}.{}", leaf.name);
            if class == Classification::Pii {
                // Protect encrypts whole top-level fields; a pii leaf of a public record would be
                // stored and indexed in plaintext with the rest of the record.
                return Err(format!(
                    "profile field `{path}` is classified pii inside the public record `{parent}`: pii is encrypted a whole top-level field at a time, so this leaf would be stored and indexed in plaintext; classify `{parent}` as pii (encrypted as one unit) or make `{}` a top-level field",
                    leaf.name
                ));
            }
            let kind = non_null(&leaf.schema)
                .and_then(kind_of)
                .filter(|k| *k != FieldKind::Record)
                .ok_or_else(|| unsupported(&path))?;
            self.add(FieldSpec {
                flat_name: leaf.name.clone(),
                path: vec![parent.to_string(), leaf.name.clone()],
                classification: class,
                kind,
            })?;
        }
        Ok(())
    }

    fn add(&mut self, spec: FieldSpec) -> Result<(), String> {
        if let Some(&existing) = self.by_flat_name.get(&spec.flat_name) {
            return Err(format!(
                "field name `{}` is used by both `{}` and `{}`; rules and the index address fields by their own name, so it must be unique",
                spec.flat_name,
                self.fields[existing].path.join("."),
                spec.path.join(".")
            ));
        }
        self.by_flat_name
            .insert(spec.flat_name.clone(), self.fields.len());
        self.fields.push(spec);
        Ok(())
    }

    /// Top-level profile fields with their classification, in schema order.
    pub fn top_level(&self) -> &[(String, Classification)] {
        &self.top_level
    }

    /// The names of the top-level profile fields.
    pub fn top_level_names(&self) -> Vec<String> {
        self.top_level.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Classification of a top-level profile field.
    pub fn class_of_top_level(&self, name: &str) -> Option<Classification> {
        self.top_level
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
    }

    /// All addressable fields: top-level, public record leaves, derived.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    pub fn field(&self, flat_name: &str) -> Option<&FieldSpec> {
        self.by_flat_name.get(flat_name).map(|&i| &self.fields[i])
    }
}

fn unsupported(path: &str) -> String {
    format!("profile field `{path}` has a type the pipeline does not handle (use string, long, int, double, boolean, timestamp-millis, date, a map of strings, or a record)")
}

fn classification_of(
    attributes: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Option<Result<Classification, String>> {
    attributes.get("classification").map(|v| {
        v.as_str().and_then(Classification::parse).ok_or_else(|| {
            format!("unknown classification {v} (use pii, sensitive, public or derived)")
        })
    })
}

/// The schema inside `["null", T]`, or the schema itself when it is not such a union.
pub(crate) fn non_null(schema: &Schema) -> Option<&Schema> {
    match schema {
        Schema::Union(u) => {
            let mut rest = u.variants().iter().filter(|s| !matches!(s, Schema::Null));
            match (rest.next(), rest.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
        other => Some(other),
    }
}

fn kind_of(schema: &Schema) -> Option<FieldKind> {
    Some(match schema {
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) => FieldKind::String,
        Schema::Int | Schema::Long => FieldKind::Long,
        Schema::Float | Schema::Double => FieldKind::Double,
        Schema::Boolean => FieldKind::Boolean,
        Schema::TimestampMillis => FieldKind::Timestamp,
        Schema::Date => FieldKind::Date,
        Schema::Map(m) if matches!(*m.types, Schema::String) => FieldKind::Map,
        Schema::Record(_) => FieldKind::Record,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Catalog {
        let text = include_str!("../../schemas/profile_change.avsc");
        Catalog::from_schema(&Schema::parse_str(text).unwrap()).unwrap()
    }

    #[test]
    fn shipped_schema_classifies_contact_fields_as_pii() {
        let catalog = shipped();
        for name in [
            "email",
            "phone",
            "display_name",
            "postal_address",
            "last_seen_ip",
            "birth_date",
        ] {
            assert_eq!(
                catalog.class_of_top_level(name),
                Some(Classification::Pii),
                "{name}"
            );
        }
        assert_eq!(
            catalog.field("plan").unwrap().path,
            vec!["marketing", "plan"]
        );
        assert_eq!(
            catalog.field("segments").unwrap().classification,
            Classification::Derived
        );
    }

    #[test]
    fn unclassified_profile_field_is_refused_by_name() {
        let text = include_str!("../../schemas/profile_change.avsc").replace(
            r#""default": null, "classification": "pii"}"#,
            r#""default": null}"#,
        );
        let err = Catalog::from_schema(&Schema::parse_str(&text).unwrap()).unwrap_err();
        assert!(
            err.contains("profile field `email` has no \"classification\""),
            "{err}"
        );
    }

    #[test]
    fn a_pii_leaf_inside_a_public_record_is_refused_with_its_path() {
        let text = include_str!("../../schemas/profile_change.avsc").replace(
            r#"{"name": "plan", "type": "string", "default": "free"}"#,
            r#"{"name": "plan", "type": "string", "default": "free"},
               {"name": "billing_email", "type": ["null", "string"], "default": null, "classification": "pii"}"#,
        );
        let err = Catalog::from_schema(&Schema::parse_str(&text).unwrap()).unwrap_err();
        assert!(
            err.contains(
                "`marketing.billing_email` is classified pii inside the public record `marketing`"
            ),
            "{err}"
        );
    }
}
