//! Data residency: each user's profile, keys and index document stay in the user's zone.
//!
//! A pipeline file with `residency.zones` has one store, index and key provider per zone. The
//! adapters here ([`ZonedStore`], [`ZonedIndex`], [`ZonedKeys`]) implement the same ports by
//! handing each user's work to the user's zone only, so the stages and the privacy operations
//! run unchanged. Which zone is a user's is the [`Placement`]'s to say: the zone whose store
//! holds the user (a profile row, a fence or a key), else, for a user no zone holds yet, the
//! zone their first change reached the store with derived (`residency_zone`), else the default
//! zone. A change of zone is only ever an explicit migration.

mod dead_letters;
mod feeds;
mod index;
mod keys;
mod segment_changes;
mod store;

pub use dead_letters::ZonedDeadLetters;
pub use index::ZonedIndex;
pub use keys::ZonedKeys;
pub use segment_changes::ZonedSegmentChanges;
pub use store::ZonedStore;

use crate::stores::{ProfileStore, StoreError};
use lru::LruCache;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// A zone's position in [`Placement::names`]; the default zone is 0.
pub type Zone = usize;

/// Where each user's data lives, decided once and then read back from the zones' stores.
pub struct Placement {
    names: Vec<String>,
    stores: Vec<Arc<dyn ProfileStore>>,
    /// Users whose zone is known: found in a zone's store, or placed by this worker and about
    /// to be written there. Evicting one is harmless: a stored user is found again, and an
    /// unstored one is placed again from the same derived zone.
    known: Mutex<LruCache<Uuid, Zone>>,
}

impl Placement {
    /// `zones`: the default zone first.
    pub fn new(zones: Vec<(String, Arc<dyn ProfileStore>)>, cache_entries: usize) -> Self {
        let (names, stores) = zones.into_iter().unzip();
        Self {
            names,
            stores,
            known: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_entries.max(1)).expect("at least one"),
            )),
        }
    }

    /// The zones' names, the default zone first.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, zone: Zone) -> &str {
        &self.names[zone]
    }

    /// Every zone's adapter checked in zone order, each answer named by its zone; the first
    /// failure, named too, stops the check (`check` of the zoned store, index and keys).
    pub(crate) async fn check_each<'a, T: ?Sized + 'a, Fut>(
        &self,
        adapters: impl IntoIterator<Item = &'a Arc<T>>,
        check: impl Fn(&'a Arc<T>) -> Fut,
    ) -> Result<String, String>
    where
        Fut: std::future::Future<Output = Result<String, String>>,
    {
        let mut said = Vec::new();
        for (zone, adapter) in adapters.into_iter().enumerate() {
            let name = self.name(zone);
            said.push(
                check(adapter)
                    .await
                    .map(|ok| format!("zone {name}: {ok}"))
                    .map_err(|e| format!("zone {name}: {e}"))?,
            );
        }
        Ok(said.join("; "))
    }

    /// The zone called `name`, if it is one of the configured zones.
    pub fn zone_named(&self, name: &str) -> Option<Zone> {
        self.names.iter().position(|n| n == name)
    }

    pub(crate) fn store(&self, zone: Zone) -> &Arc<dyn ProfileStore> {
        &self.stores[zone]
    }

    /// The zone this worker knows for `user`, without asking any store.
    pub fn known(&self, user: &Uuid) -> Option<Zone> {
        self.known
            .lock()
            .expect("placement lock")
            .get(user)
            .copied()
    }

    /// The zone of each of `users` that some zone's store holds. Users no zone holds are left
    /// out. A user held by two zones (a migration that stopped half way) is an error naming
    /// both: `profile-sync zones move` finishes it.
    pub async fn locate(&self, users: &[Uuid]) -> Result<HashMap<Uuid, Zone>, StoreError> {
        let mut found = HashMap::with_capacity(users.len());
        let mut unknown = Vec::new();
        {
            let mut known = self.known.lock().expect("placement lock");
            for user in users {
                match known.get(user) {
                    Some(zone) => {
                        found.insert(*user, *zone);
                    }
                    None => unknown.push(*user),
                }
            }
        }
        if unknown.is_empty() {
            return Ok(found);
        }
        unknown.sort_unstable();
        unknown.dedup();
        let held = futures::future::try_join_all(
            self.stores
                .iter()
                .map(|store| holds(store.as_ref(), &unknown)),
        )
        .await?;
        let mut known = self.known.lock().expect("placement lock");
        for user in unknown {
            let mut zones = (0..self.names.len()).filter(|z| held[*z].contains(&user));
            let Some(zone) = zones.next() else { continue };
            if let Some(second) = zones.next() {
                return Err(StoreError::Failed(format!(
                    "user {user} is held by zones {} and {}: a zone migration stopped half way; run `profile-sync zones move {user} --to <zone>` to finish it",
                    self.names[zone], self.names[second]
                )));
            }
            known.put(user, zone);
            found.insert(user, zone);
        }
        Ok(found)
    }

    /// The zone of each user: the one holding them, else the configured zone named by their
    /// hint (the derived `residency_zone` of the change about to be stored), else the default
    /// zone. Users placed here are remembered, so that their key and their record follow.
    pub async fn place<'a>(
        &self,
        users: impl IntoIterator<Item = (Uuid, Option<&'a str>)>,
    ) -> Result<HashMap<Uuid, Zone>, StoreError> {
        let users: Vec<(Uuid, Option<&str>)> = users.into_iter().collect();
        let ids: Vec<Uuid> = users.iter().map(|(u, _)| *u).collect();
        let mut zones = self.locate(&ids).await?;
        let mut known = self.known.lock().expect("placement lock");
        for (user, hint) in users {
            if zones.contains_key(&user) {
                continue;
            }
            let zone = hint.and_then(|h| self.zone_named(h)).unwrap_or(0);
            known.put(user, zone);
            zones.insert(user, zone);
        }
        Ok(zones)
    }

    /// Forgets users (after a migration, so that the next look reads the stores again).
    pub fn forget(&self, users: &[Uuid]) {
        let mut known = self.known.lock().expect("placement lock");
        for user in users {
            known.pop(user);
        }
    }

    /// `items` grouped by the zone of the user each names, the positions kept: per zone, the
    /// items' positions in `items`. Every user must have a zone in `zones`.
    pub(crate) fn split<T>(
        zones: &HashMap<Uuid, Zone>,
        items: &[T],
        user: impl Fn(&T) -> Uuid,
        default: Zone,
    ) -> Vec<(Zone, Vec<usize>)> {
        let mut by_zone: Vec<(Zone, Vec<usize>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let zone = zones.get(&user(item)).copied().unwrap_or(default);
            match by_zone.iter_mut().find(|(z, _)| *z == zone) {
                Some((_, positions)) => positions.push(i),
                None => by_zone.push((zone, vec![i])),
            }
        }
        by_zone
    }
}

/// The users of `users` that `store` holds: a profile row (live, a fence or a tombstone) or a key.
async fn holds(store: &dyn ProfileStore, users: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
    let (rows, keys) =
        futures::future::try_join(store.segment_sets(users), store.user_keys(users)).await?;
    Ok(rows.into_keys().chain(keys.into_keys()).collect())
}
