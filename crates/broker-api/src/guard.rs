//! Repeated API-key failures from one address get `429` for a while, so that guessing keys
//! costs time. Counted per peer address in fixed windows, in memory (per replica).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_service::Clock;
use dashmap::DashMap;

pub struct AuthFailures {
    limit: u32,
    window: Duration,
    seen: DashMap<IpAddr, Window>,
    clock: Arc<dyn Clock>,
}

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl AuthFailures {
    pub fn new(limit: u32, window: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            limit,
            window,
            seen: DashMap::new(),
            clock,
        }
    }

    /// How long `ip` must wait, if it has failed too often.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let w = *self.seen.get(&ip)?;
        let elapsed = self.clock.since(w.started);
        (w.failures >= self.limit && elapsed < self.window).then(|| self.window - elapsed)
    }

    pub fn failed(&self, ip: IpAddr) {
        {
            let mut w = self.seen.entry(ip).or_insert(Window {
                started: self.clock.instant(),
                failures: 0,
            });
            if self.clock.since(w.started) >= self.window {
                *w = Window {
                    started: self.clock.instant(),
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
        }
        // Bound the memory an address flood can take. (The entry guard above must be gone:
        // `len` locks every shard.)
        if self.seen.len() > 100_000 {
            let window = self.window;
            let now = self.clock.instant();
            self.seen
                .retain(|_, w| now.saturating_duration_since(w.started) < window);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_within_the_window() {
        let f = AuthFailures::new(
            3,
            Duration::from_secs(60),
            Arc::new(broker_service::SystemClock),
        );
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..2 {
            f.failed(ip);
        }
        assert!(f.blocked(ip).is_none());
        f.failed(ip);
        assert!(f.blocked(ip).is_some());
        assert!(f.blocked([10, 0, 0, 2].into()).is_none());
    }
}
