//! Seal: encrypt the payload of every dead letter before it leaves the worker, so that the
//! dead-letter sink holds no plaintext PII. An event whose user is known is sealed under that
//! user's data key (an erasure shreds it with the rest of the user's data); one that did not
//! decode far enough to name its user, under the dead-letter key of the day, which retention
//! deletes after `dead_letter.retention_days`; one of an erased user is not kept at all.

use crate::crypto::{open_letter, seal_letter};
use crate::dead_letter::{DeadLetter, Sealing};
use crate::keys::{DataKeys, KeyError, KeyLookup};
use crate::stores::ProfileStore;
use chrono::{Days, NaiveDate};
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

/// Whose event a dead letter holds, as far as the pipeline got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The event did not decode far enough to name its user.
    Unknown,
    User(Uuid),
    /// The user was erased: nothing of the event is kept.
    Erased,
}

/// A dead letter before sealing: `letter.payload` is still empty, the event's bytes are here.
#[derive(Debug)]
pub struct Quarantined {
    pub letter: DeadLetter,
    pub plaintext: Vec<u8>,
    pub owner: Owner,
}

/// Why a sealed payload cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not kept: the user was erased")]
    Withheld,
    #[error("its key is gone (the user was erased, or the dead-letter key expired)")]
    Shredded,
    #[error("does not decrypt under its key: {0}")]
    Refused(String),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// The id the dead-letter key of `day` is stored under, beside the users' keys. Derived from
/// the day, so that retention can find the keys of past days without a list of them.
pub fn day_key_owner(day: NaiveDate) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("profile-sync/dead-letter-key/{day}").as_bytes(),
    )
}

/// How far before the retention cutoff `retention run` looks for day keys to delete: a
/// worker's day keys are found as long as retention runs at least once in this many days.
pub const DAY_KEY_LOOKBACK_DAYS: u64 = 3 * 366;

/// The owners of the day keys that expired by `cutoff` (the days before it), newest first.
pub fn expired_day_key_owners(cutoff: NaiveDate) -> Vec<(NaiveDate, Uuid)> {
    (1..=DAY_KEY_LOOKBACK_DAYS)
        .filter_map(|back| cutoff.checked_sub_days(Days::new(back)))
        .map(|day| (day, day_key_owner(day)))
        .collect()
}

pub struct LetterSealer {
    keys: Arc<DataKeys>,
    store: Arc<dyn ProfileStore>,
}

impl LetterSealer {
    pub fn new(keys: Arc<DataKeys>, store: Arc<dyn ProfileStore>) -> Self {
        Self { keys, store }
    }

    /// Seals every letter. Users without a key get one (stored before anything sealed under
    /// it leaves), so that a later erasure shreds their dead letters too; a user whose key is
    /// refused is sealed under the day key instead. Nothing is kept of an erased user's event
    /// (and no key is made for them). A transient key or store failure fails the call.
    /// The letters of users in `as_unknown` are sealed as if their user were unknown.
    pub async fn seal(
        &self,
        letters: &[Quarantined],
        today: NaiveDate,
        as_unknown: &HashSet<Uuid>,
    ) -> Result<Vec<DeadLetter>, KeyError> {
        let owner_of = |q: &Quarantined| match q.owner {
            Owner::User(u) if as_unknown.contains(&u) => Owner::Unknown,
            other => other,
        };
        let mut owners: Vec<Uuid> = letters
            .iter()
            .filter_map(|q| match owner_of(q) {
                Owner::User(u) => Some(u),
                _ => None,
            })
            .collect();
        owners.sort_unstable();
        owners.dedup();
        let erased = self.store.erasure_fences(&owners).await?;
        owners.retain(|u| !erased.contains_key(u));
        let day_owner = day_key_owner(today);
        owners.push(day_owner);
        let keys = self.keys.for_users(&owners, true).await?;
        letters
            .iter()
            .map(|q| {
                let owner = match owner_of(q) {
                    Owner::User(u) if erased.contains_key(&u) => Owner::Erased,
                    other => other,
                };
                Self::seal_one(q, owner, &keys, day_owner, today)
            })
            .collect()
    }

    fn seal_one(
        q: &Quarantined,
        owner: Owner,
        keys: &KeyLookup,
        day_owner: Uuid,
        today: NaiveDate,
    ) -> Result<DeadLetter, KeyError> {
        let mut letter = q.letter.clone();
        let user_key = match owner {
            Owner::Erased => {
                letter.sealing = Sealing::Withheld;
                letter.payload = Vec::new();
                return Ok(letter);
            }
            Owner::User(u) => keys.get(&u).and_then(|k| k.as_ref().ok()).map(|k| (u, k)),
            Owner::Unknown => None,
        };
        let (owner, key, sealing) = match user_key {
            Some((user_id, key)) => (
                user_id,
                key,
                Sealing::User {
                    user_id,
                    key_version: key.version,
                },
            ),
            None => {
                let key = match keys.get(&day_owner) {
                    Some(Ok(key)) => key,
                    Some(Err(reason)) => {
                        return Err(KeyError::Refused(format!(
                            "the dead-letter key of {today}: {reason}"
                        )))
                    }
                    None => {
                        return Err(KeyError::Refused(format!(
                            "no dead-letter key for {today} was made"
                        )))
                    }
                };
                (
                    day_owner,
                    key,
                    Sealing::Day {
                        day: today,
                        key_version: key.version,
                    },
                )
            }
        };
        letter.payload = seal_letter(&key.key, owner, key.version, &q.plaintext)
            .map_err(|e| KeyError::Unavailable(e.to_string()))?;
        letter.sealing = sealing;
        Ok(letter)
    }

    /// The original bytes of a sealed payload.
    pub async fn open(&self, sealing: Sealing, payload: &[u8]) -> Result<Vec<u8>, OpenError> {
        let (owner, version) = match sealing {
            Sealing::Withheld => return Err(OpenError::Withheld),
            Sealing::User {
                user_id,
                key_version,
            } => (user_id, key_version),
            Sealing::Day { day, key_version } => (day_key_owner(day), key_version),
        };
        let keys = self.keys.for_users(&[owner], false).await?;
        let key = match keys.get(&owner) {
            None => return Err(OpenError::Shredded),
            Some(Err(reason)) => return Err(OpenError::Refused(reason.clone())),
            Some(Ok(key)) if key.version != version => return Err(OpenError::Shredded),
            Some(Ok(key)) => key.clone(),
        };
        open_letter(&key.key, owner, version, payload)
            .map_err(|e| OpenError::Refused(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_keys_have_one_owner_per_day_and_expire_in_the_days_before_the_cutoff() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        assert_eq!(day_key_owner(day), day_key_owner(day));
        assert_ne!(day_key_owner(day), day_key_owner(day.succ_opt().unwrap()));
        let expired = expired_day_key_owners(day);
        assert_eq!(expired[0].0, day.pred_opt().unwrap());
        assert!(expired.iter().all(|(d, _)| *d < day));
        assert_eq!(expired.len() as u64, DAY_KEY_LOOKBACK_DAYS);
    }
}
