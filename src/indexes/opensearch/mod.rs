//! The production search index: OpenSearch, through the `opensearch` crate.
//!
//! Documents live in versioned indices `<name>-v1`, `<name>-v2`, … created from an index
//! template whose mapping is generated from the projection (`dynamic: strict`). Readers use the
//! read alias (`<name>`), writers the write alias (`<name>-write`); `profile-sync reindex`
//! builds the next version and moves the aliases (see `reindex.rs`). Every write carries the
//! profile version as an external version, so replays and out-of-order deliveries converge.

mod bulk;
mod client;
mod mapping;
mod reindex;

pub use mapping::Mapping;
pub use reindex::{reindex, ReindexCounts, ReindexError};

use self::bulk::ItemStatus;
use self::client::{Answer, Body, Client};
use super::{Aggregation, Bucket, IndexError, IndexOutcome, SearchIndex, SearchResults};
use crate::indexes::IndexOp;
use crate::retry::Backoff;
use crate::schema::FieldSpec;
use async_trait::async_trait;
use futures::StreamExt;
use opensearch::http::Method;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// The operations of one bulk request (by position) and what became of each.
type Answered = (Vec<usize>, Vec<ItemStatus>);

/// How many whole-request attempts administrative calls and searches get.
const ATTEMPTS: u32 = 4;
/// How many rounds of re-sending 429/5xx items before the batch fails as a whole (and the
/// pipeline retries it).
const ITEM_ROUNDS: u32 = 12;
/// The largest page OpenSearch serves by default (`index.max_result_window`).
const MAX_PAGE: usize = 10_000;

/// Where and how to write; built from the pipeline file's `index:` section.
#[derive(Debug, Clone)]
pub struct OpenSearchSettings {
    pub url: String,
    /// Prefix of the versioned indices and the template's name.
    pub name: String,
    pub read_alias: String,
    pub write_alias: String,
    pub credentials: Option<(String, String)>,
    pub max_bulk_bytes: usize,
    pub max_bulk_docs: usize,
    pub max_in_flight: usize,
    pub gzip: bool,
}

pub struct OpenSearchIndex {
    client: Client,
    settings: OpenSearchSettings,
    mapping: Mapping,
    backoff: Backoff,
}

/// The versioned indices and which of them the aliases point at.
#[derive(Debug, Default)]
struct AliasState {
    /// Index name → version number, for `<name>-v<N>` indices.
    versions: BTreeMap<String, u32>,
    read: Vec<String>,
    write: Option<String>,
}

impl AliasState {
    fn latest(&self) -> u32 {
        self.versions.values().copied().max().unwrap_or(0)
    }
}

impl OpenSearchIndex {
    /// Connects, installs the template and the first index version if there is none, and checks
    /// that the write alias points at an index built for this projection.
    pub fn open(settings: OpenSearchSettings, fields: &[FieldSpec]) -> Result<Self, IndexError> {
        Self::connect(settings, fields, true)
    }

    /// Connects without creating or checking anything: `reindex` builds the version it needs,
    /// also when the write alias is missing or holds another mapping; `search` and `check`
    /// only look.
    pub fn attach(settings: OpenSearchSettings, fields: &[FieldSpec]) -> Result<Self, IndexError> {
        Self::connect(settings, fields, false)
    }

    fn connect(
        settings: OpenSearchSettings,
        fields: &[FieldSpec],
        prepare: bool,
    ) -> Result<Self, IndexError> {
        let index = Self {
            client: Client::new(&settings.url, settings.credentials.clone())?,
            mapping: Mapping::new(fields),
            settings,
            backoff: Backoff::default(),
        };
        // Opening is synchronous (the pipeline is built before it runs); the setup calls run on
        // a runtime of their own, with a client of their own, on a scoped thread, so this works
        // from inside or outside an async runtime.
        let gzip = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| IndexError::Failed(format!("cannot start a runtime: {e}")))?;
                    runtime.block_on(async {
                        let setup = Self {
                            client: Client::new(
                                &index.settings.url,
                                index.settings.credentials.clone(),
                            )?,
                            settings: index.settings.clone(),
                            mapping: index.mapping.clone(),
                            backoff: index.backoff,
                        };
                        if prepare {
                            setup.prepare().await
                        } else {
                            setup.alias_state().await?;
                            Ok(setup.settings.gzip && setup.accepts_gzip().await)
                        }
                    })
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(IndexError::Failed(
                        "the OpenSearch setup stopped unexpectedly".into(),
                    ))
                })
        })?;
        index.client.set_gzip(gzip);
        Ok(index)
    }

    pub fn settings(&self) -> &OpenSearchSettings {
        &self.settings
    }

    fn index_name(&self, version: u32) -> String {
        format!("{}-v{version}", self.settings.name)
    }

    async fn prepare(&self) -> Result<bool, IndexError> {
        let mut state = self.alias_state().await?;
        if state.write.is_none() && state.versions.is_empty() {
            self.put_template().await?;
            let first = self.index_name(1);
            let answer = self
                .client
                .send(
                    Method::Put,
                    &format!("/{first}"),
                    Some(&Body::Json(json!({ "aliases": {
                        &self.settings.read_alias: {},
                        &self.settings.write_alias: { "is_write_index": true },
                    }}))),
                    ATTEMPTS,
                )
                .await?;
            // Another worker starting at the same time may have created it first.
            if !answer.ok() && answer.error_type() != Some("resource_already_exists_exception") {
                return Err(IndexError::Failed(format!(
                    "cannot create the OpenSearch index {first}: {}",
                    answer.error()
                )));
            }
            state = self.alias_state().await?;
        }
        let Some(write) = state.write.clone() else {
            return Err(IndexError::Failed(format!(
                "OpenSearch has indices {} but no write alias `{}`: run `profile-sync reindex` to build a new version and point the aliases at it",
                state.versions.keys().cloned().collect::<Vec<_>>().join(", "),
                self.settings.write_alias
            )));
        };
        self.check_fingerprint(&write).await?;
        Ok(self.settings.gzip && self.accepts_gzip().await)
    }

    /// Whether the server takes a gzipped body (OpenSearch does unless `http.compression` is off).
    async fn accepts_gzip(&self) -> bool {
        let body = Body::Json(json!({ "query": { "match_all": {} } }));
        let path = format!("/{}-v*/_count", self.settings.name);
        matches!(
            self.client.send_once(Method::Post, &path, Some(&body), true).await,
            Ok(a) if a.ok() && a.body.get("count").is_some()
        )
    }

    async fn check_fingerprint(&self, index: &str) -> Result<(), IndexError> {
        let answer = self
            .client
            .send(Method::Get, &format!("/{index}/_mapping"), None, ATTEMPTS)
            .await?;
        if !answer.ok() {
            return Err(IndexError::Failed(format!(
                "cannot read the mapping of {index}: {}",
                answer.error()
            )));
        }
        if mapping::fingerprint_of(&answer.body, index).as_deref()
            != Some(self.mapping.fingerprint().as_str())
        {
            return Err(IndexError::Failed(format!(
                "the OpenSearch index {index} (behind `{}`) was built for other index.fields than this pipeline file's; run `profile-sync reindex` to build the next index version with the new mapping, then start the pipeline again",
                self.settings.write_alias
            )));
        }
        Ok(())
    }

    async fn put_template(&self) -> Result<(), IndexError> {
        let name = &self.settings.name;
        let body = json!({
            "index_patterns": [format!("{name}-v*")],
            "priority": 100,
            "template": { "mappings": self.mapping.to_json() },
            "_meta": { "managed_by": "profile-sync" },
        });
        let answer = self
            .client
            .send(
                Method::Put,
                &format!("/_index_template/{name}"),
                Some(&Body::Json(body)),
                ATTEMPTS,
            )
            .await?;
        if !answer.ok() {
            return Err(IndexError::Failed(format!(
                "cannot install the index template {name}: {}",
                answer.error()
            )));
        }
        Ok(())
    }

    async fn alias_state(&self) -> Result<AliasState, IndexError> {
        let prefix = format!("{}-v", self.settings.name);
        let answer = self
            .client
            .send(Method::Get, &format!("/{prefix}*/_alias"), None, ATTEMPTS)
            .await?;
        let mut state = AliasState::default();
        if answer.status == 404 {
            return Ok(state);
        }
        if !answer.ok() {
            return Err(IndexError::Failed(format!(
                "cannot list the indices {prefix}*: {}",
                answer.error()
            )));
        }
        let Some(indices) = answer.body.as_object() else {
            return Ok(state);
        };
        let mut write_candidates = Vec::new();
        for (index, info) in indices {
            let Some(n) = index
                .strip_prefix(&prefix)
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            state.versions.insert(index.clone(), n);
            let aliases = &info["aliases"];
            if aliases.get(&self.settings.read_alias).is_some() {
                state.read.push(index.clone());
            }
            if let Some(w) = aliases.get(&self.settings.write_alias) {
                write_candidates.push((index.clone(), w["is_write_index"] == json!(true)));
            }
        }
        state.write = match write_candidates.as_slice() {
            [(only, _)] => Some(only.clone()),
            many => many.iter().find(|(_, w)| *w).map(|(i, _)| i.clone()),
        };
        Ok(state)
    }

    /// Writes the operations to `target` (an alias or an index), re-sending 429/5xx items with
    /// backoff. Returns one outcome per operation, in order.
    async fn write(&self, target: &str, ops: &[IndexOp]) -> Result<Vec<IndexOutcome>, IndexError> {
        let encoded: Vec<Vec<u8>> = ops
            .iter()
            .map(|op| bulk::encode(op, &self.mapping))
            .collect();
        let mut outcomes: Vec<Option<IndexOutcome>> = vec![None; ops.len()];
        let mut pending: Vec<usize> = (0..ops.len()).collect();
        let path = format!("/{target}/_bulk");
        let mut round = 0;
        while !pending.is_empty() {
            if round > 0 {
                if round >= ITEM_ROUNDS {
                    return Err(IndexError::Unavailable(format!(
                        "OpenSearch kept refusing {} documents with 429/5xx after {round} attempts",
                        pending.len()
                    )));
                }
                tokio::time::sleep(self.backoff.delay(round)).await;
            }
            round += 1;
            let sizes: Vec<usize> = pending.iter().map(|&i| encoded[i].len()).collect();
            let requests = bulk::split(
                &sizes,
                self.settings.max_bulk_bytes,
                self.settings.max_bulk_docs,
            );
            let answers: Vec<Result<Answered, IndexError>> =
                futures::stream::iter(requests.into_iter().map(|range| {
                    let members: Vec<usize> = pending[range].to_vec();
                    let path = path.as_str();
                    let encoded = &encoded;
                    async move {
                        let mut body = Vec::new();
                        for &i in &members {
                            body.extend_from_slice(&encoded[i]);
                        }
                        let answer = self
                            .client
                            .send(Method::Post, path, Some(&Body::NdJson(body)), ATTEMPTS)
                            .await?;
                        let statuses = self.bulk_statuses(&answer, members.len())?;
                        Ok((members, statuses))
                    }
                }))
                .buffer_unordered(self.settings.max_in_flight.max(1))
                .collect()
                .await;
            let mut retry = Vec::new();
            for answer in answers {
                let (members, statuses) = answer?;
                for (i, status) in members.into_iter().zip(statuses) {
                    outcomes[i] = match status {
                        ItemStatus::Applied => Some(IndexOutcome::Applied),
                        ItemStatus::Stale => Some(IndexOutcome::Stale),
                        ItemStatus::Rejected(reason) => Some(IndexOutcome::Rejected(reason)),
                        ItemStatus::Retry(_) => {
                            retry.push(i);
                            None
                        }
                    };
                }
            }
            if !retry.is_empty() {
                tracing::warn!(
                    items = retry.len(),
                    round,
                    "OpenSearch asked to retry bulk items"
                );
            }
            retry.sort_unstable();
            pending = retry;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(IndexOutcome::Rejected("no answer".into())))
            .collect())
    }

    fn bulk_statuses(&self, answer: &Answer, n: usize) -> Result<Vec<ItemStatus>, IndexError> {
        if answer.status == 404 {
            return Err(IndexError::Failed(format!(
                "OpenSearch has no index behind `{}`: start the pipeline once to create it, or run `profile-sync reindex`",
                self.settings.write_alias
            )));
        }
        if !answer.ok() {
            return Err(IndexError::Failed(format!(
                "OpenSearch refused a bulk request: {}",
                answer.error_type().unwrap_or("error")
            )));
        }
        bulk::parse_response(&answer.body, n, &self.mapping).map_err(IndexError::Failed)
    }

    fn query(&self, query: &str) -> Json {
        if query.trim() == "*" {
            return json!({ "match_all": {} });
        }
        json!({ "query_string": {
            "query": query,
            "fields": self.mapping.keyword_fields(),
        }})
    }

    async fn run_search(&self, body: Json) -> Result<Json, IndexError> {
        let path = format!("/{}/_search", self.settings.read_alias);
        let answer = self
            .client
            .send(Method::Post, &path, Some(&Body::Json(body)), ATTEMPTS)
            .await?;
        match answer.status {
            200..=299 => Ok(answer.body),
            404 => Err(IndexError::Failed(format!(
                "OpenSearch has no index behind the read alias `{}`: run the pipeline (or `profile-sync reindex`) first",
                self.settings.read_alias
            ))),
            400 => Err(IndexError::Query(query_error(&answer.body))),
            _ => Err(IndexError::Failed(format!(
                "OpenSearch search failed: {}",
                answer.error()
            ))),
        }
    }
}

/// Why a query was refused (it quotes the user's own query, nothing stored).
fn query_error(body: &Json) -> String {
    let error = &body["error"];
    error["root_cause"][0]["reason"]
        .as_str()
        .or_else(|| error["caused_by"]["reason"].as_str())
        .or_else(|| error["reason"].as_str())
        .or_else(|| error.as_str())
        .unwrap_or("OpenSearch could not parse it")
        .to_string()
}

#[async_trait]
impl SearchIndex for OpenSearchIndex {
    /// Both aliases point at an index, and the read alias answers a query.
    async fn check(&self) -> Result<String, String> {
        let state = self.alias_state().await.map_err(|e| {
            format!(
                "{e}: is OpenSearch reachable at {}? (locally: `scripts/services start opensearch`)",
                self.settings.url
            )
        })?;
        let Some(write) = state.write else {
            if state.versions.is_empty() {
                return Ok(format!(
                    "no index yet: the first `profile-sync run` creates {} behind `{}`",
                    self.index_name(1),
                    self.settings.write_alias
                ));
            }
            return Err(format!(
                "no index behind the write alias `{}`: run `profile-sync reindex`",
                self.settings.write_alias
            ));
        };
        self.check_fingerprint(&write)
            .await
            .map_err(|e| e.to_string())?;
        let found = self.search("*", 1).await.map_err(|e| e.to_string())?;
        Ok(format!(
            "`{}` reads {}, `{}` writes {write}; {} documents",
            self.settings.read_alias,
            state.read.join(", "),
            self.settings.write_alias,
            found.total
        ))
    }

    /// An erasure is deleted from every version of the index, not only the one behind the
    /// write alias: readers may still see an older version (during or after a reindex).
    async fn apply(&self, ops: &[IndexOp]) -> Result<Vec<IndexOutcome>, IndexError> {
        let outcomes = self.write(&self.settings.write_alias, ops).await?;
        let erasures: Vec<IndexOp> = ops
            .iter()
            .filter(|op| matches!(op, IndexOp::Erase { .. }))
            .cloned()
            .collect();
        if !erasures.is_empty() {
            let state = self.alias_state().await?;
            for index in state.versions.keys() {
                if state.write.as_ref() == Some(index) {
                    continue;
                }
                for outcome in self.write(index, &erasures).await? {
                    if let IndexOutcome::Rejected(reason) = outcome {
                        return Err(IndexError::Failed(format!(
                            "an erasure could not be deleted from {index}: {reason}"
                        )));
                    }
                }
            }
        }
        Ok(outcomes)
    }

    async fn search(&self, query: &str, limit: usize) -> Result<SearchResults, IndexError> {
        let mut hits = Vec::new();
        let mut total = 0;
        let mut after: Option<Json> = None;
        loop {
            let size = (limit - hits.len()).min(MAX_PAGE);
            let mut body = json!({
                "query": self.query(query),
                "size": size,
                "track_total_hits": true,
            });
            // Past one page, results are paged in user_id order (relevance cannot be paged).
            if limit > MAX_PAGE {
                body["sort"] = json!([{ "user_id": "asc" }]);
                if let Some(a) = &after {
                    body["search_after"] = a.clone();
                }
            }
            let answer = self.run_search(body).await?;
            total = answer["hits"]["total"]["value"]
                .as_u64()
                .or_else(|| answer["hits"]["total"].as_u64())
                .unwrap_or(total);
            let page = answer["hits"]["hits"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let n = page.len();
            after = page.last().map(|h| h["sort"].clone());
            hits.extend(page.into_iter().map(|mut h| h["_source"].take()));
            if limit <= MAX_PAGE || n < size || hits.len() >= limit || after.is_none() {
                break;
            }
        }
        Ok(SearchResults { total, hits })
    }

    async fn aggregate(
        &self,
        query: &str,
        field: &str,
        size: usize,
    ) -> Result<Aggregation, IndexError> {
        if !self.mapping.has_field(field) {
            return Err(IndexError::Query(super::not_aggregatable(
                field,
                self.mapping.types().map(|(n, _)| n),
            )));
        }
        let answer = self
            .run_search(json!({
                "query": self.query(query),
                "size": 0,
                "track_total_hits": true,
                "aggs": { "by": { "terms": { "field": field, "size": size.max(1) } } },
            }))
            .await?;
        let agg = &answer["aggregations"]["by"];
        let buckets = agg["buckets"]
            .as_array()
            .map(|b| {
                b.iter()
                    .map(|b| Bucket {
                        key: b["key_as_string"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| match &b["key"] {
                                Json::String(s) => s.clone(),
                                other => other.to_string(),
                            }),
                        count: b["doc_count"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Aggregation {
            field: field.to_string(),
            total: answer["hits"]["total"]["value"].as_u64().unwrap_or(0),
            buckets,
            other: agg["sum_other_doc_count"].as_u64().unwrap_or(0),
        })
    }
}
