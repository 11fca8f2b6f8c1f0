//! Rate limits (governor's keyed GCRA limiters): per client, a steady rate with a burst for
//! every request and a stricter per-minute one for reveals and lookups; per user, a rate for
//! all requests about one profile together. Beside them, a watch that reports a client whose
//! reveal rate is unusual without refusing anything.

use crate::config::RateLimitConfig;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub struct Limits {
    requests: DefaultKeyedRateLimiter<String>,
    reveals: DefaultKeyedRateLimiter<String>,
    per_user: DefaultKeyedRateLimiter<Uuid>,
    unusual: DefaultKeyedRateLimiter<String>,
    /// When each client was last reported, so a busy client is logged once a minute.
    reported: Mutex<HashMap<String, Instant>>,
    clock: DefaultClock,
}

fn at_least_one(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Why a request was refused: whose limit, and the seconds to wait.
pub struct Exceeded {
    pub seconds: u64,
    pub what: &'static str,
}

impl Limits {
    pub fn new(config: &RateLimitConfig) -> Self {
        let requests = Quota::per_second(at_least_one(config.per_second))
            .allow_burst(at_least_one(config.burst.max(config.per_second)));
        let reveals = Quota::per_minute(at_least_one(config.reveal_per_minute));
        let per_user = Quota::per_second(at_least_one(config.per_user_per_second)).allow_burst(
            at_least_one(config.per_user_burst.max(config.per_user_per_second)),
        );
        let unusual = Quota::per_minute(at_least_one(config.unusual_reveals_per_minute));
        Self {
            requests: RateLimiter::keyed(requests),
            reveals: RateLimiter::keyed(reveals),
            per_user: RateLimiter::keyed(per_user),
            unusual: RateLimiter::keyed(unusual),
            reported: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    fn wait(&self, not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
        not_until
            .wait_time_from(self.clock.now())
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64
    }

    /// `Err` when `client` is over its limit (`strict`: the reveal limit too).
    pub fn check(&self, client: &str, role: &str, strict: bool) -> Result<(), Exceeded> {
        let client = client.to_string();
        self.requests.check_key(&client).map_err(|n| Exceeded {
            seconds: self.wait(n),
            what: "rate limit of this key reached",
        })?;
        if strict {
            self.reveals.check_key(&client).map_err(|n| Exceeded {
                seconds: self.wait(n),
                what: "rate limit of this key reached (reveal and lookup)",
            })?;
            self.watch(client, role);
        }
        Ok(())
    }

    /// `Err` when the requests about `user` from all clients are over their limit.
    pub fn check_user(&self, user: Uuid) -> Result<(), Exceeded> {
        self.per_user.check_key(&user).map_err(|n| Exceeded {
            seconds: self.wait(n),
            what: "rate limit of requests about this user reached",
        })
    }

    fn watch(&self, client: String, role: &str) {
        if self.unusual.check_key(&client).is_ok() {
            return;
        }
        metrics::counter!(crate::telemetry::API_UNUSUAL_REVEALS, "role" => role.to_string())
            .increment(1);
        let mut reported = self.reported.lock().expect("limits lock");
        let now = Instant::now();
        if reported
            .get(&client)
            .is_none_or(|at| now.duration_since(*at) >= Duration::from_secs(60))
        {
            tracing::warn!(client = %client, role, "unusual reveal and lookup rate for this client");
            reported.insert(client, now);
        }
    }
}
