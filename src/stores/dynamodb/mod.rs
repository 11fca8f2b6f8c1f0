//! The production canonical store: one DynamoDB table, one partition per user (profile, wrapped
//! data key, consent records, audit trail), behaving exactly like the SQLite store.
//!
//! Writes are conditional on the version (`attribute_not_exists(pk) OR version < :v`); a failed
//! condition is read back to tell `Replayed` from `Stale`. Reads are batched (BatchGetItem),
//! conditional writes run with bounded concurrency, and every call is retried on throttling,
//! 5xx and connection failures with the one backoff policy (`crate::retry`). The layout is in
//! `items.rs` and ARCHITECTURE.md; table creation in `table.rs`.

mod items;
mod table;

pub use items::{user_pk, EMAIL_GSI, SETTINGS_PK};
pub use table::TableReport;

use super::{
    consent_state, AuditRecord, ConsentRecord, ConsentState, ProfileStore, StoreCounts, StoreError,
    StoredProfile, StoredSegments, WriteOutcome,
};
use crate::aws::{self, classify, retrying, Endpoint, Failure};
use crate::event::ProtectedChange;
use crate::stores::WrappedUserKey;
use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, DeleteRequest, KeysAndAttributes, Put, TransactWriteItem, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use items::*;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Items per BatchGetItem (the API's limit).
const BATCH_GET: usize = 100;
/// Requests per BatchWriteItem (the API's limit).
const BATCH_WRITE: usize = 25;
/// Conditional puts per TransactWriteItems (the API allows 100).
const TRANSACT: usize = 100;

/// A conditional put: the item, its condition and the condition's values.
struct CondPut {
    item: Item,
    condition: &'static str,
    values: Vec<(&'static str, AttributeValue)>,
}

pub struct DynamoStore {
    client: Client,
    table: String,
    concurrency: usize,
    audit_retention_days: u64,
    /// `privacy.erased_user_events: accept`: a change newer than an erasure fence stores the
    /// user anew. Otherwise every write is conditional on the item not being erased, so an
    /// erasure that lands while a batch is on its way is not undone by it.
    revive_erased: bool,
}

/// What a profile item's version read says.
#[derive(Debug, Clone, Copy)]
struct StoredVersion {
    version: i64,
    erased: bool,
}

/// A DynamoDB error as a store error: transient ones are retried by the pipeline. Names the
/// call and the error code, never request values.
pub(crate) fn dynamo_err<E: ProvideErrorMetadata>(
    what: &str,
    e: &SdkError<E, HttpResponse>,
) -> StoreError {
    match classify(e) {
        Failure::Transient(why) => StoreError::Unavailable(format!("DynamoDB {what}: {why}")),
        Failure::Permanent { code, .. } => {
            let hint = match code.as_str() {
                "ResourceNotFoundException" => {
                    ": the table or its index does not exist; run `profile-sync bootstrap --pipeline FILE`"
                }
                "AccessDeniedException" | "UnrecognizedClientException" => {
                    ": check the credentials and the IAM permissions listed in the README"
                }
                _ => "",
            };
            StoreError::Failed(format!("DynamoDB {what} failed: {code}{hint}"))
        }
    }
}

fn transient<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(classify(e), Failure::Transient(_))
}

fn backoff() -> crate::retry::Backoff {
    crate::retry::Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(2),
    }
}

impl DynamoStore {
    /// Connects and checks that the table exists (from synchronous code in the CLI runtime).
    pub fn open(
        table: &str,
        at: &Endpoint,
        concurrency: usize,
        audit_retention_days: u64,
        check_table: bool,
    ) -> Result<Self, StoreError> {
        aws::block_on(Self::connect(
            table,
            at,
            concurrency,
            audit_retention_days,
            check_table,
        ))
        .map_err(StoreError::Failed)?
    }

    pub async fn connect(
        table: &str,
        at: &Endpoint,
        concurrency: usize,
        audit_retention_days: u64,
        check_table: bool,
    ) -> Result<Self, StoreError> {
        if table.trim().is_empty() {
            return Err(StoreError::Failed(
                "store.table is empty: name the DynamoDB table".into(),
            ));
        }
        let client = Client::new(&aws::sdk_config(at).await.map_err(StoreError::Failed)?);
        let store = Self {
            client,
            table: table.to_string(),
            concurrency: concurrency.max(1),
            audit_retention_days,
            revive_erased: false,
        };
        if check_table {
            let where_ = at.endpoint.as_deref().unwrap_or("the AWS endpoint");
            retrying(
                "DescribeTable",
                || store.client.describe_table().table_name(table).send(),
                transient,
            )
            .await
            .map_err(|e| match dynamo_err("DescribeTable", &e) {
                StoreError::Unavailable(why) => StoreError::Unavailable(format!(
                    "{why}: is DynamoDB reachable at {where_}? (locally: `scripts/services start dynamodb`)"
                )),
                other => other,
            })?;
        }
        Ok(store)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Reads items by key, in chunks of 100, retrying unprocessed keys; consistent reads.
    /// Consistent reads of `keys` in calls of 100; `projection` may use `#segments` (the
    /// reserved word `segments`).
    async fn batch_get(&self, keys: Vec<Item>, projection: &str) -> Result<Vec<Item>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET) {
            let mut pending = chunk.to_vec();
            let mut attempt = 0;
            while !pending.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .consistent_read(true)
                    .projection_expression(projection)
                    .set_expression_attribute_names(
                        projection
                            .contains("#segments")
                            .then(|| HashMap::from([("#segments".into(), "segments".into())])),
                    )
                    .build()
                    .map_err(|e| StoreError::Failed(format!("BatchGetItem request: {e}")))?;
                let call = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request);
                let out = retrying("BatchGetItem", || call.clone().send(), transient)
                    .await
                    .map_err(|e| dynamo_err("BatchGetItem", &e))?;
                if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                    found.extend(items.iter().cloned());
                }
                if let Some(left) = out.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                    pending = left.keys().to_vec();
                }
                if !pending.is_empty() {
                    attempt += 1;
                    if attempt >= aws::ATTEMPTS {
                        return Err(StoreError::Unavailable(
                            "DynamoDB BatchGetItem: keys left unprocessed (throttled)".into(),
                        ));
                    }
                    tokio::time::sleep(backoff().delay(attempt)).await;
                }
            }
        }
        Ok(found)
    }

    /// Deletes items by key in batches of 25, retrying unprocessed items.
    async fn batch_delete(&self, keys: Vec<Item>) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for chunk in keys.chunks(BATCH_WRITE) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|k| {
                    Ok(WriteRequest::builder()
                        .delete_request(DeleteRequest::builder().set_key(Some(k.clone())).build()?)
                        .build())
                })
                .collect::<Result<_, aws_sdk_dynamodb::error::BuildError>>()
                .map_err(|e| StoreError::Failed(format!("BatchWriteItem request: {e}")))?;
            let mut attempt = 0;
            while !pending.is_empty() {
                let call = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, std::mem::take(&mut pending));
                let out = retrying("BatchWriteItem", || call.clone().send(), transient)
                    .await
                    .map_err(|e| dynamo_err("BatchWriteItem", &e))?;
                if let Some(left) = out.unprocessed_items().and_then(|u| u.get(&self.table)) {
                    pending = left.clone();
                }
                if !pending.is_empty() {
                    attempt += 1;
                    if attempt >= aws::ATTEMPTS {
                        return Err(StoreError::Unavailable(
                            "DynamoDB BatchWriteItem: items left unprocessed (throttled)".into(),
                        ));
                    }
                    tokio::time::sleep(backoff().delay(attempt)).await;
                }
            }
            deleted += chunk.len() as u64;
        }
        Ok(deleted)
    }

    async fn get_item(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let call = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true);
        let out = retrying("GetItem", || call.clone().send(), transient)
            .await
            .map_err(|e| dynamo_err("GetItem", &e))?;
        Ok(out.item().cloned())
    }

    /// Every item of a user's partition whose sort key starts with `prefix`, in order.
    async fn query_prefix(&self, user: Uuid, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let call = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(user_pk(user)))
            .expression_attribute_values(":prefix", AttributeValue::S(prefix.into()))
            .consistent_read(true);
        let (items, _) = pages(
            None,
            Vec::new(),
            |_| false,
            Vec::extend,
            |start, _| {
                let call = call.clone().set_exclusive_start_key(start);
                async move {
                    let page = retrying("Query", || call.clone().send(), transient)
                        .await
                        .map_err(|e| dynamo_err("Query", &e))?;
                    Ok((page.items().to_vec(), page.last_evaluated_key().cloned()))
                }
            },
        )
        .await?;
        Ok(items)
    }

    /// The stored versions of these users' profiles.
    async fn versions(&self, users: &[Uuid]) -> Result<HashMap<Uuid, StoredVersion>, StoreError> {
        let keys = users.iter().map(|u| key_of(user_pk(*u), PROFILE)).collect();
        let mut versions = HashMap::new();
        for item in self.batch_get(keys, "user_id, version, erased_at").await? {
            let user = Uuid::parse_str(get_s(&item, "profile", "user_id")?)
                .map_err(|_| StoreError::Failed("a stored user id is not a UUID".into()))?;
            versions.insert(user, stored_version(&item)?);
        }
        Ok(versions)
    }

    /// The outcome decided from what is stored, if it is decided without a write: `None` when
    /// the change is to be written.
    fn decided(&self, stored: Option<StoredVersion>, version: i64) -> Option<WriteOutcome> {
        match stored {
            Some(s) if s.version > version => Some(WriteOutcome::Stale),
            Some(s) if s.version == version => Some(WriteOutcome::Replayed),
            Some(s) if s.erased && !self.revive_erased => Some(WriteOutcome::Erased),
            _ => None,
        }
    }

    /// Lets a change newer than an erasure fence store the user anew (the pipeline's
    /// `privacy.erased_user_events: accept`); by default such a change is refused.
    pub fn reviving_erased(mut self, revive: bool) -> Self {
        self.revive_erased = revive;
        self
    }

    /// Writes the puts in transactions of up to 100; returns, per put, whether it was written
    /// (`false`: the transaction of that put was cancelled, mostly by a failed condition, and
    /// nothing of it was written: the caller decides item by item).
    async fn transact_puts(&self, puts: Vec<CondPut>) -> Result<Vec<bool>, StoreError> {
        let chunks: Vec<Vec<CondPut>> = {
            let mut chunks = Vec::new();
            let mut it = puts.into_iter().peekable();
            while it.peek().is_some() {
                chunks.push(it.by_ref().take(TRANSACT).collect());
            }
            chunks
        };
        let results: Vec<Vec<bool>> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let n = chunk.len();
                let mut call = self.client.transact_write_items();
                for p in chunk {
                    let mut put = Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(p.item))
                        .condition_expression(p.condition);
                    for (k, v) in p.values {
                        put = put.expression_attribute_values(k, v);
                    }
                    let put = put.build().map_err(|e| {
                        StoreError::Failed(format!("TransactWriteItems request: {e}"))
                    })?;
                    call = call.transact_items(TransactWriteItem::builder().put(put).build());
                }
                match retrying("TransactWriteItems", || call.clone().send(), transient).await {
                    Ok(_) => Ok(vec![true; n]),
                    Err(e) if e.code() == Some("TransactionCanceledException") => {
                        Ok(vec![false; n])
                    }
                    Err(e) => Err(dynamo_err("TransactWriteItems", &e)),
                }
            })
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    /// Applies one user's changes in order; `known` is the stored version read before.
    async fn apply_user(
        &self,
        all: &[ProtectedChange],
        mine: Vec<usize>,
        mut known: Option<StoredVersion>,
    ) -> Result<Vec<(usize, WriteOutcome)>, StoreError> {
        let mut out = Vec::with_capacity(mine.len());
        let condition = if self.revive_erased {
            "attribute_not_exists(pk) OR version < :v"
        } else {
            "attribute_not_exists(pk) OR (version < :v AND attribute_not_exists(erased_at))"
        };
        for i in mine {
            let change = &all[i];
            let outcome = loop {
                if let Some(decided) = self.decided(known, change.version) {
                    break decided;
                }
                let call = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(profile_item(change)))
                    .condition_expression(condition)
                    .expression_attribute_values(
                        ":v",
                        AttributeValue::N(change.version.to_string()),
                    );
                match retrying("PutItem", || call.clone().send(), transient).await {
                    Ok(_) => {
                        known = Some(StoredVersion {
                            version: change.version,
                            erased: false,
                        });
                        break WriteOutcome::Applied;
                    }
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                    {
                        // Another writer got there first: what is stored now decides.
                        let stored = self
                            .get_item(key_of(user_pk(change.user_id), PROFILE))
                            .await?;
                        let now = match stored {
                            Some(item) => stored_version(&item)?,
                            None => return Err(StoreError::Unavailable(
                                "DynamoDB PutItem: condition failed on a missing item; retrying"
                                    .into(),
                            )),
                        };
                        if self.decided(Some(now), change.version).is_none() {
                            return Err(StoreError::Unavailable(
                                "DynamoDB PutItem: a concurrent write moved the version; retrying"
                                    .into(),
                            ));
                        }
                        known = Some(now);
                    }
                    Err(e) => return Err(dynamo_err("PutItem", &e)),
                }
            };
            out.push((i, outcome));
        }
        Ok(out)
    }

    /// One page of stored user keys (for `keys rotate` / `keys rewrap`).
    async fn scan_sk(
        &self,
        sk: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<String>), StoreError> {
        let limit = limit.max(1);
        let start = match cursor {
            Some(c) => Some(decode_cursor(&c)?),
            None => None,
        };
        let call = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("sk = :sk")
            .expression_attribute_values(":sk", AttributeValue::S(sk.into()))
            .consistent_read(true);
        let (found, next) = pages(
            start,
            Vec::new(),
            |found| found.len() >= limit,
            Vec::extend,
            |start, found| {
                scan_page(
                    call.clone()
                        .limit((limit - found.len()).min(i32::MAX as usize) as i32)
                        .set_exclusive_start_key(start),
                )
            },
        )
        .await?;
        Ok((found, next.as_ref().map(encode_cursor)))
    }
}

/// The version and erasure of a profile item (read with at least `version, erased_at`).
fn stored_version(item: &Item) -> Result<StoredVersion, StoreError> {
    Ok(StoredVersion {
        version: get_n(item, "profile", "version")?,
        erased: item.contains_key("erased_at"),
    })
}

fn encode_cursor(key: &Item) -> String {
    let pk = opt_s(key, PK).unwrap_or_default();
    let sk = opt_s(key, SK).unwrap_or_default();
    serde_json::json!({ "pk": pk, "sk": sk }).to_string()
}

fn decode_cursor(cursor: &str) -> Result<Item, StoreError> {
    let bad = || StoreError::Failed("the scan cursor is not one this store returned".into());
    let v: serde_json::Value = serde_json::from_str(cursor).map_err(|_| bad())?;
    let pk = v["pk"].as_str().ok_or_else(bad)?;
    let sk = v["sk"].as_str().ok_or_else(bad)?;
    Ok(key_of(pk.into(), sk))
}

#[async_trait]
impl ProfileStore for DynamoStore {
    /// DescribeTable, not a count: counting a production table would scan all of it.
    async fn check(&self) -> Result<String, String> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| dynamo_err("DescribeTable", &e).to_string())?;
        let table = out.table();
        let status = table
            .and_then(|t| t.table_status())
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "unknown".into());
        if status != "ACTIVE" {
            return Err(format!(
                "table `{}` is {status}, not ACTIVE: wait for it, or run `profile-sync bootstrap`",
                self.table
            ));
        }
        Ok(format!(
            "table `{}` ACTIVE (~{} items)",
            self.table,
            table.and_then(|t| t.item_count()).unwrap_or_default()
        ))
    }

    async fn apply(&self, changes: &[ProtectedChange]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut by_user: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (i, c) in changes.iter().enumerate() {
            by_user.entry(c.user_id).or_default().push(i);
        }
        let users: Vec<Uuid> = by_user.keys().copied().collect();
        let known = self.versions(&users).await?;
        // Decide each change against the version read; per user only the last applied change
        // needs writing (the end state of applying them in order), conditional on the version
        // read being still there. A user whose write is refused is redone one change at a time.
        let mut outcomes = vec![WriteOutcome::Stale; changes.len()];
        let mut writes: Vec<(Uuid, Vec<usize>)> = Vec::new();
        let mut puts = Vec::new();
        for (user, mine) in &by_user {
            let read = known.get(user).copied();
            let mut current = read;
            let mut last = None;
            for &i in mine {
                let v = changes[i].version;
                outcomes[i] = match self.decided(current, v) {
                    Some(decided) => decided,
                    None => {
                        current = Some(StoredVersion {
                            version: v,
                            erased: false,
                        });
                        last = Some(i);
                        WriteOutcome::Applied
                    }
                };
            }
            if let Some(i) = last {
                puts.push(match read {
                    None => CondPut {
                        item: profile_item(&changes[i]),
                        condition: "attribute_not_exists(pk)",
                        values: vec![],
                    },
                    Some(r) => CondPut {
                        item: profile_item(&changes[i]),
                        condition: if self.revive_erased {
                            "version = :read"
                        } else {
                            "version = :read AND attribute_not_exists(erased_at)"
                        },
                        values: vec![(":read", AttributeValue::N(r.version.to_string()))],
                    },
                });
                writes.push((*user, mine.clone()));
            }
        }
        let written = self.transact_puts(puts).await?;
        let redo: Vec<(Uuid, Vec<usize>)> = writes
            .into_iter()
            .zip(written)
            .filter(|(_, ok)| !ok)
            .map(|(w, _)| w)
            .collect();
        let redone: Vec<Vec<(usize, WriteOutcome)>> = futures::stream::iter(redo)
            .map(|(user, mine)| async move {
                let read = self.versions(&[user]).await?.get(&user).copied();
                self.apply_user(changes, mine, read).await
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        for (i, outcome) in redone.into_iter().flatten() {
            outcomes[i] = outcome;
        }
        Ok(outcomes)
    }

    async fn get(&self, user: Uuid) -> Result<Option<StoredProfile>, StoreError> {
        self.get_item(key_of(user_pk(user), PROFILE))
            .await?
            .map(|item| parse_profile(&item))
            .transpose()
    }

    async fn find_by_email_index(&self, email_index: &str) -> Result<Option<Uuid>, StoreError> {
        let call = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(EMAIL_GSI)
            .key_condition_expression("email_index = :e")
            .expression_attribute_values(":e", AttributeValue::S(email_index.into()));
        let out = retrying("Query", || call.clone().send(), transient)
            .await
            .map_err(|e| dynamo_err("Query", &e))?;
        for item in out.items() {
            if opt_s(item, SK) != Some(PROFILE) {
                continue;
            }
            if let Some(user) = opt_s(item, PK)
                .and_then(|pk| pk.strip_prefix("USER#"))
                .and_then(|u| Uuid::parse_str(u).ok())
            {
                // The GSI is eventually consistent: confirm against the profile itself.
                if let Some(p) = self.get(user).await? {
                    if p.record.is_some() {
                        return Ok(Some(user));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn user_keys(&self, users: &[Uuid]) -> Result<HashMap<Uuid, WrappedUserKey>, StoreError> {
        let keys = users.iter().map(|u| key_of(user_pk(*u), KEY)).collect();
        let items = self
            .batch_get(
                keys,
                "user_id, key_version, provider, kek_id, encrypted_kek, wrapped_key, created_at",
            )
            .await?;
        items
            .iter()
            .map(|item| parse_key(item).map(|k| (k.user_id, k)))
            .collect()
    }

    async fn insert_user_keys(
        &self,
        keys: Vec<WrappedUserKey>,
    ) -> Result<Vec<WrappedUserKey>, StoreError> {
        let mut users: Vec<Uuid> = keys.iter().map(|k| k.user_id).collect();
        users.sort();
        users.dedup();
        // Fast path: one transaction per 100 keys; a cancelled one is redone key by key.
        let written = if users.len() == keys.len() {
            self.transact_puts(
                keys.iter()
                    .map(|k| CondPut {
                        item: key_item(k),
                        condition: "attribute_not_exists(pk)",
                        values: vec![],
                    })
                    .collect(),
            )
            .await?
        } else {
            vec![false; keys.len()]
        };
        futures::stream::iter(keys.into_iter().zip(written))
            .map(|(key, written)| async move {
                if written {
                    return Ok(key);
                }
                let call = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(key_item(&key)))
                    .condition_expression("attribute_not_exists(pk)");
                match retrying("PutItem", || call.clone().send(), transient).await {
                    Ok(_) => Ok(key),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                    {
                        // Another writer's key got there first: it wins.
                        let item = self
                            .get_item(key_of(user_pk(key.user_id), KEY))
                            .await?
                            .ok_or_else(|| {
                                StoreError::Unavailable(
                                    "a user key vanished after a conflict; retrying".into(),
                                )
                            })?;
                        parse_key(&item)
                    }
                    Err(e) => Err(dynamo_err("PutItem", &e)),
                }
            })
            .buffered(self.concurrency)
            .try_collect()
            .await
    }

    /// The record and its id marker in one transaction, both conditional on not existing: a
    /// record appended again (its `at` differs, its id does not) is found by the marker.
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let written = self
            .transact_puts(vec![
                CondPut {
                    item: audit_marker(record, self.audit_retention_days),
                    condition: "attribute_not_exists(pk)",
                    values: vec![],
                },
                CondPut {
                    item: audit_item(record, self.audit_retention_days),
                    condition: "attribute_not_exists(pk)",
                    values: vec![],
                },
            ])
            .await?;
        if written.iter().all(|w| *w) {
            return Ok(());
        }
        // Cancelled: by the marker (stored already), or by a concurrent transaction (retry).
        let marker = key_of(user_pk(record.user_id), &audit_marker_sk(record.id));
        match self.get_item(marker).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::Unavailable(format!(
                "the audit record {} was not written (a concurrent transaction); retry",
                record.id
            ))),
        }
    }

    async fn audit_trail(&self, user: Uuid) -> Result<Vec<AuditRecord>, StoreError> {
        self.query_prefix(user, AUDIT_PREFIX)
            .await?
            .iter()
            .map(parse_audit)
            .collect()
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        let call = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("sk = :sk")
            .projection_expression("deleted")
            .expression_attribute_values(":sk", AttributeValue::S(PROFILE.into()));
        let count = |counts: &mut StoreCounts, items: Vec<Item>| {
            for item in items {
                if matches!(item.get("deleted"), Some(AttributeValue::Bool(true))) {
                    counts.deleted += 1;
                } else {
                    counts.live += 1;
                }
            }
        };
        let (counts, _) = pages(
            None,
            StoreCounts::default(),
            |_| false,
            count,
            |start, _| scan_page(call.clone().set_exclusive_start_key(start)),
        )
        .await?;
        Ok(counts)
    }

    async fn scan(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<StoredProfile>, Option<String>), StoreError> {
        let (items, next) = self.scan_sk(PROFILE, cursor, limit).await?;
        let page = items.iter().map(parse_profile).collect::<Result<_, _>>()?;
        Ok((page, next))
    }

    async fn append_consent(&self, record: &ConsentRecord) -> Result<(), StoreError> {
        let call = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(consent_item(record)))
            .condition_expression("attribute_not_exists(pk)");
        match retrying("PutItem", || call.clone().send(), transient).await {
            Ok(_) => Ok(()),
            // The same user, event and purpose again: kept once.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(dynamo_err("PutItem", &e)),
        }
    }

    async fn consent_history(&self, user: Uuid) -> Result<Vec<ConsentRecord>, StoreError> {
        self.query_prefix(user, CONSENT_PREFIX)
            .await?
            .iter()
            .map(parse_consent)
            .collect()
    }

    async fn consent_states(
        &self,
        users: &[Uuid],
    ) -> Result<HashMap<Uuid, ConsentState>, StoreError> {
        let histories: Vec<(Uuid, Vec<ConsentRecord>)> =
            futures::stream::iter(users.to_vec())
                .map(|user| async move {
                    Ok::<_, StoreError>((user, self.consent_history(user).await?))
                })
                .buffer_unordered(self.concurrency)
                .try_collect()
                .await?;
        Ok(histories
            .into_iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(u, h)| (u, consent_state(&h)))
            .collect())
    }

    async fn erase(&self, user: Uuid, version: i64, at: DateTime<Utc>) -> Result<i64, StoreError> {
        for attempt in 1..=aws::ATTEMPTS {
            let stored = self.versions(&[user]).await?.get(&user).map(|s| s.version);
            let fence = stored.map_or(version, |s| s.max(version));
            let mut put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(tombstone_item(user, fence, &at)));
            put = match stored {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(s) => put
                    .condition_expression("version = :stored")
                    .expression_attribute_values(":stored", AttributeValue::N(s.to_string())),
            };
            let build = |e: aws_sdk_dynamodb::error::BuildError| {
                StoreError::Failed(format!("TransactWriteItems request: {e}"))
            };
            let call = self
                .client
                .transact_write_items()
                .transact_items(
                    TransactWriteItem::builder()
                        .put(put.build().map_err(build)?)
                        .build(),
                )
                .transact_items(
                    TransactWriteItem::builder()
                        .delete(
                            Delete::builder()
                                .table_name(&self.table)
                                .set_key(Some(key_of(user_pk(user), KEY)))
                                .build()
                                .map_err(build)?,
                        )
                        .build(),
                );
            match retrying("TransactWriteItems", || call.clone().send(), transient).await {
                Ok(_) => return Ok(fence),
                Err(e) if is_condition_cancel(&e) => {
                    // A write landed between the read and the transaction: read again.
                    tokio::time::sleep(backoff().delay(attempt)).await;
                }
                Err(e) => return Err(dynamo_err("TransactWriteItems", &e)),
            }
        }
        Err(StoreError::Unavailable(
            "erase kept racing concurrent writes to the same user; retrying".into(),
        ))
    }

    async fn remove_user(&self, user: Uuid) -> Result<u64, StoreError> {
        let keys = self
            .query_prefix(user, "")
            .await?
            .into_iter()
            .map(|item| {
                item.into_iter()
                    .filter(|(name, _)| name == PK || name == SK)
                    .collect()
            })
            .collect();
        self.batch_delete(keys).await
    }

    async fn segment_sets(
        &self,
        users: &[Uuid],
    ) -> Result<HashMap<Uuid, StoredSegments>, StoreError> {
        let keys = users.iter().map(|u| key_of(user_pk(*u), PROFILE)).collect();
        let projection = "user_id, version, deleted, #segments, segment_history";
        let mut sets = HashMap::new();
        for item in self.batch_get(keys, projection).await? {
            let (user, set) = parse_segments(&item)?;
            sets.insert(user, set);
        }
        Ok(sets)
    }

    async fn erasure_fences(&self, users: &[Uuid]) -> Result<HashMap<Uuid, i64>, StoreError> {
        let keys = users.iter().map(|u| key_of(user_pk(*u), PROFILE)).collect();
        let mut fences = HashMap::new();
        for item in self.batch_get(keys, "user_id, version, erased_at").await? {
            if opt_s(&item, "erased_at").is_some() {
                let user = Uuid::parse_str(get_s(&item, "profile", "user_id")?)
                    .map_err(|_| StoreError::Failed("a stored user id is not a UUID".into()))?;
                fences.insert(user, get_n(&item, "profile", "version")?);
            }
        }
        Ok(fences)
    }

    async fn scan_user_keys(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<WrappedUserKey>, Option<String>), StoreError> {
        let (items, next) = self.scan_sk(KEY, cursor, limit).await?;
        let keys = items.iter().map(parse_key).collect::<Result<_, _>>()?;
        Ok((keys, next))
    }

    async fn replace_user_key(
        &self,
        old: &WrappedUserKey,
        new: &WrappedUserKey,
    ) -> Result<bool, StoreError> {
        let call = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key_item(new)))
            .condition_expression("attribute_exists(pk) AND wrapped_key = :old")
            .expression_attribute_values(
                ":old",
                AttributeValue::B(Blob::new(old.wrapped_key.clone())),
            );
        match retrying("PutItem", || call.clone().send(), transient).await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(dynamo_err("PutItem", &e)),
        }
    }

    /// Scans items whose sort key is exactly `sk`: at most `limit`, and the cursor after them.
    async fn shred_keys(&self, owners: &[Uuid]) -> Result<u64, StoreError> {
        // Only the keys that are there are deleted, so that the count is true.
        let stored = self.user_keys(owners).await?;
        let keys = stored
            .keys()
            .map(|owner| key_of(user_pk(*owner), KEY))
            .collect();
        self.batch_delete(keys).await
    }

    async fn expire_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let call = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(
                "(begins_with(sk, :audit) OR begins_with(sk, :marker)) AND #at < :before",
            )
            .projection_expression("pk, sk")
            .expression_attribute_names("#at", "at")
            .expression_attribute_values(":audit", AttributeValue::S(AUDIT_PREFIX.into()))
            .expression_attribute_values(":marker", AttributeValue::S(AUDIT_ID_PREFIX.into()))
            .expression_attribute_values(":before", AttributeValue::S(ts(&before)));
        let keys_only = |expired: &mut Vec<Item>, items: Vec<Item>| {
            expired.extend(items.into_iter().map(|i| {
                i.into_iter()
                    .filter(|(k, _)| k == PK || k == SK)
                    .collect::<Item>()
            }))
        };
        let (expired, _) = pages(
            None,
            Vec::new(),
            |_| false,
            keys_only,
            |start, _| scan_page(call.clone().set_exclusive_start_key(start)),
        )
        .await?;
        // The markers go with their records; the count is of records, as SQLite's.
        let records = expired
            .iter()
            .filter(|i| matches!(i.get(SK), Some(AttributeValue::S(sk)) if sk.starts_with(AUDIT_PREFIX)))
            .count() as u64;
        self.batch_delete(expired).await?;
        Ok(records)
    }
}

/// Every page of a Query or Scan, from `start`, folded into `acc` by `add`: `page(start, &acc)`
/// sends one request and gives its items and `LastEvaluatedKey`. Pages follow until DynamoDB
/// gives no key, or until `enough(&acc)`: then the key to go on from comes back too (a scan
/// cursor).
async fn pages<T, F, Fut>(
    mut start: Option<Item>,
    mut acc: T,
    enough: impl Fn(&T) -> bool,
    mut add: impl FnMut(&mut T, Vec<Item>),
    mut page: F,
) -> Result<(T, Option<Item>), StoreError>
where
    F: FnMut(Option<Item>, &T) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<Item>, Option<Item>), StoreError>>,
{
    loop {
        let (items, next) = page(start.take(), &acc).await?;
        add(&mut acc, items);
        match next {
            Some(k) if !k.is_empty() => {
                if enough(&acc) {
                    return Ok((acc, Some(k)));
                }
                start = Some(k);
            }
            _ => return Ok((acc, None)),
        }
    }
}

/// One page of `call`, retried while transient: its items and `LastEvaluatedKey`.
async fn scan_page(
    call: aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder,
) -> Result<(Vec<Item>, Option<Item>), StoreError> {
    let page = retrying("Scan", || call.clone().send(), transient)
        .await
        .map_err(|e| dynamo_err("Scan", &e))?;
    Ok((page.items().to_vec(), page.last_evaluated_key().cloned()))
}

/// A transaction cancelled because one of its conditions failed (a concurrent write), as
/// DynamoDB's cancellation reasons say.
fn is_condition_cancel(e: &SdkError<TransactWriteItemsError, HttpResponse>) -> bool {
    matches!(
        e.as_service_error(),
        Some(TransactWriteItemsError::TransactionCanceledException(t))
            if t.cancellation_reasons()
                .iter()
                .any(|r| r.code() == Some("ConditionalCheckFailed"))
    )
}

/// The KMS provider keeps its blind-index key here, KMS-encrypted.
#[async_trait::async_trait]
impl crate::stores::SettingsStore for DynamoStore {
    /// The KMS-encrypted settings item `name` (e.g. the blind-index key), if stored.
    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get_item(key_of(SETTINGS_PK.into(), name)).await? {
            Some(item) => Ok(Some(get_b(&item, "setting", "value")?.to_vec())),
            None => Ok(None),
        }
    }

    /// Stores a setting unless one exists; returns the stored value (another writer's wins).
    async fn put_setting_if_absent(
        &self,
        name: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let mut item = key_of(SETTINGS_PK.into(), name);
        item.insert("value".into(), AttributeValue::B(Blob::new(value.clone())));
        item.insert("created_at".into(), AttributeValue::S(ts(&Utc::now())));
        let call = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)");
        match retrying("PutItem", || call.clone().send(), transient).await {
            Ok(_) => Ok(value),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                self.setting(name).await?.ok_or_else(|| {
                    StoreError::Unavailable("setting vanished after a conflict; retrying".into())
                })
            }
            Err(e) => Err(dynamo_err("PutItem", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_foreign_one_is_refused() {
        let key = key_of("USER#x".into(), PROFILE);
        assert_eq!(decode_cursor(&encode_cursor(&key)).unwrap(), key);
        assert!(decode_cursor("garbage").is_err());
    }
}
