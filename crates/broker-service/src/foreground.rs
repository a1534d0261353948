//! Foreground pressure: how many hookups are being received right now, so that background
//! work they cause (credential checks) gives way during a burst instead of competing with
//! the intake for the CPU and the database. Bounded: a check waits at most `MAX_YIELD` per
//! batch, so checks still move under a sustained load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// More hookups in flight than this is a burst.
const BUSY: usize = 4;
/// The longest a batch of background work waits for a burst to pass.
pub const MAX_YIELD: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(10);

/// Counts foreground requests in flight.
#[derive(Debug, Default)]
pub struct Foreground {
    in_flight: AtomicUsize,
}

/// One foreground request in flight (dropped when it is answered or abandoned).
pub struct InFlight<'a>(&'a Foreground);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Foreground {
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn busy(&self) -> bool {
        self.in_flight() > BUSY
    }

    /// Waits while a burst is on, for at most `max`.
    pub async fn yield_to_burst(&self, max: Duration) {
        let mut waited = Duration::ZERO;
        while self.busy() && waited < max {
            tokio::time::sleep(POLL).await;
            waited += POLL;
        }
    }
}

#[cfg(test)]
// The test reads tokio's paused clock, which it moves itself: no wall clock involved.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn background_waits_for_a_burst_but_not_forever() {
        let fg = Foreground::default();
        let quiet_since = tokio::time::Instant::now();
        fg.yield_to_burst(MAX_YIELD).await;
        assert_eq!(quiet_since.elapsed(), Duration::ZERO, "no burst, no wait");

        let burst: Vec<_> = (0..=BUSY).map(|_| fg.enter()).collect();
        let started = tokio::time::Instant::now();
        fg.yield_to_burst(MAX_YIELD).await;
        assert!(
            started.elapsed() >= MAX_YIELD,
            "waits while the burst lasts"
        );
        assert!(
            started.elapsed() < MAX_YIELD + POLL * 2,
            "but no longer than the bound"
        );
        drop(burst);
        assert_eq!(fg.in_flight(), 0);
        let after = tokio::time::Instant::now();
        fg.yield_to_burst(MAX_YIELD).await;
        assert_eq!(after.elapsed(), Duration::ZERO);
    }
}
