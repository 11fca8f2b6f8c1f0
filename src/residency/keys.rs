//! The key provider port over several zones' providers: a user's data key is wrapped and
//! unwrapped only by the key provider of the user's zone, and their email's blind index is
//! keyed by that zone's blind-index key.

use super::Placement;
use crate::crypto::{BlindIndexKey, DataKey};
use crate::keys::{KeyError, KeyProvider, WrappedUserKey};
use async_trait::async_trait;
use std::sync::Arc;
use uuid::Uuid;

pub struct ZonedKeys {
    placement: Arc<Placement>,
    /// Per zone, in the placement's order.
    providers: Vec<Arc<dyn KeyProvider>>,
}

impl ZonedKeys {
    pub fn new(placement: Arc<Placement>, providers: Vec<Arc<dyn KeyProvider>>) -> Self {
        assert_eq!(
            placement.names().len(),
            providers.len(),
            "a provider per zone"
        );
        Self {
            placement,
            providers,
        }
    }
}

#[async_trait]
impl KeyProvider for ZonedKeys {
    async fn check(&self) -> Result<String, String> {
        self.placement
            .check_each(&self.providers, |k| k.check())
            .await
    }

    async fn wrap(
        &self,
        user_id: Uuid,
        key_version: u32,
        dek: &DataKey,
    ) -> Result<WrappedUserKey, KeyError> {
        let zones = self.placement.place([(user_id, None)]).await?;
        self.providers[zones[&user_id]]
            .wrap(user_id, key_version, dek)
            .await
    }

    async fn unwrap(&self, key: &WrappedUserKey) -> Result<DataKey, KeyError> {
        let zones = self.placement.place([(key.user_id, None)]).await?;
        self.providers[zones[&key.user_id]].unwrap(key).await
    }

    /// The default zone's.
    fn blind_index(&self) -> &BlindIndexKey {
        self.providers[0].blind_index()
    }

    fn blind_index_for(&self, user: Uuid) -> &BlindIndexKey {
        let zone = self.placement.known(&user).unwrap_or(0);
        self.providers[zone].blind_index()
    }

    fn blind_indexes(&self) -> Vec<&BlindIndexKey> {
        self.providers.iter().map(|p| p.blind_index()).collect()
    }

    fn calls(&self) -> u64 {
        self.providers.iter().map(|p| p.calls()).sum()
    }
}
