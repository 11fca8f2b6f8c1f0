//! Envelope encryption of PII fields and the email blind index.
//!
//! The formats here are the on-disk contract documented in ARCHITECTURE.md: an independent
//! program holding the key-encryption key must be able to decrypt a record from that text.

mod blind_index;
mod envelope;

pub use blind_index::{normalise_email, BlindIndexKey};
pub use envelope::{
    open_field, open_keyring_key, open_letter, seal_field, seal_keyring_key, seal_letter,
    unwrap_data_key, wrap_data_key, CryptoError, DataKey, FIELD_FORMAT, SEALED_OVERHEAD,
};
