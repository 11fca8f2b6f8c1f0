//! The test services (`scripts/services start`) as tests reach them: their addresses (each
//! overridable by the environment), a loud failure when one is down, dummy AWS credentials,
//! plain clients apart from the pipeline's adapters, and the Schema Registry test double.

use super::canary::Canary;
use super::scenarios::StoredState;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub type Item = HashMap<String, AttributeValue>;

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn dynamodb_endpoint() -> String {
    std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into())
}

pub fn kms_endpoint() -> String {
    std::env::var("KMS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

pub fn opensearch_url() -> String {
    std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// `host:port` of an endpoint URL or broker list entry.
pub fn host_port(endpoint: &str) -> String {
    endpoint
        .split("://")
        .last()
        .unwrap_or(endpoint)
        .trim_end_matches('/')
        .to_string()
}

/// Something accepts TCP connections at the endpoint (any of a comma-separated list).
pub fn reachable(endpoint: &str) -> bool {
    endpoint
        .split(',')
        .filter_map(|e| host_port(e).to_socket_addrs().ok())
        .flatten()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// Fails the test, naming the service and how to start it, unless it is reachable.
pub fn require(name: &str, endpoint: &str, service: &str) {
    assert!(
        reachable(endpoint),
        "{name} is not reachable at {endpoint}: run `scripts/services start {service}` (the test \
         needs the real service and never skips)"
    );
}

pub fn require_all() {
    require("The Kafka broker", &kafka_brokers(), "kafka");
    require("DynamoDB Local", &dynamodb_endpoint(), "dynamodb");
    require("The KMS emulator", &kms_endpoint(), "kms");
    require(
        "The OpenSearch test server",
        &opensearch_url(),
        "opensearch",
    );
}

/// An address where nothing listens: a stopped service, as a client sees it, or a free one
/// for a server the test starts.
pub fn stopped_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

/// `pipelines/local.yaml` (its consent purposes, retention rules, segments and feed) with the
/// keys, store and index swapped for KMS, DynamoDB and OpenSearch under fresh names (a table,
/// a KMS alias and an index named after `label`), its relative paths made absolute, and
/// bootstrapped. Returns the text written to `path` and the table and index names.
pub fn services_pipeline(label: &str, path: &std::path::Path) -> (String, String) {
    aws_test_env();
    require("DynamoDB Local", &dynamodb_endpoint(), "dynamodb");
    require("The KMS emulator", &kms_endpoint(), "kms");
    require(
        "The OpenSearch test server",
        &opensearch_url(),
        "opensearch",
    );
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let table = format!("{label}-{id}");
    let index = format!("ps-{label}-{id}");
    let local = std::fs::read_to_string(super::local_pipeline()).unwrap();
    let (head, rest) = local.split_at(local.find("\nkeys:").unwrap());
    let tail = &rest[rest.find("\ndead_letter:").unwrap()..];
    let adapters = format!(
        "
keys:
  type: kms
  key_id: alias/{table}
  region: us-east-1
  endpoint: {kms}
  create_for_development: true
store:
  type: dynamodb
  table: {table}
  region: us-east-1
  endpoint: {dynamodb}
index:
  type: opensearch
  url: {opensearch}
  name: {index}
  read_alias: {index}
  write_alias: {index}-write
  fields: [status, locale, time_zone, last_seen_at, lifetime_value, order_count, last_order_at, plan]
",
        kms = kms_endpoint(),
        dynamodb = dynamodb_endpoint(),
        opensearch = opensearch_url(),
    );
    let text =
        format!("{head}{adapters}{tail}").replace("../", &format!("{}/", super::repo().display()));
    std::fs::write(path, &text).unwrap();
    let out = super::bin()
        .arg("bootstrap")
        .arg("--pipeline")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (table, index)
}

/// Dummy credentials and region for the emulators, never the developer's AWS configuration
/// (and no instance-metadata lookups).
pub fn aws_test_env() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/profile-sync-test"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/profile-sync-test",
            ),
        ] {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
    });
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_test_env();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await
}

pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk(&dynamodb_endpoint()).await)
}

pub async fn kms() -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&sdk(&kms_endpoint()).await)
}

/// Every item of the table, read with a plain DynamoDB client.
pub async fn scan_all(table: &str) -> Vec<Item> {
    let client = dynamodb().await;
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        items.extend(page.items().iter().cloned());
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return items,
        }
    }
}

fn attribute<'a>(item: &'a Item, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .unwrap_or_else(|| panic!("item has no string {name}"))
}

/// (version, deleted) of every profile in the table, as a plain client sees it (a delete
/// keeps its row, `deleted` true, as a version fence).
pub fn dynamodb_state(table: &str) -> StoredState {
    block_on(scan_all(table))
        .iter()
        .filter(|i| attribute(i, "sk") == "PROFILE")
        .map(|i| {
            (
                attribute(i, "user_id").to_string(),
                (
                    i["version"].as_n().unwrap().parse().unwrap(),
                    *i["deleted"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

/// Fails if any string or binary attribute of any item holds a generated PII value.
pub fn assert_no_plaintext_pii(items: &[Item], canary: &Canary) {
    for item in items {
        for (name, value) in item {
            let bytes: Vec<u8> = match value {
                AttributeValue::S(v) => v.as_bytes().to_vec(),
                AttributeValue::B(v) => v.as_ref().to_vec(),
                other => format!("{other:?}").into_bytes(),
            };
            canary.assert_absent(
                &format!("attribute {name} of item {}", attribute(item, "pk")),
                bytes,
            );
        }
    }
}

/// Every document behind `index` (an alias or an index) in the OpenSearch server, by user id,
/// after a refresh.
pub fn opensearch_documents(index: &str) -> HashMap<String, Json> {
    block_on(async {
        let client = reqwest::Client::new();
        let url = opensearch_url();
        client
            .post(format!("{url}/{index}/_refresh"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the OpenSearch test server at {url} ({e})"));
        let mut out = HashMap::new();
        let mut after: Option<Json> = None;
        loop {
            let mut body =
                json!({"size": 5000, "sort": [{"user_id": "asc"}], "query": {"match_all": {}}});
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let response = client
                .post(format!("{url}/{index}/_search"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let page: Json = response.json().await.unwrap_or(Json::Null);
            assert_eq!(status, 200, "{page}");
            let hits = page["hits"]["hits"].as_array().unwrap().clone();
            if hits.is_empty() {
                return out;
            }
            after = Some(hits.last().unwrap()["sort"].clone());
            for hit in hits {
                let doc = hit["_source"].clone();
                out.insert(doc["user_id"].as_str().unwrap().to_string(), doc);
            }
        }
    })
}

/// A Schema Registry for one test: the real one at `SCHEMA_REGISTRY_URL`, else the in-repo
/// double (`profile-sync dev registry`), stopped when this is dropped.
pub struct Registry {
    pub url: String,
    child: Option<Child>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn registry() -> Registry {
    if let Ok(url) = std::env::var("SCHEMA_REGISTRY_URL") {
        return Registry { url, child: None };
    }
    let mut child = Command::new(super::binary())
        .args(["dev", "registry", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the registry double");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("the double prints its URL")
        .to_string();
    assert!(url.starts_with("http://"), "unexpected line {line:?}");
    Registry {
        url,
        child: Some(child),
    }
}

/// Creates the topics (name, partitions) with replication 1.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        r.expect("topic created");
    }
}
