//! A key provider for the embedded mode: key-encryption keys in a local JSON file, created
//! on first run with mode 0600. A file others can read, a symlink, or a file another user
//! owns is refused. `keys rotate` adds a KEK and makes it current; `keys retire` removes one
//! no stored key uses any more. The file is always replaced whole (written aside, renamed).
//!
//! With a master key (`keys.master_key_env`: 32 bytes, base64, in an environment variable),
//! the keys in the file are sealed under it, so the file alone, or a copy of the data folder,
//! decrypts nothing: the KEK then comes from outside the data folder.

use super::{KeyError, KeyProvider, WrappedUserKey};
use crate::crypto::{
    open_keyring_key, seal_keyring_key, unwrap_data_key, wrap_data_key, BlindIndexKey, DataKey,
};
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
    /// The blind-index key, as a [`StoredKey`] of id [`BLIND_INDEX_ID`] would hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blind_index_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_blind_index_key: Option<String>,
}

/// One key: `key` (base64, plaintext) without a master key, `sealed_key` (base64 of
/// `nonce ‖ ciphertext ‖ tag` under the master key) with one.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_key: Option<String>,
}

/// The id the blind-index key is sealed under (its AAD).
const BLIND_INDEX_ID: &str = "blind-index";

impl StoredKey {
    fn new(id: &str, key: &DataKey, master: Option<&DataKey>) -> Result<Self, String> {
        Ok(match master {
            None => Self {
                id: id.into(),
                key: Some(STANDARD.encode(key.expose())),
                sealed_key: None,
            },
            Some(m) => Self {
                id: id.into(),
                key: None,
                sealed_key: Some(
                    STANDARD.encode(seal_keyring_key(m, id, key).map_err(|e| e.to_string())?),
                ),
            },
        })
    }

    /// The key, or why it cannot be had (a wrong or missing master key, a damaged file).
    fn open(&self, master: Option<&DataKey>) -> Result<DataKey, String> {
        let b64 = |v: &str| {
            STANDARD
                .decode(v)
                .map_err(|_| format!("key `{}` is not base64", self.id))
        };
        match (&self.key, &self.sealed_key, master) {
            (Some(k), None, None) => DataKey::from_slice(&b64(k)?)
                .map_err(|_| format!("key `{}` is not 32 bytes", self.id)),
            (None, Some(sealed), Some(m)) => open_keyring_key(m, &self.id, &b64(sealed)?).map_err(|_| {
                format!("key `{}` does not open with the master key: is keys.master_key_env's variable the key this keyring was sealed with?", self.id)
            }),
            (Some(_), None, Some(_)) => Err(format!(
                "key `{}` is in plaintext although keys.master_key_env is set: run `profile-sync keys seal` once to seal the keyring",
                self.id
            )),
            (None, Some(_), None) => Err(format!(
                "key `{}` is sealed under a master key: set keys.master_key_env to the variable that holds it",
                self.id
            )),
            _ => Err(format!("key `{}` has neither `key` nor `sealed_key`", self.id)),
        }
    }
}

impl KeyringFile {
    fn blind_index(&self) -> StoredKey {
        StoredKey {
            id: BLIND_INDEX_ID.into(),
            key: self.blind_index_key.clone(),
            sealed_key: self.sealed_blind_index_key.clone(),
        }
    }

    fn set_blind_index(&mut self, stored: StoredKey) {
        self.blind_index_key = stored.key;
        self.sealed_blind_index_key = stored.sealed_key;
    }
}

pub struct LocalKeyring {
    current: String,
    keks: HashMap<String, DataKey>,
    blind_index: BlindIndexKey,
    calls: AtomicU64,
}

impl LocalKeyring {
    /// Opens the keyring at `path`, creating it (mode 0600) if it does not exist; its keys are
    /// sealed under `master` when one is given.
    pub fn open_or_create(path: &Path, master: Option<&DataKey>) -> Result<Self, KeyringError> {
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
            let format = |reason: String| KeyringError::Format {
                path: path.to_path_buf(),
                reason,
            };
            let mut file = KeyringFile {
                format: FORMAT.into(),
                current: id.clone(),
                key_encryption_keys: vec![StoredKey::new(&id, &kek, master).map_err(format)?],
                blind_index_key: None,
                sealed_blind_index_key: None,
            };
            file.set_blind_index(StoredKey::new(BLIND_INDEX_ID, &blind, master).map_err(format)?);
            write_file(path, &file, Placing::IfAbsent)?;
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
        let mut keks = HashMap::new();
        for k in &file.key_encryption_keys {
            keks.insert(k.id.clone(), k.open(master).map_err(format)?);
        }
        if !keks.contains_key(&file.current) {
            return Err(format(format!(
                "current key {:?} is not in key_encryption_keys",
                file.current
            )));
        }
        let blind = file.blind_index().open(master).map_err(format)?;
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
    pub fn keks(path: &Path, master: Option<&DataKey>) -> Result<KeyringKeks, KeyringError> {
        if !path.exists() {
            return Err(KeyringError::Io {
                path: path.into(),
                reason: "no such file".into(),
            });
        }
        Self::open_or_create(path, master)?;
        let file = read_file(path)?;
        Ok(KeyringKeks {
            current: file.current,
            ids: file.key_encryption_keys.into_iter().map(|k| k.id).collect(),
        })
    }

    /// Adds a new key-encryption key and makes it the current one; its id. User keys wrapped
    /// before stay readable (their KEK stays) until they are re-wrapped (`keys rotate`).
    pub fn add_kek(path: &Path, master: Option<&DataKey>) -> Result<String, KeyringError> {
        Self::keks(path, master)?;
        let mut file = read_file(path)?;
        let kek = DataKey::generate().map_err(|e| KeyringError::Io {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let id = new_kek_id();
        file.key_encryption_keys
            .push(
                StoredKey::new(&id, &kek, master).map_err(|reason| KeyringError::Io {
                    path: path.into(),
                    reason,
                })?,
            );
        file.current = id.clone();
        replace_file(path, &file)?;
        Ok(id)
    }

    /// Removes a key-encryption key that is not the current one. The caller makes sure no
    /// stored key is wrapped by it: with it gone, whatever it wrapped (in backups too) can no
    /// longer be unwrapped.
    pub fn remove_kek(path: &Path, id: &str, master: Option<&DataKey>) -> Result<(), KeyringError> {
        let keks = Self::keks(path, master)?;
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

impl LocalKeyring {
    /// Seals a plaintext keyring under `master` in place (`keys seal`); refuses one that is
    /// sealed already. The sealed file is opened again before this returns.
    pub fn seal(path: &Path, master: &DataKey) -> Result<usize, KeyringError> {
        Self::keks(path, None)?;
        let mut file = read_file(path)?;
        let format = |reason: String| KeyringError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let mut sealed = Vec::with_capacity(file.key_encryption_keys.len());
        for k in &file.key_encryption_keys {
            let key = k.open(None).map_err(format)?;
            sealed.push(StoredKey::new(&k.id, &key, Some(master)).map_err(format)?);
        }
        let blind = file.blind_index().open(None).map_err(format)?;
        file.set_blind_index(StoredKey::new(BLIND_INDEX_ID, &blind, Some(master)).map_err(format)?);
        let n = sealed.len() + 1;
        file.key_encryption_keys = sealed;
        replace_file(path, &file)?;
        Self::open_or_create(path, Some(master))?;
        Ok(n)
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

/// How a written keyring takes its place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placing {
    /// Over the keyring that is there.
    Replace,
    /// Only where there is none: another process that created one first wins, and its file is
    /// the keyring (two processes starting on an empty data folder, say).
    IfAbsent,
}

fn replace_file(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    write_file(path, file, Placing::Replace)
}

/// Writes `file` whole beside `path` (mode 0600), then puts it in place: a reader sees no
/// keyring, the old one or the new one, never a part.
fn write_file(path: &Path, file: &KeyringFile, placing: Placing) -> Result<(), KeyringError> {
    let io = |e: std::io::Error| KeyringError::Io {
        path: path.into(),
        reason: e.to_string(),
    };
    let aside = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        Uuid::new_v4().simple()
    ));
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
    let placed = match placing {
        Placing::Replace => std::fs::rename(&aside, path),
        // A hard link fails if the name exists: no-replace, atomically.
        Placing::IfAbsent => match std::fs::hard_link(&aside, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
        .and_then(|()| std::fs::remove_file(&aside)),
    };
    if placed.is_err() {
        let _ = std::fs::remove_file(&aside);
    }
    placed.map_err(io)?;
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
        LocalKeyring::open_or_create(&path, None).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalKeyring::open_or_create(&path, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[tokio::test]
    async fn a_sealed_keyring_holds_no_key_in_plaintext_and_opens_only_with_its_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        // A plaintext keyring with a wrapped key, then sealed in place.
        let plain = LocalKeyring::open_or_create(&path, None).unwrap();
        let dek = DataKey::generate().unwrap();
        let wrapped = plain.wrap(Uuid::new_v4(), 1, &dek).await.unwrap();
        let before: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let master = DataKey::generate().unwrap();
        assert_eq!(LocalKeyring::seal(&path, &master).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let kek_b64 = before["key_encryption_keys"][0]["key"].as_str().unwrap();
        let blind_b64 = before["blind_index_key"].as_str().unwrap();
        assert!(
            !text.contains(kek_b64) && !text.contains(blind_b64),
            "{text}"
        );
        assert!(!text.contains("\"key\""), "{text}");

        let sealed = LocalKeyring::open_or_create(&path, Some(&master)).unwrap();
        assert_eq!(
            sealed.unwrap(&wrapped).await.unwrap().expose(),
            dek.expose()
        );
        assert_eq!(
            sealed.blind_index().email("a@example.org"),
            plain.blind_index().email("a@example.org")
        );
        let without = LocalKeyring::open_or_create(&path, None)
            .err()
            .unwrap()
            .to_string();
        assert!(without.contains("master_key_env"), "{without}");
        let wrong = DataKey::generate().unwrap();
        let with_wrong = LocalKeyring::open_or_create(&path, Some(&wrong))
            .err()
            .unwrap()
            .to_string();
        assert!(
            with_wrong.contains("does not open with the master key"),
            "{with_wrong}"
        );
        assert!(
            LocalKeyring::seal(&path, &master).is_err(),
            "sealed once only"
        );

        // A new KEK in a sealed keyring is sealed too.
        LocalKeyring::add_kek(&path, Some(&master)).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("\"key\""));
        // A keyring made with a master key is sealed from the start.
        let other = dir.path().join("other.json");
        LocalKeyring::open_or_create(&other, Some(&master)).unwrap();
        assert!(!std::fs::read_to_string(&other).unwrap().contains("\"key\""));
        let plain_open = LocalKeyring::open_or_create(&other, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            plain_open.contains("sealed under a master key"),
            "{plain_open}"
        );
    }

    #[test]
    fn processes_creating_the_keyring_at_once_all_get_the_one_that_won() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keyring.json");
            let opened: Vec<String> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| LocalKeyring::open_or_create(&path, None).map(|k| k.current))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap().unwrap())
                    .collect()
            });
            assert!(opened.windows(2).all(|w| w[0] == w[1]), "{opened:?}");
            let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(leftovers, 1, "only the keyring is left");
        }
    }

    #[test]
    fn a_keyring_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        LocalKeyring::open_or_create(&real, None).unwrap();
        let link = dir.path().join("keyring.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = LocalKeyring::open_or_create(&link, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[tokio::test]
    async fn a_new_kek_becomes_current_old_keys_still_unwrap_and_only_a_former_kek_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let first = LocalKeyring::open_or_create(&path, None).unwrap();
        let dek = DataKey::generate().unwrap();
        let user = Uuid::new_v4();
        let old = first.wrap(user, 1, &dek).await.unwrap();
        let new_id = LocalKeyring::add_kek(&path, None).unwrap();
        let keks = LocalKeyring::keks(&path, None).unwrap();
        assert_eq!(
            (keks.current.as_str(), keks.ids.len()),
            (new_id.as_str(), 2)
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let second = LocalKeyring::open_or_create(&path, None).unwrap();
        assert_eq!(second.unwrap(&old).await.unwrap().expose(), dek.expose());
        let rewrapped = second.wrap(user, 1, &dek).await.unwrap();
        assert_eq!(rewrapped.kek_id, new_id);
        assert!(
            LocalKeyring::remove_kek(&path, &new_id, None).is_err(),
            "the current one stays"
        );
        LocalKeyring::remove_kek(&path, &old.kek_id, None).unwrap();
        let third = LocalKeyring::open_or_create(&path, None).unwrap();
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
