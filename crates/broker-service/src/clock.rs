//! Time is passed in, so expiry logic can be tested without sleeping. `SystemClock` is the
//! only place that reads the machine's clocks (clippy's `disallowed-methods` bans the reads
//! everywhere else; see the workspace `clippy.toml`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync {
    /// The wall clock: for anything stored or compared with stored times.
    fn now(&self) -> DateTime<Utc>;

    /// The monotonic clock: for durations measured in this process (latencies, waits).
    fn instant(&self) -> Instant;

    /// Time passed since `earlier` (a value of `instant`), never negative.
    fn since(&self, earlier: Instant) -> Duration {
        self.instant().saturating_duration_since(earlier)
    }
}

/// The machine's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    #[allow(clippy::disallowed_methods)]
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that stands still.
    struct Frozen(Instant);

    impl Clock for Frozen {
        fn now(&self) -> DateTime<Utc> {
            DateTime::from_timestamp(1_800_000_000, 0).unwrap()
        }
        fn instant(&self) -> Instant {
            self.0
        }
    }

    #[test]
    fn since_is_never_negative() {
        let t = SystemClock.instant();
        let clock = Frozen(t);
        assert_eq!(clock.since(t), Duration::ZERO);
        assert_eq!(clock.since(t + Duration::from_secs(5)), Duration::ZERO);
    }
}
