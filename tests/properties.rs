//! Property tests and bounded fuzzing: decoding (JSON, Avro datums, Confluent wire-format
//! frames), the pipeline-file parser, projection, and the version rule, over generated inputs.
//! No input may panic; the highest version wins.
//!
//! The fuzzing properties run 512 cases each in CI (seconds); `PROPTEST_CASES=100000 cargo
//! test --release --test properties` runs them for longer. The cargo-fuzz targets in `fuzz/`
//! drive the same entry points with libFuzzer (RELIABILITY.md).

mod common;

use profile_sync::config::Pipeline as PipelineFile;
use profile_sync::event::{Operation, ProtectedChange, ProtectedRecord, Region};
use profile_sync::schema::{registry, ProfileSchemas};
use profile_sync::sources::Payload;
use profile_sync::stages::decode::Decoder;
use profile_sync::stages::project::{IndexOp, Projection};
use profile_sync::stores::SqliteStore;
use proptest::prelude::*;
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn schemas() -> &'static ProfileSchemas {
    static S: OnceLock<ProfileSchemas> = OnceLock::new();
    S.get_or_init(|| ProfileSchemas::load(&common::repo().join("schemas")).unwrap())
}

fn decoder() -> Decoder {
    Decoder::new(schemas().profile_change.clone())
}

/// Cases per fuzzing property: `PROPTEST_CASES`, else 512.
fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// [`VALID`] as a binary Avro datum of the reader schema.
fn valid_datum() -> Vec<u8> {
    let schema = &schemas().profile_change;
    let json: serde_json::Value = serde_json::from_str(VALID).unwrap();
    let value = profile_sync::schema::avro_json_to_value(&json, schema).unwrap();
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

/// A valid event line to mutate.
const VALID: &str = r#"{"event_id":"6f1c1a4e-2d7b-4a53-9d55-0c1f3c2b9a10","user_id":"0b5d1f7a-3c1e-4f2a-8b9d-1e2f3a4b5c6d","operation":"UPSERT","version":3,"occurred_at":1767225600000,"source":"t","profile":{"email":"a@b.example","last_seen_ip":"5.100.1.1","status":"ACTIVE","marketing":{"lifetime_value":10.5,"order_count":2,"plan":"pro"}}}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let d = decoder();
        let _ = d.decode(&Payload::Json(bytes.clone()));
        let _ = d.decode(&Payload::AvroDatum { bytes, writer: Arc::new(schemas().profile_change.clone()) });
    }

    #[test]
    fn mutated_valid_events_never_panic_the_decoder(
        cut in 0usize..VALID.len(),
        insert in proptest::collection::vec(any::<u8>(), 0..16),
        at in 0usize..VALID.len(),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        bytes.splice(at..at, insert);
        let d = decoder();
        let _ = d.decode(&Payload::Json(bytes.clone()));
        bytes.truncate(cut);
        let _ = d.decode(&Payload::Json(bytes));
    }

    #[test]
    fn mutated_valid_avro_datums_never_panic_the_decoder(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = valid_datum();
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] ^= byte;
        }
        let writer = Arc::new(schemas().profile_change.clone());
        let d = decoder();
        let _ = d.decode(&Payload::AvroDatum { bytes: bytes.clone(), writer: writer.clone() });
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = d.decode(&Payload::AvroDatum { bytes, writer });
    }

    #[test]
    fn arbitrary_wire_format_frames_give_a_schema_id_or_a_reason_never_a_panic(
        head in proptest::collection::vec(any::<u8>(), 0..6),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        framed in any::<bool>(),
    ) {
        let bytes = if framed {
            registry::frame(u32::from_le_bytes([head.first().copied().unwrap_or(0), 0, 0, 0]), &body)
        } else {
            [head, body].concat()
        };
        if registry::schema_id(&bytes).is_ok() {
            let writer = Arc::new(schemas().profile_change.clone());
            let _ = decoder().decode(&Payload::ConfluentAvro { bytes, writer });
        }
    }

    #[test]
    fn arbitrary_pipeline_files_give_an_error_or_a_pipeline_never_a_panic(text in "\\PC{0,400}") {
        let _ = PipelineFile::parse(Path::new("fuzz.yaml"), &text);
    }

    #[test]
    fn mutated_local_pipeline_files_never_panic(at in 0usize..2000, junk in "[ :\\[\\]{}#a-z0-9\\n-]{0,12}") {
        let text = std::fs::read_to_string(common::local_pipeline()).unwrap();
        let at = at.min(text.len());
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let mutated = format!("{}{}{}", &text[..at], junk, &text[at..]);
        let _ = PipelineFile::parse(Path::new("fuzz.yaml"), &mutated);
    }

    #[test]
    fn the_index_document_holds_only_public_and_derived_fields(
        email in "[a-z]{1,8}@[a-z]{1,8}\\.example",
        plan in "[a-z]{1,8}",
        value in 0.0f64..1e6,
        segments in proptest::collection::vec("[a-z_]{1,10}", 0..5),
    ) {
        let catalog = &schemas().catalog;
        let projection = Projection::new(catalog, &[]).unwrap();
        let mut profile = serde_json::Map::new();
        profile.insert("plan_hint".into(), serde_json::json!(email.clone()));
        profile.insert("marketing".into(), serde_json::json!({"plan": plan, "lifetime_value": value, "order_count": 1}));
        profile.insert("preferences".into(), serde_json::json!({"secret": email.clone()}));
        let change = ProtectedChange {
            user_id: uuid::Uuid::new_v4(),
            version: 1,
            operation: Operation::Upsert,
            occurred_at: chrono::Utc::now(),
            record: Some(ProtectedRecord {
                event_id: uuid::Uuid::new_v4(),
                source: "t".into(),
                occurred_at: chrono::Utc::now(),
                profile,
                encrypted: [("email".to_string(), "v1.1.x".to_string())].into(),
                key_version: 1,
                region: Region::unknown(),
                segments,
                segment_history: None,
                email_index: Some("ab".into()),
            }),
        };
        let IndexOp::Upsert(doc) = projection.op(&change) else { panic!("an upsert projects to an upsert") };
        for key in doc.fields.keys() {
            let spec = catalog.field(key).expect("every indexed field is in the catalog");
            prop_assert!(spec.classification.indexable(), "{key} is {:?}", spec.classification);
        }
        prop_assert!(!serde_json::to_string(&doc.fields).unwrap().contains(&email));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// For any delivery order and duplication of a user's events, the final state is the one
    /// of the highest version (on DynamoDB Local too: tests/aws.rs).
    #[test]
    fn the_highest_version_wins_whatever_the_order_and_duplicates(
        deliveries in common::versions::deliveries(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        common::versions::the_highest_version_wins(&runtime, &store, deliveries)?;
    }
}
