//! The token broker's decisions, as pure functions of the request, what is held and `now`.
//! The caller does the I/O; everything here is unit-tested with made-up times.

use std::time::Duration as StdDuration;

use broker_store::StoredToken;
use chrono::{DateTime, Duration, Utc};

use super::TokenSettings;

/// The longest a provider's `Retry-After` is honoured.
pub const MAX_RETRY_AFTER: StdDuration = StdDuration::from_secs(3600);
/// The longest lifetime a token is believed to have, whatever the provider says.
pub const MAX_TOKEN_LIFETIME: StdDuration = StdDuration::from_secs(30 * 24 * 3600);
/// The longest `subject` a caller may name (OpenID Connect `sub` is at most 255 ASCII).
pub const MAX_SUBJECT_LEN: usize = 255;
/// `min_ttl` above this is refused: Provet's tokens live 10 hours.
pub const MAX_MIN_TTL_SECS: u64 = 36_000;

/// What the caller wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A token valid for at least `min_ttl`, from the cache when one is.
    Cached,
    /// A token fetched after the request arrived (the caller's token failed).
    ForceRefresh,
    /// A credential check: fetched now, ignoring the rejection cool-down.
    Verify,
}

/// One request, as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext {
    pub min_ttl: Duration,
    pub mode: Mode,
    /// When the request arrived: a token obtained since then is good for any caller.
    pub arrived: DateTime<Utc>,
}

/// The remaining lifetime below which a token is refreshed: `max(min_ttl, skew)`, the skew
/// clamped to a fraction of the token's lifetime (short tokens are not refreshed on every
/// call).
pub fn refresh_below(token: &StoredToken, min_ttl: Duration, settings: &TokenSettings) -> Duration {
    let lifetime = (token.expires_at - token.obtained_at)
        .num_milliseconds()
        .max(0) as f64;
    let cap = Duration::milliseconds((lifetime * settings.skew_fraction) as i64);
    min_ttl.max(to_chrono(settings.skew).min(cap))
}

/// Whether a token still serves a caller who wants `min_ttl`.
pub fn usable(
    token: &StoredToken,
    ctx: &RequestContext,
    now: DateTime<Utc>,
    settings: &TokenSettings,
) -> bool {
    token.expires_at - now >= refresh_below(token, ctx.min_ttl, settings)
}

/// Whether a token held in this process's memory since `validated_at` may be served
/// without looking anywhere else.
pub fn serve_from_memory(
    token: &StoredToken,
    validated_at: DateTime<Utc>,
    ctx: &RequestContext,
    now: DateTime<Utc>,
    settings: &TokenSettings,
) -> bool {
    ctx.mode == Mode::Cached
        && now - validated_at < to_chrono(settings.revalidate_after)
        && usable(token, ctx, now, settings)
}

/// After waiting for another caller's turn, or on reading the store: a token obtained
/// after this request arrived serves any mode; otherwise only a cached-mode request, and
/// only if it is usable.
pub fn will_do(
    token: &StoredToken,
    ctx: &RequestContext,
    now: DateTime<Utc>,
    settings: &TokenSettings,
) -> bool {
    token.obtained_at >= ctx.arrived
        || (ctx.mode == Mode::Cached && usable(token, ctx, now, settings))
}

/// While the provider fails, a token that still meets `min_ttl` is better than an error,
/// unless the caller asked for a new one (its old one failed).
pub fn serve_stale(token: Option<&StoredToken>, ctx: &RequestContext, now: DateTime<Utc>) -> bool {
    ctx.mode == Mode::Cached && token.is_some_and(|t| t.expires_at - now >= ctx.min_ttl)
}

/// After `invalid_client`, no request for the client until the cool-down ends (a new
/// hookup or a credential check ends it early).
pub fn in_cooldown(
    rejected_at: Option<DateTime<Utc>>,
    ctx: &RequestContext,
    now: DateTime<Utc>,
    settings: &TokenSettings,
) -> bool {
    ctx.mode != Mode::Verify
        && rejected_at.is_some_and(|at| now - at < to_chrono(settings.rejected_cooldown))
}

/// The wait after the `failures`-th failure in a row: 1 s, 2 s, 4 s ... up to `max`,
/// spread by `jitter` (0..1, from ±20 %), or the provider's `Retry-After` when longer
/// (itself at most an hour). Never under a second.
pub fn backoff(
    failures: u32,
    retry_after: Option<StdDuration>,
    max: StdDuration,
    jitter: f64,
) -> StdDuration {
    let exponent = failures.saturating_sub(1).min(16);
    let exponential = StdDuration::from_secs(1u64 << exponent).min(max);
    let spread = exponential.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    let wait = match retry_after {
        Some(r) => r.min(MAX_RETRY_AFTER).max(spread),
        None => spread,
    };
    wait.max(StdDuration::from_secs(1))
}

/// The keep-alive refreshes active grants last refreshed before this instant (or never), so
/// that refresh tokens, which die after 30 days unused, never expire on an idle clinic.
pub fn keepalive_cutoff(now: DateTime<Utc>, after: StdDuration) -> DateTime<Utc> {
    now.checked_sub_signed(to_chrono(after))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether a grant is due for the keep-alive (the store selects by this same rule).
pub fn keepalive_due(
    active: bool,
    last_refresh_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    after: StdDuration,
) -> bool {
    active && last_refresh_at.is_none_or(|at| at < keepalive_cutoff(now, after))
}

/// A token's lifetime: `expires_in`; else a JWT's `exp`; else the default. Between one
/// second and `MAX_TOKEN_LIFETIME`, whatever the provider sent.
pub fn lifetime(
    expires_in: Option<StdDuration>,
    jwt_exp: Option<u64>,
    now: DateTime<Utc>,
    default: StdDuration,
) -> Duration {
    let from_jwt = || {
        let now = u64::try_from(now.timestamp()).ok()?;
        jwt_exp?.checked_sub(now).map(StdDuration::from_secs)
    };
    let chosen = expires_in
        .filter(|d| !d.is_zero())
        .or_else(from_jwt)
        .filter(|d| !d.is_zero())
        .unwrap_or(default);
    to_chrono(chosen.clamp(StdDuration::from_secs(1), MAX_TOKEN_LIFETIME))
}

/// `min_ttl` as asked (default 60 s).
pub fn min_ttl(requested: Option<u64>) -> Result<Duration, String> {
    match requested {
        None => Ok(Duration::seconds(60)),
        Some(n) if n <= MAX_MIN_TTL_SECS => Ok(Duration::seconds(n as i64)),
        Some(_) => Err(format!(
            "min_ttl must be from 0 to {MAX_MIN_TTL_SECS} seconds"
        )),
    }
}

/// A scope as asked: known scopes only, sorted and deduplicated, so that every spelling of
/// one scope is one cache entry.
pub fn scope(requested: Option<&str>, allowed: &[String]) -> Result<String, String> {
    let requested = requested.unwrap_or("restapi");
    if requested.len() > 255 {
        return Err("scope must be at most 255 characters".into());
    }
    let mut parts: Vec<&str> = requested.split_whitespace().collect();
    if parts.is_empty() {
        return Err("scope must name 1 or more scopes".into());
    }
    if let Some(bad) = parts.iter().find(|p| !allowed.iter().any(|a| a == *p)) {
        let shown: String = bad.chars().take(40).filter(|c| !c.is_control()).collect();
        return Err(format!(
            "scope `{shown}` is not one this broker hands out (allowed: {})",
            allowed.join(", ")
        ));
    }
    if let [one] = parts[..] {
        return Ok(one.to_owned());
    }
    parts.sort_unstable();
    parts.dedup();
    Ok(parts.join(" "))
}

/// A `subject` as asked: at most 255 visible ASCII characters.
pub fn subject(requested: Option<&str>) -> Result<Option<String>, String> {
    match requested {
        None => Ok(None),
        Some(s) if s.is_empty() || s.len() > MAX_SUBJECT_LEN => {
            Err(format!("subject must be 1 to {MAX_SUBJECT_LEN} characters"))
        }
        Some(s) if !s.bytes().all(|b| b.is_ascii_graphic()) => {
            Err("subject must be visible ASCII characters".into())
        }
        Some(s) => Ok(Some(s.to_owned())),
    }
}

pub fn to_chrono(d: StdDuration) -> Duration {
    Duration::from_std(d).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn token(obtained: DateTime<Utc>, lifetime_s: i64) -> StoredToken {
        StoredToken {
            access_token: SecretString::from("at".to_owned()),
            token_type: "Bearer".into(),
            expires_at: obtained + Duration::seconds(lifetime_s),
            obtained_at: obtained,
            granted_scope: None,
        }
    }

    fn ctx(mode: Mode, min_ttl: i64, arrived: DateTime<Utc>) -> RequestContext {
        RequestContext {
            min_ttl: Duration::seconds(min_ttl),
            mode,
            arrived,
        }
    }

    #[test]
    fn skew_is_clamped_to_a_quarter_of_the_lifetime() {
        let s = TokenSettings::default();
        // 10 h token: skew 60 s applies.
        assert_eq!(
            refresh_below(&token(t0(), 36_000), Duration::zero(), &s),
            Duration::seconds(60)
        );
        // 100 s token: a quarter is 25 s.
        assert_eq!(
            refresh_below(&token(t0(), 100), Duration::zero(), &s),
            Duration::seconds(25)
        );
        // min_ttl wins when larger.
        assert_eq!(
            refresh_below(&token(t0(), 100), Duration::seconds(90), &s),
            Duration::seconds(90)
        );
    }

    #[test]
    fn a_token_is_usable_until_min_ttl_or_skew() {
        let s = TokenSettings::default();
        let t = token(t0(), 3600);
        let c = ctx(Mode::Cached, 60, t0());
        assert!(usable(&t, &c, t0() + Duration::seconds(3539), &s));
        assert!(!usable(&t, &c, t0() + Duration::seconds(3541), &s));
        let long = ctx(Mode::Cached, 1800, t0());
        assert!(!usable(&t, &long, t0() + Duration::seconds(1801), &s));
    }

    #[test]
    fn memory_is_trusted_for_revalidate_after_and_never_when_forced() {
        let s = TokenSettings::default();
        let t = token(t0(), 36_000);
        let c = ctx(Mode::Cached, 60, t0());
        assert!(serve_from_memory(
            &t,
            t0(),
            &c,
            t0() + Duration::seconds(29),
            &s
        ));
        assert!(!serve_from_memory(
            &t,
            t0(),
            &c,
            t0() + Duration::seconds(30),
            &s
        ));
        for mode in [Mode::ForceRefresh, Mode::Verify] {
            assert!(!serve_from_memory(&t, t0(), &ctx(mode, 60, t0()), t0(), &s));
        }
    }

    #[test]
    fn a_forced_request_takes_only_a_token_obtained_after_it_arrived() {
        let s = TokenSettings::default();
        let arrived = t0() + Duration::seconds(10);
        let forced = ctx(Mode::ForceRefresh, 60, arrived);
        assert!(!will_do(&token(t0(), 36_000), &forced, arrived, &s));
        assert!(will_do(&token(arrived, 36_000), &forced, arrived, &s));
        assert!(will_do(
            &token(t0(), 36_000),
            &ctx(Mode::Cached, 60, arrived),
            arrived,
            &s
        ));
    }

    #[test]
    fn stale_tokens_are_served_only_to_unforced_callers_within_min_ttl() {
        let t = token(t0(), 600);
        let now = t0() + Duration::seconds(500);
        assert!(serve_stale(Some(&t), &ctx(Mode::Cached, 60, now), now));
        assert!(!serve_stale(Some(&t), &ctx(Mode::Cached, 120, now), now));
        assert!(!serve_stale(
            Some(&t),
            &ctx(Mode::ForceRefresh, 0, now),
            now
        ));
        assert!(!serve_stale(None, &ctx(Mode::Cached, 0, now), now));
    }

    #[test]
    fn the_rejected_cool_down_holds_except_for_checks() {
        let s = TokenSettings::default();
        let c = ctx(Mode::Cached, 60, t0());
        assert!(in_cooldown(
            Some(t0()),
            &c,
            t0() + Duration::seconds(299),
            &s
        ));
        assert!(!in_cooldown(
            Some(t0()),
            &c,
            t0() + Duration::seconds(300),
            &s
        ));
        assert!(!in_cooldown(None, &c, t0(), &s));
        assert!(!in_cooldown(
            Some(t0()),
            &ctx(Mode::Verify, 0, t0()),
            t0(),
            &s
        ));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_max_and_honours_retry_after() {
        let max = StdDuration::from_secs(60);
        assert_eq!(backoff(1, None, max, 0.5), StdDuration::from_secs(1));
        assert_eq!(backoff(3, None, max, 0.5), StdDuration::from_secs(4));
        assert_eq!(
            backoff(3, None, max, 0.0),
            StdDuration::from_secs(4).mul_f64(0.8)
        );
        assert_eq!(
            backoff(3, None, max, 1.0),
            StdDuration::from_secs(4).mul_f64(1.2)
        );
        assert_eq!(backoff(30, None, max, 0.5), max);
        assert_eq!(backoff(u32::MAX, None, max, 0.5), max);
        assert_eq!(
            backoff(1, Some(StdDuration::from_secs(30)), max, 0.5),
            StdDuration::from_secs(30)
        );
        // An absurd Retry-After is bounded.
        assert_eq!(
            backoff(1, Some(StdDuration::MAX), max, 0.5),
            MAX_RETRY_AFTER
        );
        // Never under a second, even with a zero max.
        assert_eq!(
            backoff(1, None, StdDuration::ZERO, 0.5),
            StdDuration::from_secs(1)
        );
    }

    #[test]
    fn keep_alive_selects_active_grants_idle_longer_than_after() {
        let after = StdDuration::from_secs(20 * 24 * 3600);
        let now = t0();
        let day = Duration::days(1);
        assert_eq!(keepalive_cutoff(now, after), now - Duration::days(20));
        // Refreshed 21 days ago: due; 19 days ago: not yet; never: due.
        assert!(keepalive_due(true, Some(now - day * 21), now, after));
        assert!(!keepalive_due(true, Some(now - day * 19), now, after));
        assert!(keepalive_due(true, None, now, after));
        // Exactly at the cutoff is not yet due (the store's `<`).
        assert!(!keepalive_due(true, Some(now - day * 20), now, after));
        // A grant needing reauthorization or revoked is never refreshed.
        assert!(!keepalive_due(false, None, now, after));
        // An absurd setting selects nothing rather than overflowing.
        assert_eq!(
            keepalive_cutoff(now, StdDuration::MAX),
            DateTime::<Utc>::MIN_UTC
        );
        assert!(!keepalive_due(true, Some(now), now, StdDuration::MAX));
    }

    #[test]
    fn a_keep_alive_request_always_refreshes() {
        // What the keep-alive sends: forced, no min_ttl. A cached token never serves it; only
        // one obtained after it arrived (another caller's refresh it waited for) does.
        let s = TokenSettings::default();
        let arrived = t0() + Duration::seconds(5);
        let keep = ctx(Mode::ForceRefresh, 0, arrived);
        let fresh_cached = token(t0(), 36_000);
        assert!(!serve_from_memory(
            &fresh_cached,
            arrived,
            &keep,
            arrived,
            &s
        ));
        assert!(!will_do(&fresh_cached, &keep, arrived, &s));
        assert!(will_do(&token(arrived, 36_000), &keep, arrived, &s));
        // And it is never answered with a stale token when the provider fails.
        assert!(!serve_stale(Some(&fresh_cached), &keep, arrived));
    }

    #[test]
    fn backoff_grows_until_max_for_every_jitter() {
        let max = StdDuration::from_secs(60);
        for jitter in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let waits: Vec<_> = (1..=8).map(|n| backoff(n, None, max, jitter)).collect();
            assert!(
                waits.windows(2).all(|w| w[0] <= w[1]),
                "{jitter}: {waits:?}"
            );
            assert!(waits.iter().all(|w| *w <= max.mul_f64(1.2)));
            // Jitter spreads by at most ±20 %.
            let base = StdDuration::from_secs(8);
            let third = backoff(4, None, max, jitter);
            assert!(third >= base.mul_f64(0.8) && third <= base.mul_f64(1.2));
        }
    }

    #[test]
    fn min_ttl_decides_freshness_over_a_skew_clamped_to_short_lifetimes() {
        let s = TokenSettings::default();
        // A 40 s token: the 60 s skew would refresh it at once; clamped to 10 s it serves
        // for 30 s.
        let t = token(t0(), 40);
        let c = ctx(Mode::Cached, 0, t0());
        assert!(usable(&t, &c, t0() + Duration::seconds(30), &s));
        assert!(!usable(&t, &c, t0() + Duration::seconds(31), &s));
        // A caller wanting 35 s left refuses it almost at once.
        let long = ctx(Mode::Cached, 35, t0());
        assert!(usable(&t, &long, t0() + Duration::seconds(5), &s));
        assert!(!usable(&t, &long, t0() + Duration::seconds(6), &s));
        // An expired token is never usable, whatever min_ttl.
        assert!(!usable(&t, &c, t0() + Duration::seconds(41), &s));
    }

    #[test]
    fn lifetimes_are_clamped() {
        let d = StdDuration::from_secs(3600);
        assert_eq!(
            lifetime(Some(StdDuration::from_secs(36_000)), None, t0(), d),
            Duration::seconds(36_000)
        );
        assert_eq!(
            lifetime(
                Some(StdDuration::from_secs(10_000_000_000_000)),
                None,
                t0(),
                d
            ),
            to_chrono(MAX_TOKEN_LIFETIME)
        );
        assert_eq!(
            lifetime(Some(StdDuration::ZERO), None, t0(), d),
            Duration::seconds(3600)
        );
        let exp = u64::try_from(t0().timestamp()).unwrap() + 120;
        assert_eq!(lifetime(None, Some(exp), t0(), d), Duration::seconds(120));
        assert_eq!(
            lifetime(None, Some(u64::MAX), t0(), d),
            to_chrono(MAX_TOKEN_LIFETIME)
        );
        assert_eq!(lifetime(None, Some(1), t0(), d), Duration::seconds(3600));
    }

    #[test]
    fn min_ttl_scope_and_subject_are_bounded() {
        assert_eq!(min_ttl(None).unwrap(), Duration::seconds(60));
        assert!(min_ttl(Some(36_001)).is_err());
        let allowed = vec!["restapi".to_owned(), "openid".to_owned()];
        assert_eq!(scope(None, &allowed).unwrap(), "restapi");
        assert_eq!(
            scope(Some("restapi openid restapi"), &allowed).unwrap(),
            "openid restapi"
        );
        assert!(scope(Some("  "), &allowed).is_err());
        assert!(scope(Some("a\"b"), &allowed).is_err());
        assert!(scope(Some("admin"), &allowed).is_err());
        assert!(scope(Some(&"restapi ".repeat(100)), &allowed).is_err());
        assert_eq!(subject(Some("42")).unwrap().as_deref(), Some("42"));
        assert!(subject(Some(&"x".repeat(256))).is_err());
        assert!(subject(Some("a b")).is_err());
        assert!(subject(Some("")).is_err());
        assert_eq!(subject(None).unwrap(), None);
    }
}
