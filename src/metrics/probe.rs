//! The pipeline's view of observability: [`Observability`] (process-wide, in the `Gateway`),
//! [`CoreObs`] (one core's part, in its `Core`) and [`Probe`] (one request's stopwatch and
//! facts, carried on the request head so that every responder can reach it).
//!
//! The pipeline tells the probe what happens (response head written, upstream attempt started
//! and answered, body bytes relayed, usage read); when the request is over,
//! [`CoreObs::finish`] turns that into the per-core counters, one access-log record and one
//! trace span. A probe of a head that was never started (unit tests building heads by hand)
//! is inert: every call does nothing.
//!
//! Pool events come from code that has no `Core` at hand (the connector, the pool, a dropped
//! connection): they reach this core's counters through a thread-local handle installed when
//! the core is built ([`install_current`]). Data-plane threads run one core each, so the
//! thread-local *is* the core's state; off-core threads (tests) have none and count nothing.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::overhead::{Overhead, HEADER};
use super::{
    BackendOutcome, CoreMetrics, Endpoint, ExternalCounter, LabelCaps, MethodClass, Registry,
    Rejection, RequestDone, StreamEnd,
};
use crate::log::access::{unix_nanos_now, AccessRecord};
use crate::log::sink::{CoreLog, LogSender};
use crate::otel::{IdGen, TraceContext};
use crate::proxy::request_id::RequestId;

/// What the command line asked for (built in `main`, passed through `ProxyOptions`).
#[derive(Clone, Default)]
pub struct ObsOptions {
    /// `--prometheus-metrics`: serve `GET /metrics/prometheus`.
    pub prometheus: bool,
    /// `--prometheus-max-*-series`.
    pub caps: LabelCaps,
    /// The access log's queue; `None` turns the access log off.
    pub log: Option<LogSender>,
    /// The trace exporter's queue (`--otel`); `None` turns tracing off.
    #[cfg(feature = "gateway-otel")]
    pub spans: Option<crate::otel::SpanSender>,
    /// Counters kept by the log sink and the exporter, rendered with the rest.
    pub external: Vec<ExternalCounter>,
}

impl fmt::Debug for ObsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ObsOptions");
        d.field("prometheus", &self.prometheus)
            .field("caps", &self.caps)
            .field("log", &self.log.is_some());
        #[cfg(feature = "gateway-otel")]
        d.field("spans", &self.spans.is_some());
        d.finish()
    }
}

/// The process-wide part: the registry and the sinks' queues.
pub struct Observability {
    /// Every core's counters.
    pub registry: Arc<Registry>,
    /// `--prometheus-metrics`.
    pub prometheus: bool,
    log: Option<LogSender>,
    #[cfg(feature = "gateway-otel")]
    spans: Option<crate::otel::SpanSender>,
}

impl Observability {
    /// A registry for these backends (config order) and the sinks of `opts`.
    pub fn new<I, S>(backends: I, opts: &ObsOptions) -> Observability
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let registry = Registry::new(backends, opts.caps);
        for c in &opts.external {
            registry.add_external(c.clone());
        }
        Observability {
            registry,
            prometheus: opts.prometheus,
            log: opts.log.clone(),
            #[cfg(feature = "gateway-otel")]
            spans: opts.spans.clone(),
        }
    }

    /// Whether spans are exported (and trace context is therefore made and propagated).
    pub fn tracing(&self) -> bool {
        #[cfg(feature = "gateway-otel")]
        {
            self.spans.is_some()
        }
        #[cfg(not(feature = "gateway-otel"))]
        {
            false
        }
    }

    /// One core's part: call on the core's thread when its state is built.
    pub fn for_core(&self, core_id: usize) -> CoreObs {
        let metrics = Rc::new(self.registry.register_core(core_id));
        install_current(metrics.clone());
        CoreObs {
            metrics,
            log: self.log.clone().map(CoreLog::new),
            #[cfg(feature = "gateway-otel")]
            spans: self.spans.clone(),
            ids: self.tracing().then(|| IdGen::new(core_id)),
        }
    }
}

/// One core's handles: its counters, its access-log buffer, its sender to the span queue,
/// its trace ids.
pub struct CoreObs {
    /// This core's counters.
    pub metrics: Rc<CoreMetrics>,
    log: Option<CoreLog>,
    #[cfg(feature = "gateway-otel")]
    spans: Option<crate::otel::SpanSender>,
    ids: Option<IdGen>,
}

impl CoreObs {
    /// A request head was parsed: start its probe (and its span, when tracing).
    pub fn start(&self, method: &str, target: &str, traceparent: Option<&[u8]>) -> Probe {
        let endpoint = Endpoint::classify(target);
        let method_class = MethodClass::parse(method);
        self.metrics.request_started(endpoint, method_class);
        let start = Instant::now();
        let records = self.log.is_some() || self.traced();
        Probe(Some(Rc::new(State {
            metrics: self.metrics.clone(),
            endpoint,
            method: method_class,
            records,
            // The target and other text only feed the access record and the span.
            target: if records {
                target.into()
            } else {
                Box::default()
            },
            start_unix_nanos: unix_nanos_now(),
            overhead: Cell::new(Overhead::new(start)),
            trace: self
                .ids
                .as_ref()
                .map(|ids| TraceContext::start(traceparent, ids)),
            facts: RefCell::default(),
        })))
    }

    /// The request is over (response written, or the client gone, or the task dropped): count
    /// it, log it, trace it. Call exactly once per [`Self::start`]; [`Finish`] does it on drop.
    pub fn finish(&self, probe: &Probe, request_id: &str) {
        let Some(st) = probe.0.as_deref() else {
            return;
        };
        let now = Instant::now();
        let ov = st.overhead.get();
        let f = std::mem::take(&mut *st.facts.borrow_mut());
        // Nothing was written: the client left (or the connection failed) before a response.
        let status = if f.status == 0 { 499 } else { f.status };
        let duration_us = ov.elapsed_us(now);
        let overhead_us = ov.overhead_us(now);
        let m = &st.metrics;
        if let Some(b) = f.attempt_backend {
            m.backend_in_flight_end(b);
        }
        m.request_finished(&RequestDone {
            endpoint: st.endpoint,
            status,
            duration_us,
            overhead_us,
            bytes_in: f.bytes_in,
            bytes_out: f.bytes_out,
        });
        if let Some(r) = f.rejection {
            m.rejected(r);
        }
        if let Some(end) = f.stream_end {
            m.stream_ended(end, f.bytes_out);
        }
        if let Some(b) = f.backend {
            m.usage(
                f.key_id.as_deref(),
                f.model.as_deref().unwrap_or(""),
                f.prompt_tokens.unwrap_or(0),
                f.completion_tokens.unwrap_or(0),
                f.cost_pico_usd.unwrap_or(0),
            );
            if f.stream_end.is_some() {
                if let Some(t) = f.first_byte_us {
                    m.stream_first_byte(b, t);
                }
            }
        }
        if self.log.is_none() && !self.traced() {
            return;
        }
        let error = f.error.as_deref().or(match f.stream_end {
            Some(StreamEnd::ClientGone) => Some("client_gone"),
            Some(StreamEnd::UpstreamFailed) => Some("upstream_failed"),
            _ if f.status == 0 => Some("client_gone"),
            _ => None,
        });
        // Borrowed from the request's own strings: the log line is formatted right here.
        let record = AccessRecord::<&str> {
            start_unix_nanos: st.start_unix_nanos,
            request_id,
            trace_id: st.trace.map(|t| t.trace_id),
            key_id: f.key_id.as_deref(),
            model: f.model.as_deref(),
            backend: f.backend_name.as_deref(),
            method: st.method.as_str(),
            path: &st.target,
            status,
            stream: f.stream_end.is_some(),
            bytes_in: f.bytes_in,
            bytes_out: f.bytes_out,
            duration_us,
            ttfb_us: f.first_byte_us,
            overhead_us,
            prompt_tokens: f.prompt_tokens,
            completion_tokens: f.completion_tokens,
            cost_pico_usd: f.cost_pico_usd,
            error,
        };
        if let Some(log) = &self.log {
            log.push(&record);
        }
        #[cfg(feature = "gateway-otel")]
        if let (Some(spans), Some(ctx)) = (&self.spans, st.trace) {
            spans.send(crate::otel::SpanRecord {
                ctx,
                record: record.to_owned_record(),
            });
        }
    }

    /// Hand this core's buffered access-log lines to the writer (the core's tick and exit).
    pub fn flush_log(&self) {
        if let Some(log) = &self.log {
            log.flush();
        }
    }

    fn traced(&self) -> bool {
        self.ids.is_some()
    }
}

/// Finishes a request's probe when dropped: normal return, an early `return`, a cancelled
/// task or a panic all count the request exactly once.
pub struct Finish<'a> {
    obs: &'a CoreObs,
    probe: Probe,
    /// The request's id, for its access line and span (held inline: no allocation).
    request_id: RequestId,
}

impl<'a> Finish<'a> {
    /// Finish `probe` on `obs` when this guard drops.
    pub fn new(obs: &'a CoreObs, probe: Probe, request_id: RequestId) -> Finish<'a> {
        Finish {
            obs,
            probe,
            request_id,
        }
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.obs.finish(&self.probe, &self.request_id);
    }
}

/// Why a gateway-made error counts as a refusal, from its status, code and type.
fn rejection_of(e: &crate::error::GatewayError) -> Option<Rejection> {
    use crate::error::ErrorType;
    if e.etype == ErrorType::Policy || e.message.starts_with("guardrail rejected") {
        return Some(Rejection::GuardrailBlocked);
    }
    Some(match e.status {
        401 => Rejection::AuthFailed,
        402 => Rejection::BudgetExceeded,
        403 => Rejection::GuardrailBlocked,
        429 if e.code.starts_with("inflight_limit") => Rejection::InflightLimit,
        429 => Rejection::RateLimited,
        400 | 408 | 411 | 413 | 414 | 417 | 431 => Rejection::BadRequest,
        _ => return None,
    })
}

/// One request's facts, filled in as the pipeline learns them.
#[derive(Default)]
struct Facts {
    /// Status written to the client; 0 until a head went out.
    status: u16,
    rejection: Option<Rejection>,
    error: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    first_byte_us: Option<u64>,
    stream_end: Option<StreamEnd>,
    /// The backend that answered (the last attempt with a response head).
    backend: Option<usize>,
    backend_name: Option<String>,
    /// The attempt counted in its backend's in-flight gauge, and when it started.
    attempt_backend: Option<usize>,
    attempt_start: Option<Instant>,
    key_id: Option<String>,
    model: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cost_pico_usd: Option<u64>,
}

struct State {
    metrics: Rc<CoreMetrics>,
    endpoint: Endpoint,
    method: MethodClass,
    /// A log line or span will be made: keep the text they need (else no copies per request).
    records: bool,
    target: Box<str>,
    start_unix_nanos: u64,
    overhead: Cell<Overhead>,
    trace: Option<TraceContext>,
    facts: RefCell<Facts>,
}

/// One request's probe (see the module doc). Cloning shares it.
#[derive(Clone, Default)]
pub struct Probe(Option<Rc<State>>);

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Probe(started)"
        } else {
            "Probe(inert)"
        })
    }
}

impl Probe {
    fn facts(&self, f: impl FnOnce(&mut Facts, &State)) {
        if let Some(st) = self.0.as_deref() {
            f(&mut st.facts.borrow_mut(), st);
        }
    }

    /// Gateway time so far, in microseconds (0 for an inert probe).
    pub fn overhead_us(&self) -> u64 {
        self.0
            .as_deref()
            .map_or(0, |st| st.overhead.get().overhead_us(Instant::now()))
    }

    /// Append `x-ditto-overhead-us: N\r\n` (no allocation: it goes on every response).
    fn write_header_line(&self, out: &mut BytesMut) {
        out.extend_from_slice(HEADER.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(itoa::Buffer::new().format(self.overhead_us()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// A gateway-made error is about to be written: record it and return it with the
    /// overhead header added.
    pub fn on_error(&self, e: crate::error::GatewayError) -> crate::error::GatewayError {
        if self.0.is_none() {
            return e;
        }
        let body_len = e.body().len() as u64;
        self.facts(|f, _| {
            f.status = e.status;
            f.rejection = rejection_of(&e);
            f.error = Some(e.code.to_string());
            f.bytes_out += body_len;
        });
        let v = self.overhead_us().to_string();
        e.with_header(HEADER, v)
    }

    /// A response of the gateway's own (`status`, `body_len` body bytes) is being written
    /// into `out`, before its blank line: record it and add the overhead header.
    pub fn on_reply(&self, status: u16, body_len: usize, out: &mut BytesMut) {
        if self.0.is_none() {
            return;
        }
        self.facts(|f, _| {
            f.status = status;
            f.bytes_out += body_len as u64;
        });
        self.write_header_line(out);
    }

    /// An upstream's response head was written into `out` (complete, blank line included):
    /// record it and add the overhead header before the blank line.
    pub fn on_upstream_head(&self, status: u16, backend: &str, out: &mut BytesMut) {
        if self.0.is_none() {
            return;
        }
        self.facts(|f, st| {
            f.status = status;
            if st.records {
                f.backend_name = Some(backend.to_string());
            }
        });
        if out.ends_with(b"\r\n\r\n") {
            out.truncate(out.len() - 2);
            self.write_header_line(out);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// What the request is: its virtual key id (never the token), model and body size.
    pub fn request(&self, key_id: Option<&str>, model: Option<&str>, body_bytes: u64) {
        self.facts(|f, _| {
            f.key_id = key_id.map(str::to_string);
            f.model = model.map(str::to_string);
            if body_bytes > 0 {
                f.bytes_in = body_bytes;
            }
        });
    }

    /// An attempt on `backend` (config index) starts: it counts in the backend's in-flight
    /// gauge until the next attempt or the end of the request, and the wait is upstream time.
    pub fn attempt(&self, backend: usize) {
        self.facts(|f, st| {
            let now = Instant::now();
            if let Some(prev) = f.attempt_backend.replace(backend) {
                st.metrics.backend_in_flight_end(prev);
            }
            st.metrics.backend_in_flight_start(backend);
            f.attempt_start = Some(now);
            let mut ov = st.overhead.get();
            ov.upstream_start(now);
            st.overhead.set(ov);
        });
    }

    /// The attempt got a response head (`Some(Status)`), failed (`Some(other outcome)`), or
    /// was abandoned because the client left (`None`).
    pub fn attempt_done(&self, outcome: Option<BackendOutcome>) {
        self.facts(|f, st| {
            let now = Instant::now();
            let mut ov = st.overhead.get();
            ov.upstream_end(now);
            st.overhead.set(ov);
            let (Some(b), Some(outcome)) = (f.attempt_backend, outcome) else {
                return;
            };
            let latency = f
                .attempt_start
                .map_or(0, |s| now.saturating_duration_since(s).as_micros() as u64);
            st.metrics.backend_response(b, outcome, latency);
            if matches!(outcome, BackendOutcome::Status(_)) {
                f.backend = Some(b);
            }
        });
    }

    /// While relaying a body, the gateway waits on the upstream (`true`) or not (`false`).
    #[inline]
    pub fn upstream_wait(&self, waiting: bool) {
        if let Some(st) = self.0.as_deref() {
            let mut ov = st.overhead.get();
            if waiting {
                ov.upstream_start(Instant::now());
            } else {
                ov.upstream_end(Instant::now());
            }
            st.overhead.set(ov);
        }
    }

    /// `n` response body bytes are being written to the client.
    #[inline]
    pub fn body_sent(&self, n: usize) {
        self.facts(|f, st| {
            if f.first_byte_us.is_none() && n > 0 {
                f.first_byte_us = Some(st.overhead.get().elapsed_us(Instant::now()));
            }
            f.bytes_out += n as u64;
        });
    }

    /// The relayed body ended; `stream` when it was an event stream.
    pub fn relay_ended(&self, stream: bool, end: StreamEnd) {
        self.facts(|f, _| {
            if stream {
                f.stream_end = Some(end);
            } else if end != StreamEnd::Completed && f.error.is_none() {
                f.error = Some(end.as_str().to_string());
            }
        });
    }

    /// Tokens and cost the response reported (cost in pico-USD, when priced).
    pub fn usage(&self, prompt_tokens: u64, completion_tokens: u64, cost_pico_usd: Option<u64>) {
        self.facts(|f, _| {
            f.prompt_tokens = Some(prompt_tokens);
            f.completion_tokens = Some(completion_tokens);
            f.cost_pico_usd = cost_pico_usd;
        });
    }

    /// Whether the request is traced (its `traceparent` then replaces the client's upstream).
    pub fn traced(&self) -> bool {
        self.0.as_deref().is_some_and(|st| st.trace.is_some())
    }

    /// Append `traceparent: ...\r\n` for the upstream request, when traced.
    pub fn write_traceparent(&self, out: &mut BytesMut) {
        if let Some(t) = self.0.as_deref().and_then(|st| st.trace) {
            out.extend_from_slice(b"traceparent: ");
            out.extend_from_slice(t.traceparent().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

thread_local! {
    /// This thread's core counters, for code without a `Core` (see the module doc).
    static CURRENT: RefCell<Option<Rc<CoreMetrics>>> = const { RefCell::new(None) };
}

/// Make `metrics` this thread's core counters (called when a core builds its state).
pub fn install_current(metrics: Rc<CoreMetrics>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(metrics));
}

fn with_current(f: impl FnOnce(&CoreMetrics)) {
    CURRENT.with(|c| {
        if let Some(m) = c.borrow().as_deref() {
            f(m);
        }
    });
}

/// Counts an upstream connection as open from creation to drop (held by the connection).
pub struct ConnCount {
    backend: usize,
    metrics: Option<Rc<CoreMetrics>>,
}

impl ConnCount {
    /// A new connection to `backend` was opened on this thread's core.
    pub fn opened(backend: usize) -> ConnCount {
        let metrics = CURRENT.with(|c| c.borrow().clone());
        if let Some(m) = &metrics {
            m.pool_opened(backend);
        }
        ConnCount { backend, metrics }
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.pool_closed(self.backend);
        }
    }
}

impl fmt::Debug for ConnCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnCount({})", self.backend)
    }
}

/// A pooled connection to `backend` was reused; the pool now holds `idle` idle ones.
pub fn pool_reused(backend: usize, idle: usize) {
    with_current(|m| {
        m.pool_reused(backend);
        m.pool_idle(backend, idle);
    });
}

/// The pool now holds `idle` idle connections to `backend`.
pub fn pool_idle(backend: usize, idle: usize) {
    with_current(|m| m.pool_idle(backend, idle));
}
