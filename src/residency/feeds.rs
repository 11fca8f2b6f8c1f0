//! What the zoned dead-letter sink and segment feed share: the pipeline's sink plus the zones
//! that have one of their own, and a batch split by the sink each item goes to.

use futures::future::try_join_all;
use std::future::Future;
use std::sync::Arc;

pub(super) struct ZoneFeeds<T: ?Sized> {
    /// The pipeline's sink: the default zone's, and every zone's without its own.
    default: Arc<T>,
    /// The zones with a sink of their own.
    zones: Vec<(String, Arc<T>)>,
}

impl<T: ?Sized> ZoneFeeds<T> {
    pub(super) fn new(default: Arc<T>, zones: Vec<(String, Arc<T>)>) -> Self {
        Self { default, zones }
    }

    /// The zones with a sink of their own, with its zone's name.
    pub(super) fn zones(&self) -> impl Iterator<Item = &(String, Arc<T>)> {
        self.zones.iter()
    }

    pub(super) fn default(&self) -> &Arc<T> {
        &self.default
    }

    /// Sends each item to the sink of the zone `zone_of` names (the pipeline's sink when that
    /// zone has none, or when no zone is named), the sinks at once.
    pub(super) async fn send<'a, I, E, F, Fut>(
        &'a self,
        items: Vec<I>,
        zone_of: impl Fn(&I) -> Option<&str>,
        send: F,
    ) -> Result<(), E>
    where
        F: Fn(&'a Arc<T>, Vec<I>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut parts: Vec<Vec<I>> = std::iter::repeat_with(Vec::new)
            .take(self.zones.len() + 1)
            .collect();
        for item in items {
            let sink = zone_of(&item)
                .and_then(|zone| self.zones.iter().position(|(name, _)| name == zone))
                .map_or(0, |i| i + 1);
            parts[sink].push(item);
        }
        try_join_all(
            parts
                .into_iter()
                .enumerate()
                .filter(|(_, part)| !part.is_empty())
                .map(|(i, part)| match i {
                    0 => send(&self.default, part),
                    i => send(&self.zones[i - 1].1, part),
                }),
        )
        .await?;
        Ok(())
    }
}
