//! What follows an attempt: decided from the answer, the attempts made and the schedule,
//! with no I/O.

use std::time::Duration;

use broker_store::webhooks::AttemptNext;
use chrono::{DateTime, Utc};

/// The retry schedule of the contract: the waits after the first, second, ... failure.
pub const DEFAULT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The longest wait a receiver's `Retry-After` may impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How one attempt ended, as far as the decision cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status came back, with the receiver's `Retry-After` if it sent one.
    Status(u16, Option<Duration>),
    /// No answer: connection refused, timeout, refused address.
    NoAnswer,
}

/// The decision after attempt number `attempt` (1 for the first). `jitter` in [0, 1)
/// spreads each wait over 80% to 120% of the schedule's.
pub fn after_attempt(
    answer: Answer,
    attempt: u32,
    schedule: &[Duration],
    jitter: f64,
    now: DateTime<Utc>,
) -> AttemptNext {
    let retry_after = match answer {
        Answer::Status(s, _) if (200..300).contains(&s) => return AttemptNext::Delivered,
        Answer::Status(410, _) => return AttemptNext::Gone,
        Answer::Status(_, retry_after) => retry_after,
        Answer::NoAnswer => None,
    };
    let Some(planned) = usize::try_from(attempt)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| schedule.get(i))
    else {
        return AttemptNext::Failed;
    };
    let jittered = planned.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    let wait = match retry_after.map(|r| r.min(MAX_RETRY_AFTER)) {
        Some(r) if r > jittered => r,
        _ => jittered,
    };
    let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(24));
    AttemptNext::RetryAt(now + wait)
}

/// `Retry-After` in seconds (the HTTP-date form is treated as absent).
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let text = value?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn wait_of(next: AttemptNext) -> Duration {
        match next {
            AttemptNext::RetryAt(at) => (at - now()).to_std().unwrap(),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn a_2xx_delivers_and_410_is_gone() {
        for s in [200, 204, 299] {
            let next = after_attempt(Answer::Status(s, None), 1, &DEFAULT_SCHEDULE, 0.5, now());
            assert_eq!(next, AttemptNext::Delivered);
        }
        let next = after_attempt(Answer::Status(410, None), 1, &DEFAULT_SCHEDULE, 0.5, now());
        assert_eq!(next, AttemptNext::Gone);
    }

    #[test]
    fn failures_follow_the_schedule_with_jitter_then_fail() {
        for (i, planned) in DEFAULT_SCHEDULE.iter().enumerate() {
            let attempt = u32::try_from(i + 1).unwrap();
            let low = wait_of(after_attempt(
                Answer::NoAnswer,
                attempt,
                &DEFAULT_SCHEDULE,
                0.0,
                now(),
            ));
            let high = wait_of(after_attempt(
                Answer::Status(500, None),
                attempt,
                &DEFAULT_SCHEDULE,
                0.999,
                now(),
            ));
            assert_eq!(low, planned.mul_f64(0.8));
            assert!(high > planned.mul_f64(1.19) && high <= planned.mul_f64(1.2));
        }
        let last = u32::try_from(DEFAULT_SCHEDULE.len() + 1).unwrap();
        assert_eq!(
            after_attempt(
                Answer::Status(503, None),
                last,
                &DEFAULT_SCHEDULE,
                0.5,
                now()
            ),
            AttemptNext::Failed
        );
    }

    #[test]
    fn a_longer_retry_after_is_honoured_and_clamped() {
        let longer = Some(Duration::from_secs(600));
        let next = after_attempt(
            Answer::Status(429, longer),
            1,
            &DEFAULT_SCHEDULE,
            0.5,
            now(),
        );
        assert_eq!(wait_of(next), Duration::from_secs(600));
        // A shorter one does not shorten the schedule.
        let shorter = Some(Duration::from_secs(1));
        let next = after_attempt(
            Answer::Status(503, shorter),
            2,
            &DEFAULT_SCHEDULE,
            0.5,
            now(),
        );
        assert_eq!(wait_of(next), Duration::from_secs(300));
        assert_eq!(
            retry_after(Some("99999999999999999999")),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(Some(" 120 ")), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
    }
}
