//! Liveness and readiness as the worker sees itself: ready once its source and sinks are
//! open, not ready while batches have been failing for longer than the stall threshold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Health {
    ready: AtomicBool,
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
            failing_since: Mutex::new(None),
            stall_after,
        }
    }

    /// Source and sinks are open (for Kafka: partitions are assigned).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
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
}
