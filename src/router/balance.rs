//! Load balancing over a request's ordered candidate list: beyond weights.
//!
//! The router gives each request its candidates in weighted order (the FNV-1a weighted pick
//! first, then the rest in file order: [`crate::router::Group::candidates`]). Weighted random
//! alone keeps sending a share of traffic to a backend that has become slow or saturated, so
//! [`order`] can re-rank that list by live load:
//!
//! - [`Strategy::Weighted`]: the list as the router gave it (compatible with the original).
//! - [`Strategy::LeastInFlight`]: fewest requests in flight first. In-flight counts are the
//!   per-backend atomic counters every core already maintains, so the view is global.
//! - [`Strategy::Latency`]: lowest `latency EWMA x (in_flight + 1)` first (the "peak EWMA"
//!   cost of Finagle and Linkerd: latency alone would herd every request onto the fastest
//!   backend until it slows down; multiplying by its queue spreads the load in proportion).
//!
//! The sorts are stable, so ties keep the weighted order: with equal loads every strategy
//! gives exactly the weighted choice, deterministic per request id.
//!
//! **Filtering**: backends that are not available (breaker open, probe taken, health checks
//! down) are dropped first; *if filtering leaves nothing, the full list is used*, since trying
//! a backend that may be down beats refusing the request outright.
//!
//! **Latency** ([`LatencyEwma`]): an exponentially weighted moving average of time to
//! response head, with a time-based half-life: a sample's weight is `1 - 2^(-dt/half_life)`
//! (at least [`MIN_SAMPLE_WEIGHT`], so bursts still move it). Unknown backends are treated
//! optimistically (as fast as the fastest known candidate, so a new or recovered backend gets
//! tried) and are then penalized by what they measure; failures record a penalty sample
//! ([`LatencyEwma::observe_failure`]). A stale estimate decays toward zero with the same
//! half-life, so a backend that was slow long ago is tried again instead of starving forever.
//! Keep one EWMA table per core (`Rc<RefCell<..>>`, updated when a response head arrives):
//! each core's own traffic is a large enough sample and no message is needed.
//!
//! Everything here is a pure function of its inputs (time is passed in), for unit tests.

/// How to rank a request's candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The router's weighted order, unchanged.
    #[default]
    Weighted,
    /// Fewest in-flight requests first.
    LeastInFlight,
    /// Lowest latency EWMA x (in-flight + 1) first.
    Latency,
}

impl Strategy {
    /// `weighted`, `least_in_flight` (or `least-in-flight`, `least_inflight`), `latency` (or
    /// `ewma`, `latency_ewma`).
    pub fn parse(s: &str) -> Result<Strategy, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "weighted" | "weight" => Ok(Strategy::Weighted),
            "least_in_flight" | "least_inflight" | "least_requests" => Ok(Strategy::LeastInFlight),
            "latency" | "ewma" | "latency_ewma" => Ok(Strategy::Latency),
            _ => Err(format!(
                "unknown balancing strategy {s:?} (expected weighted, least_in_flight or latency)"
            )),
        }
    }

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::LeastInFlight => "least_in_flight",
            Strategy::Latency => "latency",
        }
    }
}

/// The least weight a new sample gets, whatever the time since the last one: at high request
/// rates `dt` is ~0 and the half-life alone would freeze the average; 0.1 makes it roughly the
/// mean of the last ten samples.
pub const MIN_SAMPLE_WEIGHT: f64 = 0.1;

/// A latency average with a decay half-life.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencyEwma {
    mean_us: f64,
    at_ms: u64,
    samples: u64,
}

impl LatencyEwma {
    /// Add a sample (microseconds to response head) taken at `now_ms`.
    pub fn observe(&mut self, sample_us: f64, now_ms: u64, half_life_ms: u64) {
        let sample = if sample_us.is_finite() {
            sample_us.max(0.0)
        } else {
            0.0
        };
        if self.samples == 0 {
            self.mean_us = sample;
        } else {
            let dt = now_ms.saturating_sub(self.at_ms) as f64;
            let w = (1.0 - decay(dt, half_life_ms)).max(MIN_SAMPLE_WEIGHT);
            self.mean_us += w * (sample - self.mean_us);
        }
        self.at_ms = self.at_ms.max(now_ms);
        self.samples = self.samples.saturating_add(1);
    }

    /// Record a failed attempt as a penalty sample: `penalty_us` (e.g. the timeout), or twice
    /// the current mean if that is larger, so a failing backend sinks in the ranking even when
    /// it fails fast.
    pub fn observe_failure(&mut self, penalty_us: f64, now_ms: u64, half_life_ms: u64) {
        let sample = penalty_us.max(2.0 * self.mean_us);
        self.observe(sample, now_ms, half_life_ms);
    }

    /// The estimate at `now_ms`: the mean, decayed toward zero by the time since the last
    /// sample. `None` before the first sample.
    pub fn estimate(&self, now_ms: u64, half_life_ms: u64) -> Option<f64> {
        if self.samples == 0 {
            return None;
        }
        let dt = now_ms.saturating_sub(self.at_ms) as f64;
        Some(self.mean_us * decay(dt, half_life_ms))
    }

    /// Samples taken so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// `2^(-dt / half_life)`; a zero half-life means "no memory".
fn decay(dt_ms: f64, half_life_ms: u64) -> f64 {
    if half_life_ms == 0 {
        return if dt_ms > 0.0 { 0.0 } else { 1.0 };
    }
    (-dt_ms / half_life_ms as f64).exp2()
}

/// Live per-backend facts the ranking needs, supplied by the pipeline.
pub trait Loads {
    /// Usable now: breaker closed (or probe available) and health checks passing.
    fn is_available(&self, backend: usize) -> bool;
    /// Requests in flight to `backend` (all cores).
    fn in_flight(&self, backend: usize) -> u32;
    /// Latency estimate in microseconds, `None` when unknown.
    fn latency_us(&self, backend: usize) -> Option<f64>;
}

/// Rank `weighted` (the router's order) into `out` (cleared first): available backends only
/// unless none is, then sorted by `strategy`, ties kept in weighted order.
///
/// Returns `true` when nothing was available and `out` is the full list: the pipeline must
/// then send without asking the breakers ([`crate::router::breaker::BreakerView::admit`]
/// would skip every one of them).
pub fn order(
    strategy: Strategy,
    weighted: &[usize],
    loads: &impl Loads,
    out: &mut Vec<usize>,
) -> bool {
    out.clear();
    out.extend(weighted.iter().copied().filter(|&b| loads.is_available(b)));
    let full_list = out.is_empty() && !weighted.is_empty();
    if full_list {
        out.extend_from_slice(weighted);
    }
    match strategy {
        Strategy::Weighted => {}
        Strategy::LeastInFlight => {
            stable_sort_by_key(out, |b| f64::from(loads.in_flight(b)));
        }
        Strategy::Latency => {
            // Unknown backends are assumed as fast as the fastest known candidate.
            let optimistic = out
                .iter()
                .filter_map(|&b| loads.latency_us(b))
                .fold(f64::INFINITY, f64::min);
            let optimistic = if optimistic.is_finite() {
                optimistic
            } else {
                0.0
            };
            stable_sort_by_key(out, |b| {
                let latency = loads.latency_us(b).unwrap_or(optimistic);
                // +1 us so that a zero estimate still scales with the queue.
                (latency + 1.0) * (f64::from(loads.in_flight(b)) + 1.0)
            });
        }
    }
    full_list
}

/// Insertion sort: candidate lists are a handful long, it is stable, and it allocates nothing.
fn stable_sort_by_key(v: &mut [usize], key: impl Fn(usize) -> f64) {
    for i in 1..v.len() {
        let mut j = i;
        let k = key(v[i]);
        while j > 0 && key(v[j - 1]).total_cmp(&k).is_gt() {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{fnv1a, Group, Weighted};
    use super::*;

    #[derive(Default)]
    struct Fake {
        down: Vec<usize>,
        in_flight: Vec<u32>,
        latency: Vec<Option<f64>>,
    }

    impl Loads for Fake {
        fn is_available(&self, b: usize) -> bool {
            !self.down.contains(&b)
        }
        fn in_flight(&self, b: usize) -> u32 {
            self.in_flight.get(b).copied().unwrap_or(0)
        }
        fn latency_us(&self, b: usize) -> Option<f64> {
            self.latency.get(b).copied().flatten()
        }
    }

    fn ranked(s: Strategy, weighted: &[usize], f: &Fake) -> Vec<usize> {
        let mut out = Vec::new();
        order(s, weighted, f, &mut out);
        out
    }

    #[test]
    fn order_says_when_it_fell_back_to_the_full_list() {
        let mut out = vec![9];
        let some_down = Fake {
            down: vec![0],
            ..Fake::default()
        };
        assert!(!order(Strategy::Weighted, &[0, 1], &some_down, &mut out));
        assert_eq!(out, vec![1]);
        let all_down = Fake {
            down: vec![0, 1],
            ..Fake::default()
        };
        assert!(order(Strategy::Weighted, &[0, 1], &all_down, &mut out));
        assert_eq!(out, vec![0, 1]);
        assert!(!order(Strategy::Weighted, &[], &all_down, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn parse_strategies() {
        assert_eq!(Strategy::parse("weighted"), Ok(Strategy::Weighted));
        assert_eq!(
            Strategy::parse("Least-In-Flight"),
            Ok(Strategy::LeastInFlight)
        );
        assert_eq!(Strategy::parse("ewma"), Ok(Strategy::Latency));
        assert!(Strategy::parse("random").is_err());
        assert_eq!(
            Strategy::parse(Strategy::Latency.as_str()),
            Ok(Strategy::Latency)
        );
    }

    #[test]
    fn weighted_keeps_the_router_order_and_fnv_choice() {
        let g = Group::new((0..3).map(|backend| Weighted {
            backend,
            weight: 1.0,
        }));
        let f = Fake::default();
        for id in ["a", "b", "req-7"] {
            let list: Vec<usize> = g.candidates(fnv1a(id.as_bytes())).collect();
            for s in [
                Strategy::Weighted,
                Strategy::LeastInFlight,
                Strategy::Latency,
            ] {
                assert_eq!(
                    ranked(s, &list, &f),
                    list,
                    "equal loads keep the weighted order"
                );
            }
        }
    }

    #[test]
    fn filtering_drops_unavailable_unless_nothing_is_left() {
        let f = Fake {
            down: vec![1],
            ..Fake::default()
        };
        assert_eq!(ranked(Strategy::Weighted, &[1, 0, 2], &f), vec![0, 2]);
        let all_down = Fake {
            down: vec![0, 1, 2],
            ..Fake::default()
        };
        assert_eq!(
            ranked(Strategy::Weighted, &[1, 0, 2], &all_down),
            vec![1, 0, 2],
            "nothing available: the full list"
        );
        assert!(ranked(Strategy::Latency, &[], &f).is_empty());
    }

    #[test]
    fn least_in_flight_ranks_by_queue_ties_in_weighted_order() {
        let f = Fake {
            in_flight: vec![5, 0, 2, 0],
            ..Fake::default()
        };
        assert_eq!(
            ranked(Strategy::LeastInFlight, &[0, 3, 1, 2], &f),
            vec![3, 1, 2, 0]
        );
    }

    #[test]
    fn latency_prefers_fast_but_spreads_by_queue() {
        let f = Fake {
            in_flight: vec![0, 0, 0],
            latency: vec![Some(50_000.0), Some(10_000.0), Some(20_000.0)],
            ..Fake::default()
        };
        assert_eq!(ranked(Strategy::Latency, &[0, 1, 2], &f), vec![1, 2, 0]);
        // The fast one is busy: 10ms x 3 > 20ms x 1.
        let busy = Fake {
            in_flight: vec![0, 2, 0],
            ..f
        };
        assert_eq!(ranked(Strategy::Latency, &[0, 1, 2], &busy), vec![2, 1, 0]);
    }

    #[test]
    fn unknown_latency_is_optimistic_then_penalized_by_its_queue() {
        let f = Fake {
            in_flight: vec![0, 0],
            latency: vec![Some(30_000.0), None],
            ..Fake::default()
        };
        // Unknown backend 1 counts as fast as the fastest known (a tie: weighted order).
        assert_eq!(ranked(Strategy::Latency, &[0, 1], &f), vec![0, 1]);
        assert_eq!(ranked(Strategy::Latency, &[1, 0], &f), vec![1, 0]);
        let queued = Fake {
            in_flight: vec![0, 1],
            ..f
        };
        assert_eq!(ranked(Strategy::Latency, &[1, 0], &queued), vec![0, 1]);
    }

    #[test]
    fn ewma_moves_with_samples_and_half_life() {
        let hl = 1_000;
        let mut e = LatencyEwma::default();
        assert_eq!(e.estimate(0, hl), None);
        e.observe(100.0, 0, hl);
        assert_eq!(e.estimate(0, hl), Some(100.0));
        // One half-life later a new sample gets half the weight.
        e.observe(200.0, 1_000, hl);
        assert_eq!(e.estimate(1_000, hl), Some(150.0));
        // Samples at the same instant still move it (minimum weight).
        e.observe(1_150.0, 1_000, hl);
        let est = e.estimate(1_000, hl).expect("known");
        assert!((est - 250.0).abs() < 1e-9, "{est}");
        // Staleness decays the estimate so a slow backend is retried eventually.
        let later = e.estimate(3_000, hl).expect("known");
        assert!((later - 62.5).abs() < 1e-9, "{later}");
        assert_eq!(e.samples(), 3);
        // Garbage in is clamped, not propagated.
        e.observe(f64::NAN, 3_000, hl);
        e.observe(-5.0, 3_000, hl);
        assert!(e.estimate(3_000, hl).is_some_and(f64::is_finite));
    }

    #[test]
    fn failures_push_the_estimate_up() {
        let hl = 10_000;
        let mut e = LatencyEwma::default();
        e.observe(1_000.0, 0, hl);
        e.observe_failure(0.0, 0, hl);
        let est = e.estimate(0, hl).expect("known");
        assert!(est > 1_000.0, "{est}");
        let mut fresh = LatencyEwma::default();
        fresh.observe_failure(5_000_000.0, 0, hl);
        assert_eq!(fresh.estimate(0, hl), Some(5_000_000.0));
    }

    #[test]
    fn zero_half_life_forgets_at_once() {
        let mut e = LatencyEwma::default();
        e.observe(100.0, 0, 0);
        e.observe(300.0, 1, 0);
        assert_eq!(e.estimate(1, 0), Some(300.0));
        assert_eq!(e.estimate(2, 0), Some(0.0));
    }
}
