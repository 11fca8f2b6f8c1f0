//! The embedded search index: tantivy, in a folder of the data directory.
//!
//! Keyword fields (ids, region, segments, strings) are indexed untokenised, so `country:DE`
//! and `segments:high_value` are exact matches; numbers and timestamps support ranges
//! (`lifetime_value:[1000 TO *]`).
//!
//! A delete only marks a document deleted: its stored fields and terms stay in the segment
//! files until a merge. An erasure must not wait for one, so the commit that covers erasures
//! merges every segment that still holds a term of an erased user (deleted documents are
//! dropped by a merge) and then removes the files no longer used.

use super::{Aggregation, Bucket, IndexError, IndexOutcome, SearchIndex, SearchResults};
use super::{IndexDocument, IndexOp};
use crate::schema::{FieldKind, FieldSpec};
use async_trait::async_trait;
use serde_json::Value as Json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::index::SegmentId;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, Schema, SchemaBuilder, Value, FAST, INDEXED, STORED, STRING};
use tantivy::{DateTime, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// The writer's one indexing thread and its heap. Every batch is committed, so a segment holds
/// one batch (2,000 documents of a few hundred bytes), and tantivy sizes each new segment's
/// term table from the heap: 64 MiB over two threads cost ~40 MB of the worker's memory for no
/// measurable throughput (BENCHMARKS.md). 20 MB is above tantivy's 15 MB minimum.
const WRITER_THREADS: usize = 1;
const WRITER_HEAP_BYTES: usize = 20_000_000;

pub struct TantivyIndex {
    index: Index,
    /// `None` when opened for reading: a running worker may hold the folder's writer lock.
    writer: Option<Arc<Mutex<IndexWriter>>>,
    reader: IndexReader,
    fields: Arc<Vec<(FieldSpec, Field)>>,
    /// The user-id terms of erasures applied and not yet purged from the files.
    erased: Arc<Mutex<Vec<Term>>>,
    user_id: Field,
    version: Field,
    occurred_at: Field,
}

fn failed(e: impl std::fmt::Display) -> IndexError {
    IndexError::Failed(e.to_string())
}

impl TantivyIndex {
    fn writer(&self) -> Result<Arc<Mutex<IndexWriter>>, IndexError> {
        self.writer
            .clone()
            .ok_or_else(|| failed("this command opened the embedded index for reading only"))
    }

    /// Opens (or creates) the index for writing; one process at a time holds its writer.
    pub fn open(path: &Path, fields: &[FieldSpec]) -> Result<Self, IndexError> {
        Self::open_with(path, fields, true)
    }

    /// Opens the index for searching only, beside a worker that writes it.
    pub fn open_for_reading(path: &Path, fields: &[FieldSpec]) -> Result<Self, IndexError> {
        Self::open_with(path, fields, false)
    }

    fn open_with(path: &Path, projected: &[FieldSpec], write: bool) -> Result<Self, IndexError> {
        let mut builder = SchemaBuilder::new();
        let user_id = builder.add_text_field("user_id", STRING | STORED);
        let version = builder.add_i64_field("version", INDEXED | STORED | FAST);
        let occurred_at = builder.add_date_field("occurred_at", INDEXED | STORED | FAST);
        let mut fields = Vec::new();
        for spec in projected {
            let name = spec.flat_name.as_str();
            let field = match spec.kind {
                FieldKind::String | FieldKind::StringList | FieldKind::Date => {
                    builder.add_text_field(name, STRING | STORED)
                }
                FieldKind::Long => builder.add_i64_field(name, INDEXED | STORED | FAST),
                FieldKind::Double => builder.add_f64_field(name, INDEXED | STORED | FAST),
                FieldKind::Boolean => builder.add_bool_field(name, INDEXED | STORED),
                FieldKind::Timestamp => builder.add_date_field(name, INDEXED | STORED | FAST),
                FieldKind::Map | FieldKind::Record => continue,
            };
            fields.push((spec.clone(), field));
        }
        let schema: Schema = builder.build();
        let cannot_open = |e: tantivy::TantivyError| {
            IndexError::Failed(format!(
                "cannot open the index at {} ({e}); if index.fields changed, remove that folder: the index is derived data and is rebuilt as events are processed",
                path.display()
            ))
        };
        // A reader never creates the index on disk: a worker starting on the same folder
        // may be creating it. Before the first run there is nothing to find: an empty index.
        if !write && !path.join("meta.json").exists() {
            let index = Index::create_in_ram(schema);
            return Self::with(index, None, fields, user_id, version, occurred_at);
        }
        std::fs::create_dir_all(path)
            .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?;
        let dir = tantivy::directory::MmapDirectory::open(path).map_err(failed)?;
        let index = Index::open_or_create(dir, schema).map_err(cannot_open)?;
        let writer = write
            .then(|| index.writer_with_num_threads(WRITER_THREADS, WRITER_HEAP_BYTES))
            .transpose()
            .map_err(|e| match e {
                tantivy::TantivyError::LockFailure(tantivy::directory::error::LockError::LockBusy, _) => {
                    IndexError::InUse(format!(
                        "the embedded index at {} is in use by another profile-sync process (a running worker holds it): stop the worker first, or let the worker do it (an ERASE or CONSENT event in its input goes through the same steps)",
                        path.display()
                    ))
                }
                other => failed(other),
            })?;
        Self::with(index, writer, fields, user_id, version, occurred_at)
    }

    fn with(
        index: Index,
        writer: Option<IndexWriter>,
        fields: Vec<(FieldSpec, Field)>,
        user_id: Field,
        version: Field,
        occurred_at: Field,
    ) -> Result<Self, IndexError> {
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(failed)?;
        Ok(Self {
            index,
            writer: writer.map(|w| Arc::new(Mutex::new(w))),
            reader,
            fields: Arc::new(fields),
            erased: Arc::default(),
            user_id,
            version,
            occurred_at,
        })
    }

    fn document(&self, doc: &IndexDocument) -> TantivyDocument {
        let mut out = TantivyDocument::new();
        out.add_text(self.user_id, doc.user_id.to_string());
        out.add_i64(self.version, doc.version);
        out.add_date(
            self.occurred_at,
            DateTime::from_timestamp_millis(doc.occurred_at.timestamp_millis()),
        );
        for (spec, field) in self.fields.iter() {
            let Some(value) = doc.fields.get(&spec.flat_name) else {
                continue;
            };
            match (spec.kind, value) {
                (FieldKind::StringList, Json::Array(items)) => {
                    for item in items.iter().filter_map(Json::as_str) {
                        out.add_text(*field, item);
                    }
                }
                (FieldKind::Long, Json::Number(n)) => {
                    if let Some(v) = n.as_i64() {
                        out.add_i64(*field, v)
                    }
                }
                (FieldKind::Double, Json::Number(n)) => {
                    if let Some(v) = n.as_f64() {
                        out.add_f64(*field, v)
                    }
                }
                (FieldKind::Boolean, Json::Bool(b)) => out.add_bool(*field, *b),
                (FieldKind::Timestamp, Json::String(s)) => {
                    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                        out.add_date(
                            *field,
                            DateTime::from_timestamp_millis(t.timestamp_millis()),
                        );
                    }
                }
                (_, Json::String(s)) => out.add_text(*field, s),
                _ => {}
            }
        }
        out
    }

    fn to_json(&self, doc: &TantivyDocument) -> Json {
        let mut out = serde_json::Map::new();
        let text = |f: Field| {
            doc.get_first(f)
                .and_then(|v| v.as_str().map(str::to_string))
        };
        out.insert(
            "user_id".into(),
            text(self.user_id).map_or(Json::Null, Json::from),
        );
        out.insert(
            "version".into(),
            doc.get_first(self.version)
                .and_then(|v| v.as_i64())
                .map_or(Json::Null, Json::from),
        );
        out.insert(
            "occurred_at".into(),
            date_json(
                doc.get_first(self.occurred_at)
                    .and_then(|v| v.as_datetime()),
            ),
        );
        for (spec, field) in self.fields.iter() {
            let value = match spec.kind {
                FieldKind::StringList => Json::from(
                    doc.get_all(*field)
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect::<Vec<_>>(),
                ),
                FieldKind::Long => doc
                    .get_first(*field)
                    .and_then(|v| v.as_i64())
                    .map_or(Json::Null, Json::from),
                FieldKind::Double => doc
                    .get_first(*field)
                    .and_then(|v| v.as_f64())
                    .map_or(Json::Null, Json::from),
                FieldKind::Boolean => doc
                    .get_first(*field)
                    .and_then(|v| v.as_bool())
                    .map_or(Json::Null, Json::from),
                FieldKind::Timestamp => {
                    date_json(doc.get_first(*field).and_then(|v| v.as_datetime()))
                }
                _ => text(*field).map_or(Json::Null, Json::from),
            };
            if !value.is_null() {
                out.insert(spec.flat_name.clone(), value);
            }
        }
        Json::Object(out)
    }
}

fn date_json(d: Option<DateTime>) -> Json {
    d.and_then(|d| chrono::DateTime::from_timestamp_millis(d.into_timestamp_millis()))
        .map_or(Json::Null, |t| {
            Json::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        })
}

#[async_trait]
impl SearchIndex for TantivyIndex {
    async fn apply(&self, ops: &[IndexOp]) -> Result<Vec<IndexOutcome>, IndexError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let docs: Vec<(Term, Option<TantivyDocument>)> = ops
            .iter()
            .map(|op| {
                let term = Term::from_field_text(self.user_id, &op.user_id().to_string());
                match op {
                    IndexOp::Upsert(doc) => (term, Some(self.document(doc))),
                    IndexOp::Delete { .. } | IndexOp::Erase { .. } => (term, None),
                }
            })
            .collect();
        let writer = self.writer()?;
        let erased = ops.iter().filter_map(|op| match op {
            IndexOp::Erase { user_id, .. } => {
                Some(Term::from_field_text(self.user_id, &user_id.to_string()))
            }
            _ => None,
        });
        self.erased
            .lock()
            .map_err(|_| failed("erasure list poisoned"))?
            .extend(erased);
        let n = docs.len();
        tokio::task::spawn_blocking(move || {
            let writer = writer.lock().map_err(|_| failed("index writer poisoned"))?;
            for (term, doc) in docs {
                writer.delete_term(term);
                if let Some(doc) = doc {
                    writer.add_document(doc).map_err(failed)?;
                }
            }
            Ok::<_, IndexError>(())
        })
        .await
        .map_err(failed)??;
        Ok(vec![IndexOutcome::Applied; n])
    }

    async fn commit(&self) -> Result<(), IndexError> {
        let writer = self.writer()?;
        let reader = self.reader.clone();
        let erased = self.erased.clone();
        let user_id = self.user_id;
        tokio::task::spawn_blocking(move || {
            let mut writer = writer.lock().map_err(|_| failed("index writer poisoned"))?;
            writer.commit().map_err(failed)?;
            // Taken only once committed; kept for the next commit if the purge fails.
            let mut erased = erased.lock().map_err(|_| failed("erasure list poisoned"))?;
            if !erased.is_empty() {
                purge(&mut writer, &reader, user_id, &erased)?;
                erased.clear();
            }
            Ok::<_, IndexError>(())
        })
        .await
        .map_err(failed)?
    }

    async fn search(&self, query: &str, limit: usize) -> Result<SearchResults, IndexError> {
        self.reader.reload().map_err(failed)?;
        let searcher = self.reader.searcher();
        let parsed = self.parse(query)?;
        let (top, total) = searcher
            .search(
                &parsed,
                &(TopDocs::with_limit(limit.max(1)).order_by_score(), Count),
            )
            .map_err(failed)?;
        let mut hits = Vec::with_capacity(top.len());
        for (_, address) in top.into_iter().take(limit) {
            let doc: TantivyDocument = searcher.doc(address).map_err(failed)?;
            hits.push(self.to_json(&doc));
        }
        Ok(SearchResults {
            total: total as u64,
            hits,
        })
    }

    /// Counts stored values of the matching documents: keyword fields are not fast fields
    /// here, and an analyst's aggregation over a local index is small enough for that.
    async fn aggregate(
        &self,
        query: &str,
        field: &str,
        size: usize,
    ) -> Result<Aggregation, IndexError> {
        let names = || {
            ["user_id", "version", "occurred_at"]
                .into_iter()
                .chain(self.fields.iter().map(|(s, _)| s.flat_name.as_str()))
        };
        if !names().any(|n| n == field) {
            return Err(IndexError::Query(super::not_aggregatable(field, names())));
        }
        self.reader.reload().map_err(failed)?;
        let searcher = self.reader.searcher();
        let parsed = self.parse(query)?;
        let matches = searcher.search(&parsed, &DocSetCollector).map_err(failed)?;
        let mut counts: std::collections::HashMap<String, u64> = Default::default();
        for address in &matches {
            let doc: TantivyDocument = searcher.doc(*address).map_err(failed)?;
            match self.to_json(&doc).get(field) {
                Some(Json::Array(items)) => {
                    for item in items {
                        *counts.entry(key_of(item)).or_default() += 1;
                    }
                }
                Some(Json::Null) | None => {}
                Some(value) => *counts.entry(key_of(value)).or_default() += 1,
            }
        }
        let mut buckets: Vec<Bucket> = counts
            .into_iter()
            .map(|(key, count)| Bucket { key, count })
            .collect();
        buckets.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        let other = buckets.iter().skip(size.max(1)).map(|b| b.count).sum();
        buckets.truncate(size.max(1));
        Ok(Aggregation {
            field: field.to_string(),
            total: matches.len() as u64,
            buckets,
            other,
        })
    }
}

fn key_of(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl TantivyIndex {
    fn parse(&self, query: &str) -> Result<Box<dyn tantivy::query::Query>, IndexError> {
        let mut defaults: Vec<Field> = vec![self.user_id];
        defaults.extend(
            self.fields
                .iter()
                .filter(|(s, _)| matches!(s.kind, FieldKind::String | FieldKind::StringList))
                .map(|(_, f)| *f),
        );
        let parser = QueryParser::for_index(&self.index, defaults);
        parser
            .parse_query(query)
            .map_err(|e| IndexError::Query(e.to_string()))
    }
}

/// Merges every segment that still holds one of `terms` (deleted or not: a segment's term
/// dictionary keeps a deleted document's terms) until none does, then deletes the files no
/// longer used. A segment already in a background merge cannot be merged again: wait for it.
fn purge(
    writer: &mut IndexWriter,
    reader: &IndexReader,
    user_id: Field,
    terms: &[Term],
) -> Result<(), IndexError> {
    const ROUNDS: usize = 50;
    for _ in 0..ROUNDS {
        reader.reload().map_err(failed)?;
        let searcher = reader.searcher();
        let mut holding: Vec<SegmentId> = Vec::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(user_id).map_err(failed)?;
            for term in terms {
                if inverted.get_term_info(term).map_err(failed)?.is_some() {
                    holding.push(segment.segment_id());
                    break;
                }
            }
        }
        drop(searcher);
        if holding.is_empty() {
            reader.reload().map_err(failed)?;
            writer.garbage_collect_files().wait().map_err(failed)?;
            return Ok(());
        }
        if writer.merge(&holding).wait().is_err() {
            // One of them is in a merge of the merge policy's: it ends soon.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Err(IndexError::Unavailable(format!(
        "erased documents are still in the index files after {ROUNDS} merges; retrying"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::project::Projection;

    fn doc(n: u128, country: &str, segments: &[&str]) -> IndexOp {
        let mut fields = crate::event::Fields::new();
        fields.insert("country".into(), Json::from(country));
        fields.insert("segments".into(), Json::from(segments.to_vec()));
        fields.insert("plan".into(), Json::from("pro"));
        IndexOp::Upsert(IndexDocument {
            user_id: uuid::Uuid::from_u128(n),
            version: 1,
            occurred_at: chrono::DateTime::from_timestamp_millis(0).unwrap(),
            fields,
        })
    }

    /// A fresh index of the sample schema's projection with `plan`, in a folder of its own.
    fn index_of_plans() -> (tempfile::TempDir, TantivyIndex) {
        let catalog =
            crate::schema::ProfileSchemas::parse(include_str!("../../schemas/profile_change.avsc"))
                .unwrap()
                .catalog;
        let projection = Projection::new(&catalog, &["plan".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let index = TantivyIndex::open(dir.path(), projection.fields()).unwrap();
        (dir, index)
    }

    /// Every user id the index folder holds, read with a tantivy of its own: the terms of every
    /// segment and every stored document, deleted ones included.
    fn user_ids_in_files(path: &std::path::Path) -> std::collections::BTreeSet<String> {
        let index = Index::open_in_dir(path).unwrap();
        let field = index.schema().get_field("user_id").unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for segment in index.searchable_segments().unwrap() {
            let reader = tantivy::SegmentReader::open(&segment).unwrap();
            let inverted = reader.inverted_index(field).unwrap();
            let mut terms = inverted.terms().stream().unwrap();
            while terms.advance() {
                ids.insert(String::from_utf8(terms.key().to_vec()).unwrap());
            }
            let store = reader.get_store_reader(0).unwrap();
            for doc in 0..reader.max_doc() {
                let doc: TantivyDocument = store.get(doc).unwrap();
                if let Some(id) = doc.get_first(field).and_then(|v| v.as_str()) {
                    ids.insert(id.to_string());
                }
            }
        }
        ids
    }

    #[tokio::test]
    async fn an_erasure_leaves_nothing_of_the_user_in_the_files_and_a_delete_only_marks() {
        let (dir, index) = index_of_plans();
        let (erased, deleted, kept) = (
            uuid::Uuid::from_u128(1),
            uuid::Uuid::from_u128(2),
            uuid::Uuid::from_u128(3),
        );
        // Several commits, so the users' documents (and older versions) sit in several segments.
        for n in 1..=3 {
            index
                .apply(&[doc(1, "DE", &["a"]), doc(n + 2, "US", &[])])
                .await
                .unwrap();
            index.commit().await.unwrap();
        }
        // A segment of their own (with another user, or tantivy drops it once empty), which
        // the erasure's merge does not touch.
        index
            .apply(&[doc(2, "FR", &[]), doc(9, "FR", &[])])
            .await
            .unwrap();
        index.commit().await.unwrap();
        index
            .apply(&[
                IndexOp::Erase {
                    user_id: erased,
                    version: 1,
                },
                IndexOp::Delete {
                    user_id: deleted,
                    version: 1,
                },
            ])
            .await
            .unwrap();
        index.commit().await.unwrap();
        assert_eq!(
            index
                .search(&format!("user_id:\"{erased}\""), 5)
                .await
                .unwrap()
                .total,
            0
        );
        let ids = user_ids_in_files(dir.path());
        assert!(
            !ids.contains(&erased.to_string()),
            "the erased user is in the files"
        );
        assert!(
            ids.contains(&deleted.to_string()),
            "a plain delete is only marked (so the scan can find what it looks for)"
        );
        assert!(ids.contains(&kept.to_string()));
        assert_eq!(index.search("*", 10).await.unwrap().total, 4);
    }

    #[tokio::test]
    async fn aggregations_count_matching_documents_by_value_most_frequent_first() {
        let (_dir, index) = index_of_plans();
        index
            .apply(&[
                doc(1, "DE", &["a", "b"]),
                doc(2, "DE", &["a"]),
                doc(3, "FR", &["b"]),
                doc(4, "US", &[]),
            ])
            .await
            .unwrap();
        index.commit().await.unwrap();
        let by_country = index.aggregate("*", "country", 2).await.unwrap();
        assert_eq!(by_country.total, 4);
        let keys: Vec<(&str, u64)> = by_country
            .buckets
            .iter()
            .map(|b| (b.key.as_str(), b.count))
            .collect();
        assert_eq!(keys, vec![("DE", 2), ("FR", 1)]);
        assert_eq!(by_country.other, 1);
        let segments = index.aggregate("country:DE", "segments", 10).await.unwrap();
        assert_eq!(segments.total, 2);
        assert_eq!(segments.buckets[0].key, "a");
        assert_eq!(segments.buckets[0].count, 2);
        let err = index.aggregate("*", "email", 10).await.unwrap_err();
        assert!(
            matches!(&err, IndexError::Query(m) if m.contains("cannot aggregate on `email`")),
            "{err}"
        );
    }
}
