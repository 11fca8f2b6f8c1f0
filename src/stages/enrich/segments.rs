//! Segments: declarative CEL rules over the public, sensitive and derived fields of a profile.
//!
//! Every public or sensitive leaf field is bound under its own name (`lifetime_value`, `plan`),
//! records also as maps (`marketing.plan`), the derived region fields likewise, and `now` is
//! the event's `occurred_at` so that a replay derives exactly what the first run did.
//! PII fields are not bound: a segment is indexed, so it must not be derived from PII.
//!
//! Each rule is also compiled into a [`Plan`] over the fields (`plan.rs`); the CEL interpreter
//! runs only for rules or events the plan leaves undecided, so results are the interpreter's.

use super::plan::{Fields, Plan, Source};
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
    rules: Vec<Rule>,
    /// The fields some rule reads, each with how it is bound: under its flat name, inside
    /// its record's map, or both. Fields no rule reads are not converted at all (binding
    /// every field per event cost more than evaluating the rules).
    bound: Vec<Binding>,
}

struct Rule {
    name: String,
    /// The consent purpose the segment needs.
    purpose: Option<String>,
    program: Program,
    /// `None` when the rule uses what the plan does not cover: the interpreter decides.
    plan: Option<Plan>,
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
        let bound: Vec<Binding> = bound
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
        let names = |name: &str| source(name, &bound);
        let rules = compiled
            .into_iter()
            .map(|(name, purpose, program)| {
                let plan = Plan::compile(program.expression(), &names, &env);
                Rule {
                    name,
                    purpose,
                    program,
                    plan,
                }
            })
            .collect();
        Ok(Self { env, rules, bound })
    }

    /// The name of every declared segment, in the pipeline file's order.
    pub fn names(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.name.clone()).collect()
    }

    /// How many rules have a plan (the others always run in the interpreter).
    pub fn planned(&self) -> usize {
        self.rules.iter().filter(|r| r.plan.is_some()).count()
    }

    /// The sorted names of the segments the profile is in. A segment that needs consent to a
    /// purpose is only computed when `consents` grants it.
    pub fn evaluate(
        &self,
        change: &ProfileChange,
        region: &Region,
        consents: Option<&ConsentState>,
    ) -> Result<Vec<String>, Rejection> {
        self.evaluate_with(change, region, consents, true)
    }

    /// [`Self::evaluate`] with every rule run by the CEL interpreter: the reference the plans
    /// are tested and measured against.
    pub fn interpreted(
        &self,
        change: &ProfileChange,
        region: &Region,
        consents: Option<&ConsentState>,
    ) -> Result<Vec<String>, Rejection> {
        self.evaluate_with(change, region, consents, false)
    }

    fn evaluate_with(
        &self,
        change: &ProfileChange,
        region: &Region,
        consents: Option<&ConsentState>,
        plans: bool,
    ) -> Result<Vec<String>, Rejection> {
        if self.rules.is_empty() {
            return Ok(Vec::new());
        }
        let empty = serde_json::Map::new();
        let profile = change.profile.as_ref().unwrap_or(&empty);
        let fields = Fields {
            profile,
            region,
            now: change.occurred_at.fixed_offset(),
        };
        let mut context = None;
        let mut segments = Vec::new();
        for rule in &self.rules {
            let consented = rule
                .purpose
                .as_ref()
                .is_none_or(|p| consents.and_then(|c| c.get(p)).copied().unwrap_or(false));
            if !consented {
                continue;
            }
            let decided = match (&rule.plan, plans) {
                (Some(plan), true) => plan.decide(&fields),
                _ => None,
            };
            let result = match decided {
                Some(b) => Ok(Value::Bool(b)),
                None => {
                    let context = context.get_or_insert_with(|| self.context(profile, &fields));
                    rule.program.execute(context)
                }
            };
            let name = &rule.name;
            match result {
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

    /// The interpreter's context: `now`, the bound fields under their flat names, and the
    /// records some rule reads as maps.
    fn context(
        &self,
        profile: &serde_json::Map<String, Json>,
        fields: &Fields<'_>,
    ) -> Context<'static, 'static> {
        let mut context = Context::with_env(self.env.clone());
        context.add_variable_from_value("now", Value::Timestamp(fields.now));
        let mut records: HashMap<&str, HashMap<String, Value>> = HashMap::new();
        for Binding {
            spec,
            flat,
            in_record,
        } in &self.bound
        {
            let value = if spec.classification == Classification::Derived {
                derived(fields.region, &spec.flat_name)
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
        for (record, leaves) in records {
            let present = profile.get(record).is_some_and(|r| !r.is_null());
            let value = if present {
                Value::from(leaves)
            } else {
                Value::Null
            };
            context.add_variable_from_value(record, value);
        }
        context
    }
}

/// What a name means in a rule, as the interpreter's context binds it: a record's map wins
/// over a field of the same name, a later binding over an earlier one, any field over `now`.
fn source(name: &str, bound: &[Binding]) -> Option<Source> {
    let leaves: Vec<(String, FieldKind)> = bound
        .iter()
        .filter(|b| b.in_record && b.spec.path.len() == 2 && b.spec.path[0] == name)
        .map(|b| (b.spec.path[1].clone(), b.spec.kind))
        .collect();
    if !leaves.is_empty() {
        return Some(Source::Record {
            name: name.to_string(),
            leaves,
        });
    }
    if let Some(b) = bound
        .iter()
        .rev()
        .find(|b| b.flat && b.spec.flat_name == name)
    {
        return Some(if b.spec.classification == Classification::Derived {
            Source::Derived(name.to_string())
        } else {
            Source::Field {
                path: b.spec.path.clone(),
                kind: b.spec.kind,
            }
        });
    }
    (name == "now").then_some(Source::Now)
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
    region.field(name).map_or(Value::Null, Value::from)
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
    use proptest::prelude::*;

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
    fn every_sample_rule_is_decided_by_its_plan() {
        let pipeline: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../../pipelines/local.yaml")).unwrap();
        let segments: BTreeMap<String, SegmentConfig> =
            serde_yaml::from_value(pipeline["enrich"]["segments"].clone()).unwrap();
        let purposes: Vec<String> =
            serde_yaml::from_value(pipeline["privacy"]["purposes"].clone()).unwrap();
        let r = SegmentRules::compile(&segments, &purposes, &catalog()).unwrap();
        assert_eq!((r.rules.len(), r.planned()), (6, 6));
    }

    /// Rules over every kind of name the stage binds (fields, record leaves, map entries,
    /// derived fields, `now`) and every operator the plan covers, plus some it does not.
    fn expression() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("lifetime_value"),
            Just("order_count"),
            Just("plan"),
            Just("last_order_at"),
            Just("last_seen_at"),
            Just("status"),
            Just("locale"),
            Just("preferences"),
            Just("marketing"),
            Just("marketing.plan"),
            Just("marketing.order_count"),
            Just("marketing.lifetime_value"),
            Just("marketing.last_order_at"),
            Just("marketing.nope"),
            Just("preferences[\"newsletter\"]"),
            Just("preferences[\"absent\"]"),
            Just("residency_zone"),
            Just("country"),
            Just("subdivision"),
            Just("now"),
            Just("0"),
            Just("10"),
            Just("-3"),
            Just("3u"),
            Just("1000.0"),
            Just("0.5"),
            Just("\"pro\""),
            Just("\"EU\""),
            Just("\"ACTIVE\""),
            Just("\"never\""),
            Just("null"),
            Just("true"),
            Just("false"),
            Just("duration(\"2160h\")"),
            Just("timestamp(\"2026-01-01T00:00:00Z\")"),
            Just("9223372036854775807"),
            Just("size(plan)"),
        ]
        .prop_map(String::from);
        leaf.prop_recursive(4, 24, 3, |inner| {
            let op = prop_oneof![
                Just("&&"),
                Just("||"),
                Just("=="),
                Just("!="),
                Just("<"),
                Just("<="),
                Just(">"),
                Just(">="),
                Just("+"),
                Just("-"),
            ];
            let list = prop_oneof![
                Just("[\"pro\", \"enterprise\"]"),
                Just("[1, 2.0, \"EU\", null]"),
                Just("[]"),
            ];
            prop_oneof![
                (inner.clone(), op, inner.clone()).prop_map(|(a, o, b)| format!("({a} {o} {b})")),
                inner.clone().prop_map(|a| format!("!({a})")),
                inner.clone().prop_map(|a| format!("-({a})")),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
                (inner, list).prop_map(|(a, l)| format!("({a} in {l})")),
            ]
        })
    }

    fn maybe(value: impl Strategy<Value = Json>) -> impl Strategy<Value = Option<Json>> {
        prop_oneof![Just(None), Just(Some(Json::Null)), value.prop_map(Some)]
    }

    fn timestamp() -> impl Strategy<Value = Json> {
        prop_oneof![
            Just("2025-12-01T00:00:00.000Z"),
            Just("2026-05-31T23:59:59.999Z"),
            Just("2026-06-01T00:00:00.000Z"),
        ]
        .prop_map(Json::from)
    }

    /// Profiles as the decode stage carries them: fields present, null or missing; records
    /// null or with leaves missing.
    fn profile() -> impl Strategy<Value = Json> {
        let text = |choices: &'static [&'static str]| {
            proptest::sample::select(choices).prop_map(Json::from)
        };
        let marketing = (
            maybe(proptest::sample::select(&[0.0, 0.5, 1000.0, 1500.5][..]).prop_map(Json::from)),
            maybe(proptest::sample::select(&[0i64, 3, 10, 12][..]).prop_map(Json::from)),
            maybe(text(&["free", "pro", "enterprise"])),
            maybe(timestamp()),
        )
            .prop_map(|(v, n, p, t)| {
                object([
                    ("lifetime_value", v),
                    ("order_count", n),
                    ("plan", p),
                    ("last_order_at", t),
                ])
            });
        let preferences =
            maybe(text(&["never", "weekly"])).prop_map(|n| object([("newsletter", n)]));
        (
            maybe(text(&["en", "de"])),
            maybe(timestamp()),
            maybe(preferences),
            maybe(marketing),
            maybe(text(&["ACTIVE", "SUSPENDED"])),
        )
            .prop_map(|(locale, seen, preferences, marketing, status)| {
                object([
                    ("locale", locale),
                    ("last_seen_at", seen),
                    ("preferences", preferences),
                    ("marketing", marketing),
                    ("status", status),
                ])
            })
    }

    /// An object of the fields that are present (`None`: the field is missing).
    fn object<const N: usize>(fields: [(&str, Option<Json>); N]) -> Json {
        Json::Object(
            fields
                .into_iter()
                .filter_map(|(k, x)| Some((k.to_string(), x?)))
                .collect(),
        )
    }

    fn region() -> impl Strategy<Value = Region> {
        prop_oneof![
            Just(Region::unknown()),
            Just(Region {
                country: "DE".into(),
                subdivision: Some("BY".into()),
                continent: "EU".into(),
                residency_zone: "EU".into(),
            }),
            Just(Region {
                country: "US".into(),
                subdivision: None,
                continent: "NA".into(),
                residency_zone: "US".into(),
            }),
        ]
    }

    #[test]
    fn plans_give_the_interpreters_results_and_errors_on_generated_rules_and_events() {
        use proptest::test_runner::{Config, TestRunner};
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let catalog = catalog();
        let (decided_true, decided_false, left) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let mut runner = TestRunner::new(Config {
            cases: 4_000,
            failure_persistence: None,
            ..Config::default()
        });
        let case = (
            proptest::collection::vec(expression(), 1..4),
            proptest::collection::vec((profile(), region()), 1..8),
        );
        runner
            .run(&case, |(sources, events)| {
                let named: Vec<(String, &str)> = sources
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("s{i}"), s.as_str()))
                    .collect();
                let pairs: Vec<(&str, &str)> =
                    named.iter().map(|(n, s)| (n.as_str(), *s)).collect();
                // A rule the CEL compiler or the stage refuses is refused for both.
                let Ok(rules) = SegmentRules::compile(&rules(&pairs), &[], &catalog) else {
                    return Ok(());
                };
                for (profile, region) in &events {
                    let c = change(profile.clone());
                    let planned = rules.evaluate(&c, region, None);
                    let interpreted = rules.interpreted(&c, region, None);
                    prop_assert_eq!(
                        &planned,
                        &interpreted,
                        "rules {:?} on {} in {:?}",
                        sources,
                        profile,
                        region
                    );
                    let fields = Fields {
                        profile: c.profile.as_ref().unwrap(),
                        region,
                        now: c.occurred_at.fixed_offset(),
                    };
                    for rule in &rules.rules {
                        let counter = match rule.plan.as_ref().and_then(|p| p.decide(&fields)) {
                            Some(true) => &decided_true,
                            Some(false) => &decided_false,
                            None => &left,
                        };
                        counter.fetch_add(1, Relaxed);
                    }
                }
                Ok(())
            })
            .unwrap();
        // The comparison is not vacuous: plans decided many rules either way, and left some.
        let (t, f, l) = (
            decided_true.into_inner(),
            decided_false.into_inner(),
            left.into_inner(),
        );
        assert!(
            t > 500 && f > 500 && l > 500,
            "decided true {t}, false {f}, left to the interpreter {l}"
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
