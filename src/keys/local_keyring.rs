//! A key provider for the embedded mode: key-encryption keys in a local JSON file, created
//! on first run with mode 0600. A file others can read is refused.

use super::{KeyError, KeyProvider, WrappedUserKey};
use crate::crypto::{unwrap_data_key, wrap_data_key, BlindIndexKey, DataKey};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

const FORMAT: &str = "profile-sync-keyring/v1";
pub const PROVIDER: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("keyring {path} can be read by other users (mode {mode:o}): run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("keyring {path} is not a {FORMAT} file: {reason}")]
    Format { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    format: String,
    /// The id of the key-encryption key new user keys are wrapped with.
    current: String,
    key_encryption_keys: Vec<StoredKey>,
    blind_index_key: String,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: String,
    key: String,
}

pub struct LocalKeyring {
    current: String,
    keks: HashMap<String, DataKey>,
    blind_index: BlindIndexKey,
    calls: AtomicU64,
}

impl LocalKeyring {
    /// Opens the keyring at `path`, creating it (mode 0600) if it does not exist.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyringError> {
        let io = |e: std::io::Error| KeyringError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let kek = DataKey::generate().map_err(|e| KeyringError::Io {
                path: path.into(),
                reason: e.to_string(),
            })?;
            let blind = DataKey::generate().map_err(|e| KeyringError::Io {
                path: path.into(),
                reason: e.to_string(),
            })?;
            let id = format!("local-{}", &Uuid::new_v4().simple().to_string()[..12]);
            let file = KeyringFile {
                format: FORMAT.into(),
                current: id.clone(),
                key_encryption_keys: vec![StoredKey {
                    id,
                    key: STANDARD.encode(kek.expose()),
                }],
                blind_index_key: STANDARD.encode(blind.expose()),
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(
                serde_json::to_string_pretty(&file)
                    .expect("serialisable")
                    .as_bytes(),
            )
            .and_then(|_| f.sync_all())
            .map_err(io)?;
        }
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let format = |reason: String| KeyringError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let file: KeyringFile = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        if file.format != FORMAT {
            return Err(format(format!("format is {:?}", file.format)));
        }
        let decode = |b64: &str| -> Result<DataKey, KeyringError> {
            let bytes = STANDARD
                .decode(b64)
                .map_err(|_| format("a key is not base64".into()))?;
            DataKey::from_slice(&bytes).map_err(|_| format("a key is not 32 bytes".into()))
        };
        let mut keks = HashMap::new();
        for k in &file.key_encryption_keys {
            keks.insert(k.id.clone(), decode(&k.key)?);
        }
        if !keks.contains_key(&file.current) {
            return Err(format(format!(
                "current key {:?} is not in key_encryption_keys",
                file.current
            )));
        }
        let blind = decode(&file.blind_index_key)?;
        Ok(Self {
            current: file.current,
            keks,
            blind_index: BlindIndexKey::new(blind.expose()),
            calls: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl KeyProvider for LocalKeyring {
    async fn wrap(
        &self,
        user_id: Uuid,
        key_version: u32,
        dek: &DataKey,
    ) -> Result<WrappedUserKey, KeyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let kek = &self.keks[&self.current];
        let wrapped_key = wrap_data_key(kek, user_id, key_version, dek)
            .map_err(|e| KeyError::Unavailable(e.to_string()))?;
        Ok(WrappedUserKey {
            user_id,
            key_version,
            provider: PROVIDER.into(),
            kek_id: self.current.clone(),
            encrypted_kek: Vec::new(),
            wrapped_key,
            created_at: chrono::Utc::now(),
        })
    }

    async fn unwrap(&self, key: &WrappedUserKey) -> Result<DataKey, KeyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if key.provider != PROVIDER {
            return Err(KeyError::Refused(format!(
                "user key was wrapped by the `{}` provider, but this pipeline uses the local keyring",
                key.provider
            )));
        }
        let kek = self.keks.get(&key.kek_id).ok_or_else(|| {
            KeyError::Refused(format!(
                "key-encryption key `{}` is not in this keyring",
                key.kek_id
            ))
        })?;
        unwrap_data_key(kek, key.user_id, key.key_version, &key.wrapped_key)
            .map_err(|e| KeyError::Refused(format!("user key does not unwrap: {e}")))
    }

    fn blind_index(&self) -> &BlindIndexKey {
        &self.blind_index
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_is_created_private_and_a_readable_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        LocalKeyring::open_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalKeyring::open_or_create(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
