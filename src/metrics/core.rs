//! One core's counters: [`CoreSlot`] (the shared, read-only-to-others block) and
//! [`CoreMetrics`] (the `!Send` handle the pipeline writes through).

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use ahash::AHashMap;

use super::registry::{Registry, OVERFLOW_ID};
use super::{
    BackendOutcome, CacheSource, Cell64, Endpoint, HistCells, MethodClass, Rejection, StreamEnd,
    STATUS_SLOTS,
};

/// Counters of one backend on one core.
#[derive(Debug, Default)]
pub(crate) struct BackendCells {
    /// Requests sent to this backend and not finished yet (a gauge: written as wrapping u64).
    pub in_flight: Cell64,
    /// Attempts by outcome ([`BackendOutcome::LABELS`] order).
    pub outcomes: [Cell64; BackendOutcome::COUNT],
    /// Request sent -> response head received.
    pub latency: HistCells,
    /// Gateway received the request -> first body byte written to the client (streams).
    pub ttfb: HistCells,
    /// New upstream connections made.
    pub conn_opened: Cell64,
    /// Requests that reused a pooled connection.
    pub conn_reused: Cell64,
    /// Upstream connections closed (or dropped instead of pooled).
    pub conn_closed: Cell64,
    /// Idle pooled connections right now.
    pub conn_idle: Cell64,
}

/// Token and cost counters of one (key, model) series on one core.
#[derive(Debug, Default)]
pub(crate) struct UsageCells {
    pub requests: Cell64,
    pub prompt_tokens: Cell64,
    pub completion_tokens: Cell64,
    pub cost_pico_usd: Cell64,
}

/// A (key, model) series: registry label ids and the counters.
#[derive(Debug)]
pub(crate) struct UsageSeries {
    pub key: u32,
    pub model: u32,
    pub cells: Arc<UsageCells>,
}

/// One core's counters. Written only by the core that owns the matching [`CoreMetrics`]; read by
/// the scraper through the [`Registry`]. Aligned so that no other allocation (another core's
/// slot in particular) shares its first or last cache line.
#[repr(align(128))]
#[derive(Debug)]
pub struct CoreSlot {
    pub(crate) core_id: usize,
    pub(crate) requests: [[Cell64; MethodClass::ALL.len()]; Endpoint::COUNT],
    pub(crate) responses: [[Cell64; STATUS_SLOTS]; Endpoint::COUNT],
    pub(crate) in_flight: Cell64,
    pub(crate) duration: [HistCells; Endpoint::COUNT],
    pub(crate) overhead: HistCells,
    pub(crate) bytes_in: Cell64,
    pub(crate) bytes_out: Cell64,
    pub(crate) rejected: [Cell64; Rejection::ALL.len()],
    pub(crate) streams: [Cell64; StreamEnd::ALL.len()],
    pub(crate) stream_bytes: Cell64,
    /// `[source][0 = hit, 1 = miss]`.
    pub(crate) cache: [[Cell64; 2]; CacheSource::ALL.len()],
    /// Configured backends, then one overflow slot.
    pub(crate) backends: Box<[BackendCells]>,
    /// (key, model) series this core has created. Locked when the core adds a series (once per
    /// distinct pair) and when a scrape reads the list; never on the per-request path.
    pub(crate) usage: std::sync::Mutex<Vec<UsageSeries>>,
}

impl CoreSlot {
    pub(crate) fn new(core_id: usize, backends: usize) -> CoreSlot {
        CoreSlot {
            core_id,
            requests: Default::default(),
            responses: std::array::from_fn(|_| std::array::from_fn(|_| Cell64::default())),
            in_flight: Cell64::default(),
            duration: Default::default(),
            overhead: HistCells::default(),
            bytes_in: Cell64::default(),
            bytes_out: Cell64::default(),
            rejected: Default::default(),
            streams: Default::default(),
            stream_bytes: Cell64::default(),
            cache: Default::default(),
            backends: (0..=backends).map(|_| BackendCells::default()).collect(),
            usage: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The core this slot belongs to.
    pub fn core_id(&self) -> usize {
        self.core_id
    }
}

/// What the pipeline knows when a request is over (response fully sent, or the client gone).
#[derive(Debug, Clone, Copy)]
pub struct RequestDone {
    /// From [`Endpoint::classify`] on the request path.
    pub endpoint: Endpoint,
    /// Status sent to the client (499 when the client left before the response head).
    pub status: u16,
    /// Request head received -> last response byte written (or the request abandoned).
    pub duration_us: u64,
    /// Time spent inside the gateway, upstream waits excluded ([`super::overhead::Overhead`]).
    pub overhead_us: u64,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes written to the client.
    pub bytes_out: u64,
}

/// One core's metrics handle. Create it on the core with [`Registry::register_core`]; it is
/// `!Send` (the single-writer guarantee of [`CoreSlot`] rests on it), so it cannot leave.
pub struct CoreMetrics {
    slot: Arc<CoreSlot>,
    registry: Arc<Registry>,
    /// Label value -> registry id (or the overflow id), cached per core.
    keys: RefCell<AHashMap<Box<str>, u32>>,
    models: RefCell<AHashMap<Box<str>, u32>>,
    /// (key id, model id) -> this core's counters.
    pairs: RefCell<AHashMap<(u32, u32), Arc<UsageCells>>>,
    _not_send: PhantomData<Rc<()>>,
}

/// Per-core cache of label values that were refused (over the cap); beyond this many, unknown
/// values go to the overflow series without asking the registry, which bounds both the cache
/// and the registry's mutex traffic when a client sprays random model names.
const LOCAL_LABEL_CACHE: usize = 4096;

impl CoreMetrics {
    pub(crate) fn new(slot: Arc<CoreSlot>, registry: Arc<Registry>) -> CoreMetrics {
        CoreMetrics {
            slot,
            registry,
            keys: RefCell::default(),
            models: RefCell::default(),
            pairs: RefCell::default(),
            _not_send: PhantomData,
        }
    }

    /// The request head was parsed and the request is being served. Call once per request,
    /// own endpoints (health, metrics, admin) included; pair with [`Self::request_finished`].
    #[inline]
    pub fn request_started(&self, endpoint: Endpoint, method: MethodClass) {
        self.slot.requests[endpoint.index()][method as usize].add(1);
        self.slot.in_flight.add(1);
    }

    /// The request is over: the response was sent in full, or the client left. Exactly once
    /// per [`Self::request_started`], whatever the outcome.
    #[inline]
    pub fn request_finished(&self, done: &RequestDone) {
        let e = done.endpoint.index();
        let s = &self.slot;
        s.responses[e][super::status_slot(done.status)].add(1);
        s.duration[e].observe(done.duration_us);
        s.overhead.observe(done.overhead_us);
        s.bytes_in.add(done.bytes_in);
        s.bytes_out.add(done.bytes_out);
        s.in_flight.sub(1);
    }

    /// The gateway refused the request itself (count it in addition to `request_finished`).
    #[inline]
    pub fn rejected(&self, why: Rejection) {
        self.slot.rejected[why as usize].add(1);
    }

    fn backend(&self, backend: usize) -> &BackendCells {
        let last = self.slot.backends.len() - 1;
        &self.slot.backends[backend.min(last)]
    }

    /// An attempt is about to be sent to `backend` (index in config order). The returned guard
    /// counts it in `backend_in_flight` until dropped: keep it alive until the response body has
    /// been relayed (client disconnects and panics included, hence a guard).
    #[inline]
    pub fn backend_started(&self, backend: usize) -> InFlight<'_> {
        let cells = self.backend(backend);
        cells.in_flight.add(1);
        InFlight { cells }
    }

    /// Count an attempt on `backend` in its in-flight gauge (pair with
    /// [`Self::backend_in_flight_end`]; [`Self::backend_started`] is the guard form).
    #[inline]
    pub fn backend_in_flight_start(&self, backend: usize) {
        self.backend(backend).in_flight.add(1);
    }

    /// The attempt counted by [`Self::backend_in_flight_start`] is over.
    #[inline]
    pub fn backend_in_flight_end(&self, backend: usize) {
        self.backend(backend).in_flight.sub(1);
    }

    /// The attempt got a response head (`Status`) or failed (`ConnectError`, `Timeout`,
    /// `IoError`); `latency_us` is request sent -> head received (or -> failure).
    #[inline]
    pub fn backend_response(&self, backend: usize, outcome: BackendOutcome, latency_us: u64) {
        let cells = self.backend(backend);
        cells.outcomes[outcome.slot()].add(1);
        cells.latency.observe(latency_us);
    }

    /// The first body byte of a streamed response from `backend` was written to the client,
    /// `ttfb_us` after the gateway received the request head.
    #[inline]
    pub fn stream_first_byte(&self, backend: usize, ttfb_us: u64) {
        self.backend(backend).ttfb.observe(ttfb_us);
    }

    /// A streamed response ended after relaying `bytes` body bytes to the client.
    #[inline]
    pub fn stream_ended(&self, end: StreamEnd, bytes: u64) {
        self.slot.streams[end as usize].add(1);
        self.slot.stream_bytes.add(bytes);
    }

    /// The pool opened a new connection to `backend`.
    #[inline]
    pub fn pool_opened(&self, backend: usize) {
        self.backend(backend).conn_opened.add(1);
    }

    /// A request reused a pooled connection to `backend`.
    #[inline]
    pub fn pool_reused(&self, backend: usize) {
        self.backend(backend).conn_reused.add(1);
    }

    /// A connection to `backend` was closed or discarded (not returned to the pool).
    #[inline]
    pub fn pool_closed(&self, backend: usize) {
        self.backend(backend).conn_closed.add(1);
    }

    /// This core's pool now holds `idle` idle connections to `backend` (call after checkout,
    /// checkin and eviction with the pool's list length).
    #[inline]
    pub fn pool_idle(&self, backend: usize, idle: usize) {
        self.backend(backend).conn_idle.set(idle as u64);
    }

    /// A proxy-cache lookup in `source` hit or missed.
    #[inline]
    pub fn cache_lookup(&self, source: CacheSource, hit: bool) {
        self.slot.cache[source as usize][usize::from(!hit)].add(1);
    }

    /// Tokens and cost of one finished upstream request, by virtual key id (`None`: no key) and
    /// model (as routed). Cost is in pico-USD (1 USD = 10^12) so that cheap models do not
    /// round to zero. Call once per request that reached an upstream, usage known or not
    /// (zeros then), so `requests` per key and model stays complete.
    pub fn usage(
        &self,
        key_id: Option<&str>,
        model: &str,
        prompt_tokens: u64,
        completion_tokens: u64,
        cost_pico_usd: u64,
    ) {
        let key = self.label_id(&self.keys, key_id.unwrap_or(super::NO_KEY_LABEL), true);
        let model = self.label_id(&self.models, model, false);
        let mut pairs = self.pairs.borrow_mut();
        let mut id = (key, model);
        if !pairs.contains_key(&id) {
            // First sight of this pair on this core: the registry decides whether it gets its
            // own series (pair cap), and the answer is cached while the cache has room.
            let admitted = if pairs.len() >= LOCAL_LABEL_CACHE {
                (OVERFLOW_ID, OVERFLOW_ID)
            } else {
                self.registry.admit_pair(key, model)
            };
            if !pairs.contains_key(&admitted) {
                let cells = Arc::new(UsageCells::default());
                // A poisoned lock only means a scrape panicked mid-read; the list is intact.
                let mut list = self
                    .slot
                    .usage
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                list.push(UsageSeries {
                    key: admitted.0,
                    model: admitted.1,
                    cells: cells.clone(),
                });
                pairs.insert(admitted, cells);
            }
            if admitted != id && pairs.len() < LOCAL_LABEL_CACHE {
                if let Some(cells) = pairs.get(&admitted).cloned() {
                    pairs.insert(id, cells);
                }
            }
            id = admitted;
        }
        if let Some(cells) = pairs.get(&id) {
            cells.requests.add(1);
            cells.prompt_tokens.add(prompt_tokens);
            cells.completion_tokens.add(completion_tokens);
            cells.cost_pico_usd.add(cost_pico_usd);
        }
    }

    /// The registry id of a label value, from this core's cache or (first sight) the registry.
    fn label_id(&self, cache: &RefCell<AHashMap<Box<str>, u32>>, value: &str, key: bool) -> u32 {
        if let Some(&id) = cache.borrow().get(value) {
            return id;
        }
        let mut cache = cache.borrow_mut();
        if cache.len() >= LOCAL_LABEL_CACHE {
            return OVERFLOW_ID;
        }
        let id = if key {
            self.registry.intern_key(value)
        } else {
            self.registry.intern_model(value)
        };
        cache.insert(value.into(), id);
        id
    }

    /// The shared block (for tests and the registry).
    pub fn slot(&self) -> &Arc<CoreSlot> {
        &self.slot
    }
}

/// Counts one attempt in its backend's `in_flight` gauge until dropped.
#[must_use = "the attempt counts as in flight only while the guard lives"]
pub struct InFlight<'a> {
    cells: &'a BackendCells,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.cells.in_flight.sub(1);
    }
}
