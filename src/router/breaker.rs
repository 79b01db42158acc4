//! Circuit breaker per backend: stop sending traffic to a backend that keeps failing, probe it
//! after a cooldown, and take it back when a probe succeeds (REFERENCE section 9).
//!
//! # States
//!
//! ```text
//!            N consecutive counted failures             cooldown elapsed (tick)
//!   Closed ----------------------------------> Open ----------------------------> HalfOpen
//!     ^                                          ^                                  |  |
//!     |              probe failed                |                                  |  |
//!     |              (or reset)                  +----------------------------------+  |
//!     +-------------------------------------------------------------------------------+
//!                                 probe succeeded (or admin reset)
//! ```
//!
//! A *counted* failure is a network error, a timeout, or a response whose status is in the
//! configured set (default: every 5xx). Any other response, 4xx included, is a success: the
//! backend answered, the request was at fault. A success resets the consecutive count.
//!
//! # Who owns what (thread-per-core)
//!
//! The state machines ([`BreakerBoard`]) live on the **control-plane thread**, the only writer.
//! Cores never lock and never run the state machine:
//!
//! - **Cores -> plane**: every finished attempt is reported as an [`Outcome`] message (backend,
//!   result, latency, probe ticket). Report when the response head (or the error) is known,
//!   not at the end of a stream: the breaker judges the backend, not the client's patience.
//! - **Plane -> cores**: a compact table ([`BreakerView`], an `Arc` of one `AtomicU8` state
//!   byte and one `AtomicU32` probe ticket per backend) that cores read with plain atomic
//!   loads on every routing decision (no message, no wait). The state byte is written only by
//!   the plane, so one failing backend is skipped by every core as soon as the plane trips it,
//!   instead of each core learning the failure on its own.
//! - **Exactly one probe**: entering half-open, the plane publishes a ticket (a non-zero
//!   generation number). A core that wants to use a half-open backend must win it with one
//!   compare-exchange (ticket -> 0); the others skip the backend. The winner's request is the
//!   probe and its outcome carries the ticket; the plane acts only on the outcome of the
//!   current generation, so a stale probe (one presumed lost after `probe_timeout`, when a new
//!   ticket was issued) cannot close or reopen the breaker. Outcomes of ordinary requests that
//!   were already in flight when the breaker opened are ignored while it is open or half-open.
//!   The ticket is the single place where a core writes shared state, and it is a one-shot
//!   claim, not a lock.
//! - **Time** is passed in (`now_ms`: milliseconds on any monotonic clock the plane chooses),
//!   so every transition is a pure function of its inputs and unit-testable without sleeping.
//!   The plane calls [`BreakerBoard::tick`] when [`BreakerBoard::next_deadline`] is due (or on
//!   a coarse timer); that is when open breakers become half-open.
//!
//! Health checks share the table: the plane sets a backend's "down" bit from its active checks
//! ([`BreakerBoard::set_healthy`]), and cores treat a down backend like an open breaker (see
//! [`crate::router::balance`] for "if filtering leaves nothing, use the full list").

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::balance::LatencyEwma;
use super::retry::StatusSet;

/// Breaker settings (`--proxy-circuit-breaker`, `--proxy-cb-failure-threshold`,
/// `--proxy-cb-cooldown-secs`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// When false the board still counts failures (for `/admin/backends`) but never opens.
    pub enabled: bool,
    /// Consecutive counted failures that open the breaker (>= 1; default 3).
    pub failure_threshold: u32,
    /// How long an open breaker stays open before a probe is allowed (default 30 s).
    pub cooldown_ms: u64,
    /// After this long without the probe's outcome, the probe is presumed lost and a new ticket
    /// is issued (default 30 s; keep it at least the backend's response-head timeout).
    pub probe_timeout_ms: u64,
    /// Statuses that count as failures (default 500-599).
    pub counted_statuses: StatusSet,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: false,
            failure_threshold: 3,
            cooldown_ms: 30_000,
            probe_timeout_ms: 30_000,
            counted_statuses: StatusSet::server_errors(),
        }
    }
}

/// How one attempt against a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The backend answered with this status (counted as a failure if configured so).
    Status(u16),
    /// Connect, TLS, reset or malformed-response errors.
    Network,
    /// No response head within the backend's timeout.
    Timeout,
}

/// A won probe ticket; pass it back in the [`Outcome`] of the probe request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTicket(u32);

/// The message a core sends to the plane after each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Backend index.
    pub backend: usize,
    pub attempt: Attempt,
    /// Time to the response head (or to the error).
    pub latency: Duration,
    /// Set when this attempt was the half-open probe.
    pub probe: Option<ProbeTicket>,
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open` (for `/admin/backends`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn to_bits(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_bits(b: u8) -> BreakerState {
        match b & STATE_MASK {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

const STATE_MASK: u8 = 0b11;
/// Set by the plane when active health checks find the backend down.
const DOWN_BIT: u8 = 0x80;

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub backend: usize,
    pub from: BreakerState,
    pub to: BreakerState,
}

/// What a core may do with a backend right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: send.
    Pass,
    /// Half-open and this core won the probe: send, and report the outcome with the ticket.
    Probe(ProbeTicket),
    /// Open, or half-open with the probe taken by someone else: try another backend.
    Skip,
}

struct Cell {
    /// State bits plus [`DOWN_BIT`]; written only by the plane.
    state: AtomicU8,
    /// The half-open probe ticket (0: none available).
    ticket: AtomicU32,
}

/// The cores' read side of the breakers: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct BreakerView {
    cells: Arc<[Cell]>,
}

impl std::fmt::Debug for BreakerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries((0..self.cells.len()).map(|b| self.state(b)))
            .finish()
    }
}

impl BreakerView {
    fn load(&self, backend: usize) -> u8 {
        // Acquire pairs with the plane's Release store so that a core seeing half-open also
        // sees the ticket published before it (a plain load on x86).
        self.cells
            .get(backend)
            .map_or(0, |c| c.state.load(Ordering::Acquire))
    }

    /// The breaker state of `backend` (closed for an unknown index).
    pub fn state(&self, backend: usize) -> BreakerState {
        BreakerState::from_bits(self.load(backend))
    }

    /// False when active health checks found `backend` down.
    pub fn is_healthy(&self, backend: usize) -> bool {
        self.load(backend) & DOWN_BIT == 0
    }

    /// Whether `backend` could be used now, without claiming anything: healthy and closed, or
    /// half-open with the probe still available. For ordering and filtering candidates.
    pub fn is_available(&self, backend: usize) -> bool {
        let bits = self.load(backend);
        if bits & DOWN_BIT != 0 {
            return false;
        }
        match BreakerState::from_bits(bits) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self
                .cells
                .get(backend)
                .is_some_and(|c| c.ticket.load(Ordering::Acquire) != 0),
        }
    }

    /// Decide, at send time, whether this core may use `backend` (claims the probe ticket of a
    /// half-open backend). Health is not considered here: the pipeline filters unhealthy
    /// backends when ordering and may still use them when nothing else is left.
    pub fn admit(&self, backend: usize) -> Admit {
        let Some(cell) = self.cells.get(backend) else {
            return Admit::Pass;
        };
        match BreakerState::from_bits(cell.state.load(Ordering::Acquire)) {
            BreakerState::Closed => Admit::Pass,
            BreakerState::Open => Admit::Skip,
            BreakerState::HalfOpen => {
                let t = cell.ticket.load(Ordering::Acquire);
                if t != 0
                    && cell
                        .ticket
                        .compare_exchange(t, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    Admit::Probe(ProbeTicket(t))
                } else {
                    Admit::Skip
                }
            }
        }
    }

    /// Number of backends in the table.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// True when the table has no backends.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// One backend's breaker, as the plane sees it.
#[derive(Debug, Clone, Default)]
struct Breaker {
    state: BreakerState,
    /// Consecutive counted failures.
    failures: u32,
    opened_at_ms: u64,
    /// Generation of the current half-open ticket and when it was issued.
    probe: Option<(u32, u64)>,
    generation: u32,
    trips: u64,
    last_failure: Option<Attempt>,
    latency: LatencyEwma,
    healthy: bool,
}

/// What `/admin/backends` shows for one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    /// Consecutive counted failures so far.
    pub consecutive_failures: u32,
    /// Times the breaker opened since start (or reset).
    pub trips: u64,
    /// When it last opened (plane clock), if it ever did.
    pub opened_at_ms: Option<u64>,
    pub last_failure: Option<Attempt>,
    /// Latency EWMA in microseconds, if any attempt finished.
    pub latency_us: Option<f64>,
    /// Health-check verdict (true when checks are off).
    pub healthy: bool,
}

/// Latency half-life of the board's EWMA (what `/admin/backends` shows).
const ADMIN_LATENCY_HALF_LIFE_MS: u64 = 10_000;

/// The plane's breakers for every backend, and the table it publishes to cores.
pub struct BreakerBoard {
    cfg: BreakerConfig,
    breakers: Vec<Breaker>,
    cells: Arc<[Cell]>,
}

impl BreakerBoard {
    /// Breakers for `backends` backends, all closed and healthy.
    pub fn new(backends: usize, cfg: BreakerConfig) -> BreakerBoard {
        let cells: Arc<[Cell]> = (0..backends)
            .map(|_| Cell {
                state: AtomicU8::new(0),
                ticket: AtomicU32::new(0),
            })
            .collect();
        let breakers = (0..backends)
            .map(|_| Breaker {
                healthy: true,
                ..Breaker::default()
            })
            .collect();
        BreakerBoard {
            cfg,
            breakers,
            cells,
        }
    }

    /// The table for cores (clone it into each core).
    pub fn view(&self) -> BreakerView {
        BreakerView {
            cells: Arc::clone(&self.cells),
        }
    }

    /// The current settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Replace the settings (admin router change). Disabling closes every breaker.
    pub fn set_config(&mut self, cfg: BreakerConfig) {
        let disable = !cfg.enabled;
        self.cfg = cfg;
        if disable {
            for b in 0..self.breakers.len() {
                self.close(b);
            }
        }
    }

    /// Whether `attempt` counts as a failure under the current settings.
    pub fn is_failure(&self, attempt: Attempt) -> bool {
        match attempt {
            Attempt::Network | Attempt::Timeout => true,
            Attempt::Status(s) => self.cfg.counted_statuses.contains(s),
        }
    }

    /// Apply one outcome reported by a core. Returns the transition it caused, if any.
    pub fn record(&mut self, o: &Outcome, now_ms: u64) -> Option<Transition> {
        let failed = self.is_failure(o.attempt);
        let cfg_enabled = self.cfg.enabled;
        let threshold = self.cfg.failure_threshold.max(1);
        let br = self.breakers.get_mut(o.backend)?;
        br.latency.observe(
            o.latency.as_micros() as f64,
            now_ms,
            ADMIN_LATENCY_HALF_LIFE_MS,
        );
        if failed {
            br.last_failure = Some(o.attempt);
        }
        let state = br.state;
        match state {
            BreakerState::Closed => {
                if !failed {
                    br.failures = 0;
                    return None;
                }
                br.failures = br.failures.saturating_add(1);
                if cfg_enabled && br.failures >= threshold {
                    return Some(self.open(o.backend, now_ms));
                }
                None
            }
            // Outcomes of requests sent before the breaker opened say nothing new.
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                let current = br.probe.map(|(g, _)| g);
                match o.probe {
                    Some(ProbeTicket(g)) if Some(g) == current => {
                        if failed {
                            br.failures = br.failures.saturating_add(1);
                            Some(self.open(o.backend, now_ms))
                        } else {
                            Some(self.close(o.backend))
                        }
                    }
                    _ => None,
                }
            }
        }
    }

    /// Advance time: open breakers whose cooldown is over become half-open (with a fresh probe
    /// ticket), and a half-open probe outstanding for longer than `probe_timeout_ms` is
    /// presumed lost and replaced. Returns the transitions.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for b in 0..self.breakers.len() {
            let br = &self.breakers[b];
            match br.state {
                BreakerState::Open
                    if now_ms >= br.opened_at_ms.saturating_add(self.cfg.cooldown_ms) =>
                {
                    self.issue_probe(b, now_ms);
                    self.publish(b, BreakerState::HalfOpen);
                    out.push(Transition {
                        backend: b,
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                    });
                }
                BreakerState::HalfOpen => {
                    let taken = self.cells[b].ticket.load(Ordering::Acquire) == 0;
                    let issued = br.probe.map_or(0, |(_, at)| at);
                    if taken && now_ms >= issued.saturating_add(self.cfg.probe_timeout_ms) {
                        self.issue_probe(b, now_ms);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The earliest plane time at which [`tick`](Self::tick) has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.breakers
            .iter()
            .filter_map(|br| match br.state {
                BreakerState::Open => Some(br.opened_at_ms.saturating_add(self.cfg.cooldown_ms)),
                BreakerState::HalfOpen => br
                    .probe
                    .map(|(_, at)| at.saturating_add(self.cfg.probe_timeout_ms)),
                BreakerState::Closed => None,
            })
            .min()
    }

    /// `POST /admin/backends/{name}/reset`: close the breaker and forget its failures.
    pub fn reset(&mut self, backend: usize) -> Option<Transition> {
        let br = self.breakers.get_mut(backend)?;
        br.trips = 0;
        br.last_failure = None;
        let from = br.state;
        let t = self.close(backend);
        (from != BreakerState::Closed).then_some(t)
    }

    /// Record an active health-check verdict; cores see it at once.
    pub fn set_healthy(&mut self, backend: usize, healthy: bool) {
        if let Some(br) = self.breakers.get_mut(backend) {
            br.healthy = healthy;
            let state = br.state;
            self.publish(backend, state);
        }
    }

    /// The admin view of one backend.
    pub fn snapshot(&self, backend: usize, now_ms: u64) -> Option<BreakerSnapshot> {
        let br = self.breakers.get(backend)?;
        Some(BreakerSnapshot {
            state: br.state,
            consecutive_failures: br.failures,
            trips: br.trips,
            opened_at_ms: (br.trips > 0).then_some(br.opened_at_ms),
            last_failure: br.last_failure,
            latency_us: br.latency.estimate(now_ms, ADMIN_LATENCY_HALF_LIFE_MS),
            healthy: br.healthy,
        })
    }

    fn open(&mut self, b: usize, now_ms: u64) -> Transition {
        let br = &mut self.breakers[b];
        let from = br.state;
        br.state = BreakerState::Open;
        br.opened_at_ms = now_ms;
        br.trips += 1;
        br.probe = None;
        self.cells[b].ticket.store(0, Ordering::Release);
        self.publish(b, BreakerState::Open);
        Transition {
            backend: b,
            from,
            to: BreakerState::Open,
        }
    }

    fn close(&mut self, b: usize) -> Transition {
        let br = &mut self.breakers[b];
        let from = br.state;
        br.state = BreakerState::Closed;
        br.failures = 0;
        br.probe = None;
        self.cells[b].ticket.store(0, Ordering::Release);
        self.publish(b, BreakerState::Closed);
        Transition {
            backend: b,
            from,
            to: BreakerState::Closed,
        }
    }

    fn issue_probe(&mut self, b: usize, now_ms: u64) {
        let br = &mut self.breakers[b];
        br.state = BreakerState::HalfOpen;
        br.generation = br.generation.wrapping_add(1).max(1);
        br.probe = Some((br.generation, now_ms));
        // Ticket first, state second (Release): a core that sees half-open sees the ticket.
        self.cells[b].ticket.store(br.generation, Ordering::Release);
    }

    fn publish(&self, b: usize, state: BreakerState) {
        let healthy = self.breakers[b].healthy;
        let bits = state.to_bits() | if healthy { 0 } else { DOWN_BIT };
        self.cells[b].state.store(bits, Ordering::Release);
    }
}

impl std::fmt::Debug for BreakerBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerBoard")
            .field("cfg", &self.cfg)
            .field("breakers", &self.breakers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_threshold: 3,
            cooldown_ms: 1_000,
            probe_timeout_ms: 5_000,
            counted_statuses: StatusSet::server_errors(),
        }
    }

    fn out(backend: usize, attempt: Attempt) -> Outcome {
        Outcome {
            backend,
            attempt,
            latency: Duration::from_millis(10),
            probe: None,
        }
    }

    fn probe_out(backend: usize, attempt: Attempt, t: ProbeTicket) -> Outcome {
        Outcome {
            probe: Some(t),
            ..out(backend, attempt)
        }
    }

    fn won(a: Admit) -> ProbeTicket {
        match a {
            Admit::Probe(t) => t,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    #[test]
    fn opens_after_n_consecutive_counted_failures() {
        let mut board = BreakerBoard::new(2, cfg());
        let view = board.view();
        assert_eq!(board.record(&out(0, Attempt::Network), 0), None);
        assert_eq!(board.record(&out(0, Attempt::Timeout), 1), None);
        let t = board
            .record(&out(0, Attempt::Status(503)), 2)
            .expect("trips");
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(view.state(0), BreakerState::Open);
        assert_eq!(view.admit(0), Admit::Skip);
        assert!(!view.is_available(0));
        assert_eq!(view.admit(1), Admit::Pass, "other backends unaffected");
    }

    #[test]
    fn successes_and_uncounted_statuses_reset_the_count() {
        let mut board = BreakerBoard::new(1, cfg());
        for now in 0..10 {
            board.record(&out(0, Attempt::Status(500)), now);
            board.record(&out(0, Attempt::Status(502)), now);
            // 429 and 404 are answers, not outages, unless configured.
            board.record(
                &out(0, Attempt::Status(if now % 2 == 0 { 429 } else { 404 })),
                now,
            );
        }
        assert_eq!(board.view().state(0), BreakerState::Closed);
        let mut c = cfg();
        c.counted_statuses = StatusSet::parse_csv("429,5xx").expect("csv");
        let mut board = BreakerBoard::new(1, c);
        for now in 0..3 {
            board.record(&out(0, Attempt::Status(429)), now);
        }
        assert_eq!(board.view().state(0), BreakerState::Open);
    }

    #[test]
    fn cooldown_then_exactly_one_probe_then_closed() {
        let mut board = BreakerBoard::new(1, cfg());
        let (core_a, core_b) = (board.view(), board.view());
        for now in 0..3 {
            board.record(&out(0, Attempt::Network), now);
        }
        assert_eq!(board.next_deadline(), Some(2 + 1_000));
        assert!(board.tick(1_001).is_empty(), "cooldown not over");
        let t = board.tick(1_002);
        assert_eq!(t.len(), 1);
        assert_eq!(core_a.state(0), BreakerState::HalfOpen);
        assert!(core_b.is_available(0));
        let ticket = won(core_a.admit(0));
        assert_eq!(core_b.admit(0), Admit::Skip, "only one probe at a time");
        assert_eq!(core_a.admit(0), Admit::Skip);
        assert!(!core_b.is_available(0));
        // A stale ordinary outcome does not decide anything.
        assert_eq!(board.record(&out(0, Attempt::Status(200)), 1_003), None);
        assert_eq!(core_a.state(0), BreakerState::HalfOpen);
        let t = board
            .record(&probe_out(0, Attempt::Status(200), ticket), 1_004)
            .expect("closes");
        assert_eq!(
            (t.from, t.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!(core_b.admit(0), Admit::Pass);
        assert_eq!(
            board.snapshot(0, 1_004).map(|s| s.consecutive_failures),
            Some(0)
        );
    }

    #[test]
    fn failed_probe_reopens_for_another_cooldown() {
        let mut board = BreakerBoard::new(1, cfg());
        let view = board.view();
        for now in 0..3 {
            board.record(&out(0, Attempt::Network), now);
        }
        board.tick(2_000);
        let ticket = won(view.admit(0));
        let t = board
            .record(&probe_out(0, Attempt::Status(500), ticket), 2_100)
            .expect("reopens");
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
        assert_eq!(view.admit(0), Admit::Skip);
        assert!(board.tick(3_099).is_empty());
        assert_eq!(board.tick(3_100).len(), 1);
        assert!(matches!(view.admit(0), Admit::Probe(_)));
        assert_eq!(board.snapshot(0, 3_100).map(|s| s.trips), Some(2));
    }

    #[test]
    fn lost_probe_is_replaced_and_its_late_outcome_ignored() {
        let mut board = BreakerBoard::new(1, cfg());
        let view = board.view();
        for now in 0..3 {
            board.record(&out(0, Attempt::Network), now);
        }
        board.tick(1_002);
        let old = won(view.admit(0));
        assert_eq!(board.next_deadline(), Some(1_002 + 5_000));
        board.tick(6_001);
        assert_eq!(view.admit(0), Admit::Skip, "not yet presumed lost");
        board.tick(6_002);
        let new = won(view.admit(0));
        assert_ne!(old, new);
        assert_eq!(
            board.record(&probe_out(0, Attempt::Status(200), old), 6_003),
            None
        );
        assert_eq!(view.state(0), BreakerState::HalfOpen);
        assert!(board
            .record(&probe_out(0, Attempt::Status(200), new), 6_004)
            .is_some());
        assert_eq!(view.state(0), BreakerState::Closed);
    }

    #[test]
    fn untaken_ticket_is_not_reissued() {
        let mut board = BreakerBoard::new(1, cfg());
        let view = board.view();
        for now in 0..3 {
            board.record(&out(0, Attempt::Network), now);
        }
        board.tick(1_002);
        board.tick(100_000);
        let t = won(view.admit(0));
        assert!(board
            .record(&probe_out(0, Attempt::Status(204), t), 100_001)
            .is_some());
    }

    #[test]
    fn disabled_board_counts_but_never_opens() {
        let mut board = BreakerBoard::new(1, BreakerConfig::default());
        for now in 0..100 {
            assert_eq!(board.record(&out(0, Attempt::Network), now), None);
        }
        let snap = board.snapshot(0, 100).expect("backend 0");
        assert_eq!(snap.state, BreakerState::Closed);
        assert_eq!(snap.consecutive_failures, 100);
        assert_eq!(snap.last_failure, Some(Attempt::Network));
        assert!(snap.latency_us.is_some());
    }

    #[test]
    fn reset_and_disable_close_everything() {
        let mut board = BreakerBoard::new(2, cfg());
        let view = board.view();
        for now in 0..3 {
            board.record(&out(0, Attempt::Network), now);
            board.record(&out(1, Attempt::Network), now);
        }
        let t = board.reset(0).expect("was open");
        assert_eq!(t.to, BreakerState::Closed);
        assert_eq!(view.admit(0), Admit::Pass);
        assert_eq!(board.reset(0), None, "already closed");
        assert_eq!(board.snapshot(0, 3).map(|s| s.trips), Some(0));
        board.set_config(BreakerConfig {
            enabled: false,
            ..cfg()
        });
        assert_eq!(view.admit(1), Admit::Pass);
    }

    #[test]
    fn health_bit_is_independent_of_the_breaker() {
        let mut board = BreakerBoard::new(1, cfg());
        let view = board.view();
        board.set_healthy(0, false);
        assert!(!view.is_healthy(0));
        assert!(!view.is_available(0));
        assert_eq!(view.state(0), BreakerState::Closed);
        assert_eq!(
            view.admit(0),
            Admit::Pass,
            "admit leaves health to the ordering"
        );
        for now in 0..3 {
            board.record(&out(0, Attempt::Network), now);
        }
        assert_eq!(view.state(0), BreakerState::Open);
        assert!(!view.is_healthy(0), "opening keeps the down bit");
        board.set_healthy(0, true);
        assert!(view.is_healthy(0));
        assert_eq!(view.state(0), BreakerState::Open);
    }

    #[test]
    fn unknown_backends_are_harmless() {
        let mut board = BreakerBoard::new(1, cfg());
        let view = board.view();
        assert_eq!(board.record(&out(7, Attempt::Network), 0), None);
        assert_eq!(view.admit(7), Admit::Pass);
        assert_eq!(view.state(7), BreakerState::Closed);
        assert_eq!(board.reset(7), None);
        assert!(board.snapshot(7, 0).is_none());
    }
}
