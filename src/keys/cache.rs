//! A bounded cache of unwrapped data keys: least recently used out, and entries expire after
//! a maximum age or number of uses, whichever comes first.

use super::UserKey;
use crate::config::KeyCacheConfig;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub(super) struct KeyCache {
    entries: LruCache<Uuid, Entry>,
    max_age: Duration,
    max_uses: u64,
    pub hits: u64,
    pub misses: u64,
}

struct Entry {
    key: Arc<UserKey>,
    loaded: Instant,
    uses: u64,
}

impl KeyCache {
    pub fn new(config: &KeyCacheConfig) -> Self {
        Self {
            entries: LruCache::new(
                NonZeroUsize::new(config.max_entries.max(1)).expect("at least one"),
            ),
            max_age: Duration::from_secs(config.max_age_secs),
            max_uses: config.max_uses.max(1),
            hits: 0,
            misses: 0,
        }
    }

    /// The cached key, counting one use; `None` when absent, too old or used up.
    pub fn get(&mut self, user: &Uuid) -> Option<Arc<UserKey>> {
        let fresh = match self.entries.get_mut(user) {
            Some(e) if e.loaded.elapsed() < self.max_age && e.uses < self.max_uses => {
                e.uses += 1;
                Some(e.key.clone())
            }
            Some(_) => None,
            None => {
                self.misses += 1;
                return None;
            }
        };
        match fresh {
            Some(k) => {
                self.hits += 1;
                Some(k)
            }
            None => {
                self.entries.pop(user);
                self.misses += 1;
                None
            }
        }
    }

    pub fn put(&mut self, user: Uuid, key: Arc<UserKey>) {
        self.entries.put(
            user,
            Entry {
                key,
                loaded: Instant::now(),
                uses: 1,
            },
        );
    }

    pub fn forget(&mut self, user: &Uuid) {
        self.entries.pop(user);
    }
}
