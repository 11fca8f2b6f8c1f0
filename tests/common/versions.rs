//! The version rule as a property, for every store: whatever the delivery order, the
//! duplicates and the batching of one user's changes, the highest version is what stays.

use profile_sync::event::{Operation, ProtectedChange, ProtectedRecord, Region};
use profile_sync::stores::ProfileStore;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Versions delivered (in this order, with repeats), whether each version is a delete (by
/// `version % 30`: the same version always carries the same content, as a real producer's
/// would), and how many changes go to the store per write.
pub fn deliveries() -> impl Strategy<Value = (Vec<i64>, Vec<bool>, usize)> {
    (
        proptest::collection::vec(1i64..40, 1..30),
        proptest::collection::vec(any::<bool>(), 30),
        1usize..8,
    )
}

fn change(user: uuid::Uuid, version: i64, delete: bool) -> ProtectedChange {
    let record = (!delete).then(|| ProtectedRecord {
        event_id: uuid::Uuid::new_v4(),
        source: format!("v{version}"),
        occurred_at: chrono::Utc::now(),
        profile: Default::default(),
        encrypted: Default::default(),
        key_version: 1,
        region: Region::unknown(),
        segments: vec![],
        segment_history: None,
        email_index: None,
    });
    ProtectedChange {
        user_id: user,
        version,
        operation: if delete {
            Operation::Delete
        } else {
            Operation::Upsert
        },
        occurred_at: chrono::Utc::now(),
        record,
    }
}

/// Writes a fresh user's `deliveries` to `store`, then checks that the stored profile is the
/// highest version's.
pub fn the_highest_version_wins(
    runtime: &tokio::runtime::Runtime,
    store: &dyn ProfileStore,
    (versions, deletes, batch): (Vec<i64>, Vec<bool>, usize),
) -> Result<(), TestCaseError> {
    let user = uuid::Uuid::new_v4();
    let changes: Vec<_> = versions
        .iter()
        .map(|v| change(user, *v, deletes[*v as usize % 30]))
        .collect();
    runtime.block_on(async {
        for chunk in changes.chunks(batch) {
            store.apply(chunk).await.unwrap();
        }
    });
    let max = *versions.iter().max().unwrap();
    let stored = runtime.block_on(store.get(user)).unwrap().unwrap();
    prop_assert_eq!(stored.version, max);
    prop_assert_eq!(stored.record.is_none(), deletes[max as usize % 30]);
    if let Some(record) = stored.record {
        prop_assert_eq!(record.source, format!("v{max}"));
    }
    Ok(())
}
