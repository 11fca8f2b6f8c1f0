//! A key provider for the embedded mode: key-encryption keys in a local JSON file, created
//! on first run with mode 0600. A file others can read, a symlink, or a file another user
//! owns is refused. `keys rotate` adds a KEK and makes it current; `keys retire` removes one
//! no stored key uses any more. The file is always replaced whole (written aside, renamed).

use super::{KeyError, KeyProvider, WrappedUserKey};
use crate::crypto::{unwrap_data_key, wrap_data_key, BlindIndexKey, DataKey};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
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
    #[error("keyring {path} {reason}")]
    Untrusted { path: PathBuf, reason: String },
    #[error("keyring {path}: {reason}")]
    Refused { path: PathBuf, reason: String },
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
            let id = new_kek_id();
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
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        let untrusted = |reason: &str| KeyringError::Untrusted {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        if meta.file_type().is_symlink() {
            return Err(untrusted(
                "is a symbolic link: point keys.path at the file itself",
            ));
        }
        if !meta.is_file() {
            return Err(untrusted("is not a regular file"));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(untrusted(&format!(
                "is owned by user {} and this process runs as user {me}: the keyring must belong to the user that runs profile-sync",
                meta.uid()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let file = read_file(path)?;
        let format = |reason: String| KeyringError::Format {
            path: path.to_path_buf(),
            reason,
        };
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

/// A keyring's key-encryption keys: the current one, and every id in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringKeks {
    pub current: String,
    pub ids: Vec<String>,
}

impl LocalKeyring {
    /// The key-encryption keys of the keyring at `path` (opened with every check of
    /// [`LocalKeyring::open_or_create`], so never created here).
    pub fn keks(path: &Path) -> Result<KeyringKeks, KeyringError> {
        if !path.exists() {
            return Err(KeyringError::Io {
                path: path.into(),
                reason: "no such file".into(),
            });
        }
        Self::open_or_create(path)?;
        let file = read_file(path)?;
        Ok(KeyringKeks {
            current: file.current,
            ids: file.key_encryption_keys.into_iter().map(|k| k.id).collect(),
        })
    }

    /// Adds a new key-encryption key and makes it the current one; its id. User keys wrapped
    /// before stay readable (their KEK stays) until they are re-wrapped (`keys rotate`).
    pub fn add_kek(path: &Path) -> Result<String, KeyringError> {
        Self::keks(path)?;
        let mut file = read_file(path)?;
        let kek = DataKey::generate().map_err(|e| KeyringError::Io {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let id = new_kek_id();
        file.key_encryption_keys.push(StoredKey {
            id: id.clone(),
            key: STANDARD.encode(kek.expose()),
        });
        file.current = id.clone();
        replace_file(path, &file)?;
        Ok(id)
    }

    /// Removes a key-encryption key that is not the current one. The caller makes sure no
    /// stored key is wrapped by it: with it gone, whatever it wrapped (in backups too) can no
    /// longer be unwrapped.
    pub fn remove_kek(path: &Path, id: &str) -> Result<(), KeyringError> {
        let keks = Self::keks(path)?;
        let refused = |reason: String| KeyringError::Refused {
            path: path.into(),
            reason,
        };
        if keks.current == id {
            return Err(refused(format!(
                "`{id}` is the current key-encryption key: run `keys rotate` first"
            )));
        }
        if !keks.ids.iter().any(|k| k == id) {
            return Err(refused(format!("has no key-encryption key `{id}`")));
        }
        let mut file = read_file(path)?;
        file.key_encryption_keys.retain(|k| k.id != id);
        replace_file(path, &file)
    }
}

fn new_kek_id() -> String {
    format!("local-{}", &Uuid::new_v4().simple().to_string()[..12])
}

fn read_file(path: &Path) -> Result<KeyringFile, KeyringError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyringError::Io {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let format = |reason: String| KeyringError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let file: KeyringFile = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    if file.format != FORMAT {
        return Err(format(format!("format is {:?}", file.format)));
    }
    Ok(file)
}

/// Writes `file` beside `path` (mode 0600) and renames it over `path`, so a reader sees the
/// old keyring or the new one, never a part.
fn replace_file(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    let io = |e: std::io::Error| KeyringError::Io {
        path: path.into(),
        reason: e.to_string(),
    };
    let aside = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&aside);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&aside)
        .map_err(io)?;
    f.write_all(
        serde_json::to_string_pretty(file)
            .expect("serialisable")
            .as_bytes(),
    )
    .and_then(|_| f.sync_all())
    .map_err(io)?;
    std::fs::rename(&aside, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
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

    #[test]
    fn a_keyring_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        LocalKeyring::open_or_create(&real).unwrap();
        let link = dir.path().join("keyring.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = LocalKeyring::open_or_create(&link)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[tokio::test]
    async fn a_new_kek_becomes_current_old_keys_still_unwrap_and_only_a_former_kek_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let first = LocalKeyring::open_or_create(&path).unwrap();
        let dek = DataKey::generate().unwrap();
        let user = Uuid::new_v4();
        let old = first.wrap(user, 1, &dek).await.unwrap();
        let new_id = LocalKeyring::add_kek(&path).unwrap();
        let keks = LocalKeyring::keks(&path).unwrap();
        assert_eq!(
            (keks.current.as_str(), keks.ids.len()),
            (new_id.as_str(), 2)
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let second = LocalKeyring::open_or_create(&path).unwrap();
        assert_eq!(second.unwrap(&old).await.unwrap().expose(), dek.expose());
        let rewrapped = second.wrap(user, 1, &dek).await.unwrap();
        assert_eq!(rewrapped.kek_id, new_id);
        assert!(
            LocalKeyring::remove_kek(&path, &new_id).is_err(),
            "the current one stays"
        );
        LocalKeyring::remove_kek(&path, &old.kek_id).unwrap();
        let third = LocalKeyring::open_or_create(&path).unwrap();
        assert!(
            third.unwrap(&old).await.is_err(),
            "what the removed KEK wrapped is gone"
        );
        assert_eq!(
            third.unwrap(&rewrapped).await.unwrap().expose(),
            dek.expose()
        );
        assert_eq!(
            second.blind_index().email("a@example.org"),
            third.blind_index().email("a@example.org"),
            "the blind index key does not change"
        );
    }
}
