//! The key provider port and the per-user data keys built on it.
//!
//! Each user has a random 256-bit data key (DEK) that encrypts their PII fields. The DEK is
//! stored only wrapped by a key-encryption key (KEK) from a [`KeyProvider`]: a local keyring
//! here, KMS in production. [`DataKeys`] finds, creates and caches unwrapped DEKs.

mod cache;
mod data_keys;
pub mod kms;
mod local_keyring;

pub use data_keys::{DataKeys, KeyLookup, NewKeys, UserKey};
pub use kms::KmsKeyProvider;
pub use local_keyring::{KeyringError, KeyringKeks, LocalKeyring, PROVIDER as LOCAL_PROVIDER};

pub use crate::stores::WrappedUserKey;

use crate::crypto::{BlindIndexKey, DataKey};
use async_trait::async_trait;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Worth retrying: the provider is unreachable or throttling.
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
    /// Not worth retrying: a wrong, missing or tampered key.
    #[error("key refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] crate::stores::StoreError),
}

impl KeyError {
    pub fn is_transient(&self) -> bool {
        match self {
            KeyError::Unavailable(_) => true,
            KeyError::Refused(_) => false,
            KeyError::Store(e) => e.is_transient(),
        }
    }
}

#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// Preflight: can a data key be wrapped and unwrapped? Never includes secrets.
    async fn check(&self) -> Result<String, String> {
        let kek_id = round_trip(self).await?;
        Ok(format!("wrapped and unwrapped a test key with `{kek_id}`"))
    }

    /// Wraps a fresh data key for `user_id`.
    async fn wrap(
        &self,
        user_id: Uuid,
        key_version: u32,
        dek: &DataKey,
    ) -> Result<WrappedUserKey, KeyError>;

    /// Unwraps a stored data key.
    async fn unwrap(&self, key: &WrappedUserKey) -> Result<DataKey, KeyError>;

    /// The key of the email blind index.
    fn blind_index(&self) -> &BlindIndexKey;

    /// The key of `user`'s email blind index (with residency zones, their zone's).
    fn blind_index_for(&self, _user: Uuid) -> &BlindIndexKey {
        self.blind_index()
    }

    /// Every blind-index key in use: a lookup by email tries each.
    fn blind_indexes(&self) -> Vec<&BlindIndexKey> {
        vec![self.blind_index()]
    }

    /// Calls made to the underlying key service (for metrics and benchmarks).
    fn calls(&self) -> u64;
}

/// Wraps and unwraps a throwaway data key; the id of the key-encryption key used.
pub async fn round_trip<P: KeyProvider + ?Sized>(provider: &P) -> Result<String, String> {
    let dek = DataKey::generate().map_err(|e| e.to_string())?;
    let wrapped = provider
        .wrap(Uuid::nil(), 1, &dek)
        .await
        .map_err(|e| e.to_string())?;
    let back = provider.unwrap(&wrapped).await.map_err(|e| e.to_string())?;
    if back.expose() == dek.expose() {
        Ok(wrapped.kek_id)
    } else {
        Err("a test key did not unwrap to itself".into())
    }
}
