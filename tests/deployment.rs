//! Docker cannot run on the test machines, so the deployment files are checked for structure:
//! every service the README names exists, has an image, and depends only on services that
//! exist; the workers' pipeline file parses; the image runs as non-root.

mod common;

use common::repo;
use serde_yaml::Value;
use std::collections::BTreeSet;

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut doc: Value = serde_yaml::from_str(&text).unwrap();
    doc.apply_merge().unwrap();
    doc
}

#[test]
fn the_compose_stack_has_every_service_with_an_image_and_sound_dependencies() {
    let doc = compose();
    let services = doc["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for wanted in [
        "kafka",
        "schema-registry",
        "localstack",
        "opensearch",
        "opensearch-dashboards",
        "bootstrap",
        "worker-1",
        "worker-2",
        "producer",
    ] {
        assert!(names.contains(wanted), "service {wanted} is missing");
    }
    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{name} has no image"
        );
        if let Some(deps) = service.get("depends_on").and_then(Value::as_mapping) {
            for dep in deps.keys() {
                assert!(
                    names.contains(dep.as_str().unwrap()),
                    "{name} depends on a missing service {dep:?}"
                );
            }
        }
    }
    let ports = |s: &str| serde_yaml::to_string(&services[&Value::from(s)]["ports"]).unwrap();
    assert!(ports("worker-1").contains("9898:9898") && ports("worker-2").contains("9899:9898"));
    assert!(ports("opensearch-dashboards").contains("5601:5601"));
    assert!(ports("kafka").contains("9092:9092"));
    let volumes = serde_yaml::to_string(&services[&Value::from("localstack")]["volumes"]).unwrap();
    assert!(volumes.contains("./localstack/init/ready.d"));
    assert!(repo().join("localstack/init/ready.d").is_dir());
}

#[test]
fn the_workers_pipeline_file_parses_and_uses_the_production_adapters() {
    let doc = compose();
    let command = serde_yaml::to_string(&doc["services"]["worker-1"]["command"]).unwrap();
    assert!(command.contains("pipelines/docker.yaml"), "{command}");
    let file = profile_sync::config::Pipeline::load(&repo().join("pipelines/docker.yaml")).unwrap();
    let text = format!("{:?}", file.config);
    for adapter in ["Kafka", "Kms", "Dynamodb", "Opensearch"] {
        assert!(
            text.contains(adapter),
            "pipelines/docker.yaml does not use {adapter}"
        );
    }
}

#[test]
fn the_image_is_multi_stage_and_runs_as_non_root() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2
    );
    let user = dockerfile
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
}

// ---------------------------------------------------------------------------------------------
// pipelines/production.yaml: the production template and the reference of every option.

use profile_sync::config::{
    interpolate, DeadLetterConfig, IndexConfig, KeysConfig, Pipeline, PipelineConfig, SourceConfig,
    StoreConfig,
};
use serde_yaml::Mapping;

/// The variables production.yaml requires (no default), with realistic values.
const PRODUCTION_ENV: &[(&str, &str)] = &[
    (
        "KAFKA_BROKERS",
        "b-1.kafka.internal:9096,b-2.kafka.internal:9096",
    ),
    ("SCHEMA_REGISTRY_URL", "https://registry.internal"),
    (
        "KMS_KEY_ID",
        "arn:aws:kms:eu-west-1:111122223333:alias/profile-sync",
    ),
    ("OPENSEARCH_URL", "https://search.internal:443"),
];

fn production_path() -> std::path::PathBuf {
    repo().join("pipelines/production.yaml")
}

/// Loads production.yaml as `Pipeline::load` does, with `env` as the whole environment. The
/// variables go to `interpolate` rather than into the process environment, which tests running
/// in parallel threads share; what the first pass made of `$${` is escaped again so that
/// `Pipeline::parse`, which interpolates once more, reads it literally.
fn load_production(env: &[(&str, &str)]) -> Result<Pipeline, String> {
    let path = production_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let text = interpolate(&text, lookup)?;
    Pipeline::parse(&path, &text.replace("${", "$${")).map_err(|e| e.to_string())
}

#[test]
fn the_production_template_parses_with_the_production_adapters() {
    let env = |name: &str| {
        PRODUCTION_ENV
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap()
            .1
            .to_string()
    };
    let file = load_production(PRODUCTION_ENV).unwrap();
    let config = &file.config;

    let SourceConfig::Kafka(source) = &config.source else {
        panic!("the source is not Kafka: {:?}", config.source)
    };
    assert_eq!(source.brokers, env("KAFKA_BROKERS"));
    assert_eq!(source.topics, ["profile-changes"]);
    assert_eq!(source.group_id, "profile-sync");
    assert_eq!(source.schema_registry.url, env("SCHEMA_REGISTRY_URL"));
    assert_eq!(source.properties["security.protocol"], "SASL_SSL");
    assert!(
        source.stop_when_idle_ms.is_none(),
        "a worker must not stop when idle"
    );

    let KeysConfig::Kms {
        key_id,
        endpoint,
        create_for_development,
        ..
    } = &config.keys
    else {
        panic!("the keys are not KMS: {:?}", config.keys)
    };
    assert_eq!(*key_id, env("KMS_KEY_ID"));
    assert!(endpoint.is_none() && !create_for_development);

    let StoreConfig::Dynamodb {
        table,
        endpoint,
        audit_retention_days,
        ..
    } = &config.store
    else {
        panic!("the store is not DynamoDB: {:?}", config.store)
    };
    assert_eq!(table, "profile-sync");
    assert!(endpoint.is_none());
    // The DynamoDB TTL removes audit records too: unset, it follows the retention rule.
    assert!(config.privacy.retention.audit_days.is_some());
    assert_eq!(*audit_retention_days, None);

    let IndexConfig::Opensearch { url, .. } = &config.index else {
        panic!("the index is not OpenSearch: {:?}", config.index)
    };
    assert_eq!(*url, env("OPENSEARCH_URL"));

    let DeadLetterConfig::Kafka {
        topic,
        brokers,
        properties: producer_properties,
        ..
    } = &config.dead_letter
    else {
        panic!("dead letters do not go to Kafka: {:?}", config.dead_letter)
    };
    assert_eq!(topic, "profile-changes-dlq");
    assert!(
        brokers.is_none(),
        "the dead letters use the source's brokers"
    );
    // On the source's cluster, the producer takes the source's security settings.
    assert!(source.properties.contains_key("security.protocol"));
    // Secrets come from the environment (PROFILE_SYNC_KAFKA_*), never from the file.
    for key in source.properties.keys().chain(producer_properties.keys()) {
        assert!(
            !key.contains("password") && !key.contains("secret"),
            "a literal secret in the file: {key}"
        );
    }

    assert_eq!(
        config.enrich.geoip.database,
        std::path::Path::new("/var/lib/geoip/GeoLite2-City.mmdb")
    );
    let bound: Vec<_> = config
        .enrich
        .segments
        .values()
        .filter_map(|s| s.purpose.as_ref())
        .collect();
    assert!(!bound.is_empty(), "no segment needs a consent purpose");
    assert!(bound.iter().all(|p| config.privacy.purposes.contains(p)));

    // What `profile-sync check` validates without servers: the rules, the projection, the zones.
    let schemas = profile_sync::pipeline::schemas(&file).unwrap();
    profile_sync::stages::enrich::SegmentRules::compile(
        &config.enrich.segments,
        &config.privacy.purposes,
        &schemas.catalog,
    )
    .unwrap();
    profile_sync::stages::project::Projection::new(&schemas.catalog, config.index.fields())
        .unwrap();
    let test_db = repo().join("geoip/test-city.mmdb");
    let mut env_with_db = PRODUCTION_ENV.to_vec();
    env_with_db.push(("GEOIP_DATABASE", test_db.to_str().unwrap()));
    let file = load_production(&env_with_db).unwrap();
    assert_eq!(file.config.enrich.geoip.database, test_db);
    profile_sync::stages::enrich::RegionResolver::open(
        &file.config.enrich.geoip.database,
        &file.config.enrich.geoip.residency_zones,
    )
    .unwrap();

    // Every environment-specific address is required: without it the file does not load, and
    // the error names the variable.
    for (missing, _) in PRODUCTION_ENV {
        let env: Vec<_> = PRODUCTION_ENV
            .iter()
            .copied()
            .filter(|(k, _)| k != missing)
            .collect();
        let err = load_production(&env).unwrap_err();
        assert!(err.contains(&format!("{missing} is not set")), "{err}");
    }
}

/// One step of a path into the pipeline file, as the config types see it.
#[derive(Debug, Clone)]
enum Step {
    Field(String),
    /// The `type:` of an internally tagged enum (an adapter).
    Variant(String),
    /// Any key of a map whose values are structs (`segments`).
    AnyKey,
}

/// What the config types accept, found by asking them (see `explore`).
#[derive(Debug, Default)]
struct Options {
    /// (keys of the enclosing section, `*` for any map key; the field)
    fields: Vec<(Vec<String>, String)>,
    /// (keys of a section chosen by `type:`; its types)
    types: Vec<(Vec<String>, Vec<String>)>,
    /// (keys of a field whose values are a fixed set; the values)
    values: Vec<(Vec<String>, Vec<String>)>,
}

const PROBE_FIELD: &str = "zz_probe_field";
const PROBE_VARIANT: &str = "zz_probe_variant";

fn keys_of(path: &[Step]) -> Vec<String> {
    path.iter()
        .filter_map(|s| match s {
            Step::Field(f) => Some(f.clone()),
            Step::AnyKey => Some("*".into()),
            Step::Variant(_) => None,
        })
        .collect()
}

fn with(path: &[Step], step: Step) -> Vec<Step> {
    let mut next = path.to_vec();
    next.push(step);
    next
}

/// Deserializes a `PipelineConfig` holding only `leaf` at `path` and returns the error. Serde
/// reports an unknown key (or type) as soon as it meets it, before the missing required keys
/// of the enclosing sections, so the message is about the probe.
fn probe(path: &[Step], leaf: Value) -> String {
    let mut value = leaf;
    for step in path.iter().rev() {
        value = match step {
            Step::Field(f) => {
                Value::Mapping(Mapping::from_iter([(Value::from(f.as_str()), value)]))
            }
            Step::AnyKey => Value::Mapping(Mapping::from_iter([("zz_probe_key".into(), value)])),
            Step::Variant(v) => {
                let mut m = Mapping::from_iter([("type".into(), Value::from(v.as_str()))]);
                if let Value::Mapping(inner) = value {
                    m.extend(inner);
                }
                Value::Mapping(m)
            }
        };
    }
    match serde_yaml::from_value::<PipelineConfig>(value) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// The names serde lists in "unknown {what} `{probe}`, expected one of `a`, `b`" (or "expected
/// `a` or `b`", "expected `a`", "there are no ...").
fn expected_names(message: &str, what: &str, probe: &str) -> Option<Vec<String>> {
    let rest = message
        .split(&format!("unknown {what} `{probe}`, "))
        .nth(1)?;
    if rest.starts_with("there are no") {
        return Some(Vec::new());
    }
    let rest = rest.strip_prefix("expected ")?;
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect(),
    )
}

/// Walks the config types from `PipelineConfig` down by probing them with unknown keys, types
/// and values: `deny_unknown_fields` makes serde answer with the full list of what it accepts
/// (after renames), so nothing here repeats the field names of `src/config/mod.rs`.
fn explore(path: Vec<Step>, out: &mut Options) {
    assert!(path.len() < 10, "runaway exploration at {path:?}");
    let struct_probe = || Value::Mapping(Mapping::from_iter([(PROBE_FIELD.into(), 0.into())]));
    let err = probe(&path, struct_probe());
    if let Some(fields) = expected_names(&err, "field", PROBE_FIELD) {
        for field in fields {
            out.fields.push((keys_of(&path), field.clone()));
            explore(with(&path, Step::Field(field)), out);
        }
        return;
    }
    if err.contains("missing field `type`") {
        let tag = Mapping::from_iter([("type".into(), PROBE_VARIANT.into())]);
        let err = probe(&path, Value::Mapping(tag));
        let types = expected_names(&err, "variant", PROBE_VARIANT)
            .unwrap_or_else(|| panic!("{path:?} needs a `type` but lists none: {err}"));
        out.types.push((keys_of(&path), types.clone()));
        for t in types {
            explore(with(&path, Step::Variant(t)), out);
        }
        return;
    }
    let err = probe(&path, PROBE_VARIANT.into());
    if let Some(values) = expected_names(&err, "variant", PROBE_VARIANT) {
        out.values.push((keys_of(&path), values));
        return;
    }
    let map_of_structs = with(&path, Step::AnyKey);
    let err = probe(&map_of_structs, struct_probe());
    if expected_names(&err, "field", PROBE_FIELD).is_some() {
        explore(map_of_structs, out);
    }
}

/// A line of the pipeline file; `key` also for commented-out keys (`# key: value`, when `key` is
/// the name of an option, so that prose such as `# production: ...` stays prose), whose column
/// is where the key starts after the `#`.
struct Line {
    col: usize,
    key: Option<String>,
    value: String,
    commented: bool,
}

fn lines_of(text: &str, options: &BTreeSet<&str>) -> Vec<Line> {
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let commented = trimmed.starts_with('#');
            let body = trimmed.trim_start_matches('#').trim_start();
            let col = line.len() - body.len();
            let name: String = body
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(*c))
                .collect();
            let after = &body[name.len()..];
            let is_key = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && (after == ":" || after.starts_with(": "))
                && (!commented || options.contains(name.as_str()));
            Line {
                col,
                key: is_key.then_some(name),
                value: if is_key {
                    after[1..].trim().to_string()
                } else {
                    String::new()
                },
                commented,
            }
        })
        .collect()
}

/// The lines under key line `i`: up to the next key (set or commented) at its column or left.
fn block(lines: &[Line], i: usize) -> std::ops::Range<usize> {
    let end = (i + 1..lines.len())
        .find(|&j| lines[j].key.is_some() && lines[j].col <= lines[i].col)
        .unwrap_or(lines.len());
    i + 1..end
}

/// Documented: a comment at the end of the key's line, or a prose comment line right above it.
fn documented(lines: &[Line], i: usize) -> bool {
    let value = &lines[i].value;
    let own_comment = value.contains(" #") || value.starts_with('#');
    own_comment || (i > 0 && lines[i - 1].commented && lines[i - 1].key.is_none())
}

/// Key lines for `keys` (nested: each under the previous one's block) within `range`.
fn find_keys(lines: &[Line], range: std::ops::Range<usize>, keys: &[String]) -> Vec<usize> {
    let Some((first, rest)) = keys.split_first() else {
        return Vec::new();
    };
    if first == "*" {
        return if rest.is_empty() {
            Vec::new()
        } else {
            find_keys(lines, range, rest)
        };
    }
    let mut found = Vec::new();
    for i in range.filter(|&i| lines[i].key.as_deref() == Some(first.as_str())) {
        if rest.is_empty() {
            found.push(i);
        } else {
            found.extend(find_keys(lines, block(lines, i), rest));
        }
    }
    found
}

/// The comment lines right above key line `i`, the line itself and its block.
fn documentation(lines: &[Line], text: &str, i: usize) -> String {
    let raw: Vec<&str> = text.lines().collect();
    let mut start = i;
    while start > 0 && lines[start - 1].commented && lines[start - 1].key.is_none() {
        start -= 1;
    }
    raw[start..block(lines, i).end].join("\n")
}

/// Every key the config types accept (found by `explore`, so a new field, adapter type or enum
/// value in `src/config/` is covered without touching this test) must appear in
/// production.yaml under its section, set or commented out (`# key: value`, block style, one
/// key per line), with a comment at the end of its line or a prose comment line right above;
/// every adapter as a `type: NAME` line in its section; every enum value in the key's comments.
#[test]
fn the_production_template_documents_every_option() {
    let mut options = Options::default();
    explore(Vec::new(), &mut options);
    // The exploration itself must work: a few options it has to find.
    let found = |section: &[&str], field: &str| {
        options
            .fields
            .iter()
            .any(|(s, f)| s == section && f == field)
    };
    assert!(
        found(&[], "batch_size") && found(&[], "data_dir"),
        "{options:?}"
    );
    assert!(found(&["keys", "kek_cache"], "max_bytes"), "{options:?}");
    assert!(
        found(&["source", "schema_registry"], "timeout_ms"),
        "{options:?}"
    );
    assert!(
        found(&["enrich", "segments", "*"], "purpose"),
        "{options:?}"
    );
    assert!(found(&["store"], "path") && found(&["store"], "audit_retention_days"));
    assert!(
        options.types.len() >= 5 && options.values.len() >= 2,
        "{options:?}"
    );
    assert!(
        options.fields.len() >= 60,
        "only {} options found",
        options.fields.len()
    );

    let text = std::fs::read_to_string(production_path()).unwrap();
    let names: BTreeSet<&str> = options
        .fields
        .iter()
        .map(|(_, f)| f.as_str())
        .chain(["type"])
        .collect();
    let lines = lines_of(&text, &names);
    let mut missing = BTreeSet::new();
    // A residency zone's keys, store, index, dead-letter sink and feed have the top-level sections'
    // types, documented there: under a zone, only their own lines are checked.
    let reused = |keys: &[String]| {
        keys.len() >= 4
            && keys[..3] == ["residency", "zones", "*"]
            && ["keys", "store", "index", "dead_letter", "segment_changes"]
                .contains(&keys[3].as_str())
    };
    options.types.retain(|(section, _)| !reused(section));
    options.values.retain(|(keys, _)| !reused(keys));
    for (section, field) in &options.fields {
        let mut keys = section.clone();
        keys.push(field.clone());
        if keys.len() > 4 && reused(&keys) {
            continue;
        }
        let at = find_keys(&lines, 0..lines.len(), &keys);
        if at.is_empty() {
            missing.insert(format!("{} (no `{field}:` line there)", keys.join(".")));
        } else if !at.iter().any(|&i| documented(&lines, i)) {
            missing.insert(format!(
                "{} (no comment on or above its line)",
                keys.join(".")
            ));
        }
    }
    for (section, types) in &options.types {
        // The section's `type:` lines, set or commented out (an alternative adapter).
        let at: Vec<usize> = find_keys(&lines, 0..lines.len(), section)
            .into_iter()
            .flat_map(|i| block(&lines, i))
            .collect();
        for t in types {
            let listed = at.iter().any(|&i| {
                lines[i].key.as_deref() == Some("type")
                    && lines[i].value.split_whitespace().next() == Some(t.as_str())
            });
            if !listed {
                missing.insert(format!("{} (no `type: {t}` line)", section.join(".")));
            }
        }
    }
    for (keys, values) in &options.values {
        let docs: Vec<String> = find_keys(&lines, 0..lines.len(), keys)
            .into_iter()
            .map(|i| documentation(&lines, &text, i))
            .collect();
        for v in values {
            let named = docs.iter().any(|d| {
                d.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|w| w == v)
            });
            if !named {
                missing.insert(format!("{} (value `{v}` not described)", keys.join(".")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "pipelines/production.yaml does not document every option the pipeline file accepts:\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

/// The shipped pipeline files differ in their adapters only: what they derive (regions,
/// segments), the privacy rules and the indexed fields are those of `pipelines/local.yaml`, so
/// the samples give the same outcome whichever file runs them. (They had drifted: without
/// `privacy.purposes`, `opensearch-local.yaml` dead-lettered every consent event.)
#[test]
fn every_shipped_pipeline_derives_and_protects_like_local_yaml() {
    let section = |file: &str, key: &str| -> Value {
        let text = std::fs::read_to_string(repo().join("pipelines").join(file)).unwrap();
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        let mut value = doc[key].clone();
        if key == "enrich" {
            // The GeoIP database path differs in production (a real GeoIP2 City database).
            value["geoip"]["database"] = Value::Null;
        }
        if key == "index" {
            value = value["fields"].clone();
        }
        value
    };
    for file in [
        "aws-local.yaml",
        "kafka-local.yaml",
        "opensearch-local.yaml",
        "docker.yaml",
        "production.yaml",
        "residency-local.yaml",
        "residency-aws-local.yaml",
    ] {
        for key in ["enrich", "privacy", "index"] {
            assert_eq!(
                section(file, key),
                section("local.yaml", key),
                "pipelines/{file}: `{key}` differs from pipelines/local.yaml's"
            );
        }
    }
}
