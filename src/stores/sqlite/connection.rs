//! One SQLite connection owned by a thread of its own: every statement on it runs there.
//!
//! On the blocking pool a connection's page cache and statements were allocated by whichever
//! pool thread ran the call, so glibc spread a 32 MiB cache over as many malloc arenas as threads
//! had touched it (~100 MB resident, BENCHMARKS.md "Memory"), and every call could start a pool
//! thread. A thread per connection keeps its memory in one arena and costs one channel send.

use crate::stores::StoreError;
use rusqlite::Connection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

pub(super) struct ConnectionThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

fn stopped() -> StoreError {
    StoreError::Failed("the store's connection thread has stopped".into())
}

impl ConnectionThread {
    pub(super) fn start(name: &str, mut conn: Connection) -> Result<Self, StoreError> {
        let (jobs, received) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in received {
                    // A panicking job is reported to its caller (its result sender is dropped);
                    // its transaction, if any, was rolled back when the panic dropped it.
                    let _ = catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
                }
            })
            .map_err(|e| StoreError::Failed(format!("cannot start the store's thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the connection's thread and waits for its result.
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (result, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = result.send(f(conn));
        });
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| {
            StoreError::Failed("a store operation panicked; nothing of it was committed".into())
        })?
    }
}

/// Closes the connection before returning, so that whoever opens the file next (another
/// command, a test reading its bytes) finds it closed and its WAL checkpointed.
impl Drop for ConnectionThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_operation_fails_alone_and_the_connection_goes_on() {
        let thread =
            ConnectionThread::start("test", Connection::open_in_memory().unwrap()).unwrap();
        let panicked = thread
            .run(|_| -> Result<(), StoreError> { panic!("a bug in one operation") })
            .await;
        assert!(matches!(panicked, Err(StoreError::Failed(m)) if m.contains("panicked")));
        let answer = thread
            .run(|conn| {
                conn.query_row("SELECT 41 + 1", [], |r| r.get::<_, i64>(0))
                    .map_err(|e| StoreError::Failed(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(answer, 42);
    }
}
