//! Project: the search-index document of a profile. It is built from the protected change and
//! can only emit the fields of the projection, which holds no pii or sensitive field: the
//! index cannot receive PII even by mistake.

use crate::event::{Fields, Operation, ProtectedChange};
use crate::schema::{Catalog, Classification, FieldKind, FieldSpec};
use crate::stores::StoredProfile;
use serde_json::Value as Json;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("index.fields includes `{field}`, which is classified {class}: the search index must never hold pii or sensitive fields (remove it from index.fields)")]
    Classified { field: String, class: &'static str },
    #[error("index.fields includes `{field}`, which is no profile field (known: {known})")]
    Unknown { field: String, known: String },
    #[error("index.fields includes `{field}`, a {kind:?} field, which the index cannot hold")]
    Unsupported { field: String, kind: FieldKind },
}

/// The fields the index holds besides `user_id`, `version` and `occurred_at`.
#[derive(Debug, Clone)]
pub struct Projection {
    fields: Vec<FieldSpec>,
}

pub use crate::indexes::{IndexDocument, IndexOp};

impl Projection {
    /// The projection of `requested` public fields (every public field when empty) plus all
    /// derived fields. Refuses pii and sensitive fields: this is the startup PII check.
    pub fn new(catalog: &Catalog, requested: &[String]) -> Result<Self, ProjectionError> {
        let indexable = |f: &FieldSpec| f.kind != FieldKind::Map && f.kind != FieldKind::Record;
        let mut fields = Vec::new();
        if requested.is_empty() {
            fields.extend(
                catalog
                    .fields()
                    .iter()
                    .filter(|f| f.classification == Classification::Public && indexable(f))
                    .cloned(),
            );
        }
        for name in requested {
            let spec = catalog
                .field(name)
                .ok_or_else(|| ProjectionError::Unknown {
                    field: name.clone(),
                    known: catalog
                        .fields()
                        .iter()
                        .filter(|f| f.classification.indexable())
                        .map(|f| f.flat_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if !spec.classification.indexable() {
                return Err(ProjectionError::Classified {
                    field: name.clone(),
                    class: spec.classification.as_str(),
                });
            }
            if !indexable(spec) {
                return Err(ProjectionError::Unsupported {
                    field: name.clone(),
                    kind: spec.kind,
                });
            }
            if spec.classification == Classification::Public && !fields.contains(spec) {
                fields.push(spec.clone());
            }
        }
        fields.extend(
            catalog
                .fields()
                .iter()
                .filter(|f| f.classification == Classification::Derived)
                .cloned(),
        );
        Ok(Self { fields })
    }

    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// The operation that brings the index to a stored profile (a delete for a delete fence,
    /// an erase for an erasure's tombstone), through the same builder as [`Projection::op`];
    /// used by reindexing.
    pub fn stored_op(&self, stored: &StoredProfile) -> IndexOp {
        if stored.erased_at.is_some() {
            return IndexOp::Erase {
                user_id: stored.user_id,
                version: stored.version,
            };
        }
        let change = ProtectedChange {
            user_id: stored.user_id,
            version: stored.version,
            operation: match stored.record {
                Some(_) => Operation::Upsert,
                None => Operation::Delete,
            },
            occurred_at: stored
                .record
                .as_ref()
                .map_or(stored.updated_at, |r| r.occurred_at),
            record: stored.record.clone(),
        };
        self.op(&change)
    }

    pub fn op(&self, change: &ProtectedChange) -> IndexOp {
        let record = match (change.operation, &change.record) {
            (Operation::Upsert, Some(r)) => r,
            _ => {
                return IndexOp::Delete {
                    user_id: change.user_id,
                    version: change.version,
                }
            }
        };
        let mut fields = Fields::new();
        for spec in &self.fields {
            let value = match (spec.classification, spec.flat_name.as_str()) {
                (Classification::Derived, "country") => Json::from(record.region.country.clone()),
                (Classification::Derived, "subdivision") => record
                    .region
                    .subdivision
                    .clone()
                    .map_or(Json::Null, Json::from),
                (Classification::Derived, "continent") => {
                    Json::from(record.region.continent.clone())
                }
                (Classification::Derived, "residency_zone") => {
                    Json::from(record.region.residency_zone.clone())
                }
                (Classification::Derived, "segments") => Json::from(record.segments.clone()),
                (Classification::Public, _) => match spec.path.as_slice() {
                    [top] => record.profile.get(top).cloned().unwrap_or(Json::Null),
                    [rec, leaf] => record
                        .profile
                        .get(rec)
                        .and_then(|r| r.get(leaf))
                        .cloned()
                        .unwrap_or(Json::Null),
                    _ => Json::Null,
                },
                _ => Json::Null,
            };
            if !value.is_null() {
                fields.insert(spec.flat_name.clone(), value);
            }
        }
        IndexOp::Upsert(IndexDocument {
            user_id: change.user_id,
            version: change.version,
            occurred_at: change.occurred_at,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        crate::schema::ProfileSchemas::parse(include_str!("../../schemas/profile_change.avsc"))
            .unwrap()
            .catalog
    }

    #[test]
    fn a_projection_naming_a_pii_or_sensitive_field_is_refused() {
        for (field, class) in [
            ("email", "pii"),
            ("postal_address", "pii"),
            ("preferences", "sensitive"),
        ] {
            let err = Projection::new(&catalog(), &[field.to_string()])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{field}`, which is classified {class}")),
                "{err}"
            );
        }
    }

    #[test]
    fn the_default_projection_holds_only_public_and_derived_fields() {
        let p = Projection::new(&catalog(), &[]).unwrap();
        assert!(p.fields().iter().all(|f| f.classification.indexable()));
        assert!(p.fields().iter().any(|f| f.flat_name == "plan"));
        assert!(p.fields().iter().any(|f| f.flat_name == "segments"));
    }
}
