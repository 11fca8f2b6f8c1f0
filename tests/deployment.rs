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
    for wanted in ["kafka", "schema-registry", "localstack", "opensearch", "opensearch-dashboards", "bootstrap", "worker-1", "worker-2", "producer"] {
        assert!(names.contains(wanted), "service {wanted} is missing");
    }
    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(service.get("image").is_some() || service.get("build").is_some(), "{name} has no image");
        if let Some(deps) = service.get("depends_on").and_then(Value::as_mapping) {
            for dep in deps.keys() {
                assert!(names.contains(dep.as_str().unwrap()), "{name} depends on a missing service {dep:?}");
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
        assert!(text.contains(adapter), "pipelines/docker.yaml does not use {adapter}");
    }
}

#[test]
fn the_image_is_multi_stage_and_runs_as_non_root() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2);
    let user = dockerfile.lines().rev().find(|l| l.starts_with("USER ")).expect("a USER line");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
}
