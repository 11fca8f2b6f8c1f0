//! Keys: the local keyring or KMS, and the caches of unwrapped keys.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeysConfig {
    /// A master key in a local file (mode 0600), created on first run.
    LocalKeyring {
        #[serde(default = "default_keyring")]
        path: PathBuf,
        /// An environment variable holding a 32-byte master key (base64) that seals the keys
        /// in the keyring file, so that the file alone decrypts nothing. Default: none.
        #[serde(default)]
        master_key_env: Option<String>,
        #[serde(default)]
        cache: KeyCacheConfig,
    },
    /// AWS KMS: key-encryption keys are KMS data keys (see `src/keys/kms.rs`).
    Kms {
        /// The KMS key that generates key-encryption keys: key id, ARN, alias name or alias ARN.
        key_id: String,
        /// AWS region; default: the SDK chain (`AWS_REGION`, profile, IMDS).
        #[serde(default)]
        region: Option<String>,
        /// Endpoint override (LocalStack, an emulator); default: the real KMS endpoint.
        #[serde(default)]
        endpoint: Option<String>,
        /// Development only: `profile-sync bootstrap` creates the KMS key and the alias named
        /// by `key_id` (which must then be `alias/...`) when the alias does not exist.
        #[serde(default)]
        create_for_development: bool,
        #[serde(default)]
        kek_cache: KekCacheConfig,
        #[serde(default)]
        cache: KeyCacheConfig,
    },
}

impl KeysConfig {
    /// What tells two key providers apart (for the residency check that no zones share one).
    pub fn identity(&self) -> String {
        match self {
            KeysConfig::LocalKeyring { path, .. } => format!("keyring {}", path.display()),
            KeysConfig::Kms { key_id, region, .. } => format!(
                "KMS key {key_id} in {}",
                region.as_deref().unwrap_or("the default region")
            ),
        }
    }

    /// Bounds on the cache of unwrapped per-user data keys.
    pub fn cache(&self) -> &KeyCacheConfig {
        match self {
            KeysConfig::LocalKeyring { cache, .. } | KeysConfig::Kms { cache, .. } => cache,
        }
    }
}

/// Bounds on the cache of plaintext key-encryption keys from KMS. The current KEK wraps new
/// user keys until it is `max_age_secs` old, has wrapped `max_uses` keys or `max_bytes` bytes
/// of key material, whichever comes first; then the next wrap asks KMS for a new one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekCacheConfig {
    #[serde(default = "default_kek_max_age")]
    pub max_age_secs: u64,
    #[serde(default = "default_kek_max_uses")]
    pub max_uses: u64,
    #[serde(default = "default_kek_max_bytes")]
    pub max_bytes: u64,
    /// Decrypted KEKs (of stored user keys) held at once.
    #[serde(default = "default_kek_max_entries")]
    pub max_entries: usize,
}

impl Default for KekCacheConfig {
    fn default() -> Self {
        Self {
            max_age_secs: default_kek_max_age(),
            max_uses: default_kek_max_uses(),
            max_bytes: default_kek_max_bytes(),
            max_entries: default_kek_max_entries(),
        }
    }
}

fn default_kek_max_age() -> u64 {
    3600
}
fn default_kek_max_uses() -> u64 {
    100_000
}
fn default_kek_max_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_kek_max_entries() -> usize {
    1000
}

/// Bounds on the cache of unwrapped per-user data keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCacheConfig {
    /// How long an unwrapped key may be used before it is unwrapped again, in seconds.
    #[serde(default = "default_key_max_age")]
    pub max_age_secs: u64,
    /// How many fields a cached key may encrypt or decrypt before it is unwrapped again.
    #[serde(default = "default_key_max_uses")]
    pub max_uses: u64,
    /// How many users' keys are held at once.
    #[serde(default = "default_key_max_entries")]
    pub max_entries: usize,
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        Self {
            max_age_secs: default_key_max_age(),
            max_uses: default_key_max_uses(),
            max_entries: default_key_max_entries(),
        }
    }
}
