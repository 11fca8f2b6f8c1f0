//! Liveness and readiness as the worker sees itself: ready once its source and sinks are
//! open, not ready while batches have been failing for longer than the stall threshold.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct Health {
    ready: AtomicBool,
    /// Partitions held, for a source shared by a consumer group.
    assigned: OnceLock<Arc<AtomicUsize>>,
    failing_since: Mutex<Option<Instant>>,
    stall_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Health {
    pub fn new(stall_after: Duration) -> Self {
        Self {
            ready: AtomicBool::new(false),
            assigned: OnceLock::new(),
            failing_since: Mutex::new(None),
            stall_after,
        }
    }

    /// Source and sinks are open (for Kafka: partitions are assigned).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Readiness also waits for a partition assignment.
    pub fn watch_assignment(&self, assigned: Arc<AtomicUsize>) {
        let _ = self.assigned.set(assigned);
    }

    /// A batch completed: whatever was failing works again.
    pub fn progressed(&self) {
        *self.failing_since.lock().expect("health lock") = None;
    }

    /// A batch failed transiently and will be retried.
    pub fn failing(&self) {
        self.failing_since
            .lock()
            .expect("health lock")
            .get_or_insert_with(Instant::now);
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("not ready: the source and sinks are not open yet".into());
        }
        if let Some(assigned) = self.assigned.get() {
            if assigned.load(Ordering::Relaxed) == 0 {
                return Err(
                    "not ready: no partitions assigned (yet, or more workers than partitions)"
                        .into(),
                );
            }
        }
        if let Some(since) = *self.failing_since.lock().expect("health lock") {
            if since.elapsed() > self.stall_after {
                return Err(format!(
                    "stalled: batches have been failing for {} s",
                    since.elapsed().as_secs()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_open_and_not_ready_once_stalled() {
        let h = Health::new(Duration::from_millis(10));
        assert!(h.readiness().is_err());
        h.set_ready(true);
        assert!(h.readiness().is_ok());
        h.failing();
        std::thread::sleep(Duration::from_millis(20));
        assert!(h.readiness().unwrap_err().starts_with("stalled"));
        h.progressed();
        assert!(h.readiness().is_ok());
    }

    #[test]
    fn a_group_member_is_not_ready_until_it_holds_a_partition() {
        let h = Health::new(Duration::from_secs(60));
        let assigned = Arc::new(AtomicUsize::new(0));
        h.set_ready(true);
        h.watch_assignment(assigned.clone());
        assert!(h
            .readiness()
            .unwrap_err()
            .contains("no partitions assigned"));
        assigned.store(3, Ordering::Relaxed);
        assert!(h.readiness().is_ok());
        assigned.store(0, Ordering::Relaxed);
        assert!(
            h.readiness().is_err(),
            "revoked everything: not ready again"
        );
    }
}
