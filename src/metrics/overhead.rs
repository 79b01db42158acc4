//! Gateway overhead: time a request spends inside the gateway, upstream waits excluded. Sent to
//! clients as `x-ditto-overhead-us`, logged, and observed in `ditto_gateway_overhead_seconds`.

use std::time::{Duration, Instant};

/// The response header carrying the overhead in microseconds.
pub const HEADER: &str = "x-ditto-overhead-us";

/// A request's stopwatch: wall time since the request head arrived, minus every interval the
/// gateway spent waiting on an upstream (one per attempt: retries and fallbacks add up).
///
/// The header goes out with the response head, so its value is the overhead *so far*: parsing,
/// auth, limits, routing, connecting (a new upstream connection counts as overhead: the pool
/// exists to avoid it) and writing the request. For a stream, the time relaying body chunks is
/// added later; the access log and the histogram get the final value.
#[derive(Debug, Clone, Copy)]
pub struct Overhead {
    start: Instant,
    upstream: Duration,
    waiting_since: Option<Instant>,
}

impl Overhead {
    /// Start at `start` (when the request head was parsed).
    pub fn new(start: Instant) -> Overhead {
        Overhead {
            start,
            upstream: Duration::ZERO,
            waiting_since: None,
        }
    }

    /// When the request started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The request has been written upstream; the gateway now waits for the upstream. A second
    /// call without [`Self::upstream_end`] keeps the first start.
    pub fn upstream_start(&mut self, now: Instant) {
        if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
    }

    /// The upstream answered (head, or a body chunk while relaying) or failed: stop counting
    /// upstream time. Without a matching start this does nothing.
    pub fn upstream_end(&mut self, now: Instant) {
        if let Some(since) = self.waiting_since.take() {
            self.upstream += now.saturating_duration_since(since);
        }
    }

    /// Time spent waiting on upstreams so far (an open wait counts up to `now`).
    pub fn upstream(&self, now: Instant) -> Duration {
        self.upstream
            + self
                .waiting_since
                .map(|s| now.saturating_duration_since(s))
                .unwrap_or_default()
    }

    /// Gateway time so far in microseconds: elapsed since start minus upstream waits.
    pub fn overhead_us(&self, now: Instant) -> u64 {
        let total = now.saturating_duration_since(self.start);
        total.saturating_sub(self.upstream(now)).as_micros() as u64
    }

    /// Elapsed microseconds since start.
    pub fn elapsed_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_micros() as u64
    }

    /// Append `x-ditto-overhead-us: N\r\n` to a response head being built.
    pub fn write_header(&self, now: Instant, head: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(head, "{HEADER}: {}\r\n", self.overhead_us(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    #[test]
    fn upstream_waits_are_excluded_and_attempts_add_up() {
        let t0 = Instant::now();
        let mut o = Overhead::new(t0);
        o.upstream_start(at(t0, 100));
        o.upstream_start(at(t0, 150)); // ignored: already waiting
        o.upstream_end(at(t0, 1_100));
        o.upstream_end(at(t0, 5_000)); // ignored: not waiting
        o.upstream_start(at(t0, 1_200)); // retry
        o.upstream_end(at(t0, 2_200));
        assert_eq!(o.upstream(at(t0, 2_300)), Duration::from_micros(2_000));
        assert_eq!(o.overhead_us(at(t0, 2_300)), 300);
        assert_eq!(o.elapsed_us(at(t0, 2_300)), 2_300);
    }

    #[test]
    fn an_open_wait_counts_as_upstream_and_never_underflows() {
        let t0 = Instant::now();
        let mut o = Overhead::new(t0);
        o.upstream_start(at(t0, 10));
        assert_eq!(o.overhead_us(at(t0, 1_000)), 10);
        assert_eq!(o.overhead_us(t0), 0, "a clock before start is clamped");
        let mut head = Vec::new();
        o.write_header(at(t0, 1_000), &mut head);
        assert_eq!(head, b"x-ditto-overhead-us: 10\r\n");
    }
}
