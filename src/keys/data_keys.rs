//! Finding, creating and caching users' data keys.

use super::cache::KeyCache;
use super::{KeyError, KeyProvider};
use crate::config::KeyCacheConfig;
use crate::crypto::DataKey;
use crate::keys::WrappedUserKey;
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

/// Keys made for users who had none, not stored yet: they may encrypt, but nothing encrypted
/// under them may be written before [`DataKeys::store_new`] has stored them.
#[derive(Default)]
pub struct NewKeys {
    keys: Vec<(WrappedUserKey, Arc<UserKey>)>,
}

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

    /// Keys for `users`. With `create`, users without a key get one, stored before it is
    /// returned, so that no ciphertext can exist whose key is not stored. A transient failure
    /// fails the whole call (retry it); a permanent one fails only that user.
    pub async fn for_users(&self, users: &[Uuid], create: bool) -> Result<KeyLookup, KeyError> {
        let (mut found, new) = self.prepare(users, create).await?;
        found.extend(self.store_new(new).await?);
        Ok(found)
    }

    /// Like [`Self::for_users`], but the keys made for users without one are returned unstored
    /// (in `NewKeys` too): the caller encrypts with them, then stores them with
    /// [`Self::store_new`] before writing anything encrypted, so that the encryption does not
    /// wait for the store's write lock.
    pub async fn prepare(
        &self,
        users: &[Uuid],
        create: bool,
    ) -> Result<(KeyLookup, NewKeys), KeyError> {
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
        let mut new = NewKeys::default();
        if misses.is_empty() {
            return Ok((found, new));
        }
        misses.sort();
        misses.dedup();
        let mut stored = self.store.user_keys(&misses).await?;
        if create {
            for user in misses.iter().filter(|u| !stored.contains_key(u)) {
                let dek = DataKey::generate().map_err(|e| KeyError::Unavailable(e.to_string()))?;
                let wrapped = self.provider.wrap(*user, 1, &dek).await?;
                let key = Arc::new(UserKey {
                    version: wrapped.key_version,
                    key: dek,
                });
                found.insert(*user, Ok(key.clone()));
                new.keys.push((wrapped, key));
            }
        }
        let existing: Vec<Uuid> = misses
            .into_iter()
            .filter(|u| !found.contains_key(u))
            .collect();
        self.unwrap_stored(existing.iter(), &mut stored, &mut found)
            .await?;
        Ok((found, new))
    }

    /// Stores the keys `prepare` made. Another worker may have stored a key first: the stored
    /// one wins, and is returned for each such user (whatever was encrypted under ours must be
    /// encrypted again under it). The keys that were stored are cached.
    pub async fn store_new(&self, new: NewKeys) -> Result<KeyLookup, KeyError> {
        let mut lost = KeyLookup::new();
        if new.keys.is_empty() {
            return Ok(lost);
        }
        let mut ours: HashMap<Uuid, (Vec<u8>, Arc<UserKey>)> = HashMap::new();
        let mut wrapped = Vec::with_capacity(new.keys.len());
        for (w, key) in new.keys {
            ours.insert(w.user_id, (w.wrapped_key.clone(), key));
            wrapped.push(w);
        }
        let mut winners = HashMap::new();
        for winner in self.store.insert_user_keys(wrapped).await? {
            let user = winner.user_id;
            match ours.remove(&user) {
                Some((mine, key)) if winner.wrapped_key == mine => {
                    self.cache.lock().expect("key cache lock").put(user, key);
                }
                _ => {
                    winners.insert(user, winner);
                }
            }
        }
        let users: Vec<Uuid> = winners.keys().copied().collect();
        self.unwrap_stored(users.iter(), &mut winners, &mut lost)
            .await?;
        Ok(lost)
    }

    /// Unwraps the stored keys of `users` into `found` (and the cache).
    async fn unwrap_stored<'a>(
        &self,
        users: impl Iterator<Item = &'a Uuid>,
        stored: &mut HashMap<Uuid, WrappedUserKey>,
        found: &mut KeyLookup,
    ) -> Result<(), KeyError> {
        for user in users {
            let Some(wrapped) = stored.remove(user) else {
                continue;
            };
            match self.provider.unwrap(&wrapped).await {
                Ok(dek) => self.remember(*user, wrapped.key_version, dek, found),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    found.insert(*user, Err(e.to_string()));
                }
            }
        }
        Ok(())
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
