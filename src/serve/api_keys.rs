//! API keys of the profile API, kept only as hashes in a JSON file (mode 0600; default
//! `api-keys.json` in the data folder). A key is `psk_<id>_<secret>`: the id finds the entry,
//! the secret (32 random bytes) is checked against its SHA-256 in constant time. A random
//! 256-bit secret needs no slow password hash: it cannot be guessed from its digest. The
//! server re-reads the file when it changes, so a revocation takes effect at once.

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

const FORMAT: &str = "profile-sync-api-keys/v1";
/// How every API key begins (an OIDC token never does).
pub const PREFIX: &str = "psk_";

/// One key as stored: never the key itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    pub role: String,
    /// Lowercase hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    format: String,
    keys: Vec<StoredKey>,
}

/// Who called: the principal every audit record of the request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `api-key:<name>`.
    pub name: String,
    pub role: String,
    /// The key's id (rate limits are per key).
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApiKeyError(pub String);

/// The key file, re-read when its modification time changes.
pub struct ApiKeys {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<StoredKey>)>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest(&SHA256, bytes).as_ref())
}

impl ApiKeys {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            cache: Mutex::new((None, Vec::new())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Vec<StoredKey>, ApiKeyError> {
        match std::fs::read_to_string(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ApiKeyError(format!(
                "cannot read the API key file {}: {e}",
                self.path.display()
            ))),
            Ok(text) => {
                let file: KeyFile = serde_json::from_str(&text).map_err(|e| {
                    ApiKeyError(format!(
                        "{} is not an API key file ({}): was it edited by hand?",
                        self.path.display(),
                        e.classify() as u8
                    ))
                })?;
                if file.format != FORMAT {
                    return Err(ApiKeyError(format!(
                        "{} has format {:?}, expected {FORMAT:?}",
                        self.path.display(),
                        file.format
                    )));
                }
                Ok(file.keys)
            }
        }
    }

    fn write(&self, keys: Vec<StoredKey>) -> Result<(), ApiKeyError> {
        let err =
            |e: std::io::Error| ApiKeyError(format!("cannot write {}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let text = serde_json::to_string_pretty(&KeyFile {
            format: FORMAT.into(),
            keys,
        })
        .expect("keys serialise");
        // Written beside and renamed over: a reader never sees half a file.
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    /// Makes a key for `name` with `role`; returns the key, which is shown once and never
    /// stored.
    pub fn create(&self, name: &str, role: &str) -> Result<(String, StoredKey), ApiKeyError> {
        let mut keys = self.read()?;
        if keys
            .iter()
            .any(|k| k.name == name && k.revoked_at.is_none())
        {
            return Err(ApiKeyError(format!(
                "a key named {name:?} exists: revoke it first, or choose another name"
            )));
        }
        let rng = SystemRandom::new();
        let mut id = [0u8; 6];
        let mut secret = [0u8; 32];
        rng.fill(&mut id)
            .and_then(|_| rng.fill(&mut secret))
            .map_err(|_| ApiKeyError("the system random generator failed".into()))?;
        let id = hex::encode(id);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let stored = StoredKey {
            id: id.clone(),
            name: name.into(),
            role: role.into(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            created_at: Utc::now(),
            revoked_at: None,
        };
        keys.push(stored.clone());
        self.write(keys)?;
        Ok((format!("{PREFIX}{id}_{secret}"), stored))
    }

    pub fn list(&self) -> Result<Vec<StoredKey>, ApiKeyError> {
        self.read()
    }

    /// Revokes the key with this id or name; whether one was revoked.
    pub fn revoke(&self, id_or_name: &str) -> Result<bool, ApiKeyError> {
        let mut keys = self.read()?;
        let mut revoked = false;
        for k in keys
            .iter_mut()
            .filter(|k| k.revoked_at.is_none() && (k.id == id_or_name || k.name == id_or_name))
        {
            k.revoked_at = Some(Utc::now());
            revoked = true;
        }
        if revoked {
            self.write(keys)?;
        }
        Ok(revoked)
    }

    /// The principal of a presented key, or `None` for a key that is malformed, unknown,
    /// revoked or wrong. The error is for a key file that cannot be read.
    pub fn verify(&self, presented: &str) -> Result<Option<Principal>, ApiKeyError> {
        let Some((id, secret)) = presented
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
        else {
            return Ok(None);
        };
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.0 != modified || modified.is_none() {
            *cache = (modified, self.read()?);
        }
        let Some(stored) = cache
            .1
            .iter()
            .find(|k| k.id == id && k.revoked_at.is_none())
        else {
            return Ok(None);
        };
        let presented = sha256_hex(secret.as_bytes());
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            stored.secret_sha256.as_bytes(),
        )
        .is_err()
        {
            return Ok(None);
        }
        Ok(Some(Principal {
            name: format!("api-key:{}", stored.name),
            role: stored.role.clone(),
            id: stored.id.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_verifies_until_it_is_revoked_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::new(&dir.path().join("api-keys.json"));
        let (key, stored) = keys.create("crm", "support").unwrap();
        let text = std::fs::read_to_string(keys.path()).unwrap();
        let secret = key.rsplit('_').next().unwrap();
        assert!(!text.contains(secret));
        let principal = keys.verify(&key).unwrap().unwrap();
        assert_eq!(principal.name, "api-key:crm");
        assert_eq!(principal.role, "support");
        let mut wrong = key.clone();
        wrong.pop();
        assert_eq!(keys.verify(&wrong).unwrap(), None);
        assert_eq!(keys.verify("Bearer nonsense").unwrap(), None);
        assert!(keys.revoke(&stored.id).unwrap());
        assert_eq!(keys.verify(&key).unwrap(), None);
    }
}
