//! Rate limits per API key (governor's keyed GCRA limiters): a steady rate with a burst for
//! every request, and a stricter per-minute one for reveals and lookups.

use crate::config::RateLimitConfig;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

pub struct Limits {
    requests: DefaultKeyedRateLimiter<String>,
    reveals: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

fn at_least_one(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub fn new(config: &RateLimitConfig) -> Self {
        let requests = Quota::per_second(at_least_one(config.per_second))
            .allow_burst(at_least_one(config.burst.max(config.per_second)));
        let reveals = Quota::per_minute(at_least_one(config.reveal_per_minute));
        Self {
            requests: RateLimiter::keyed(requests),
            reveals: RateLimiter::keyed(reveals),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(seconds to wait)` when `key` is over its limit (`strict`: the reveal limit too).
    pub fn check(&self, key: &str, strict: bool) -> Result<(), u64> {
        let key = key.to_string();
        let wait = |not_until: governor::NotUntil<_>| {
            not_until
                .wait_time_from(self.clock.now())
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64
        };
        self.requests.check_key(&key).map_err(wait)?;
        if strict {
            self.reveals.check_key(&key).map_err(wait)?;
        }
        Ok(())
    }
}
