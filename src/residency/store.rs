//! The store port over several zones' stores: every call about users goes to each user's zone
//! only; calls about the whole store (counts, scans, members) visit every zone.

use super::{Placement, Zone};
use crate::event::ProtectedChange;
use crate::stores::{
    AuditRecord, ConsentRecord, ConsentState, ProfileStore, StoreCounts, StoreError, StoredProfile,
    StoredSegments, WrappedUserKey, WriteOutcome,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;

pub struct ZonedStore {
    placement: Arc<Placement>,
}

impl ZonedStore {
    pub fn new(placement: Arc<Placement>) -> Self {
        Self { placement }
    }

    fn zones(&self) -> impl Iterator<Item = (Zone, &Arc<dyn ProfileStore>)> {
        (0..self.placement.names().len()).map(|z| (z, self.placement.store(z)))
    }

    /// The store of the zone holding `user`, if any holds them.
    async fn holder(&self, user: Uuid) -> Result<Option<&Arc<dyn ProfileStore>>, StoreError> {
        Ok(self
            .placement
            .locate(&[user])
            .await?
            .get(&user)
            .map(|z| self.placement.store(*z)))
    }

    /// The store `user` is written to: the zone holding them, else the default zone.
    async fn home(&self, user: Uuid) -> Result<&Arc<dyn ProfileStore>, StoreError> {
        let zones = self.placement.place([(user, None)]).await?;
        Ok(self.placement.store(zones[&user]))
    }

    /// A per-user read, asked of each user's zone and merged; users no zone holds have nothing.
    async fn per_user<T, F>(&self, users: &[Uuid], read: F) -> Result<HashMap<Uuid, T>, StoreError>
    where
        F: for<'a> Fn(
            &'a dyn ProfileStore,
            Vec<Uuid>,
        )
            -> futures::future::BoxFuture<'a, Result<HashMap<Uuid, T>, StoreError>>,
    {
        let zones = self.placement.locate(users).await?;
        let held: Vec<Uuid> = users
            .iter()
            .filter(|u| zones.contains_key(u))
            .copied()
            .collect();
        let groups = Placement::split(&zones, &held, |u| *u, 0);
        let parts = try_join_all(groups.into_iter().map(|(zone, positions)| {
            let users = positions.into_iter().map(|i| held[i]).collect();
            read(self.placement.store(zone).as_ref(), users)
        }))
        .await?;
        Ok(parts.into_iter().flatten().collect())
    }
}

/// `zone:cursor` of a scan over every zone in turn.
fn zone_cursor(cursor: Option<String>) -> Result<(Zone, Option<String>), StoreError> {
    let Some(cursor) = cursor else {
        return Ok((0, None));
    };
    let (zone, inner) = cursor
        .split_once(':')
        .and_then(|(z, rest)| Some((z.parse().ok()?, rest)))
        .ok_or_else(|| StoreError::Failed(format!("not a cursor of this store: {cursor:?}")))?;
    Ok((zone, (!inner.is_empty()).then(|| inner.to_string())))
}

#[async_trait]
impl ProfileStore for ZonedStore {
    async fn check(&self) -> Result<String, String> {
        self.placement
            .check_each(&self.placement.stores, |s| s.check())
            .await
    }

    async fn apply(&self, changes: &[ProtectedChange]) -> Result<Vec<WriteOutcome>, StoreError> {
        let zones = self
            .placement
            .place(changes.iter().map(|c| {
                let hint = c.record.as_ref().map(|r| r.region.residency_zone.as_str());
                (c.user_id, hint)
            }))
            .await?;
        let groups = Placement::split(&zones, changes, |c| c.user_id, 0);
        let results = try_join_all(groups.iter().map(|(zone, positions)| {
            let part: Vec<ProtectedChange> =
                positions.iter().map(|i| changes[*i].clone()).collect();
            let store = self.placement.store(*zone).clone();
            async move { store.apply(&part).await }
        }))
        .await?;
        let mut outcomes = vec![WriteOutcome::Stale; changes.len()];
        for ((_, positions), result) in groups.iter().zip(results) {
            for (i, outcome) in positions.iter().zip(result) {
                outcomes[*i] = outcome;
            }
        }
        Ok(outcomes)
    }

    async fn get(&self, user: Uuid) -> Result<Option<StoredProfile>, StoreError> {
        match self.holder(user).await? {
            Some(store) => store.get(user).await,
            None => Ok(None),
        }
    }

    async fn segment_sets(
        &self,
        users: &[Uuid],
    ) -> Result<HashMap<Uuid, StoredSegments>, StoreError> {
        self.per_user(users, |s, u| {
            Box::pin(async move { s.segment_sets(&u).await })
        })
        .await
    }

    async fn segment_members(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut members = BTreeMap::new();
        for (_, store) in self.zones() {
            for (segment, count) in store.segment_members().await? {
                *members.entry(segment).or_default() += count;
            }
        }
        Ok(members)
    }

    async fn find_by_email_index(&self, email_index: &str) -> Result<Option<Uuid>, StoreError> {
        for (_, store) in self.zones() {
            if let Some(user) = store.find_by_email_index(email_index).await? {
                return Ok(Some(user));
            }
        }
        Ok(None)
    }

    async fn user_keys(&self, users: &[Uuid]) -> Result<HashMap<Uuid, WrappedUserKey>, StoreError> {
        self.per_user(users, |s, u| Box::pin(async move { s.user_keys(&u).await }))
            .await
    }

    async fn insert_user_keys(
        &self,
        keys: Vec<WrappedUserKey>,
    ) -> Result<Vec<WrappedUserKey>, StoreError> {
        let zones = self
            .placement
            .place(keys.iter().map(|k| (k.user_id, None)))
            .await?;
        let groups = Placement::split(&zones, &keys, |k| k.user_id, 0);
        let parts = try_join_all(groups.into_iter().map(|(zone, positions)| {
            let part = positions.into_iter().map(|i| keys[i].clone()).collect();
            self.placement.store(zone).insert_user_keys(part)
        }))
        .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.home(record.user_id).await?.append_audit(record).await
    }

    async fn audit_trail(&self, user: Uuid) -> Result<Vec<AuditRecord>, StoreError> {
        // Every zone: an access to a user no zone held yet is recorded in the default zone.
        let mut trail = Vec::new();
        for (_, store) in self.zones() {
            trail.extend(store.audit_trail(user).await?);
        }
        trail.sort_by_key(|r| r.at);
        Ok(trail)
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        let mut total = StoreCounts::default();
        for (_, store) in self.zones() {
            let c = store.counts().await?;
            total.live += c.live;
            total.deleted += c.deleted;
        }
        Ok(total)
    }

    async fn scan(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<StoredProfile>, Option<String>), StoreError> {
        let (zone, inner) = zone_cursor(cursor)?;
        let Some(store) = (zone < self.placement.names().len()).then(|| self.placement.store(zone))
        else {
            return Ok((Vec::new(), None));
        };
        let (page, next) = store.scan(inner, limit).await?;
        let next = match next {
            Some(c) => Some(format!("{zone}:{c}")),
            None if zone + 1 < self.placement.names().len() => Some(format!("{}:", zone + 1)),
            None => None,
        };
        Ok((page, next))
    }

    async fn append_consent(&self, record: &ConsentRecord) -> Result<(), StoreError> {
        self.home(record.user_id)
            .await?
            .append_consent(record)
            .await
    }

    async fn consent_history(&self, user: Uuid) -> Result<Vec<ConsentRecord>, StoreError> {
        match self.holder(user).await? {
            Some(store) => store.consent_history(user).await,
            None => Ok(Vec::new()),
        }
    }

    async fn consent_states(
        &self,
        users: &[Uuid],
    ) -> Result<HashMap<Uuid, ConsentState>, StoreError> {
        self.per_user(users, |s, u| {
            Box::pin(async move { s.consent_states(&u).await })
        })
        .await
    }

    async fn erase(&self, user: Uuid, version: i64, at: DateTime<Utc>) -> Result<i64, StoreError> {
        self.home(user).await?.erase(user, version, at).await
    }

    async fn scan_user_keys(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<WrappedUserKey>, Option<String>), StoreError> {
        let (zone, inner) = zone_cursor(cursor)?;
        let Some(store) = (zone < self.placement.names().len()).then(|| self.placement.store(zone))
        else {
            return Ok((Vec::new(), None));
        };
        let (page, next) = store.scan_user_keys(inner, limit).await?;
        let next = match next {
            Some(c) => Some(format!("{zone}:{c}")),
            None if zone + 1 < self.placement.names().len() => Some(format!("{}:", zone + 1)),
            None => None,
        };
        Ok((page, next))
    }

    async fn replace_user_key(
        &self,
        old: &WrappedUserKey,
        new: &WrappedUserKey,
    ) -> Result<bool, StoreError> {
        match self.holder(old.user_id).await? {
            Some(store) => store.replace_user_key(old, new).await,
            None => Ok(false),
        }
    }

    async fn shred_keys(&self, owners: &[Uuid]) -> Result<u64, StoreError> {
        let mut shredded = 0;
        for (_, store) in self.zones() {
            shredded += store.shred_keys(owners).await?;
        }
        Ok(shredded)
    }

    async fn erasure_fences(&self, users: &[Uuid]) -> Result<HashMap<Uuid, i64>, StoreError> {
        self.per_user(users, |s, u| {
            Box::pin(async move { s.erasure_fences(&u).await })
        })
        .await
    }

    async fn remove_user(&self, user: Uuid) -> Result<u64, StoreError> {
        let mut removed = 0;
        for (_, store) in self.zones() {
            removed += store.remove_user(user).await?;
        }
        self.placement.forget(&[user]);
        Ok(removed)
    }

    async fn expire_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut expired = 0;
        for (_, store) in self.zones() {
            expired += store.expire_audit(before).await?;
        }
        Ok(expired)
    }
}
