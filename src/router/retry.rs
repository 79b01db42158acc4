//! Retry and fallback policy: what to do after an attempt fails, and whether it is safe to send
//! the request again at all (REFERENCE section 9).
//!
//! Flags (REFERENCE section 2): `--proxy-retry` enables the policy,
//! `--proxy-retry-status-codes CSV` (default `429,500,502,503,504`),
//! `--proxy-fallback-status-codes CSV` (default none), `--proxy-network-error-action` and
//! `--proxy-timeout-error-action` (`none|fallback|retry`), `--proxy-retry-max-attempts N`.
//!
//! Actions:
//! - **none**: answer the client with this response (or a 502/504 for an error).
//! - **fallback**: move on to the next candidate backend at once; never the same backend again,
//!   no waiting. With no candidate left, stop.
//! - **retry**: wait an exponential backoff with full jitter, then try the next candidate, or
//!   the same backend again when it is the only one left. A `Retry-After` from the backend is
//!   honoured for a retry on that same backend (up to a cap; a longer one is not worth holding
//!   the client for, so the request moves on to another backend or stops with the backend's
//!   answer, `Retry-After` and all). A different backend need not wait for it.
//!
//! A status in both lists retries. With the policy disabled (the default), only a network
//! error falls back to the next candidate (a refused connection is the plainest case of "try
//! the next one"), timeouts and statuses stop.
//!
//! Attempts are bounded by `max_attempts` (default: the number of candidates, so every backend
//! is tried at most once), never more than [`MAX_ATTEMPTS_LIMIT`]: a retry storm stays bounded
//! whatever the config says.
//!
//! **Safety guard** ([`may_resend`]), consulted before every second attempt, overrides the
//! policy: a non-idempotent request (POST, PATCH) is never sent again once its bytes may have
//! reached a backend, unless the client sent `x-request-id` (which makes the request
//! identifiable upstream and tells us the client accepts a repeat); and a stream is never
//! retried after its first byte reached the client, since the client would see two answers
//! spliced together.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::Method;

/// Upper bound on attempts per request, whatever the config.
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;

/// Response header the pipeline sets with the number of attempts made.
pub const ATTEMPTS_HEADER: &str = "x-ditto-attempts";

/// A set of HTTP status codes (100-639), as a bitmap: `Copy`, no allocation, O(1) lookup.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    /// No status.
    pub const fn empty() -> StatusSet {
        StatusSet([0; 10])
    }

    /// 500-599.
    pub fn server_errors() -> StatusSet {
        let mut s = StatusSet::empty();
        for code in 500..=599 {
            s.insert(code);
        }
        s
    }

    /// `429,500,502,503,504` (the original's default retry list).
    pub fn default_retry() -> StatusSet {
        let mut s = StatusSet::empty();
        for code in [429, 500, 502, 503, 504] {
            s.insert(code);
        }
        s
    }

    /// Parse a CSV list: codes (`429`), ranges (`500-504`) and classes (`5xx`), blanks
    /// ignored; an empty string is the empty set. Codes must be 100-599.
    pub fn parse_csv(csv: &str) -> Result<StatusSet, String> {
        let mut s = StatusSet::empty();
        for item in csv.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let bad = || format!("invalid status code {item:?} (expected 100-599, a range or 5xx)");
            let lower = item.to_ascii_lowercase();
            let (lo, hi) = if let Some(class) = lower.strip_suffix("xx") {
                let c: u16 = class.parse().map_err(|_| bad())?;
                if !(1..=5).contains(&c) {
                    return Err(bad());
                }
                (c * 100, c * 100 + 99)
            } else if let Some((a, b)) = item.split_once('-') {
                let a: u16 = a.trim().parse().map_err(|_| bad())?;
                let b: u16 = b.trim().parse().map_err(|_| bad())?;
                (a, b)
            } else {
                let c: u16 = item.parse().map_err(|_| bad())?;
                (c, c)
            };
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(bad());
            }
            for code in lo..=hi {
                s.insert(code);
            }
        }
        Ok(s)
    }

    /// Add `code` (ignored outside 0-639).
    pub fn insert(&mut self, code: u16) {
        let c = usize::from(code);
        if let Some(w) = self.0.get_mut(c / 64) {
            *w |= 1 << (c % 64);
        }
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: u16) -> bool {
        let c = usize::from(code);
        self.0.get(c / 64).is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    /// True when no status is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The codes in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..640u16).filter(|&c| self.contains(c))
    }
}

impl std::fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl std::fmt::Display for StatusSet {
    /// The CSV form (`429,500,502`), which [`StatusSet::parse_csv`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// What to do about one kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    None,
    Fallback,
    Retry,
}

impl ErrorAction {
    /// `none`, `fallback` or `retry`.
    pub fn parse(s: &str) -> Result<ErrorAction, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(ErrorAction::None),
            "fallback" => Ok(ErrorAction::Fallback),
            "retry" => Ok(ErrorAction::Retry),
            _ => Err(format!(
                "invalid action {s:?} (expected none, fallback or retry)"
            )),
        }
    }

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorAction::None => "none",
            ErrorAction::Fallback => "fallback",
            ErrorAction::Retry => "retry",
        }
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The backend answered with a status the client might not want to see; `retry_after`
    /// is its parsed `Retry-After` header ([`parse_retry_after`]).
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Connect, TLS, reset or malformed response.
    Network,
    /// No response head in time.
    Timeout,
}

/// The policy's answer after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Give the client this attempt's result.
    Stop,
    /// Send to the next candidate now.
    Fallback,
    /// Wait `delay`, then send to the next candidate, or to the same backend again when
    /// `same_backend`.
    Retry { delay: Duration, same_backend: bool },
}

/// Where the request stands when a failure is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Attempts made so far, the failed one included (>= 1).
    pub attempts: u32,
    /// Length of the request's candidate list.
    pub candidates: usize,
    /// Whether a candidate not yet tried remains.
    pub has_next: bool,
    /// The answer of [`may_resend`] for this request now.
    pub may_resend: bool,
}

/// Retry/fallback settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// `--proxy-retry`.
    pub enabled: bool,
    pub retry_statuses: StatusSet,
    pub fallback_statuses: StatusSet,
    pub network_action: ErrorAction,
    pub timeout_action: ErrorAction,
    /// Attempts per request, first included; `None`: one per candidate.
    pub max_attempts: Option<u32>,
    /// Backoff before the first retry (doubles each time; default 100 ms).
    pub backoff_base: Duration,
    /// Largest backoff (default 2 s).
    pub backoff_max: Duration,
    /// Longest `Retry-After` waited for (default 10 s).
    pub retry_after_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            enabled: false,
            retry_statuses: StatusSet::default_retry(),
            fallback_statuses: StatusSet::empty(),
            network_action: ErrorAction::Fallback,
            timeout_action: ErrorAction::Fallback,
            max_attempts: None,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            retry_after_cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Validate `--proxy-retry-max-attempts` (1 to [`MAX_ATTEMPTS_LIMIT`]).
    pub fn parse_max_attempts(s: &str) -> Result<u32, String> {
        match s.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_ATTEMPTS_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!(
                "invalid max attempts {s:?} (expected 1 to {MAX_ATTEMPTS_LIMIT})"
            )),
        }
    }

    /// Attempts allowed for a request with `candidates` candidates.
    pub fn attempt_limit(&self, candidates: usize) -> u32 {
        let n = self
            .max_attempts
            .unwrap_or_else(|| u32::try_from(candidates).unwrap_or(u32::MAX));
        n.clamp(1, MAX_ATTEMPTS_LIMIT)
    }

    /// The configured action for `failure`, before limits and the safety guard.
    pub fn action(&self, failure: &Failure) -> ErrorAction {
        if !self.enabled {
            return match failure {
                Failure::Network => ErrorAction::Fallback,
                _ => ErrorAction::None,
            };
        }
        match failure {
            Failure::Network => self.network_action,
            Failure::Timeout => self.timeout_action,
            Failure::Status { status, .. } => {
                if self.retry_statuses.contains(*status) {
                    ErrorAction::Retry
                } else if self.fallback_statuses.contains(*status) {
                    ErrorAction::Fallback
                } else {
                    ErrorAction::None
                }
            }
        }
    }

    /// Decide what follows a failed attempt. `jitter` supplies the backoff's randomness.
    pub fn decide(&self, failure: &Failure, p: Progress, jitter: &mut Jitter) -> Decision {
        if p.attempts >= self.attempt_limit(p.candidates) || !p.may_resend {
            return Decision::Stop;
        }
        match self.action(failure) {
            ErrorAction::None => Decision::Stop,
            ErrorAction::Fallback if p.has_next => Decision::Fallback,
            ErrorAction::Fallback => Decision::Stop,
            ErrorAction::Retry => {
                let backoff = backoff(p.attempts, self.backoff_base, self.backoff_max, jitter);
                if p.has_next {
                    return Decision::Retry {
                        delay: backoff,
                        same_backend: false,
                    };
                }
                let retry_after = match failure {
                    Failure::Status { retry_after, .. } => retry_after.unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                if retry_after > self.retry_after_cap {
                    return Decision::Stop;
                }
                Decision::Retry {
                    delay: backoff.max(retry_after),
                    same_backend: true,
                }
            }
        }
    }
}

/// The safety guard: may this request be sent (again) to a backend?
///
/// - never once `stream_started` (a byte of the response reached the client);
/// - always when no byte may have reached an upstream yet (connect refused, DNS, TLS);
/// - for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE), always;
/// - for POST and PATCH, only when the client sent `x-request-id`.
pub fn may_resend(
    method: Method,
    bytes_may_have_reached_upstream: bool,
    client_sent_request_id: bool,
    stream_started: bool,
) -> bool {
    if stream_started {
        return false;
    }
    !bytes_may_have_reached_upstream || method.is_idempotent() || client_sent_request_id
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, base x 2^(attempt-1))]`
/// (AWS's "full jitter": spreads a thundering herd best for the same total wait).
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: &mut Jitter) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let ceiling = base
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(max)
        .min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(jitter.below_inclusive(nanos))
}

/// A small deterministic random source (SplitMix64) for jitter: the same seed gives the same
/// delays, which makes backoff testable; seed it per request (e.g. request-id hash ^ a core
/// counter) in production.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A source starting from `seed`.
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (the tiny modulo bias is irrelevant for jitter).
    pub fn below_inclusive(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }
}

/// Parse a `Retry-After` value: delay-seconds (`120`) or an HTTP-date (IMF-fixdate, RFC 850 or
/// asctime), relative to `now`. A date in the past is zero. `None` when unparseable. The cap
/// is applied by [`RetryPolicy::decide`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // A huge number of seconds saturates rather than failing: it is still "too long".
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(v)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Unix seconds of an HTTP-date (RFC 9110 section 5.6.7), all three historical formats.
fn parse_http_date(s: &str) -> Option<u64> {
    let mut parts = s.split_whitespace();
    let first = parts.next()?;
    let (day, month, year, time) = if let Some(weekday) = first.strip_suffix(',') {
        let second = parts.next()?;
        if weekday.len() == 3 {
            // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
            let (month, year, time) = (parts.next()?, parts.next()?, parts.next()?);
            (second, month, year.parse::<u64>().ok()?, time)
        } else {
            // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
            let mut d = second.split('-');
            let (day, month, yy) = (d.next()?, d.next()?, d.next()?);
            let yy: u64 = yy.parse().ok()?;
            // Two-digit years: RFC 9110 says a date more than 50 years ahead is in the past;
            // for a Retry-After, "70-99 is 19xx" is the same rule in practice.
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            (day, month, year, parts.next()?)
        }
    } else {
        // asctime: Sun Nov  6 08:49:37 1994
        let (month, day, time, year) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        (day, month, year.parse::<u64>().ok()?, time)
    };
    let zone = parts.next();
    if zone.is_some_and(|z| z != "GMT" && z != "UTC") || parts.next().is_some() {
        return None;
    }
    let day: u64 = day.parse().ok()?;
    let month = match month {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let mut hms = time.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || sec > 60
        || !(1970..=9999).contains(&year)
    {
        return None;
    }
    // The checks above keep the date at or after 1970: the day count is not negative.
    let days = crate::civil::days_from_civil(year as i64, month as u32, day as u32) as u64;
    Some(days * 86_400 + h * 3_600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> RetryPolicy {
        RetryPolicy {
            enabled: true,
            ..RetryPolicy::default()
        }
    }

    fn status(s: u16) -> Failure {
        Failure::Status {
            status: s,
            retry_after: None,
        }
    }

    fn progress(attempts: u32, candidates: usize, has_next: bool) -> Progress {
        Progress {
            attempts,
            candidates,
            has_next,
            may_resend: true,
        }
    }

    #[test]
    fn status_csv_lists() {
        let s = StatusSet::parse_csv(" 429, 500-502 ,5xx,,").expect("valid");
        assert!(s.contains(429) && s.contains(501) && s.contains(599));
        assert!(!s.contains(428) && !s.contains(600) && !s.contains(404));
        assert_eq!(StatusSet::parse_csv("").expect("empty"), StatusSet::empty());
        assert!(StatusSet::parse_csv("").expect("empty").is_empty());
        for bad in [
            "abc", "99", "600", "503-500", "6xx", "999xx", "0xx", "4x", "-", "500-",
        ] {
            assert!(StatusSet::parse_csv(bad).is_err(), "{bad}");
        }
        let d = StatusSet::default_retry();
        assert_eq!(d.to_string(), "429,500,502,503,504");
        assert_eq!(StatusSet::parse_csv(&d.to_string()), Ok(d));
        assert_eq!(
            format!("{:?}", StatusSet::parse_csv("404").expect("ok")),
            "{404}"
        );
        let mut s = StatusSet::empty();
        s.insert(u16::MAX);
        assert!(s.is_empty(), "out-of-range codes are ignored");
    }

    #[test]
    fn actions_parse() {
        assert_eq!(ErrorAction::parse("Retry"), Ok(ErrorAction::Retry));
        assert_eq!(ErrorAction::parse(" fallback "), Ok(ErrorAction::Fallback));
        assert_eq!(ErrorAction::parse("none"), Ok(ErrorAction::None));
        assert!(ErrorAction::parse("again").is_err());
        for a in [ErrorAction::None, ErrorAction::Fallback, ErrorAction::Retry] {
            assert_eq!(ErrorAction::parse(a.as_str()), Ok(a));
        }
        assert_eq!(RetryPolicy::parse_max_attempts("3"), Ok(3));
        for bad in ["0", "11", "-1", "x"] {
            assert!(RetryPolicy::parse_max_attempts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disabled_policy_only_falls_back_on_network_errors() {
        let p = RetryPolicy::default();
        let mut j = Jitter::new(1);
        assert_eq!(
            p.decide(&Failure::Network, progress(1, 3, true), &mut j),
            Decision::Fallback
        );
        assert_eq!(
            p.decide(&Failure::Timeout, progress(1, 3, true), &mut j),
            Decision::Stop
        );
        assert_eq!(
            p.decide(&status(503), progress(1, 3, true), &mut j),
            Decision::Stop
        );
    }

    #[test]
    fn per_status_actions_retry_wins_over_fallback() {
        let mut p = enabled();
        p.fallback_statuses = StatusSet::parse_csv("404,503").expect("csv");
        assert_eq!(p.action(&status(429)), ErrorAction::Retry);
        assert_eq!(p.action(&status(503)), ErrorAction::Retry, "in both lists");
        assert_eq!(p.action(&status(404)), ErrorAction::Fallback);
        assert_eq!(p.action(&status(400)), ErrorAction::None);
        let mut j = Jitter::new(7);
        assert_eq!(
            p.decide(&status(404), progress(1, 2, true), &mut j),
            Decision::Fallback
        );
        assert_eq!(
            p.decide(&status(404), progress(1, 2, false), &mut j),
            Decision::Stop
        );
        assert_eq!(
            p.decide(&status(400), progress(1, 2, true), &mut j),
            Decision::Stop
        );
        match p.decide(&status(500), progress(1, 2, true), &mut j) {
            Decision::Retry {
                delay,
                same_backend: false,
            } => assert!(delay <= Duration::from_millis(100)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn network_and_timeout_actions() {
        let mut p = enabled();
        p.network_action = ErrorAction::Retry;
        p.timeout_action = ErrorAction::None;
        let mut j = Jitter::new(3);
        assert_eq!(
            p.decide(&Failure::Network, progress(1, 1, false), &mut j),
            Decision::Stop,
            "one candidate: the default limit is one attempt"
        );
        p.max_attempts = Some(3);
        assert!(matches!(
            p.decide(&Failure::Network, progress(1, 1, false), &mut j),
            Decision::Retry {
                same_backend: true,
                ..
            }
        ));
        assert_eq!(
            p.decide(&Failure::Timeout, progress(1, 3, true), &mut j),
            Decision::Stop
        );
        p.timeout_action = ErrorAction::Fallback;
        assert_eq!(
            p.decide(&Failure::Timeout, progress(1, 3, true), &mut j),
            Decision::Fallback
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let mut p = enabled();
        let mut j = Jitter::new(0);
        assert_eq!(p.attempt_limit(3), 3);
        assert_eq!(p.attempt_limit(0), 1);
        assert_eq!(p.attempt_limit(50), MAX_ATTEMPTS_LIMIT);
        assert_eq!(
            p.decide(&status(503), progress(3, 3, true), &mut j),
            Decision::Stop
        );
        p.max_attempts = Some(1_000);
        assert_eq!(
            p.attempt_limit(2),
            MAX_ATTEMPTS_LIMIT,
            "a retry storm stays bounded"
        );
        let mut attempts = 1;
        while let Decision::Retry { .. } =
            p.decide(&status(503), progress(attempts, 1, false), &mut j)
        {
            attempts += 1;
        }
        assert_eq!(attempts, MAX_ATTEMPTS_LIMIT);
    }

    #[test]
    fn safety_guard_overrides_the_policy() {
        let mut p = enabled();
        p.network_action = ErrorAction::Retry;
        let mut j = Jitter::new(0);
        let guarded = Progress {
            may_resend: false,
            ..progress(1, 3, true)
        };
        assert_eq!(p.decide(&Failure::Network, guarded, &mut j), Decision::Stop);
        assert_eq!(p.decide(&status(503), guarded, &mut j), Decision::Stop);
    }

    #[test]
    fn may_resend_rules() {
        use Method::*;
        // Nothing reached an upstream: always safe, whatever the method.
        for m in [Get, Post, Patch, Put, Delete, Head, Options] {
            assert!(may_resend(m, false, false, false), "{m:?}");
        }
        // Bytes may have reached it: idempotent methods only...
        for m in [Get, Put, Delete, Head, Options] {
            assert!(may_resend(m, true, false, false), "{m:?}");
        }
        for m in [Post, Patch] {
            assert!(!may_resend(m, true, false, false), "{m:?}");
            // ... unless the client sent x-request-id.
            assert!(may_resend(m, true, true, false), "{m:?}");
        }
        // Never after the first byte of a stream reached the client.
        for m in [Get, Post] {
            for reached in [false, true] {
                for id in [false, true] {
                    assert!(!may_resend(m, reached, id, true));
                }
            }
        }
    }

    #[test]
    fn backoff_is_exponential_capped_full_jitter_and_deterministic() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 1..=40 {
            let ceiling = (base * 2u32.pow((attempt - 1).min(20))).min(max);
            let mut j = Jitter::new(u64::from(attempt));
            for _ in 0..200 {
                assert!(
                    backoff(attempt, base, max, &mut j) <= ceiling,
                    "attempt {attempt}"
                );
            }
        }
        let (mut a, mut b) = (Jitter::new(42), Jitter::new(42));
        let xs: Vec<Duration> = (1..6).map(|n| backoff(n, base, max, &mut a)).collect();
        let ys: Vec<Duration> = (1..6).map(|n| backoff(n, base, max, &mut b)).collect();
        assert_eq!(xs, ys, "same seed, same delays");
        // Full jitter spreads over the whole range.
        let mut j = Jitter::new(9);
        let samples: Vec<Duration> = (0..1000).map(|_| backoff(5, base, max, &mut j)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(1400)));
        assert_eq!(backoff(3, Duration::ZERO, max, &mut j), Duration::ZERO);
        let _ = backoff(u32::MAX, Duration::MAX, Duration::MAX, &mut j);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for date in [
            "Sun, 06 Nov 1994 08:50:07 GMT",
            "Sunday, 06-Nov-94 08:50:07 GMT",
            "Sun Nov  6 08:50:07 1994",
        ] {
            assert_eq!(
                parse_retry_after(date, now),
                Some(Duration::from_secs(30)),
                "{date}"
            );
        }
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO),
            "past dates mean now"
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:00 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(1_767_225_600))
        );
        assert_eq!(
            parse_retry_after("Tue, 29 Feb 2028 12:00:00 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(1_835_438_400))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun,",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_on_the_same_backend_up_to_the_cap() {
        let mut p = enabled();
        p.max_attempts = Some(3);
        let mut j = Jitter::new(5);
        let f = |secs| Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            p.decide(&f(5), progress(1, 1, false), &mut j),
            Decision::Retry {
                delay: Duration::from_secs(5),
                same_backend: true
            }
        );
        assert_eq!(
            p.decide(&f(60), progress(1, 1, false), &mut j),
            Decision::Stop,
            "over the cap: give the client the 429 and its Retry-After"
        );
        // Another backend need not wait for this one's Retry-After.
        match p.decide(&f(60), progress(1, 2, true), &mut j) {
            Decision::Retry {
                delay,
                same_backend: false,
            } => assert!(delay <= Duration::from_millis(100)),
            d => panic!("{d:?}"),
        }
    }
}
