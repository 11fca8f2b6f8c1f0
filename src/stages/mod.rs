//! The stages every event passes through, in order:
//! decode/validate → enrich (region, segments) → protect (encrypt PII) → project (index document);
//! and seal (encrypt) the payloads of the events that go to the dead-letter sink instead.
//! The write to the store and the index comes last, in the pipeline module.
//!
//! Stages are plain values built once from the pipeline file; they know no adapter.

pub mod decode;
pub mod enrich;
pub mod project;
pub mod protect;
pub mod seal;
