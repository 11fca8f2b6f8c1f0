//! The embedded canonical store: one SQLite file (WAL mode).

use super::{
    consent_state, AuditRecord, ConsentRecord, ConsentState, ProfileStore, StoreCounts, StoreError,
    StoredProfile, StoredSegments, WriteOutcome,
};
use crate::event::{Operation, ProtectedChange, ProtectedRecord, SegmentHistory};
use crate::stores::WrappedUserKey;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
mod connection;
use connection::ConnectionThread;
use uuid::Uuid;

/// Connection settings, then the schema. `secure_delete` zeroes what a write frees (an older
/// record, an erased user's key and ciphertexts) instead of leaving it in free space, where it
/// could be read back from the file's bytes after an erasure; see `erase` for the WAL. The page cache (32 MiB, SQLite's default is 2 MiB)
/// holds the pages a few batches of random user ids touch: with the default, batches read their
/// pages back from the OS (`pread` copies were a fifth of the store's samples). Its effect on
/// throughput was not measurable while derive was the bottleneck (BENCHMARKS.md, issue 16).
/// The WAL is checkpointed every 10,000 pages (40 MB) instead of SQLite's 1,000: a batch of
/// 2,000 random users dirties ~2,000 pages, so the default checkpointed at every commit and
/// copied pages that the next batches rewrite anyway (a third of the store's CPU; with 10,000,
/// the store's CPU per event fell by about a quarter, BENCHMARKS.md). An erasure still
/// checkpoints and truncates the WAL at once.
const SCHEMA: &str = r#"
PRAGMA journal_mode = WAL;
PRAGMA wal_autocheckpoint = 10000;
PRAGMA synchronous = NORMAL;
PRAGMA cache_size = -32768;
PRAGMA secure_delete = ON;
CREATE TABLE IF NOT EXISTS profiles (
    user_id     TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    deleted     INTEGER NOT NULL,
    record      TEXT,
    email_index TEXT,
    segment_history TEXT,
    updated_at  TEXT NOT NULL,
    erased_at   TEXT
);
CREATE INDEX IF NOT EXISTS profiles_by_email_index ON profiles(email_index) WHERE email_index IS NOT NULL;
CREATE INDEX IF NOT EXISTS profiles_erased ON profiles(user_id, version) WHERE erased_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS user_keys (
    user_id       TEXT PRIMARY KEY,
    key_version   INTEGER NOT NULL,
    provider      TEXT NOT NULL,
    kek_id        TEXT NOT NULL,
    encrypted_kek BLOB NOT NULL,
    wrapped_key   BLOB NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id         TEXT PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    fields     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_user ON audit(user_id, at);
CREATE TABLE IF NOT EXISTS consents (
    user_id        TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    granted        INTEGER NOT NULL,
    policy_version TEXT NOT NULL,
    source         TEXT NOT NULL,
    occurred_at    TEXT NOT NULL,
    version        INTEGER NOT NULL,
    PRIMARY KEY (user_id, event_id, purpose)
);
CREATE TRIGGER IF NOT EXISTS audit_is_append_only BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
"#;

/// Two connections to one file: the writer, and a reader for everything that only reads (WAL
/// lets it read the last committed state while the writer writes), so that the next batch's
/// fences, consents and keys are read while the store writes the previous one.
///
/// An upsert or delete never clears an erasure unless the store was opened
/// [`reviving_erased`](Self::reviving_erased): the check is made in the write's own transaction,
/// so an erasure that lands while a batch is on its way is not undone by it.
pub struct SqliteStore {
    conn: ConnectionThread,
    reader: ConnectionThread,
    revive_erased: bool,
}

/// A transaction that reads and then writes. It takes the write lock at BEGIN, so a second
/// process's batch is waited out by the busy handler; a deferred one would read a snapshot
/// first and then fail at once with "database is locked" when the other process commits.
fn write_transaction(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)
}

fn failed(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Failed(other.to_string()),
    }
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Failed(format!("cannot open {}: {e}", path.display())))?;
        // Long enough to wait out another process's batch (several workers may share a file
        // on one machine), short enough that a stuck lock is reported.
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(failed)?;
        // The busy handler does not cover every lock at start (a schema or journal-mode change
        // beside another process's transaction answers "locked" at once): wait those out too.
        let started = std::time::Instant::now();
        loop {
            match conn.execute_batch(SCHEMA).map_err(failed) {
                Err(StoreError::Unavailable(_)) if started.elapsed().as_secs() < 30 => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => break other?,
            }
        }
        add_segment_history_column(&conn)?;
        let reader = Connection::open(path)
            .map_err(|e| StoreError::Failed(format!("cannot open {}: {e}", path.display())))?;
        reader
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(failed)?;
        // The reader's page cache is the writer's size: it reads the same pages of every
        // batch's users (fences, consents, keys, the segment feed's sets), and with SQLite's
        // default 2 MiB it read them back from the OS each time (`readDbPage` in perf).
        reader
            .execute_batch("PRAGMA query_only = 1; PRAGMA cache_size = -32768;")
            .map_err(failed)?;
        Ok(Self {
            conn: ConnectionThread::start("sqlite-writer", conn)?,
            reader: ConnectionThread::start("sqlite-reader", reader)?,
            revive_erased: false,
        })
    }

    /// Lets a change newer than an erasure fence store the user anew (the pipeline's
    /// `privacy.erased_user_events: accept`); by default such a change is refused.
    pub fn reviving_erased(mut self, revive: bool) -> Self {
        self.revive_erased = revive;
        self
    }

    /// Runs `f` with the writer connection, on its thread.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.conn.run(f).await
    }

    /// Runs `f` with the reader connection, on its thread.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.reader.run(f).await
    }
}

/// Files written before the segment history had a column of its own get it (NULL: such rows
/// are read as if written with the feed off, from the record's segments).
fn add_segment_history_column(conn: &Connection) -> Result<(), StoreError> {
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('profiles') WHERE name = 'segment_history'")
        .and_then(|mut stmt| stmt.exists([]))
        .map_err(failed)?;
    if !has_column {
        conn.execute_batch("ALTER TABLE profiles ADD COLUMN segment_history TEXT")
            .map_err(failed)?;
    }
    Ok(())
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// A batch's user ids as a JSON array, for `… IN (SELECT value FROM json_each(?))`: one
/// statement per batch instead of one per user.
fn json_ids(users: &[Uuid]) -> String {
    serde_json::to_string(&users.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .expect("strings serialise")
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| StoreError::Failed("a stored user id is not a UUID".into()))
}

/// The `record` and `segment_history` columns as the stored record.
fn stored_record(
    user_id: Uuid,
    record: Option<String>,
    history: Option<String>,
) -> Result<Option<ProtectedRecord>, StoreError> {
    let Some(text) = record else {
        return Ok(None);
    };
    let mut record = serde_json::from_str::<ProtectedRecord>(&text).map_err(|e| {
        StoreError::Failed(format!(
            "stored record of user {user_id} does not parse: {e}"
        ))
    })?;
    record.segment_history = history
        .map(|h| serde_json::from_str(&h))
        .transpose()
        .map_err(|_| {
            StoreError::Failed(format!(
                "stored segment history of user {user_id} does not parse"
            ))
        })?;
    Ok(Some(record))
}

fn stored_profile(
    user_id: Uuid,
    version: i64,
    (record, history): (Option<String>, Option<String>),
    updated_at: &str,
    erased_at: Option<&str>,
) -> Result<StoredProfile, StoreError> {
    let record = stored_record(user_id, record, history)?;
    Ok(StoredProfile {
        user_id,
        version,
        record,
        updated_at: parse_ts(updated_at),
        erased_at: erased_at.map(parse_ts),
    })
}

fn consents_of(conn: &Connection, user: Uuid) -> Result<Vec<ConsentRecord>, StoreError> {
    consents_where(conn, "user_id = ?1", &user.to_string())
}

/// The consent records of the users `filter` (an SQL condition on `user_id` with one
/// parameter, `key`) selects, in each user's order: version, then purpose.
fn consents_where(
    conn: &Connection,
    filter: &str,
    key: &str,
) -> Result<Vec<ConsentRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT user_id, event_id, purpose, granted, policy_version, source, occurred_at, version
             FROM consents WHERE {filter} ORDER BY user_id, version, purpose"
        ))
        .map_err(failed)?;
    let rows = stmt
        .query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })
        .map_err(failed)?;
    let mut out = Vec::new();
    for row in rows {
        let (user, event_id, purpose, granted, policy_version, source, occurred_at, version) =
            row.map_err(failed)?;
        out.push(ConsentRecord {
            user_id: parse_uuid(&user)?,
            purpose,
            granted,
            policy_version,
            source,
            occurred_at: parse_ts(&occurred_at),
            version,
            event_id: parse_uuid(&event_id)?,
        });
    }
    Ok(out)
}

/// The columns [`key_from_row`] reads, in its order.
const SELECT_KEYS: &str = "SELECT user_id, key_version, provider, kek_id, encrypted_kek, wrapped_key, created_at FROM user_keys";

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, WrappedUserKey)> {
    let user: String = row.get(0)?;
    let created: String = row.get(6)?;
    Ok((
        user,
        WrappedUserKey {
            user_id: Uuid::nil(),
            key_version: row.get(1)?,
            provider: row.get(2)?,
            kek_id: row.get(3)?,
            encrypted_kek: row.get(4)?,
            wrapped_key: row.get(5)?,
            created_at: parse_ts(&created),
        },
    ))
}

#[async_trait]
impl ProfileStore for SqliteStore {
    async fn apply(&self, changes: &[ProtectedChange]) -> Result<Vec<WriteOutcome>, StoreError> {
        type Row = (
            String,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
        );
        let rows: Vec<Row> = changes
            .iter()
            .map(|c| {
                let record = c
                    .record
                    .as_ref()
                    .filter(|_| c.operation == Operation::Upsert);
                (
                    c.user_id.to_string(),
                    c.version,
                    record.map(|r| serde_json::to_string(r).expect("serialisable")),
                    record
                        .and_then(|r| r.segment_history.as_ref())
                        .map(|h| serde_json::to_string(h).expect("serialisable")),
                    c.record.as_ref().and_then(|r| r.email_index.clone()),
                    ts(&c.occurred_at),
                )
            })
            .collect();
        let revive_erased = self.revive_erased;
        self.with_conn(move |conn| {
            let tx = write_transaction(conn)?;
            let mut outcomes = Vec::with_capacity(rows.len());
            {
                // One statement reads the stored versions of the whole batch; the decisions
                // then follow in order, each applied change becoming the version to beat.
                let ids = serde_json::to_string(&rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
                    .expect("strings serialise");
                let mut current = tx
                    .prepare_cached("SELECT user_id, version, erased_at IS NOT NULL FROM profiles WHERE user_id IN (SELECT value FROM json_each(?1))")
                    .map_err(failed)?;
                let found = current
                    .query_map([&ids], |r| {
                        Ok((r.get::<_, String>(0)?, (r.get::<_, i64>(1)?, r.get::<_, bool>(2)?)))
                    })
                    .map_err(failed)?;
                let mut stored: HashMap<String, (i64, bool)> = HashMap::with_capacity(rows.len());
                for row in found {
                    let (user, state) = row.map_err(failed)?;
                    stored.insert(user, state);
                }
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT INTO profiles (user_id, version, deleted, record, segment_history, email_index, updated_at, erased_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)
                         ON CONFLICT(user_id) DO UPDATE SET version = excluded.version, deleted = excluded.deleted,
                           record = excluded.record, segment_history = excluded.segment_history,
                           email_index = excluded.email_index, updated_at = excluded.updated_at, erased_at = NULL",
                    )
                    .map_err(failed)?;
                for (user, version, record, history, email_index, at) in &rows {
                    let outcome = match stored.get(user.as_str()) {
                        Some((v, _)) if *v > *version => WriteOutcome::Stale,
                        Some((v, _)) if *v == *version => WriteOutcome::Replayed,
                        Some((_, true)) if !revive_erased => WriteOutcome::Erased,
                        _ => {
                            upsert
                                .execute(params![user, version, record.is_none(), record, history, email_index, at])
                                .map_err(failed)?;
                            stored.insert(user.clone(), (*version, false));
                            WriteOutcome::Applied
                        }
                    };
                    outcomes.push(outcome);
                }
            }
            tx.commit().map_err(failed)?;
            Ok(outcomes)
        })
        .await
    }

    async fn get(&self, user: Uuid) -> Result<Option<StoredProfile>, StoreError> {
        self.with_reader(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT version, record, segment_history, updated_at, erased_at FROM profiles WHERE user_id = ?1",
                )
                .map_err(failed)?
                .query_row(
                    [user.to_string()],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            (r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?),
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<String>>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(failed)?;
            let Some((version, record, updated_at, erased_at)) = row else {
                return Ok(None);
            };
            stored_profile(user, version, record, &updated_at, erased_at.as_deref()).map(Some)
        })
        .await
    }

    async fn find_by_email_index(&self, email_index: &str) -> Result<Option<Uuid>, StoreError> {
        let email_index = email_index.to_string();
        self.with_reader(move |conn| {
            let user: Option<String> = conn
                .prepare_cached(
                    "SELECT user_id FROM profiles WHERE email_index = ?1 AND deleted = 0",
                )
                .map_err(failed)?
                .query_row([email_index], |r| r.get(0))
                .optional()
                .map_err(failed)?;
            user.map(|u| parse_uuid(&u)).transpose()
        })
        .await
    }

    async fn user_keys(&self, users: &[Uuid]) -> Result<HashMap<Uuid, WrappedUserKey>, StoreError> {
        let users: Vec<String> = users.iter().map(Uuid::to_string).collect();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("{SELECT_KEYS} WHERE user_id = ?1"))
                .map_err(failed)?;
            let mut found = HashMap::new();
            for user in &users {
                if let Some((id, mut key)) = stmt
                    .query_row([user], key_from_row)
                    .optional()
                    .map_err(failed)?
                {
                    key.user_id = parse_uuid(&id)?;
                    found.insert(key.user_id, key);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn insert_user_keys(
        &self,
        keys: Vec<WrappedUserKey>,
    ) -> Result<Vec<WrappedUserKey>, StoreError> {
        self.with_conn(move |conn| {
            let tx = write_transaction(conn)?;
            let mut winners = Vec::with_capacity(keys.len());
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO user_keys (user_id, key_version, provider, kek_id, encrypted_kek, wrapped_key, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(user_id) DO NOTHING",
                    )
                    .map_err(failed)?;
                let mut select = tx
                    .prepare_cached(
                        &format!("{SELECT_KEYS} WHERE user_id = ?1"),
                    )
                    .map_err(failed)?;
                for key in keys {
                    let user = key.user_id.to_string();
                    insert
                        .execute(params![user, key.key_version, key.provider, key.kek_id, key.encrypted_kek, key.wrapped_key, ts(&key.created_at)])
                        .map_err(failed)?;
                    let (_, mut stored) = select.query_row([&user], key_from_row).map_err(failed)?;
                    stored.user_id = key.user_id;
                    winners.push(stored);
                }
            }
            tx.commit().map_err(failed)?;
            Ok(winners)
        })
        .await
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.with_conn(move |conn| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO audit (id, at, actor, action, user_id, fields, reason, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(failed)?
            .execute(params![
                    r.id.to_string(),
                    ts(&r.at),
                    r.actor,
                    r.action,
                    r.user_id.to_string(),
                    serde_json::to_string(&r.fields).expect("serialisable"),
                    r.reason,
                    r.request_id.to_string()
                ],
            )
            .map_err(failed)?;
            Ok(())
        })
        .await
    }

    async fn audit_trail(&self, user: Uuid) -> Result<Vec<AuditRecord>, StoreError> {
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, at, actor, action, user_id, fields, reason, request_id FROM audit WHERE user_id = ?1 ORDER BY at, id",
                )
                .map_err(failed)?;
            let rows = stmt
                .query_map([user.to_string()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                })
                .map_err(failed)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, at, actor, action, fields, reason, request_id) = row.map_err(failed)?;
                out.push(AuditRecord {
                    id: parse_uuid(&id)?,
                    at: parse_ts(&at),
                    actor,
                    action,
                    user_id: user,
                    fields: serde_json::from_str(&fields).unwrap_or_default(),
                    reason,
                    request_id: parse_uuid(&request_id)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.with_reader(|conn| {
            let (live, deleted) = conn
                .query_row(
                    "SELECT COALESCE(SUM(deleted = 0), 0), COALESCE(SUM(deleted = 1), 0) FROM profiles",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .map_err(failed)?;
            Ok(StoreCounts { live: live as u64, deleted: deleted as u64 })
        })
        .await
    }

    async fn scan(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<StoredProfile>, Option<String>), StoreError> {
        let after = cursor.unwrap_or_default();
        let limit = limit.max(1);
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user_id, version, record, segment_history, updated_at, erased_at FROM profiles WHERE user_id > ?1 ORDER BY user_id LIMIT ?2",
                )
                .map_err(failed)?;
            let rows = stmt
                .query_map(params![after, limit as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        (r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?),
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(failed)?;
            let mut page = Vec::with_capacity(limit);
            let mut last = None;
            for row in rows {
                let (user, version, record, updated_at, erased_at) = row.map_err(failed)?;
                page.push(stored_profile(parse_uuid(&user)?, version, record, &updated_at, erased_at.as_deref())?);
                last = Some(user);
            }
            let next = if page.len() == limit { last } else { None };
            Ok((page, next))
        })
        .await
    }

    async fn append_consent(&self, record: &ConsentRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO consents (user_id, event_id, purpose, granted, policy_version, source, occurred_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                params![r.user_id.to_string(), r.event_id.to_string(), r.purpose, r.granted, r.policy_version, r.source, ts(&r.occurred_at), r.version],
            )
            .map_err(failed)?;
            Ok(())
        })
        .await
    }

    async fn consent_history(&self, user: Uuid) -> Result<Vec<ConsentRecord>, StoreError> {
        self.with_reader(move |conn| consents_of(conn, user)).await
    }

    async fn consent_states(
        &self,
        users: &[Uuid],
    ) -> Result<HashMap<Uuid, ConsentState>, StoreError> {
        let ids = json_ids(users);
        self.with_reader(move |conn| {
            let records =
                consents_where(conn, "user_id IN (SELECT value FROM json_each(?1))", &ids)?;
            let mut states = HashMap::new();
            for one_user in records.chunk_by(|a, b| a.user_id == b.user_id) {
                states.insert(one_user[0].user_id, consent_state(one_user));
            }
            Ok(states)
        })
        .await
    }

    async fn erase(&self, user: Uuid, version: i64, at: DateTime<Utc>) -> Result<i64, StoreError> {
        self.with_conn(move |conn| {
            let tx = write_transaction(conn)?;
            let id = user.to_string();
            let stored: Option<i64> = tx
                .query_row("SELECT version FROM profiles WHERE user_id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(failed)?;
            let fence = stored.map_or(version, |s| s.max(version));
            tx.execute(
                "INSERT INTO profiles (user_id, version, deleted, record, email_index, updated_at, erased_at)
                 VALUES (?1, ?2, 1, NULL, NULL, ?3, ?3)
                 ON CONFLICT(user_id) DO UPDATE SET version = excluded.version, deleted = 1, record = NULL,
                   segment_history = NULL, email_index = NULL, updated_at = excluded.updated_at,
                   erased_at = excluded.erased_at",
                params![id, fence, ts(&at)],
            )
            .map_err(failed)?;
            tx.execute("DELETE FROM user_keys WHERE user_id = ?1", [&id]).map_err(failed)?;
            tx.commit().map_err(failed)?;
            empty_the_wal(conn, "erasure")?;
            Ok(fence)
        })
        .await
    }

    async fn remove_user(&self, user: Uuid) -> Result<u64, StoreError> {
        self.with_conn(move |conn| {
            let tx = write_transaction(conn)?;
            let id = user.to_string();
            let mut removed = 0;
            for table in ["profiles", "user_keys", "consents", "audit"] {
                removed += tx
                    .execute(&format!("DELETE FROM {table} WHERE user_id = ?1"), [&id])
                    .map_err(failed)? as u64;
            }
            tx.commit().map_err(failed)?;
            empty_the_wal(conn, "zone migration")?;
            Ok(removed)
        })
        .await
    }

    async fn scan_user_keys(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<WrappedUserKey>, Option<String>), StoreError> {
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "{SELECT_KEYS} WHERE user_id > ?1 ORDER BY user_id LIMIT ?2"
                ))
                .map_err(failed)?;
            let rows = stmt
                .query_map(
                    params![cursor.unwrap_or_default(), limit as i64],
                    key_from_row,
                )
                .map_err(failed)?;
            let mut keys = Vec::new();
            for row in rows {
                let (id, mut key) = row.map_err(failed)?;
                key.user_id = parse_uuid(&id)?;
                keys.push(key);
            }
            let next = (keys.len() == limit)
                .then(|| keys.last().map(|k| k.user_id.to_string()))
                .flatten();
            Ok((keys, next))
        })
        .await
    }

    async fn replace_user_key(
        &self,
        old: &WrappedUserKey,
        new: &WrappedUserKey,
    ) -> Result<bool, StoreError> {
        let (old, new) = (old.clone(), new.clone());
        self.with_conn(move |conn| {
            let n = conn
                .execute(
                    "UPDATE user_keys SET key_version = ?2, provider = ?3, kek_id = ?4, encrypted_kek = ?5,
                       wrapped_key = ?6, created_at = ?7
                     WHERE user_id = ?1 AND wrapped_key = ?8",
                    params![new.user_id.to_string(), new.key_version, new.provider, new.kek_id,
                            new.encrypted_kek, new.wrapped_key, ts(&new.created_at), old.wrapped_key],
                )
                .map_err(failed)?;
            Ok(n == 1)
        })
        .await
    }

    async fn shred_keys(&self, owners: &[Uuid]) -> Result<u64, StoreError> {
        let owners = owners.iter().map(Uuid::to_string).collect::<Vec<_>>();
        self.with_conn(move |conn| {
            let tx = write_transaction(conn)?;
            let mut deleted = 0;
            {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM user_keys WHERE user_id = ?1")
                    .map_err(failed)?;
                for owner in &owners {
                    deleted += stmt.execute([owner]).map_err(failed)? as u64;
                }
            }
            tx.commit().map_err(failed)?;
            if deleted > 0 {
                empty_the_wal(conn, "key deletion")?;
            }
            Ok(deleted)
        })
        .await
    }

    async fn segment_sets(
        &self,
        users: &[Uuid],
    ) -> Result<HashMap<Uuid, StoredSegments>, StoreError> {
        let ids = json_ids(users);
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user_id, version, deleted, segment_history,
                       CASE WHEN segment_history IS NULL THEN json_extract(record, '$.segments', '$.segment_history') END
                     FROM profiles WHERE user_id IN (SELECT value FROM json_each(?1))",
                )
                .map_err(failed)?;
            let rows = stmt
                .query_map([&ids], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })
                .map_err(failed)?;
            let unreadable =
                || StoreError::Failed("a stored record's segments are not a list of names".into());
            let mut sets = HashMap::new();
            for row in rows {
                let (user, version, deleted, history, from_record) = row.map_err(failed)?;
                // The history's last set is the stored one: only the small column is parsed.
                // Rows without it (the feed off, or a file older than the column, which kept
                // the history in the record) are read from the record.
                let (segments, history) = match (history, from_record) {
                    (Some(text), _) => {
                        let history: SegmentHistory =
                            serde_json::from_str(&text).map_err(|_| unreadable())?;
                        (history.current().to_vec(), Some(history))
                    }
                    (None, Some(text)) => {
                        let (segments, history): (Option<Vec<String>>, Option<SegmentHistory>) =
                            serde_json::from_str(&text).map_err(|_| unreadable())?;
                        (segments.unwrap_or_default(), history)
                    }
                    (None, None) => (Vec::new(), None),
                };
                sets.insert(
                    parse_uuid(&user)?,
                    StoredSegments {
                        version,
                        live: !deleted,
                        segments,
                        history,
                    },
                );
            }
            Ok(sets)
        })
        .await
    }

    async fn segment_members(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT s.value, count(*) FROM profiles, json_each(profiles.record, '$.segments') AS s
                     WHERE profiles.deleted = 0 GROUP BY s.value",
                )
                .map_err(failed)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
                .map_err(failed)?;
            rows.collect::<Result<_, _>>().map_err(failed)
        })
        .await
    }

    async fn erasure_fences(&self, users: &[Uuid]) -> Result<HashMap<Uuid, i64>, StoreError> {
        let ids = json_ids(users);
        self.with_reader(move |conn| {
            // The partial index holds the erased users only: a batch's look-up touches a few
            // pages, not each user's row (it was 5 % of the worker's CPU as one query per user).
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user_id, version FROM profiles INDEXED BY profiles_erased
                     WHERE erased_at IS NOT NULL AND user_id IN (SELECT value FROM json_each(?1))",
                )
                .map_err(failed)?;
            let rows = stmt
                .query_map([&ids], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(failed)?;
            let mut fences = HashMap::new();
            for row in rows {
                let (user, version) = row.map_err(failed)?;
                fences.insert(parse_uuid(&user)?, version);
            }
            Ok(fences)
        })
        .await
    }

    async fn expire_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with_conn(move |conn| {
            let n = conn
                .execute("DELETE FROM audit WHERE at < ?1", [ts(&before)])
                .map_err(failed)?;
            Ok(n as u64)
        })
        .await
    }
}

/// After an erasure or a key deletion, the WAL still holds the pages as they were before (the
/// key, the ciphertexts): copy the new state into the database and empty the WAL (freed pages
/// are zeroed, `secure_delete`). TRUNCATE waits out readers (the busy handler). If it cannot
/// finish, the deletion is committed but reported as not done (transient): the retry,
/// idempotent, checkpoints again.
fn empty_the_wal(conn: &rusqlite::Connection, what: &str) -> Result<(), StoreError> {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(failed)?;
    if busy != 0 {
        return Err(StoreError::Unavailable(format!(
            "the {what} is committed but the WAL could not be emptied (another connection is reading); retry"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Operation, Region};

    fn change(user: Uuid, version: i64, op: Operation) -> ProtectedChange {
        let record = (op == Operation::Upsert).then(|| ProtectedRecord {
            event_id: Uuid::new_v4(),
            source: "t".into(),
            occurred_at: Utc::now(),
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
            operation: op,
            occurred_at: Utc::now(),
            record,
        }
    }

    #[tokio::test]
    async fn a_batchs_fences_and_consent_states_are_each_users_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let (erased, consenting, other, unknown) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        store
            .apply(&[
                change(erased, 4, Operation::Upsert),
                change(consenting, 1, Operation::Upsert),
                change(other, 7, Operation::Upsert),
            ])
            .await
            .unwrap();
        store.erase(erased, 5, Utc::now()).await.unwrap();
        let consent = |user, purpose: &str, granted, version| ConsentRecord {
            user_id: user,
            purpose: purpose.into(),
            granted,
            policy_version: "v1".into(),
            source: "t".into(),
            occurred_at: Utc::now(),
            version,
            event_id: Uuid::new_v4(),
        };
        // Appended out of version order: the highest version of each purpose wins.
        for record in [
            consent(consenting, "marketing", false, 3),
            consent(consenting, "marketing", true, 2),
            consent(consenting, "analytics", true, 2),
            consent(other, "marketing", true, 8),
        ] {
            store.append_consent(&record).await.unwrap();
        }
        let batch = [unknown, other, erased, consenting];

        let fences = store.erasure_fences(&batch).await.unwrap();
        assert_eq!(fences, HashMap::from([(erased, 5)]));

        let states = store.consent_states(&batch).await.unwrap();
        let state = |pairs: &[(&str, bool)]| -> ConsentState {
            pairs.iter().map(|(p, g)| (p.to_string(), *g)).collect()
        };
        assert_eq!(
            states,
            HashMap::from([
                (
                    consenting,
                    state(&[("marketing", false), ("analytics", true)])
                ),
                (other, state(&[("marketing", true)])),
            ])
        );
    }

    #[tokio::test]
    async fn versions_decide_applied_replayed_and_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let u = Uuid::new_v4();
        let outcomes = store
            .apply(&[
                change(u, 2, Operation::Upsert),
                change(u, 2, Operation::Upsert),
                change(u, 1, Operation::Upsert),
                change(u, 3, Operation::Delete),
                change(u, 2, Operation::Upsert),
            ])
            .await
            .unwrap();
        use WriteOutcome::*;
        assert_eq!(outcomes, vec![Applied, Replayed, Stale, Applied, Stale]);
        let stored = store.get(u).await.unwrap().unwrap();
        assert_eq!((stored.version, stored.record), (3, None));
    }

    #[tokio::test]
    async fn a_batch_waits_out_another_process_s_write_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        let u = Uuid::new_v4();
        store
            .apply(&[change(u, 1, Operation::Upsert)])
            .await
            .unwrap();
        // Another worker on the same file holds the write lock, then commits version 2.
        let mut other = Connection::open(&path).unwrap();
        let (locked, wait_locked) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let tx = other
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            tx.execute(
                "UPDATE profiles SET version = 2 WHERE user_id = ?1",
                [u.to_string()],
            )
            .unwrap();
            locked.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            tx.commit().unwrap();
        });
        wait_locked.recv().unwrap();
        let outcomes = store.apply(&[change(u, 3, Operation::Upsert)]).await;
        writer.join().unwrap();
        assert_eq!(outcomes.unwrap(), vec![WriteOutcome::Applied]);
        assert_eq!(store.get(u).await.unwrap().unwrap().version, 3);
    }

    #[tokio::test]
    async fn scan_pages_through_every_profile_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let changes: Vec<_> = (0..25)
            .map(|i| {
                change(
                    Uuid::new_v4(),
                    1,
                    if i % 5 == 0 {
                        Operation::Delete
                    } else {
                        Operation::Upsert
                    },
                )
            })
            .collect();
        store.apply(&changes).await.unwrap();
        let (mut seen, mut cursor) = (Vec::new(), None);
        loop {
            let (page, next) = store.scan(cursor, 10).await.unwrap();
            seen.extend(page.into_iter().map(|p| p.user_id));
            if next.is_none() {
                break;
            }
            cursor = next;
        }
        let mut want: Vec<Uuid> = changes.iter().map(|c| c.user_id).collect();
        want.sort();
        assert_eq!(seen, want);
    }

    /// A command or retention erases the user while a batch that read no fence is on its way
    /// with a newer version: the write's own transaction sees the erasure and refuses it.
    #[tokio::test]
    async fn an_upsert_never_clears_an_erasure_that_landed_after_its_batch_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let u = Uuid::new_v4();
        store
            .apply(&[change(u, 1, Operation::Upsert)])
            .await
            .unwrap();
        assert_eq!(store.erase(u, 1, Utc::now()).await.unwrap(), 1);
        let outcomes = store
            .apply(&[
                change(u, 2, Operation::Upsert),
                change(u, 3, Operation::Delete),
            ])
            .await
            .unwrap();
        assert_eq!(outcomes, vec![WriteOutcome::Erased, WriteOutcome::Erased]);
        let stored = store.get(u).await.unwrap().unwrap();
        assert!(stored.record.is_none() && stored.erased_at.is_some());
        assert_eq!(store.erasure_fences(&[u]).await.unwrap().get(&u), Some(&1));
        drop(store);

        // With `erased_user_events: accept`, a newer change stores the user anew.
        let store = SqliteStore::open(&dir.path().join("s.sqlite"))
            .unwrap()
            .reviving_erased(true);
        let outcomes = store
            .apply(&[change(u, 2, Operation::Upsert)])
            .await
            .unwrap();
        assert_eq!(outcomes, vec![WriteOutcome::Applied]);
        assert!(store.get(u).await.unwrap().unwrap().erased_at.is_none());
    }

    #[tokio::test]
    async fn erase_shreds_the_key_and_leaves_a_fenced_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let u = Uuid::new_v4();
        store
            .apply(&[change(u, 4, Operation::Upsert)])
            .await
            .unwrap();
        let key = crate::stores::WrappedUserKey {
            user_id: u,
            key_version: 1,
            provider: "local".into(),
            kek_id: "k".into(),
            encrypted_kek: vec![],
            wrapped_key: vec![1, 2, 3],
            created_at: Utc::now(),
        };
        store.insert_user_keys(vec![key]).await.unwrap();
        assert_eq!(
            store.erase(u, 2, Utc::now()).await.unwrap(),
            4,
            "the fence never goes back"
        );
        assert!(store.user_keys(&[u]).await.unwrap().is_empty());
        let stored = store.get(u).await.unwrap().unwrap();
        assert!(stored.record.is_none() && stored.erased_at.is_some());
        assert_eq!(
            store.erasure_fences(&[u, Uuid::new_v4()]).await.unwrap(),
            HashMap::from([(u, 4)])
        );
        assert_eq!(
            store
                .apply(&[change(u, 3, Operation::Upsert)])
                .await
                .unwrap(),
            vec![WriteOutcome::Stale]
        );
    }

    #[tokio::test]
    async fn the_segment_history_has_a_column_of_its_own_and_older_files_are_read_from_the_record()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        // A file from before the column: the history inside the record's JSON.
        let (u, w) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE profiles (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL,
                   deleted INTEGER NOT NULL, record TEXT, email_index TEXT, updated_at TEXT NOT NULL,
                   erased_at TEXT)",
            )
            .unwrap();
            let mut record = serde_json::to_value(change(u, 2, Operation::Upsert).record).unwrap();
            record["segments"] = serde_json::json!(["a", "b"]);
            record["segment_history"] =
                serde_json::json!({"base": [], "steps": [{"v": 2, "s": ["a", "b"], "z": "EU"}]});
            conn.execute(
                "INSERT INTO profiles VALUES (?1, 2, 0, ?2, NULL, '2026-01-01T00:00:00.000Z', NULL)",
                params![u.to_string(), record.to_string()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let sets = store.segment_sets(&[u]).await.unwrap();
        assert_eq!(sets[&u].segments, vec!["a", "b"]);
        assert_eq!(
            sets[&u]
                .history
                .as_ref()
                .unwrap()
                .find(2)
                .unwrap()
                .0
                .segments,
            vec!["a", "b"]
        );

        let mut history = SegmentHistory::starting_from(vec!["a".into()]);
        history.push(crate::event::SegmentStep {
            version: 3,
            segments: vec!["c".into()],
            zone: None,
            gone: false,
        });
        let mut next = change(w, 3, Operation::Upsert);
        let record = next.record.as_mut().unwrap();
        record.segments = vec!["c".into()];
        record.segment_history = Some(history.clone());
        store.apply(&[next]).await.unwrap();
        let sets = store.segment_sets(&[w]).await.unwrap();
        assert_eq!(
            (sets[&w].segments.clone(), sets[&w].history.clone()),
            (vec!["c".to_string()], Some(history.clone()))
        );
        assert_eq!(
            store
                .get(w)
                .await
                .unwrap()
                .unwrap()
                .record
                .unwrap()
                .segment_history,
            Some(history)
        );
        let conn = Connection::open(&path).unwrap();
        let (record, column): (String, Option<String>) = conn
            .query_row(
                "SELECT record, segment_history FROM profiles WHERE user_id = ?1",
                [w.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(!record.contains("segment_history") && column.is_some_and(|c| c.contains("\"c\"")));

        store.erase(w, 4, Utc::now()).await.unwrap();
        let column: Option<String> = conn
            .query_row(
                "SELECT segment_history FROM profiles WHERE user_id = ?1",
                [w.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(column, None, "an erasure keeps no history");
    }

    #[tokio::test]
    async fn consent_state_follows_the_highest_version_per_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let u = Uuid::new_v4();
        let record = |purpose: &str, granted, version| ConsentRecord {
            user_id: u,
            purpose: purpose.into(),
            granted,
            policy_version: "2026-01".into(),
            source: "t".into(),
            occurred_at: Utc::now(),
            version,
            event_id: Uuid::new_v4(),
        };
        let late = record("marketing", true, 1);
        for r in [
            record("marketing", false, 2),
            late.clone(),
            late,
            record("analytics", true, 3),
        ] {
            store.append_consent(&r).await.unwrap();
        }
        assert_eq!(
            store.consent_history(u).await.unwrap().len(),
            3,
            "appending the same event twice keeps one record"
        );
        let state = &store.consent_states(&[u]).await.unwrap()[&u];
        assert_eq!(state.get("marketing"), Some(&false));
        assert_eq!(state.get("analytics"), Some(&true));
    }

    #[tokio::test]
    async fn audit_records_cannot_be_updated() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let record = AuditRecord {
            id: Uuid::new_v4(),
            at: Utc::now(),
            actor: "a".into(),
            action: "reveal".into(),
            user_id: Uuid::new_v4(),
            fields: vec!["email".into()],
            reason: "r".into(),
            request_id: Uuid::new_v4(),
        };
        store.append_audit(&record).await.unwrap();
        let err = store
            .with_conn(|conn| {
                conn.execute("UPDATE audit SET reason = 'x'", [])
                    .map_err(failed)
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"));
    }
}
