//! Gateway metrics: per-core counters, summed across cores only when someone scrapes.
//!
//! # Design: single-writer slots, summed at scrape time
//!
//! Every data-plane core owns a [`CoreMetrics`] (it is `!Send`, so it never leaves the core that
//! made it). Its counters live in a heap block, [`CoreSlot`], that only this core ever writes:
//! each counter is an `AtomicU64` updated with a relaxed *load, add, store*, never with a
//! read-modify-write instruction. With a single writer this cannot lose updates, and on x86-64
//! and aarch64 a relaxed load and a relaxed store compile to the same plain `mov`/`ldr`/`str` a
//! `Cell<u64>` would: no `lock` prefix, no exclusive monitor, no fence. The atomics are there only
//! so that the scrape thread may read the values concurrently without a data race (reading a
//! `Cell` from another thread would be undefined behaviour; reading a relaxed atomic is not).
//!
//! Each core's block is its own allocation aligned to 128 bytes, so no two cores write the same
//! cache line. The scraper reads every core's block (it may see one core's counters a few
//! nanoseconds apart from another's, which Prometheus tolerates by design) and sums them.
//!
//! We chose this over "cores answer a scrape message" because a scrape then needs nothing from
//! the data-plane cores: it works while they are saturated or stuck, needs no cross-core
//! channel, and shows values that are exact the moment the request finished (tests can scrape
//! right after their traffic).
//!
//! Labels with an open set of values (virtual key ids, model names) are interned: the first time
//! a core sees a value it asks the [`Registry`] (a mutex, the cold path, taken at most a few
//! thousand times per core in its lifetime) for a label id, bounded by [`LabelCaps`]; values over
//! a cap become [`OVERFLOW_LABEL`]. After that the core finds the series in its own hash map.
//! Backends are known from config, so their series are a fixed array (index = backend index,
//! plus one overflow slot for an index beyond the configured list).
//!
//! Rendering: [`render_prometheus`] (text format 0.0.4, `GET /metrics/prometheus`) and
//! [`render_json`] (`GET /metrics`), both from a [`Snapshot`].

mod core;
pub mod overhead;
pub mod probe;
mod registry;
mod render;
pub mod text_format;

pub use self::core::{CoreMetrics, CoreSlot, InFlight, RequestDone};
pub use self::probe::{CoreObs, Finish, ObsOptions, Observability, Probe};
pub use self::registry::{
    BackendTotals, ExternalCounter, LabelCaps, Registry, Snapshot, UsageTotals,
};
pub use self::render::{
    escape_label_value, json_from, prometheus_from, render_json, render_prometheus, Family, Kind,
    FAMILIES,
};

use std::sync::atomic::{AtomicU64, Ordering};

/// The label value that stands for every value over a label's cap.
pub const OVERFLOW_LABEL: &str = "__overflow__";

/// The key label of requests that carried no virtual key (keys not configured, or own endpoints).
pub const NO_KEY_LABEL: &str = "__none__";

/// A `u64` written by exactly one thread (its owner core) and read by any.
///
/// `add` is a relaxed load plus a relaxed store, not `fetch_add`: correct because only the owner
/// writes, and as cheap as a `Cell` (see the module doc). Never hand a `&Cell64` that may be
/// written to a second thread: [`CoreMetrics`] is `!Send` to make that impossible.
#[derive(Debug, Default)]
pub struct Cell64(AtomicU64);

impl Cell64 {
    /// Add `n` (wrapping; a counter wrapping after 2^64 events is not a practical concern).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Subtract `n` (wrapping; gauges are read back as `i64`).
    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    /// Overwrite the value (gauges set from a count the owner knows).
    #[inline]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value; any thread may call this.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (inclusive, microseconds) of the latency histogram buckets: from 50 µs (what
/// the gateway itself should cost) to 5 minutes (a long generation stream). `+Inf` follows.
pub const BUCKETS_US: [u64; 21] = [
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
];

/// Number of histogram buckets including `+Inf`.
pub const NBUCKETS: usize = BUCKETS_US.len() + 1;

/// A fixed-bucket latency histogram owned by one core. Buckets hold plain (not cumulative)
/// counts; rendering accumulates them. The count is the sum of the buckets.
#[derive(Debug, Default)]
pub struct HistCells {
    buckets: [Cell64; NBUCKETS],
    sum_us: Cell64,
}

impl HistCells {
    /// Record one observation of `us` microseconds.
    #[inline]
    pub(crate) fn observe(&self, us: u64) {
        // 21 sorted bounds: a binary search is 5 compares.
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].add(1);
        self.sum_us.add(us);
    }

    /// Add this histogram's values into `into`.
    pub(crate) fn sum_into(&self, into: &mut HistTotals) {
        for (t, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *t += b.get();
        }
        into.sum_us += self.sum_us.get();
    }
}

/// A histogram summed over cores: per-bucket (non-cumulative) counts and the sum in µs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistTotals {
    /// Per-bucket counts, `BUCKETS_US` order, the last one `+Inf`.
    pub buckets: [u64; NBUCKETS],
    /// Sum of the observations in microseconds.
    pub sum_us: u64,
}

impl HistTotals {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Upper bound (µs) of the bucket holding quantile `q` (0..=1), `u64::MAX` for `+Inf`,
    /// `None` when empty. Coarse by construction; the dashboards use `histogram_quantile`.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= rank {
                return Some(BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// What kind of request it was, from its path: a small closed set, so it can label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    Models,
    Images,
    Audio,
    Files,
    Batches,
    Rerank,
    Moderations,
    /// Any other `/v1/...` passthrough.
    OtherV1,
    Health,
    Metrics,
    Admin,
    /// Anything else (404s, probes).
    Other,
}

impl Endpoint {
    /// Every endpoint, in label order.
    pub const ALL: [Endpoint; 17] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::Models,
        Endpoint::Images,
        Endpoint::Audio,
        Endpoint::Files,
        Endpoint::Batches,
        Endpoint::Rerank,
        Endpoint::Moderations,
        Endpoint::OtherV1,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::Admin,
        Endpoint::Other,
    ];

    /// Number of endpoint classes.
    pub const COUNT: usize = Self::ALL.len();

    /// Classify a request target (path, query allowed). Aliases without `/v1` count as their
    /// `/v1` endpoint, as the pipeline rewrites them.
    pub fn classify(target: &str) -> Endpoint {
        let path = target.split(['?', '#']).next().unwrap_or("");
        let (v1, rest) = match path.strip_prefix("/v1") {
            Some(r) if r.is_empty() || r.starts_with('/') => (true, r),
            _ => (false, path),
        };
        let first = rest.trim_start_matches('/').split('/').next().unwrap_or("");
        let second = rest.trim_start_matches('/').split('/').nth(1).unwrap_or("");
        let api = match (first, second) {
            ("chat", "completions") => Some(Endpoint::ChatCompletions),
            ("completions", _) => Some(Endpoint::Completions),
            ("embeddings", _) => Some(Endpoint::Embeddings),
            ("responses", _) => Some(Endpoint::Responses),
            ("messages", _) => Some(Endpoint::Messages),
            ("models", _) => Some(Endpoint::Models),
            ("images", _) => Some(Endpoint::Images),
            ("audio", _) => Some(Endpoint::Audio),
            ("files", _) => Some(Endpoint::Files),
            ("batches", _) => Some(Endpoint::Batches),
            ("rerank", _) => Some(Endpoint::Rerank),
            ("moderations", _) => Some(Endpoint::Moderations),
            _ => None,
        };
        if let Some(e) = api {
            return e;
        }
        if v1 {
            return Endpoint::OtherV1;
        }
        match first {
            "health" | "ready" => Endpoint::Health,
            "metrics" => Endpoint::Metrics,
            "admin" | "key" => Endpoint::Admin,
            _ => Endpoint::Other,
        }
    }

    /// The `endpoint` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::Models => "models",
            Endpoint::Images => "images",
            Endpoint::Audio => "audio",
            Endpoint::Files => "files",
            Endpoint::Batches => "batches",
            Endpoint::Rerank => "rerank",
            Endpoint::Moderations => "moderations",
            Endpoint::OtherV1 => "other_v1",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Admin => "admin",
            Endpoint::Other => "other",
        }
    }

    /// A low-cardinality route for span names (`POST /v1/chat/completions`).
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
            Endpoint::Models => "/v1/models",
            Endpoint::Images => "/v1/images",
            Endpoint::Audio => "/v1/audio",
            Endpoint::Files => "/v1/files",
            Endpoint::Batches => "/v1/batches",
            Endpoint::Rerank => "/v1/rerank",
            Endpoint::Moderations => "/v1/moderations",
            Endpoint::OtherV1 => "/v1/*",
            Endpoint::Health => "/health",
            Endpoint::Metrics => "/metrics",
            Endpoint::Admin => "/admin",
            Endpoint::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The request method, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
    Other,
}

impl MethodClass {
    /// Every method class, in label order.
    pub const ALL: [MethodClass; 8] = [
        MethodClass::Get,
        MethodClass::Post,
        MethodClass::Put,
        MethodClass::Patch,
        MethodClass::Delete,
        MethodClass::Head,
        MethodClass::Options,
        MethodClass::Other,
    ];

    /// From the method token on the request line.
    pub fn parse(m: &str) -> MethodClass {
        match m {
            "GET" => MethodClass::Get,
            "POST" => MethodClass::Post,
            "PUT" => MethodClass::Put,
            "PATCH" => MethodClass::Patch,
            "DELETE" => MethodClass::Delete,
            "HEAD" => MethodClass::Head,
            "OPTIONS" => MethodClass::Options,
            _ => MethodClass::Other,
        }
    }

    /// The `method` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Get => "GET",
            MethodClass::Post => "POST",
            MethodClass::Put => "PUT",
            MethodClass::Patch => "PATCH",
            MethodClass::Delete => "DELETE",
            MethodClass::Head => "HEAD",
            MethodClass::Options => "OPTIONS",
            MethodClass::Other => "OTHER",
        }
    }
}

impl From<crate::http::Method> for MethodClass {
    fn from(m: crate::http::Method) -> MethodClass {
        use crate::http::Method as M;
        match m {
            M::Get => MethodClass::Get,
            M::Post => MethodClass::Post,
            M::Put => MethodClass::Put,
            M::Patch => MethodClass::Patch,
            M::Delete => MethodClass::Delete,
            M::Head => MethodClass::Head,
            M::Options => MethodClass::Options,
        }
    }
}

/// Status codes that get their own `code` label; any other code is labelled by its class
/// (`2xx`..`5xx`), and anything outside 100..=599 as `other`. Keeps the series count fixed.
pub const TRACKED_STATUS: [u16; 29] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 402, 403, 404, 405, 408, 409, 413,
    415, 422, 429, 431, 499, 500, 501, 502, 503, 504,
];

/// Status label slots: the tracked codes, then `1xx`..`5xx`, then `other`.
pub const STATUS_SLOTS: usize = TRACKED_STATUS.len() + 6;

/// The slot of a status code (see [`TRACKED_STATUS`]).
pub fn status_slot(status: u16) -> usize {
    if let Some(i) = TRACKED_STATUS.iter().position(|&s| s == status) {
        return i;
    }
    match status {
        100..=599 => TRACKED_STATUS.len() + (status / 100 - 1) as usize,
        _ => STATUS_SLOTS - 1,
    }
}

/// The `code` label value of a status slot.
pub fn status_slot_label(slot: usize) -> std::borrow::Cow<'static, str> {
    const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
    match TRACKED_STATUS.get(slot) {
        Some(s) => s.to_string().into(),
        None => CLASSES
            .get(slot - TRACKED_STATUS.len())
            .copied()
            .unwrap_or("other")
            .into(),
    }
}

/// Why the gateway refused a request itself (never reached, or stopped before, an upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// rpm/tpm over limit (429 `rate_limit_error`).
    RateLimited,
    /// Token or cost budget exhausted (402 `budget_exceeded`/`cost_budget_exceeded`).
    BudgetExceeded,
    /// A guardrail refused the request (403 `policy_error`, or 400 from `validate_schema`).
    GuardrailBlocked,
    /// Missing, unknown or disabled virtual key (401).
    AuthFailed,
    /// The global or every candidate backend's `max_in_flight` was full (429).
    InflightLimit,
    /// Malformed request (400), body too large (413), headers too large (431).
    BadRequest,
}

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; 6] = [
        Rejection::RateLimited,
        Rejection::BudgetExceeded,
        Rejection::GuardrailBlocked,
        Rejection::AuthFailed,
        Rejection::InflightLimit,
        Rejection::BadRequest,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::RateLimited => "rate_limited",
            Rejection::BudgetExceeded => "budget_exceeded",
            Rejection::GuardrailBlocked => "guardrail_blocked",
            Rejection::AuthFailed => "auth_failed",
            Rejection::InflightLimit => "inflight_limit",
            Rejection::BadRequest => "bad_request",
        }
    }
}

/// How a streamed (SSE or otherwise long) response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamEnd {
    /// The upstream finished the body and the client got all of it.
    Completed,
    /// The client went away (or stopped reading past the write timeout) mid-stream.
    ClientGone,
    /// The upstream failed mid-stream (reset, timeout, bad framing).
    UpstreamFailed,
}

impl StreamEnd {
    /// Every outcome, in label order.
    pub const ALL: [StreamEnd; 3] = [
        StreamEnd::Completed,
        StreamEnd::ClientGone,
        StreamEnd::UpstreamFailed,
    ];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Completed => "completed",
            StreamEnd::ClientGone => "client_gone",
            StreamEnd::UpstreamFailed => "upstream_failed",
        }
    }
}

/// What one attempt against a backend came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendOutcome {
    /// A response head arrived with this status.
    Status(u16),
    /// Could not connect (refused, DNS, TLS handshake).
    ConnectError,
    /// No response head within the backend's timeout.
    Timeout,
    /// The connection failed after connecting (reset, bad response framing).
    IoError,
}

impl BackendOutcome {
    /// Number of outcome label values.
    pub const COUNT: usize = 8;

    /// Label values, by slot.
    pub const LABELS: [&'static str; Self::COUNT] = [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "connect_error",
        "timeout",
        "io_error",
    ];

    fn slot(self) -> usize {
        match self {
            BackendOutcome::Status(s) => match s {
                100..=199 => 0,
                200..=299 => 1,
                300..=399 => 2,
                400..=499 => 3,
                _ => 4,
            },
            BackendOutcome::ConnectError => 5,
            BackendOutcome::Timeout => 6,
            BackendOutcome::IoError => 7,
        }
    }
}

/// Where a cache lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheSource {
    /// The per-node in-memory LRU.
    Memory,
    /// The shared Redis L2.
    Redis,
}

impl CacheSource {
    /// Every source, in label order.
    pub const ALL: [CacheSource; 2] = [CacheSource::Memory, CacheSource::Redis];

    /// The `source` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheSource::Memory => "memory",
            CacheSource::Redis => "redis",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = HistCells::default();
        for us in [0, 50, 51, 100, 300_000_000, 300_000_001, u64::MAX / 2] {
            h.observe(us);
        }
        let mut t = HistTotals::default();
        h.sum_into(&mut t);
        assert_eq!(t.buckets[0], 2, "0 and 50 are <= 50");
        assert_eq!(t.buckets[1], 2, "51 and 100 are <= 100");
        assert_eq!(t.buckets[BUCKETS_US.len() - 1], 1, "300 s exactly");
        assert_eq!(t.buckets[BUCKETS_US.len()], 2, "+Inf");
        assert_eq!(t.count(), 7);
        assert_eq!(t.quantile_bound_us(0.0), Some(50));
        assert_eq!(t.quantile_bound_us(1.0), Some(u64::MAX));
        assert!(BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn endpoints_classify_with_and_without_v1() {
        use Endpoint as E;
        for (p, e) in [
            ("/v1/chat/completions", E::ChatCompletions),
            ("/chat/completions?x=1", E::ChatCompletions),
            ("/v1/completions", E::Completions),
            ("/v1/embeddings", E::Embeddings),
            ("/responses", E::Responses),
            ("/v1/models/gpt-4o", E::Models),
            ("/v1/audio/speech", E::Audio),
            ("/files/abc/content", E::Files),
            ("/v1/fine_tuning/jobs", E::OtherV1),
            ("/v1", E::OtherV1),
            ("/v1x/chat/completions", E::Other),
            ("/health", E::Health),
            ("/ready", E::Health),
            ("/metrics/prometheus", E::Metrics),
            ("/admin/keys", E::Admin),
            ("/key/generate", E::Admin),
            ("/", E::Other),
            ("", E::Other),
        ] {
            assert_eq!(Endpoint::classify(p), e, "{p}");
        }
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }

    #[test]
    fn status_slots_are_exact_for_tracked_codes_else_by_class() {
        assert_eq!(status_slot_label(status_slot(200)), "200");
        assert_eq!(status_slot_label(status_slot(429)), "429");
        assert_eq!(status_slot_label(status_slot(418)), "4xx");
        assert_eq!(status_slot_label(status_slot(299)), "2xx");
        assert_eq!(status_slot_label(status_slot(103)), "1xx");
        assert_eq!(status_slot_label(status_slot(0)), "other");
        assert_eq!(status_slot_label(status_slot(999)), "other");
        let labels: std::collections::HashSet<_> =
            (0..STATUS_SLOTS).map(status_slot_label).collect();
        assert_eq!(labels.len(), STATUS_SLOTS, "labels are distinct");
    }

    #[test]
    fn single_writer_cells_add_and_sub() {
        let c = Cell64::default();
        c.add(5);
        c.sub(7);
        assert_eq!(c.get() as i64, -2);
        c.set(3);
        assert_eq!(c.get(), 3);
    }
}
