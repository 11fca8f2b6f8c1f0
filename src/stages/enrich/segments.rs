//! Segments: declarative CEL rules over the public, sensitive and derived fields of a profile.
//!
//! Every public or sensitive leaf field is bound under its own name (`lifetime_value`, `plan`),
//! records also as maps (`marketing.plan`), the derived region fields likewise, and `now` is
//! the event's `occurred_at` so that a replay derives exactly what the first run did.
//! PII fields are not bound: a segment is indexed, so it must not be derived from PII.

use crate::config::SegmentConfig;
use crate::event::{ProfileChange, Region, Rejection, Stage};
use crate::schema::{Catalog, Classification, FieldKind, FieldSpec};
use crate::stores::ConsentState;
use cel::{Context, Env, Program, Value};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment `{name}` does not compile: {reason}")]
    Compile { name: String, reason: String },
    #[error("segment `{name}` reads `{variable}`, which is classified {class}; segment rules may only read public, sensitive and derived fields")]
    Classified {
        name: String,
        variable: String,
        class: &'static str,
    },
    #[error("segment `{name}` needs consent to purpose `{purpose}`, which privacy.purposes does not declare (declared: {declared})")]
    UnknownPurpose {
        name: String,
        purpose: String,
        declared: String,
    },
    #[error("segment `{name}` reads `{variable}`, which is no profile field (known: {known})")]
    Unknown {
        name: String,
        variable: String,
        known: String,
    },
}

pub struct SegmentRules {
    env: Arc<Env>,
    /// (segment name, consent purpose it needs, compiled rule)
    rules: Vec<(String, Option<String>, Program)>,
    /// The fields some rule reads, each with how it is bound: under its flat name, inside
    /// its record's map, or both. Fields no rule reads are not converted at all (binding
    /// every field per event cost more than evaluating the rules).
    bound: Vec<Binding>,
}

struct Binding {
    spec: FieldSpec,
    flat: bool,
    in_record: bool,
}

impl SegmentRules {
    /// Compiles every rule, refusing ones that read unknown or PII fields.
    pub fn compile(
        rules: &BTreeMap<String, SegmentConfig>,
        purposes: &[String],
        catalog: &Catalog,
    ) -> Result<Self, SegmentError> {
        let env = Arc::new(Env::stdlib());
        let bound: Vec<FieldSpec> = catalog
            .fields()
            .iter()
            .filter(|f| f.classification != Classification::Pii && f.flat_name != "segments")
            .cloned()
            .collect();
        let mut records: Vec<&str> = bound
            .iter()
            .filter(|f| f.path.len() > 1)
            .map(|f| f.path[0].as_str())
            .collect();
        records.dedup();
        let mut compiled = Vec::with_capacity(rules.len());
        for (
            name,
            SegmentConfig {
                rule: source,
                purpose,
            },
        ) in rules
        {
            if let Some(p) = purpose.as_ref().filter(|p| !purposes.contains(p)) {
                return Err(SegmentError::UnknownPurpose {
                    name: name.clone(),
                    purpose: p.clone(),
                    declared: if purposes.is_empty() {
                        "none".into()
                    } else {
                        purposes.join(", ")
                    },
                });
            }
            let program = env.compile(source).map_err(|e| SegmentError::Compile {
                name: name.clone(),
                reason: e.to_string().lines().next().unwrap_or_default().to_string(),
            })?;
            for variable in program.references().variables() {
                let known = variable == "now"
                    || records.contains(&variable)
                    || bound.iter().any(|f| f.flat_name == variable);
                if known {
                    continue;
                }
                if let Some(spec) = catalog.field(variable) {
                    return Err(SegmentError::Classified {
                        name: name.clone(),
                        variable: variable.to_string(),
                        class: spec.classification.as_str(),
                    });
                }
                let known: Vec<&str> = bound.iter().map(|f| f.flat_name.as_str()).collect();
                return Err(SegmentError::Unknown {
                    name: name.clone(),
                    variable: variable.to_string(),
                    known: format!("now, {}", known.join(", ")),
                });
            }
            compiled.push((name.clone(), purpose.clone(), program));
        }
        let read: Vec<String> = compiled
            .iter()
            .flat_map(|(_, _, p)| {
                let references = p.references();
                let names: Vec<String> = references
                    .variables()
                    .into_iter()
                    .map(String::from)
                    .collect();
                names
            })
            .collect();
        let reads = |name: &str| read.iter().any(|r| r == name);
        let bound = bound
            .into_iter()
            .filter_map(|spec| {
                let flat = reads(&spec.flat_name);
                let in_record = spec.path.len() == 2 && reads(&spec.path[0]);
                (flat || in_record).then_some(Binding {
                    spec,
                    flat,
                    in_record,
                })
            })
            .collect();
        Ok(Self {
            env,
            rules: compiled,
            bound,
        })
    }

    /// The sorted names of the segments the profile is in. A segment that needs consent to a
    /// purpose is only computed when `consents` grants it.
    pub fn evaluate(
        &self,
        change: &ProfileChange,
        region: &Region,
        consents: Option<&ConsentState>,
    ) -> Result<Vec<String>, Rejection> {
        if self.rules.is_empty() {
            return Ok(Vec::new());
        }
        let empty = serde_json::Map::new();
        let profile = change.profile.as_ref().unwrap_or(&empty);
        let mut context = Context::with_env(self.env.clone());
        context.add_variable_from_value("now", Value::Timestamp(change.occurred_at.fixed_offset()));
        let mut records: HashMap<&str, HashMap<String, Value>> = HashMap::new();
        for Binding {
            spec,
            flat,
            in_record,
        } in &self.bound
        {
            let value = if spec.classification == Classification::Derived {
                derived(region, &spec.flat_name)
            } else {
                let json = match spec.path.as_slice() {
                    [top] => profile.get(top),
                    [record, leaf] => profile.get(record).and_then(|r| r.get(leaf)),
                    _ => None,
                };
                json.map_or(Value::Null, |j| to_cel(j, spec.kind))
            };
            if let ([record, leaf], true) = (spec.path.as_slice(), in_record) {
                records
                    .entry(record.as_str())
                    .or_default()
                    .insert(leaf.clone(), value.clone());
            }
            if *flat {
                context.add_variable_from_value(spec.flat_name.clone(), value);
            }
        }
        for (record, fields) in records {
            let present = profile.get(record).is_some_and(|r| !r.is_null());
            let value = if present {
                Value::from(fields)
            } else {
                Value::Null
            };
            context.add_variable_from_value(record, value);
        }
        let mut segments = Vec::new();
        for (name, purpose, program) in &self.rules {
            let consented = purpose
                .as_ref()
                .is_none_or(|p| consents.and_then(|c| c.get(p)).copied().unwrap_or(false));
            if !consented {
                continue;
            }
            match program.execute(&context) {
                Ok(Value::Bool(true)) => segments.push(name.clone()),
                Ok(Value::Bool(false)) => {}
                Ok(_) => {
                    return Err(Rejection::new(
                        Stage::Enrich,
                        "rule",
                        format!("segment `{name}` did not evaluate to a boolean"),
                    ))
                }
                Err(e) => {
                    return Err(Rejection::new(
                        Stage::Enrich,
                        "rule",
                        format!("segment `{name}` failed: {}", error_kind(&e)),
                    ))
                }
            }
        }
        Ok(segments)
    }
}

/// The variant name of a CEL error, without the values its message may quote.
fn error_kind(e: &cel::ExecutionError) -> String {
    let debug = format!("{e:?}");
    let kind: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
    match e {
        cel::ExecutionError::UndeclaredReference(name) => format!("{kind} `{name}`"),
        cel::ExecutionError::NoSuchKey(name) => format!("{kind} `{name}`"),
        _ => kind,
    }
}

fn derived(region: &Region, name: &str) -> Value {
    let s = match name {
        "country" => Some(&region.country),
        "subdivision" => region.subdivision.as_ref(),
        "continent" => Some(&region.continent),
        "residency_zone" => Some(&region.residency_zone),
        _ => None,
    };
    s.map_or(Value::Null, |s| Value::from(s.as_str()))
}

fn to_cel(json: &Json, kind: FieldKind) -> Value {
    match (kind, json) {
        (_, Json::Null) => Value::Null,
        (FieldKind::Timestamp, Json::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(Value::Timestamp)
            .unwrap_or(Value::Null),
        (FieldKind::Double, Json::Number(n)) => Value::Float(n.as_f64().unwrap_or_default()),
        (_, Json::Number(n)) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or_default())),
        (_, Json::Bool(b)) => Value::Bool(*b),
        (_, Json::String(s)) => Value::from(s.as_str()),
        (_, Json::Array(items)) => Value::List(Arc::new(
            items.iter().map(|j| to_cel(j, FieldKind::String)).collect(),
        )),
        (_, Json::Object(map)) => Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), to_cel(v, FieldKind::String)))
                .collect::<HashMap<String, Value>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Operation;

    fn catalog() -> Catalog {
        crate::schema::ProfileSchemas::parse(include_str!("../../../schemas/profile_change.avsc"))
            .unwrap()
            .catalog
    }

    fn rules(pairs: &[(&str, &str)]) -> BTreeMap<String, SegmentConfig> {
        pairs
            .iter()
            .map(|(a, b)| {
                let config = SegmentConfig {
                    rule: b.to_string(),
                    purpose: None,
                };
                (a.to_string(), config)
            })
            .collect()
    }

    fn change(profile: Json) -> ProfileChange {
        ProfileChange {
            event_id: uuid::Uuid::new_v4(),
            user_id: uuid::Uuid::new_v4(),
            operation: Operation::Upsert,
            version: 1,
            occurred_at: "2026-06-01T00:00:00Z".parse().unwrap(),
            source: "t".into(),
            profile: profile.as_object().cloned(),
            consent: None,
        }
    }

    #[test]
    fn rules_see_flat_names_records_region_and_event_time() {
        let r = SegmentRules::compile(
            &rules(&[
                ("high_value", "lifetime_value > 1000.0"),
                ("pro", "marketing.plan == 'pro'"),
                ("dormant", "now - last_seen_at > duration('2160h')"),
                ("eu", "residency_zone == 'EU'"),
                ("small", "order_count < 3"),
            ]),
            &[],
            &catalog(),
        )
        .unwrap();
        let c = change(serde_json::json!({
            "last_seen_at": "2026-01-01T00:00:00.000Z",
            "marketing": {"lifetime_value": 1500.5, "order_count": 12, "plan": "pro", "last_order_at": null}
        }));
        let region = Region {
            country: "DE".into(),
            subdivision: None,
            continent: "EU".into(),
            residency_zone: "EU".into(),
        };
        assert_eq!(
            r.evaluate(&c, &region, None).unwrap(),
            vec!["dormant", "eu", "high_value", "pro"]
        );
    }

    #[test]
    fn a_rule_reading_pii_is_refused_at_startup() {
        let err = SegmentRules::compile(
            &rules(&[("gmail", "email.endsWith('@gmail.com')")]),
            &[],
            &catalog(),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("`email`, which is classified pii"),
            "{err}"
        );
    }

    #[test]
    fn a_rule_that_does_not_compile_names_the_segment() {
        let err = SegmentRules::compile(&rules(&[("broken", "lifetime_value >")]), &[], &catalog())
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("segment `broken` does not compile"),
            "{err}"
        );
    }

    #[test]
    fn a_runtime_failure_is_a_rejection_naming_the_segment() {
        let r = SegmentRules::compile(
            &rules(&[("hv", "lifetime_value > 1000.0")]),
            &[],
            &catalog(),
        )
        .unwrap();
        let rejection = r
            .evaluate(&change(serde_json::json!({})), &Region::unknown(), None)
            .unwrap_err();
        assert_eq!(rejection.stage, Stage::Enrich);
        assert!(
            rejection.reason.starts_with("segment `hv` failed"),
            "{}",
            rejection.reason
        );
    }

    #[test]
    fn a_segment_needing_consent_is_computed_only_while_consent_is_granted() {
        let mut config = rules(&[("pro", "plan == 'pro'")]);
        config.get_mut("pro").unwrap().purpose = Some("marketing".into());
        let r = SegmentRules::compile(&config, &["marketing".to_string()], &catalog()).unwrap();
        let c = change(
            serde_json::json!({"marketing": {"plan": "pro", "lifetime_value": 1.0, "order_count": 1, "last_order_at": null}}),
        );
        let granted = ConsentState::from([("marketing".to_string(), true)]);
        let withdrawn = ConsentState::from([("marketing".to_string(), false)]);
        assert_eq!(
            r.evaluate(&c, &Region::unknown(), Some(&granted)).unwrap(),
            vec!["pro"]
        );
        assert!(r
            .evaluate(&c, &Region::unknown(), Some(&withdrawn))
            .unwrap()
            .is_empty());
        assert!(
            r.evaluate(&c, &Region::unknown(), None).unwrap().is_empty(),
            "no record is no consent"
        );
    }

    #[test]
    fn a_segment_naming_an_undeclared_purpose_is_refused() {
        let mut config = rules(&[("pro", "plan == 'pro'")]);
        config.get_mut("pro").unwrap().purpose = Some("profiling".into());
        let err = SegmentRules::compile(&config, &["marketing".to_string()], &catalog())
            .err()
            .unwrap();
        assert!(err.to_string().contains("purpose `profiling`"), "{err}");
    }
}
