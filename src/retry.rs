//! The one retry policy: exponential backoff with full jitter, for transient failures.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based): uniform in [0, min(max, initial·2^(attempt-1))].
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
            .min(self.max);
        cap.mul_f64(rand::random::<f64>())
    }
}

/// How one attempt failed: worth another, or not.
#[derive(Debug)]
pub enum Failed<E> {
    Transient(E),
    Permanent(E),
}

/// Runs `attempt` until it succeeds or fails permanently, waiting with the backoff after each
/// transient failure; `retrying` sees each one with its attempt number and delay (for the
/// log line and the metric).
pub async fn until_permanent<T, E, F, Fut>(
    mut attempt: F,
    mut retrying: impl FnMut(&E, u32, Duration),
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failed<E>>>,
{
    let backoff = Backoff::default();
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failed::Permanent(e)) => return Err(e),
            Err(Failed::Transient(e)) => {
                failures += 1;
                let delay = backoff.delay(failures);
                retrying(&e, failures, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_but_never_pass_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        for attempt in 1..40 {
            assert!(b.delay(attempt) <= Duration::from_millis(50));
        }
        assert!(b.delay(1) <= Duration::from_millis(10));
    }
}
