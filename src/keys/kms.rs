//! The production key provider: key-encryption keys (KEKs) are AWS KMS data keys, so the only
//! long-lived secret is the KMS key, which never leaves KMS.
//!
//! A KEK comes from `GenerateDataKey` (AES_256) under the configured KMS key, with the
//! encryption context `{"purpose": "profile-sync/kek", "generation": "<kek generation>"}`;
//! its plaintext is held only in memory and its KMS ciphertext is stored beside every user key
//! it wraps (`WrappedUserKey.encrypted_kek`, `kek_id` = `<KMS key ARN>#<generation>`). The
//! current KEK wraps new user keys until it reaches a cache limit (age, uses, bytes); then the
//! next wrap generates a new one. Stored KEKs are decrypted with the same context and cached,
//! so KMS traffic depends on the number of KEKs, not on the event rate. The blind-index key is
//! a KMS data key too (context `{"purpose": "profile-sync/blind-index-key"}`), kept encrypted
//! in the DynamoDB table's `SETTINGS` item and created by whichever process needs it first.

use super::{KeyError, KeyProvider, WrappedUserKey};
use crate::aws::{self, classify, retrying, Endpoint, Failure};
use crate::config::KekCacheConfig;
use crate::crypto::{unwrap_data_key, wrap_data_key, BlindIndexKey, DataKey};
use crate::stores::SettingsStore;
use async_trait::async_trait;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_sdk_kms::Client;
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;
use zeroize::Zeroize;

pub const PROVIDER: &str = "kms";
pub const KEK_PURPOSE: &str = "profile-sync/kek";
pub const BLIND_INDEX_PURPOSE: &str = "profile-sync/blind-index-key";
/// The settings item holding the KMS-encrypted blind-index key.
pub const BLIND_INDEX_SETTING: &str = "BLIND_INDEX_KEY";
/// Bytes of key material one wrap adds to a KEK's count.
const WRAP_BYTES: u64 = 32;

/// The encryption context of a KEK of this generation.
pub fn kek_context(generation: &str) -> HashMap<String, String> {
    HashMap::from([
        ("purpose".to_string(), KEK_PURPOSE.to_string()),
        ("generation".to_string(), generation.to_string()),
    ])
}

fn blind_index_context() -> HashMap<String, String> {
    HashMap::from([("purpose".to_string(), BLIND_INDEX_PURPOSE.to_string())])
}

/// Splits a stored `kek_id` into the KMS key ARN and the KEK generation.
pub fn split_kek_id(kek_id: &str) -> Option<(&str, &str)> {
    kek_id
        .rsplit_once('#')
        .filter(|(k, g)| !k.is_empty() && !g.is_empty())
}

struct CurrentKek {
    kek: Arc<DataKey>,
    kek_id: String,
    encrypted: Vec<u8>,
    created: Instant,
    uses: u64,
    bytes: u64,
}

/// A decrypted KEK and when it was decrypted.
type DecryptedKek = (Arc<DataKey>, Instant);

pub struct KmsKeyProvider {
    client: Client,
    key_id: String,
    limits: KekCacheConfig,
    current: tokio::sync::Mutex<Option<CurrentKek>>,
    /// Decrypted KEKs by `kek_id` and KMS ciphertext (both: the context is part of the key).
    decrypted: Mutex<LruCache<(String, Vec<u8>), DecryptedKek>>,
    blind_index: BlindIndexKey,
    calls: Arc<AtomicU64>,
}

/// A KMS error as a key error: throttling, timeouts and 5xx are `Unavailable` (retried);
/// everything else (access denied, disabled or missing key, invalid ciphertext, a wrong
/// encryption context) is `Refused`.
fn kms_err<E: ProvideErrorMetadata>(what: &str, e: &SdkError<E, HttpResponse>) -> KeyError {
    match classify(e) {
        Failure::Transient(why) => KeyError::Unavailable(format!("KMS {what}: {why}")),
        Failure::Permanent { code, message } => {
            let hint = match code.as_str() {
                "AccessDeniedException" => {
                    ": grant the IAM permissions listed in the README (kms:GenerateDataKey, kms:Decrypt)"
                }
                "NotFoundException" => ": check keys.key_id in the pipeline file, or run `profile-sync bootstrap`",
                "DisabledException" | "KMSInvalidStateException" => ": enable the KMS key",
                "InvalidCiphertextException" => {
                    ": the stored key-encryption key does not decrypt with its encryption context (tampered or moved)"
                }
                _ => "",
            };
            KeyError::Refused(format!("KMS {what} refused: {code} ({message}){hint}"))
        }
    }
}

fn transient<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(classify(e), Failure::Transient(_))
}

/// Takes a KMS plaintext as a data key, zeroing the SDK's copy.
fn data_key(blob: Option<Blob>, what: &str) -> Result<DataKey, KeyError> {
    let mut bytes = blob
        .ok_or_else(|| KeyError::Refused(format!("KMS {what} returned no plaintext")))?
        .into_inner();
    let key = DataKey::from_slice(&bytes)
        .map_err(|_| KeyError::Refused(format!("KMS {what} returned a key that is not 32 bytes")));
    bytes.zeroize();
    key
}

/// Counts KMS calls: one per request sent, retries included.
struct Counted<'a>(&'a AtomicU64);
impl Counted<'_> {
    fn tick(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

async fn generate(
    client: &Client,
    calls: &AtomicU64,
    key_id: &str,
    context: HashMap<String, String>,
) -> Result<(DataKey, Vec<u8>, String), KeyError> {
    let counted = Counted(calls);
    let call = client
        .generate_data_key()
        .key_id(key_id)
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(Some(context));
    let out = retrying(
        "GenerateDataKey",
        || {
            counted.tick();
            call.clone().send()
        },
        transient,
    )
    .await
    .map_err(|e| kms_err("GenerateDataKey", &e))?;
    let arn = out.key_id().unwrap_or(key_id).to_string();
    let encrypted = out
        .ciphertext_blob()
        .map(|b| b.as_ref().to_vec())
        .ok_or_else(|| KeyError::Refused("KMS GenerateDataKey returned no ciphertext".into()))?;
    let key = data_key(out.plaintext, "GenerateDataKey")?;
    Ok((key, encrypted, arn))
}

async fn decrypt(
    client: &Client,
    calls: &AtomicU64,
    key_id: Option<&str>,
    ciphertext: &[u8],
    context: HashMap<String, String>,
) -> Result<DataKey, KeyError> {
    let counted = Counted(calls);
    let call = client
        .decrypt()
        .ciphertext_blob(Blob::new(ciphertext.to_vec()))
        .set_key_id(key_id.map(str::to_string))
        .set_encryption_context(Some(context));
    let out = retrying(
        "Decrypt",
        || {
            counted.tick();
            call.clone().send()
        },
        transient,
    )
    .await
    .map_err(|e| kms_err("Decrypt", &e))?;
    data_key(out.plaintext, "Decrypt")
}

impl KmsKeyProvider {
    /// Connects (from synchronous code in the CLI runtime) and loads the blind-index key.
    pub fn open(
        key_id: &str,
        at: &Endpoint,
        limits: &KekCacheConfig,
        settings: &dyn SettingsStore,
    ) -> Result<Self, KeyError> {
        aws::block_on(Self::connect(key_id, at, limits, settings)).map_err(KeyError::Refused)?
    }

    pub async fn connect(
        key_id: &str,
        at: &Endpoint,
        limits: &KekCacheConfig,
        settings: &dyn SettingsStore,
    ) -> Result<Self, KeyError> {
        if key_id.trim().is_empty() {
            return Err(KeyError::Refused(
                "keys.key_id is empty: name the KMS key (id, ARN or alias/NAME)".into(),
            ));
        }
        let client = Client::new(&aws::sdk_config(at).await.map_err(KeyError::Refused)?);
        let calls = Arc::new(AtomicU64::new(0));
        let blind = match settings.setting(BLIND_INDEX_SETTING).await? {
            Some(encrypted) => encrypted,
            None => {
                let (_, encrypted, _) =
                    generate(&client, &calls, key_id, blind_index_context()).await?;
                settings
                    .put_setting_if_absent(BLIND_INDEX_SETTING, encrypted)
                    .await?
            }
        };
        let blind = decrypt(&client, &calls, None, &blind, blind_index_context()).await?;
        Ok(Self {
            client,
            key_id: key_id.to_string(),
            current: tokio::sync::Mutex::new(None),
            decrypted: Mutex::new(LruCache::new(
                NonZeroUsize::new(limits.max_entries.max(1)).expect("at least one"),
            )),
            limits: limits.clone(),
            blind_index: BlindIndexKey::new(blind.expose()),
            calls,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Makes the next wrap use a new KEK (`profile-sync keys rotate`).
    pub async fn rotate(&self) {
        *self.current.lock().await = None;
    }

    fn usable(&self, kek: &CurrentKek) -> bool {
        kek.created.elapsed() < Duration::from_secs(self.limits.max_age_secs)
            && kek.uses < self.limits.max_uses.max(1)
            && kek.bytes + WRAP_BYTES <= self.limits.max_bytes.max(WRAP_BYTES)
    }

    fn cached(&self, kek_id: &str, encrypted: &[u8]) -> Option<Arc<DataKey>> {
        let mut cache = self.decrypted.lock().expect("KEK cache lock");
        let max_age = Duration::from_secs(self.limits.max_age_secs);
        let key = (kek_id.to_string(), encrypted.to_vec());
        match cache.get(&key) {
            Some((k, at)) if at.elapsed() < max_age => Some(k.clone()),
            Some(_) => {
                cache.pop(&key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, kek_id: String, encrypted: Vec<u8>, kek: Arc<DataKey>) {
        self.decrypted
            .lock()
            .expect("KEK cache lock")
            .put((kek_id, encrypted), (kek, Instant::now()));
    }
}

#[async_trait]
impl KeyProvider for KmsKeyProvider {
    /// DescribeKey (exists, enabled, for encryption), then a test wrap and unwrap, which
    /// calls GenerateDataKey and Decrypt unless a key-encryption key is cached.
    async fn check(&self) -> Result<String, String> {
        let described = match self.client.describe_key().key_id(&self.key_id).send().await {
            Ok(out) => out.key_metadata().map(|m| (m.enabled(), m.key_id().to_string())),
            // The worker's role need not have kms:DescribeKey: the round trip below decides.
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("AccessDeniedException") => None,
            Err(e) => {
                return Err(match kms_err("DescribeKey", &e) {
                    KeyError::Unavailable(why) => format!(
                        "{why}: is KMS reachable? check `keys.endpoint` and `keys.region` (locally: `scripts/services start kms`)"
                    ),
                    other => other.to_string(),
                })
            }
        };
        if let Some((false, _)) = described {
            return Err(format!(
                "KMS key `{}` is disabled: enable it, or point `keys.key_id` at an enabled key",
                self.key_id
            ));
        }
        super::round_trip(self).await?;
        Ok(match described {
            Some((_, id)) => format!("KMS key `{id}` enabled; GenerateDataKey and Decrypt work"),
            None => format!(
                "KMS key `{}`: GenerateDataKey and Decrypt work (DescribeKey not permitted)",
                self.key_id
            ),
        })
    }

    async fn wrap(
        &self,
        user_id: Uuid,
        key_version: u32,
        dek: &DataKey,
    ) -> Result<WrappedUserKey, KeyError> {
        let mut current = self.current.lock().await;
        if !current.as_ref().is_some_and(|k| self.usable(k)) {
            let generation = format!("kek-{}", Uuid::new_v4().simple());
            let (kek, encrypted, arn) = generate(
                &self.client,
                &self.calls,
                &self.key_id,
                kek_context(&generation),
            )
            .await?;
            let kek = Arc::new(kek);
            let kek_id = format!("{arn}#{generation}");
            // Our own KEK unwraps what it wrapped without asking KMS again.
            self.remember(kek_id.clone(), encrypted.clone(), kek.clone());
            *current = Some(CurrentKek {
                kek,
                kek_id,
                encrypted,
                created: Instant::now(),
                uses: 0,
                bytes: 0,
            });
        }
        let kek = current.as_mut().expect("a current KEK was just made");
        kek.uses += 1;
        kek.bytes += WRAP_BYTES;
        let wrapped_key = wrap_data_key(&kek.kek, user_id, key_version, dek)
            .map_err(|e| KeyError::Unavailable(e.to_string()))?;
        Ok(WrappedUserKey {
            user_id,
            key_version,
            provider: PROVIDER.into(),
            kek_id: kek.kek_id.clone(),
            encrypted_kek: kek.encrypted.clone(),
            wrapped_key,
            created_at: chrono::Utc::now(),
        })
    }

    async fn unwrap(&self, key: &WrappedUserKey) -> Result<DataKey, KeyError> {
        if key.provider != PROVIDER {
            return Err(KeyError::Refused(format!(
                "user key was wrapped by the `{}` provider, but this pipeline uses KMS",
                key.provider
            )));
        }
        let (arn, generation) = split_kek_id(&key.kek_id).ok_or_else(|| {
            KeyError::Refused("stored kek_id is not `<KMS key ARN>#<generation>`".into())
        })?;
        let kek = match self.cached(&key.kek_id, &key.encrypted_kek) {
            Some(k) => k,
            None => {
                let k = Arc::new(
                    decrypt(
                        &self.client,
                        &self.calls,
                        Some(arn),
                        &key.encrypted_kek,
                        kek_context(generation),
                    )
                    .await?,
                );
                self.remember(key.kek_id.clone(), key.encrypted_kek.clone(), k.clone());
                k
            }
        };
        unwrap_data_key(&kek, key.user_id, key.key_version, &key.wrapped_key)
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
    fn kek_ids_split_into_arn_and_generation() {
        assert_eq!(
            split_kek_id("arn:aws:kms:eu-west-1:1:key/abc#kek-1"),
            Some(("arn:aws:kms:eu-west-1:1:key/abc", "kek-1"))
        );
        assert_eq!(split_kek_id("no-generation"), None);
        assert_eq!(split_kek_id("arn#"), None);
    }
}
