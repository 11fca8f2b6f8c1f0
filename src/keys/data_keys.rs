//! Finding, creating and caching users' data keys.

use super::cache::KeyCache;
use super::{KeyError, KeyProvider};
use crate::config::KeyCacheConfig;
use crate::crypto::DataKey;
use crate::stores::ProfileStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// An unwrapped data key and the version its ciphertexts are bound to.
#[derive(Debug)]
pub struct UserKey {
    pub version: u32,
    pub key: DataKey,
}

pub struct DataKeys {
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn ProfileStore>,
    cache: Mutex<KeyCache>,
}

/// Per user: the key, or why it cannot be had (a permanent failure for that user only).
pub type KeyLookup = HashMap<Uuid, Result<Arc<UserKey>, String>>;

impl DataKeys {
    pub fn new(
        provider: Arc<dyn KeyProvider>,
        store: Arc<dyn ProfileStore>,
        cache: &KeyCacheConfig,
    ) -> Self {
        Self {
            provider,
            store,
            cache: Mutex::new(KeyCache::new(cache)),
        }
    }

    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    /// Keys for `users`. With `create`, users without a key get one, stored before it is used
    /// so that no ciphertext can exist whose key is not stored. A transient failure fails the
    /// whole call (retry it); a permanent one fails only that user.
    pub async fn for_users(&self, users: &[Uuid], create: bool) -> Result<KeyLookup, KeyError> {
        let mut found = KeyLookup::with_capacity(users.len());
        let mut misses = Vec::new();
        {
            let mut cache = self.cache.lock().expect("key cache lock");
            for user in users {
                if found.contains_key(user) {
                    continue;
                }
                match cache.get(user) {
                    Some(k) => {
                        found.insert(*user, Ok(k));
                    }
                    None => misses.push(*user),
                }
            }
        }
        if misses.is_empty() {
            return Ok(found);
        }
        misses.sort();
        misses.dedup();
        let mut stored = self.store.user_keys(&misses).await?;
        if create {
            let mut fresh = Vec::new();
            let mut fresh_keys = HashMap::new();
            for user in misses.iter().filter(|u| !stored.contains_key(u)) {
                let dek = DataKey::generate().map_err(|e| KeyError::Unavailable(e.to_string()))?;
                let wrapped = self.provider.wrap(*user, 1, &dek).await?;
                fresh_keys.insert(*user, (wrapped.wrapped_key.clone(), dek));
                fresh.push(wrapped);
            }
            if !fresh.is_empty() {
                // Another worker may have created a key first: the stored one wins.
                for winner in self.store.insert_user_keys(fresh).await? {
                    let user = winner.user_id;
                    if let Some((ours, dek)) = fresh_keys.remove(&user) {
                        if winner.wrapped_key == ours {
                            self.remember(user, winner.key_version, dek, &mut found);
                            continue;
                        }
                    }
                    stored.insert(user, winner);
                }
            }
        }
        for user in misses {
            if found.contains_key(&user) {
                continue;
            }
            let Some(wrapped) = stored.remove(&user) else {
                continue;
            };
            match self.provider.unwrap(&wrapped).await {
                Ok(dek) => self.remember(user, wrapped.key_version, dek, &mut found),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    found.insert(user, Err(e.to_string()));
                }
            }
        }
        Ok(found)
    }

    fn remember(&self, user: Uuid, version: u32, key: DataKey, found: &mut KeyLookup) {
        let key = Arc::new(UserKey { version, key });
        self.cache
            .lock()
            .expect("key cache lock")
            .put(user, key.clone());
        found.insert(user, Ok(key));
    }

    /// Drops a user's key from the cache (after an erase or a failed write).
    pub fn forget(&self, user: &Uuid) {
        self.cache.lock().expect("key cache lock").forget(user);
    }

    /// (hits, misses) of the unwrapped-key cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        let cache = self.cache.lock().expect("key cache lock");
        (cache.hits, cache.misses)
    }
}
