//! Bulk requests: the NDJSON lines of each operation (external versioning from the profile
//! `version`), splitting by bytes and count, and reading a `_bulk` answer item by item.
//!
//! Item outcomes follow the rules: 409 is stale (counted, never retried), 429 and 5xx
//! are retried, anything else is a rejection whose reason names the error kind and at most a
//! mapped field, never a value (OpenSearch quotes document values in its parse errors).

use super::mapping::Mapping;
use crate::indexes::IndexOp;
use serde_json::{json, Value as Json};
use std::ops::Range;

/// One operation, encoded as its bulk lines (action line, and the document for an upsert).
pub fn encode(op: &IndexOp, mapping: &Mapping) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let (action, doc) = match op {
        IndexOp::Upsert(doc) => (
            json!({ "index": { "_id": doc.user_id.to_string(), "version": doc.version, "version_type": "external" } }),
            Some(mapping.document(doc)),
        ),
        // `external_gte`: an erasure fences at the stored version, which is the indexed
        // document's own; a strictly-greater rule would leave that document in place.
        IndexOp::Delete { user_id, version } | IndexOp::Erase { user_id, version } => (
            json!({ "delete": { "_id": user_id.to_string(), "version": version, "version_type": "external_gte" } }),
            None,
        ),
    };
    // Serialising a `serde_json::Value` into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, &action);
    out.push(b'\n');
    if let Some(doc) = doc {
        let _ = serde_json::to_writer(&mut out, &doc);
        out.push(b'\n');
    }
    out
}

/// Splits `sizes` (bytes per encoded operation, in order) into consecutive requests of at most
/// `max_bytes` and `max_docs` (an operation larger than `max_bytes` travels alone).
pub fn split(sizes: &[usize], max_bytes: usize, max_docs: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, size) in sizes.iter().enumerate() {
        let count = i - start;
        if count > 0 && (bytes + size > max_bytes || count >= max_docs.max(1)) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// What happened to one item of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemStatus {
    Applied,
    /// 409: the index holds this version or a newer one.
    Stale,
    /// 429 or 5xx: send it again later. Holds the status code.
    Retry(u16),
    /// Refused for good; the reason names no value.
    Rejected(String),
}

/// Reads a `_bulk` answer with `expected` items. `fields` are the mapped field names, the
/// only names a rejection reason may quote.
pub fn parse_response(
    body: &Json,
    expected: usize,
    mapping: &Mapping,
) -> Result<Vec<ItemStatus>, String> {
    let items = body
        .get("items")
        .and_then(Json::as_array)
        .ok_or("the _bulk answer has no `items` list")?;
    if items.len() != expected {
        return Err(format!(
            "the _bulk answer has {} items for {expected} operations",
            items.len()
        ));
    }
    items
        .iter()
        .map(|item| {
            let (action, result) = item
                .as_object()
                .and_then(|o| o.iter().next())
                .ok_or("a _bulk item is not an object")?;
            let status = result
                .get("status")
                .and_then(Json::as_u64)
                .ok_or("a _bulk item has no status")?;
            Ok(classify(
                action,
                status as u16,
                result.get("error"),
                mapping,
            ))
        })
        .collect()
}

fn classify(action: &str, status: u16, error: Option<&Json>, mapping: &Mapping) -> ItemStatus {
    match status {
        200..=299 => ItemStatus::Applied,
        // Deleting what is not there leaves the index as the delete wants it (and a version
        // tombstone behind).
        404 if action == "delete" => ItemStatus::Applied,
        409 => ItemStatus::Stale,
        429 | 500..=599 => ItemStatus::Retry(status),
        _ => ItemStatus::Rejected(reason(status, error, mapping)),
    }
}

/// `mapper_parsing_exception on field plan (HTTP 400)`: the error type, and the first bracketed
/// name of the server's reason only if it is a mapped field name.
pub fn reason(status: u16, error: Option<&Json>, mapping: &Mapping) -> String {
    let kind = error
        .and_then(|e| e.get("type"))
        .and_then(Json::as_str)
        .filter(|t| t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or("error");
    let field = error
        .and_then(|e| e.get("reason"))
        .and_then(Json::as_str)
        .and_then(|r| {
            let start = r.find('[')? + 1;
            let end = start + r[start..].find(']')?;
            Some(&r[start..end])
        })
        .filter(|name| mapping.has_field(name));
    match field {
        Some(name) => {
            format!("OpenSearch refused the document: {kind} on field {name} (HTTP {status})")
        }
        None => format!("OpenSearch refused the document: {kind} (HTTP {status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> Mapping {
        let catalog = crate::schema::ProfileSchemas::parse(include_str!(
            "../../../schemas/profile_change.avsc"
        ))
        .unwrap()
        .catalog;
        Mapping::new(
            crate::stages::project::Projection::new(&catalog, &["plan".into()])
                .unwrap()
                .fields(),
        )
    }

    #[test]
    fn requests_are_split_by_bytes_and_by_count() {
        assert_eq!(split(&[], 10, 10), Vec::<Range<usize>>::new());
        assert_eq!(split(&[4, 4, 4], 10, 10), vec![0..2, 2..3]);
        assert_eq!(split(&[1, 1, 1, 1, 1], 100, 2), vec![0..2, 2..4, 4..5]);
        // Too big for any request: it goes alone rather than never.
        assert_eq!(split(&[3, 50, 3], 10, 10), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn an_upsert_is_an_externally_versioned_index_and_a_delete_carries_its_version() {
        let user = uuid::Uuid::nil();
        let lines = String::from_utf8(encode(
            &IndexOp::Delete {
                user_id: user,
                version: 7,
            },
            &mapping(),
        ))
        .unwrap();
        let action: Json = serde_json::from_str(lines.trim_end()).unwrap();
        assert_eq!(action["delete"]["version"], 7);
        assert_eq!(action["delete"]["version_type"], "external_gte");
        assert_eq!(lines.matches('\n').count(), 1);
    }

    #[test]
    fn bulk_items_are_classified_and_reasons_quote_no_values() {
        let body = json!({"errors": true, "items": [
            {"index": {"_id": "a", "status": 201, "result": "created"}},
            {"index": {"_id": "b", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "[b]: version conflict"}}},
            {"index": {"_id": "c", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected"}}},
            {"index": {"_id": "d", "status": 503, "error": {"type": "unavailable_shards_exception", "reason": "x"}}},
            {"index": {"_id": "e", "status": 400, "error": {"type": "mapper_parsing_exception",
                "reason": "failed to parse field [plan] of type [keyword] in document with id 'e'. Preview of field's value: 'secret@example.com'"}}},
            {"index": {"_id": "f", "status": 400, "error": {"type": "strict_dynamic_mapping_exception",
                "reason": "mapping set to strict, dynamic introduction of [secret@example.com] within [_doc] is not allowed"}}},
            {"delete": {"_id": "g", "status": 404, "result": "not_found"}},
            {"delete": {"_id": "h", "status": 409, "error": {"type": "version_conflict_engine_exception"}}},
        ]});
        let got = parse_response(&body, 8, &mapping()).unwrap();
        assert_eq!(got[0], ItemStatus::Applied);
        assert_eq!(got[1], ItemStatus::Stale);
        assert_eq!(got[2], ItemStatus::Retry(429));
        assert_eq!(got[3], ItemStatus::Retry(503));
        assert_eq!(
            got[4],
            ItemStatus::Rejected(
                "OpenSearch refused the document: mapper_parsing_exception on field plan (HTTP 400)"
                    .into()
            )
        );
        let ItemStatus::Rejected(r) = &got[5] else {
            panic!("{:?}", got[5])
        };
        assert!(
            !r.contains('@') && r.contains("strict_dynamic_mapping_exception"),
            "{r}"
        );
        assert_eq!(got[6], ItemStatus::Applied);
        assert_eq!(got[7], ItemStatus::Stale);
    }

    #[test]
    fn an_answer_with_the_wrong_number_of_items_is_an_error() {
        let body = json!({"items": [{"index": {"status": 201}}]});
        assert!(parse_response(&body, 2, &mapping()).is_err());
        assert!(parse_response(&json!({"error": "x"}), 1, &mapping()).is_err());
    }
}
