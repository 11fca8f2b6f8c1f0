//! profile-sync keeps user profiles in sync: Avro change events in; validated, enriched with
//! region and segments, PII envelope-encrypted; out to a canonical store and a PII-free
//! search index. See ARCHITECTURE.md for the map.
//!
//! Layout: [`stages`] hold the per-event logic; each port (`sources`, `keys`, `stores`,
//! `indexes`, `dead_letter`) is a trait with its adapters beside it; [`pipeline`] wires them
//! from the pipeline file ([`config`]) and composes the stages of one batch; [`runtime`] runs
//! batches concurrently and decides acknowledgements; [`cli`] is the thin command line on top.

/// The allocator of every binary built on the library (the worker, its tests and benchmarks):
/// the stages allocate small values per event, and glibc's malloc spent a third of the
/// pipeline's CPU time in its own bookkeeping (BENCHMARKS.md, "Profile").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod aws;
pub mod bench;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dead_letter;
pub mod endpoint;
pub mod event;
pub mod generate;
pub mod indexes;
pub mod kafka;
pub mod keys;
pub mod pipeline;
pub mod privacy;
pub mod residency;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod segment_changes;
pub mod serve;
pub mod sources;
pub mod stages;
pub mod stores;
pub mod synced_file;
pub mod telemetry;
