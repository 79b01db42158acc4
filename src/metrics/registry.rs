//! The process-wide [`Registry`]: every core's [`CoreSlot`], the label tables, and the
//! scrape-time sum ([`Snapshot`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ahash::{AHashMap, AHashSet};

use super::core::{CoreMetrics, CoreSlot};
use super::{
    BackendOutcome, CacheSource, Endpoint, HistTotals, MethodClass, Rejection, StreamEnd,
    OVERFLOW_LABEL, STATUS_SLOTS,
};

/// The label id of [`OVERFLOW_LABEL`].
pub(crate) const OVERFLOW_ID: u32 = u32::MAX;

/// Longest label value kept; longer values are cut (at a character boundary) before interning.
pub const MAX_LABEL_BYTES: usize = 128;

/// Caps on distinct label values (`--prometheus-max-*-series`). Values past a cap are counted
/// under [`OVERFLOW_LABEL`], so a client spraying model names costs bounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelCaps {
    /// Distinct virtual key ids (`--prometheus-max-key-series`, default 1000).
    pub keys: usize,
    /// Distinct model names (`--prometheus-max-model-series`, default 200).
    pub models: usize,
    /// Backends with their own series, in config order (`--prometheus-max-backend-series`,
    /// default 100); later backends share the overflow series.
    pub backends: usize,
    /// Distinct (key, model) pairs of the token and cost series (default 10,000).
    pub pairs: usize,
}

impl Default for LabelCaps {
    fn default() -> Self {
        LabelCaps {
            keys: 1000,
            models: 200,
            backends: 100,
            pairs: 10_000,
        }
    }
}

/// A counter kept outside the cores (the log sink's and the trace exporter's drop counts),
/// rendered with the core counters. Its owner updates it off the hot path.
#[derive(Debug, Clone)]
pub struct ExternalCounter {
    /// Full metric name, `ditto_gateway_` prefix included.
    pub name: &'static str,
    /// The HELP text.
    pub help: &'static str,
    /// The value.
    pub value: Arc<AtomicU64>,
}

/// Interned values of one open-ended label.
#[derive(Debug, Default)]
struct LabelTable {
    ids: AHashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl LabelTable {
    fn intern(&mut self, raw: &str, cap: usize) -> u32 {
        let clean = sanitize_label(raw);
        if let Some(&id) = self.ids.get(clean.as_str()) {
            return id;
        }
        if self.names.len() >= cap {
            return OVERFLOW_ID;
        }
        let id = self.names.len() as u32;
        self.names.push(clean.clone().into());
        self.ids.insert(clean.into(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map(|s| &**s)
            .unwrap_or(OVERFLOW_LABEL)
    }
}

/// A label value as it may appear in a metric: secrets masked (a client can put anything in a
/// `model` field), control characters dropped, at most [`MAX_LABEL_BYTES`].
fn sanitize_label(raw: &str) -> String {
    let masked = crate::log::redact::redact_secrets(raw);
    let mut out = String::with_capacity(masked.len().min(MAX_LABEL_BYTES));
    for c in masked.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_LABEL_BYTES {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        out.push_str("__empty__");
    }
    out
}

/// Lock, recovering from poison: every critical section here leaves its data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every core's metrics, and what is needed to name and sum them.
#[derive(Debug)]
pub struct Registry {
    backends: Vec<String>,
    caps: LabelCaps,
    cores: Mutex<Vec<Arc<CoreSlot>>>,
    keys: Mutex<LabelTable>,
    models: Mutex<LabelTable>,
    pairs: Mutex<AHashSet<(u32, u32)>>,
    external: Mutex<Vec<ExternalCounter>>,
    started: Instant,
}

impl Registry {
    /// A registry for these backends (config order; a backend's index is its position).
    pub fn new<I, S>(backends: I, caps: LabelCaps) -> Arc<Registry>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Arc::new(Registry {
            backends: backends
                .into_iter()
                .take(caps.backends)
                .map(|b| sanitize_label(b.as_ref()))
                .collect(),
            caps,
            cores: Mutex::default(),
            keys: Mutex::default(),
            models: Mutex::default(),
            pairs: Mutex::default(),
            external: Mutex::default(),
            started: Instant::now(),
        })
    }

    /// Register a core: call on the core's own thread (the result is `!Send`), once, when the
    /// core builds its state; keep the handle in the core's state for its lifetime.
    pub fn register_core(self: &Arc<Self>, core_id: usize) -> CoreMetrics {
        let slot = Arc::new(CoreSlot::new(core_id, self.backends.len()));
        lock(&self.cores).push(slot.clone());
        CoreMetrics::new(slot, self.clone())
    }

    /// Render a counter kept elsewhere along with the core counters.
    pub fn add_external(&self, counter: ExternalCounter) {
        lock(&self.external).push(counter);
    }

    /// The label caps in force.
    pub fn caps(&self) -> LabelCaps {
        self.caps
    }

    pub(crate) fn intern_key(&self, raw: &str) -> u32 {
        lock(&self.keys).intern(raw, self.caps.keys)
    }

    pub(crate) fn intern_model(&self, raw: &str) -> u32 {
        lock(&self.models).intern(raw, self.caps.models)
    }

    /// The series a (key, model) pair is counted under: its own while under the pair cap.
    pub(crate) fn admit_pair(&self, key: u32, model: u32) -> (u32, u32) {
        let mut pairs = lock(&self.pairs);
        if pairs.contains(&(key, model)) || pairs.len() < self.caps.pairs {
            pairs.insert((key, model));
            (key, model)
        } else {
            (OVERFLOW_ID, OVERFLOW_ID)
        }
    }

    /// Sum every core's counters now. Costs O(cores x series); meant for scrapes, not requests.
    pub fn snapshot(&self) -> Snapshot {
        let cores = lock(&self.cores).clone();
        let mut s = Snapshot {
            cores: cores.len(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            requests: [[0; MethodClass::ALL.len()]; Endpoint::COUNT],
            responses: [[0; STATUS_SLOTS]; Endpoint::COUNT],
            in_flight: 0,
            duration: vec![HistTotals::default(); Endpoint::COUNT],
            overhead: HistTotals::default(),
            bytes_in: 0,
            bytes_out: 0,
            rejected: [0; Rejection::ALL.len()],
            streams: [0; StreamEnd::ALL.len()],
            stream_bytes: 0,
            cache: [[0; 2]; CacheSource::ALL.len()],
            backends: self
                .backends
                .iter()
                .cloned()
                .chain(std::iter::once(OVERFLOW_LABEL.to_string()))
                .map(BackendTotals::named)
                .collect(),
            usage: Vec::new(),
            external: Vec::new(),
        };
        let mut usage: AHashMap<(u32, u32), UsageTotals> = AHashMap::new();
        for c in &cores {
            add_grid(&mut s.requests, &c.requests);
            add_grid(&mut s.responses, &c.responses);
            s.in_flight = s.in_flight.wrapping_add(c.in_flight.get() as i64);
            for (t, h) in s.duration.iter_mut().zip(&c.duration) {
                h.sum_into(t);
            }
            c.overhead.sum_into(&mut s.overhead);
            s.bytes_in += c.bytes_in.get();
            s.bytes_out += c.bytes_out.get();
            add_row(&mut s.rejected, &c.rejected);
            add_row(&mut s.streams, &c.streams);
            s.stream_bytes += c.stream_bytes.get();
            add_grid(&mut s.cache, &c.cache);
            for (t, b) in s.backends.iter_mut().zip(c.backends.iter()) {
                t.in_flight = t.in_flight.wrapping_add(b.in_flight.get() as i64);
                add_row(&mut t.outcomes, &b.outcomes);
                b.latency.sum_into(&mut t.latency);
                b.ttfb.sum_into(&mut t.ttfb);
                t.conn_opened += b.conn_opened.get();
                t.conn_reused += b.conn_reused.get();
                t.conn_closed += b.conn_closed.get();
                t.conn_idle += b.conn_idle.get();
            }
            for series in lock(&c.usage).iter() {
                let t = usage.entry((series.key, series.model)).or_default();
                t.requests += series.cells.requests.get();
                t.prompt_tokens += series.cells.prompt_tokens.get();
                t.completion_tokens += series.cells.completion_tokens.get();
                t.cost_pico_usd += series.cells.cost_pico_usd.get();
            }
        }
        // The overflow backend appears only when something was counted there.
        if s.backends.last().is_some_and(BackendTotals::is_zero) {
            s.backends.pop();
        }
        {
            let keys = lock(&self.keys);
            let models = lock(&self.models);
            s.usage = usage
                .into_iter()
                .map(|((k, m), mut t)| {
                    t.key = keys.name(k).to_string();
                    t.model = models.name(m).to_string();
                    t
                })
                .collect();
        }
        s.usage
            .sort_by(|a, b| (&a.key, &a.model).cmp(&(&b.key, &b.model)));
        s.external = lock(&self.external)
            .iter()
            .map(|e| (e.name, e.help, e.value.load(Ordering::Relaxed)))
            .collect();
        s
    }
}

fn add_row<const N: usize>(into: &mut [u64; N], from: &[super::Cell64; N]) {
    for (t, c) in into.iter_mut().zip(from) {
        *t += c.get();
    }
}

fn add_grid<const N: usize, const M: usize>(
    into: &mut [[u64; N]; M],
    from: &[[super::Cell64; N]; M],
) {
    for (t, c) in into.iter_mut().zip(from) {
        add_row(t, c);
    }
}

/// One backend's counters, summed over cores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendTotals {
    /// Backend name from config, or [`OVERFLOW_LABEL`].
    pub name: String,
    /// Attempts in flight now.
    pub in_flight: i64,
    /// Attempts by outcome, [`BackendOutcome::LABELS`] order.
    pub outcomes: [u64; BackendOutcome::COUNT],
    /// Request sent -> response head.
    pub latency: HistTotals,
    /// Request received -> first streamed byte to the client.
    pub ttfb: HistTotals,
    /// Connections opened.
    pub conn_opened: u64,
    /// Pooled connections reused.
    pub conn_reused: u64,
    /// Connections closed or discarded.
    pub conn_closed: u64,
    /// Idle pooled connections now.
    pub conn_idle: u64,
}

impl BackendTotals {
    fn named(name: String) -> BackendTotals {
        BackendTotals {
            name,
            ..Default::default()
        }
    }

    fn is_zero(&self) -> bool {
        *self == BackendTotals::named(self.name.clone())
    }

    /// Connections open now (opened minus closed).
    pub fn conn_open(&self) -> i64 {
        self.conn_opened as i64 - self.conn_closed as i64
    }
}

/// Tokens and cost of one (key, model) series, summed over cores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Virtual key id, [`super::NO_KEY_LABEL`] or [`OVERFLOW_LABEL`].
    pub key: String,
    /// Model, or [`OVERFLOW_LABEL`].
    pub model: String,
    /// Requests that reached an upstream.
    pub requests: u64,
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Cost in pico-USD (10^-12 USD).
    pub cost_pico_usd: u64,
}

/// Every counter summed over cores at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Registered cores.
    pub cores: usize,
    /// Seconds since the registry was made.
    pub uptime_s: f64,
    /// `[endpoint][method]` requests started.
    pub requests: [[u64; MethodClass::ALL.len()]; Endpoint::COUNT],
    /// `[endpoint][status slot]` requests finished.
    pub responses: [[u64; STATUS_SLOTS]; Endpoint::COUNT],
    /// Requests being served now.
    pub in_flight: i64,
    /// Request duration by endpoint ([`Endpoint::ALL`] order).
    pub duration: Vec<HistTotals>,
    /// Gateway overhead per request.
    pub overhead: HistTotals,
    /// Request body bytes in.
    pub bytes_in: u64,
    /// Response body bytes out.
    pub bytes_out: u64,
    /// Refusals by reason ([`Rejection::ALL`] order).
    pub rejected: [u64; Rejection::ALL.len()],
    /// Streams by how they ended ([`StreamEnd::ALL`] order).
    pub streams: [u64; StreamEnd::ALL.len()],
    /// Bytes relayed in streamed responses.
    pub stream_bytes: u64,
    /// `[source][0 = hit, 1 = miss]`.
    pub cache: [[u64; 2]; CacheSource::ALL.len()],
    /// Per backend, config order; an overflow entry last when it counted anything.
    pub backends: Vec<BackendTotals>,
    /// Per (key, model), sorted.
    pub usage: Vec<UsageTotals>,
    /// Counters kept outside the cores: (name, help, value).
    pub external: Vec<(&'static str, &'static str, u64)>,
}

impl Snapshot {
    /// Requests started, all endpoints and methods.
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().flatten().sum()
    }

    /// Requests finished with this status (or its class label when it is not tracked).
    pub fn responses_with_status(&self, status: u16) -> u64 {
        let slot = super::status_slot(status);
        self.responses.iter().map(|r| r[slot]).sum()
    }

    /// Refusals for one reason.
    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why as usize]
    }

    /// The backend totals by name.
    pub fn backend(&self, name: &str) -> Option<&BackendTotals> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// The usage series for a key and model.
    pub fn usage_of(&self, key: &str, model: &str) -> Option<&UsageTotals> {
        self.usage.iter().find(|u| u.key == key && u.model == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{RequestDone, NO_KEY_LABEL};

    fn done(status: u16) -> RequestDone {
        RequestDone {
            endpoint: Endpoint::ChatCompletions,
            status,
            duration_us: 1200,
            overhead_us: 30,
            bytes_in: 100,
            bytes_out: 400,
        }
    }

    #[test]
    fn cores_on_their_own_threads_are_summed_at_scrape() {
        let reg = Registry::new(["a", "b"], LabelCaps::default());
        let threads: Vec<_> = (0..4)
            .map(|core| {
                let reg = reg.clone();
                std::thread::spawn(move || {
                    let m = reg.register_core(core);
                    for i in 0..1000u64 {
                        m.request_started(Endpoint::ChatCompletions, MethodClass::Post);
                        let guard = m.backend_started((i % 2) as usize);
                        m.backend_response((i % 2) as usize, BackendOutcome::Status(200), 900);
                        drop(guard);
                        m.usage(Some("k1"), "gpt-4o", 10, 5, 1_000_000);
                        m.request_finished(&done(200));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("core thread");
        }
        let s = reg.snapshot();
        assert_eq!(s.cores, 4);
        assert_eq!(s.requests_total(), 4000);
        assert_eq!(s.responses_with_status(200), 4000);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.bytes_out, 1_600_000);
        assert_eq!(s.duration[0].count(), 4000);
        let a = s.backend("a").expect("backend a");
        assert_eq!(a.outcomes[1], 2000);
        assert_eq!(a.in_flight, 0);
        assert_eq!(s.backends.len(), 2, "no overflow backend when unused");
        let u = s.usage_of("k1", "gpt-4o").expect("usage series");
        assert_eq!(
            (
                u.requests,
                u.prompt_tokens,
                u.completion_tokens,
                u.cost_pico_usd
            ),
            (4000, 40_000, 20_000, 4_000_000_000)
        );
    }

    #[test]
    fn label_caps_send_excess_values_to_overflow() {
        let caps = LabelCaps {
            keys: 2,
            models: 3,
            backends: 1,
            pairs: 4,
        };
        let reg = Registry::new(["only", "dropped"], caps);
        let m = reg.register_core(0);
        for k in 0..5 {
            for model in 0..5 {
                m.usage(Some(&format!("key{k}")), &format!("m{model}"), 1, 1, 1);
            }
        }
        m.usage(None, "m0", 1, 0, 0);
        let _g = m.backend_started(7);
        let s = reg.snapshot();
        let keys: AHashSet<_> = s.usage.iter().map(|u| u.key.as_str()).collect();
        let models: AHashSet<_> = s.usage.iter().map(|u| u.model.as_str()).collect();
        assert!(keys.len() <= 3 && keys.contains(OVERFLOW_LABEL), "{keys:?}");
        assert!(
            models.len() <= 4 && models.contains(OVERFLOW_LABEL),
            "{models:?}"
        );
        assert!(s.usage.len() <= 5, "pair cap + overflow: {:?}", s.usage);
        let total: u64 = s.usage.iter().map(|u| u.requests).sum();
        assert_eq!(total, 26, "nothing is lost, only folded");
        assert!(!keys.contains(NO_KEY_LABEL), "over the key cap by then");
        assert_eq!(s.backends.len(), 2);
        assert_eq!(s.backends[1].name, OVERFLOW_LABEL);
        assert_eq!(s.backends[1].in_flight, 1);
    }

    #[test]
    fn label_values_are_sanitized() {
        let reg = Registry::new(["b"], LabelCaps::default());
        let m = reg.register_core(0);
        let long = "x".repeat(500);
        m.usage(
            Some("k"),
            "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
            0,
            0,
            0,
        );
        m.usage(Some("k"), &long, 0, 0, 0);
        m.usage(Some("k"), "a\nb", 0, 0, 0);
        m.usage(Some("k"), "", 0, 0, 0);
        let s = reg.snapshot();
        let models: Vec<_> = s.usage.iter().map(|u| u.model.clone()).collect();
        assert!(models.iter().all(|m| !m.contains("abcdefghijklmnop")));
        assert!(models.iter().all(|m| m.len() <= MAX_LABEL_BYTES));
        assert!(models.contains(&"ab".to_string()));
        assert!(models.contains(&"__empty__".to_string()));
    }

    #[test]
    fn gauges_and_pool_counters() {
        let reg = Registry::new(["b"], LabelCaps::default());
        let m = reg.register_core(0);
        m.pool_opened(0);
        m.pool_opened(0);
        m.pool_reused(0);
        m.pool_closed(0);
        m.pool_idle(0, 1);
        m.request_started(Endpoint::Models, MethodClass::Get);
        m.stream_first_byte(0, 5_000);
        m.stream_ended(StreamEnd::ClientGone, 77);
        m.cache_lookup(CacheSource::Memory, true);
        m.cache_lookup(CacheSource::Redis, false);
        m.rejected(Rejection::BudgetExceeded);
        let s = reg.snapshot();
        let b = s.backend("b").expect("b");
        assert_eq!((b.conn_open(), b.conn_idle, b.conn_reused), (1, 1, 1));
        assert_eq!(b.ttfb.count(), 1);
        assert_eq!(s.in_flight, 1);
        assert_eq!(s.streams[StreamEnd::ClientGone as usize], 1);
        assert_eq!(s.stream_bytes, 77);
        assert_eq!(s.cache, [[1, 0], [0, 1]]);
        assert_eq!(s.rejected(Rejection::BudgetExceeded), 1);
    }
}
