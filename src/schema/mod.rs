//! The Avro schemas in `schemas/` and the field classification they carry.
//!
//! The classification in the schema, not code, decides what is encrypted (pii), what may be
//! indexed (public, derived) and what is masked on read (pii, sensitive). Everything else in the
//! pipeline asks the [`Catalog`] built here.

mod catalog;
mod json;
pub mod registry;
pub mod registry_double;

pub use catalog::{Catalog, Classification, FieldKind, FieldSpec, DERIVED_FIELDS};
pub use json::{avro_json_to_value, value_to_avro_json};

use apache_avro::Schema;
use std::path::{Path, PathBuf};

/// The most one Avro length prefix (a string, bytes, an array or a map) may make the decoder
/// allocate. apache-avro's default is 512 MiB, which a ten-byte datum could claim; profile
/// events are kilobytes, and `source.max_event_bytes` defaults to 1 MiB.
pub const MAX_DATUM_ALLOCATION: usize = 32 << 20;

/// Caps apache-avro's allocations at [`MAX_DATUM_ALLOCATION`]. The cap is process-wide and is
/// fixed by whichever Avro read comes first, so this runs at the binary's startup and, for
/// library users, before the library's own Avro reads (building a decoder, opening an Avro
/// file); later calls do nothing.
pub fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_DATUM_ALLOCATION);
}

/// The file, inside the schema folder, holding the reader schema of profile change events.
pub const PROFILE_CHANGE_FILE: &str = "profile_change.avsc";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema file {path} is not a valid Avro schema: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("schema file {path}: {reason}")]
    Classification { path: PathBuf, reason: String },
}

/// The reader schema of profile change events and its classification catalog.
#[derive(Debug, Clone)]
pub struct ProfileSchemas {
    pub profile_change: Schema,
    pub catalog: Catalog,
}

impl ProfileSchemas {
    /// Loads `profile_change.avsc` from `dir` and checks that every profile field is classified.
    pub fn load(dir: &Path) -> Result<Self, SchemaError> {
        let path = dir.join(PROFILE_CHANGE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| SchemaError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            SchemaError::Parse { reason, .. } => SchemaError::Parse { path, reason },
            SchemaError::Classification { reason, .. } => {
                SchemaError::Classification { path, reason }
            }
            other => other,
        })
    }

    /// Parses the schema text; errors carry an empty path for [`Self::load`] to fill in.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let profile_change = Schema::parse_str(text).map_err(|e| SchemaError::Parse {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        let catalog = Catalog::from_schema(&profile_change).map_err(|reason| {
            SchemaError::Classification {
                path: PathBuf::new(),
                reason,
            }
        })?;
        Ok(Self {
            profile_change,
            catalog,
        })
    }
}

/// The kind of an Avro library error (its variant name), without the values its message may
/// quote: safe for dead-letter records and logs.
pub fn avro_error_kind(e: &apache_avro::Error) -> String {
    let debug = format!("{:?}", e.details());
    debug
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or("Unknown")
        .to_string()
}
