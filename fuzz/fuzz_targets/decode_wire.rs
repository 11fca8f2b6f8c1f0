//! Any bytes as a Kafka message value: a Confluent wire-format frame (magic byte, schema id,
//! Avro datum), a bare Avro datum, or JSON. The decoder must answer a change or a rejection;
//! a panic or an allocation past the cap is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profile_sync::schema::{registry, ProfileSchemas};
use profile_sync::sources::Payload;
use profile_sync::stages::decode::Decoder;
use std::path::Path;
use std::sync::{Arc, LazyLock};

static DECODER: LazyLock<(Decoder, Arc<apache_avro::Schema>)> = LazyLock::new(|| {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let reader = ProfileSchemas::load(&schemas).expect("schemas/").profile_change;
    (Decoder::new(reader.clone()), Arc::new(reader))
});

fuzz_target!(|bytes: &[u8]| {
    let (decoder, writer) = &*DECODER;
    if registry::schema_id(bytes).is_ok() {
        let _ = decoder.decode(&Payload::ConfluentAvro {
            bytes: bytes.to_vec(),
            writer: writer.clone(),
        });
    }
    let _ = decoder.decode(&Payload::AvroDatum {
        bytes: bytes.to_vec(),
        writer: writer.clone(),
    });
    let _ = decoder.decode(&Payload::Json(bytes.to_vec()));
});
