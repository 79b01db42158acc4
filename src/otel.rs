//! Traces: W3C trace context in, one OTLP/HTTP span per request out, exported off the
//! data-plane cores.
//!
//! - [`TraceContext::start`] honours an incoming `traceparent` (same trace, the client's span as
//!   parent) or starts a new trace when the header is absent or invalid; ids come from a
//!   per-core [`IdGen`] (no syscall, no shared state). [`TraceContext::traceparent`] is the
//!   header to send upstream, so backends that trace join the same trace.
//! - When the request is over, the pipeline hands a [`SpanRecord`] (the access record plus the
//!   context) to a [`SpanSender`] (feature `gateway-otel`): a `try_send` into a bounded queue,
//!   dropped and counted when full. One exporter thread batches spans (up to
//!   [`ExportConfig::batch_max`] or [`ExportConfig::batch_interval`]) and POSTs OTLP/HTTP JSON
//!   ([`encode_otlp_json`]) to `<endpoint>/v1/traces`. Like the log sink it polls its queue, so
//!   a core never pays for waking it, and no network wait ever happens on a core.

use std::cell::Cell;
use std::fmt::Write;

use crate::log::access::{push_hex, write_json_str, write_usd, AccessRecord};
use crate::log::redact::{redact_query, redact_secrets};
use crate::metrics::Endpoint;

/// The default OTLP/HTTP collector endpoint (`--otel-endpoint`).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4318";

/// The propagation header.
pub const TRACEPARENT: &str = "traceparent";

/// A `traceparent` header's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// 16-byte trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

fn hex_val(c: u8) -> Option<u8> {
    // W3C: lower-case hex only.
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_val(s[2 * i])? << 4 | hex_val(s[2 * i + 1])?;
    }
    Some(out)
}

/// Parse `version-traceid-parentid-flags` (W3C Trace Context). `None` for anything invalid:
/// wrong lengths, upper-case or non-hex digits, version `ff`, all-zero ids, or a version-00
/// header with trailing data. Later versions may append `-...` fields, which are ignored.
pub fn parse_traceparent(v: &[u8]) -> Option<Traceparent> {
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = parse_hex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = parse_hex::<16>(&v[3..35])?;
    let parent_id = parse_hex::<8>(&v[36..52])?;
    let flags = parse_hex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Traceparent {
        trace_id,
        parent_id,
        flags,
    })
}

/// One core's trace and span id generator: splitmix64 over a random per-core seed. Not
/// cryptographic (ids need to be unique, not secret), and no syscall per id.
pub struct IdGen {
    state: Cell<u64>,
}

impl IdGen {
    /// A generator for `core` with a random per-process seed.
    pub fn new(core: usize) -> IdGen {
        IdGen::with_seed(ahash::RandomState::new().hash_one(core))
    }

    /// A deterministic generator (tests, benches).
    pub fn with_seed(seed: u64) -> IdGen {
        IdGen {
            state: Cell::new(seed),
        }
    }

    fn next_u64(&self) -> u64 {
        let s = self.state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A new, non-zero trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        loop {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
            id[8..].copy_from_slice(&self.next_u64().to_be_bytes());
            if id != [0; 16] {
                return id;
            }
        }
    }

    /// A new, non-zero span id.
    pub fn span_id(&self) -> [u8; 8] {
        loop {
            let id = self.next_u64().to_be_bytes();
            if id != [0; 8] {
                return id;
            }
        }
    }
}

/// The gateway's span for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (the caller's, or new).
    pub trace_id: [u8; 16],
    /// This request's span in the gateway.
    pub span_id: [u8; 8],
    /// The caller's span, when a valid `traceparent` came in.
    pub parent_span_id: Option<[u8; 8]>,
    /// Trace flags, passed on unchanged (`01`, sampled, for a new trace).
    pub flags: u8,
}

impl TraceContext {
    /// Join the caller's trace from its `traceparent` value, or start a new one when there is
    /// none or it is invalid.
    pub fn start(incoming: Option<&[u8]>, ids: &IdGen) -> TraceContext {
        match incoming.and_then(parse_traceparent) {
            Some(tp) => TraceContext {
                trace_id: tp.trace_id,
                span_id: ids.span_id(),
                parent_span_id: Some(tp.parent_id),
                flags: tp.flags,
            },
            None => TraceContext {
                trace_id: ids.trace_id(),
                span_id: ids.span_id(),
                parent_span_id: None,
                flags: 0x01,
            },
        }
    }

    /// The `traceparent` to send upstream: this trace, with the gateway's span as parent.
    pub fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        let _ = write!(s, "-{:02x}", self.flags);
        s
    }
}

/// A finished request as a span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Ids.
    pub ctx: TraceContext,
    /// What the access log says; the span's timing and attributes come from it.
    pub record: AccessRecord,
}

/// `SPAN_KIND_SERVER` in OTLP.
pub const SPAN_KIND_SERVER: u8 = 2;
/// `STATUS_CODE_ERROR` in OTLP.
pub const STATUS_CODE_ERROR: u8 = 2;

/// Encode spans as an OTLP/HTTP JSON `ExportTraceServiceRequest` body (one resource, one
/// scope). Client-supplied text is redacted like the access log.
pub fn encode_otlp_json(spans: &[SpanRecord], out: &mut String) {
    out.push_str(
        "{\"resourceSpans\":[{\"resource\":{\"attributes\":[\
         {\"key\":\"service.name\",\"value\":{\"stringValue\":\"ditto-gateway\"}}]},\
         \"scopeSpans\":[{\"scope\":{\"name\":\"ditto-gateway\",\"version\":\"",
    );
    out.push_str(env!("CARGO_PKG_VERSION"));
    out.push_str("\"},\"spans\":[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        encode_span(s, out);
    }
    out.push_str("]}]}]}");
}

fn encode_span(s: &SpanRecord, out: &mut String) {
    let r = &s.record;
    out.push_str("{\"traceId\":\"");
    push_hex(out, &s.ctx.trace_id);
    out.push_str("\",\"spanId\":\"");
    push_hex(out, &s.ctx.span_id);
    out.push('"');
    if let Some(p) = &s.ctx.parent_span_id {
        out.push_str(",\"parentSpanId\":\"");
        push_hex(out, p);
        out.push('"');
    }
    // A low-cardinality name, as the OTel HTTP conventions ask: method and route class.
    let endpoint = Endpoint::classify(&r.path);
    out.push_str(",\"name\":");
    let method = redact_secrets(&r.method);
    write_json_str(out, &format!("{} {}", method, endpoint.route()));
    let end = r
        .start_unix_nanos
        .saturating_add(r.duration_us.saturating_mul(1000));
    let _ = write!(
        out,
        ",\"kind\":{SPAN_KIND_SERVER},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{end}\"",
        r.start_unix_nanos
    );
    out.push_str(",\"attributes\":[");
    let mut a = Attrs { out, first: true };
    a.str("http.request.method", &method);
    let target = redact_query(&r.path);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*target, None),
    };
    a.str("url.path", path);
    if let Some(q) = query {
        a.str("url.query", q);
    }
    a.int("http.response.status_code", u64::from(r.status));
    a.str("ditto.request_id", &redact_secrets(&r.request_id));
    if let Some(k) = &r.key_id {
        a.str("ditto.key_id", &redact_secrets(k));
    }
    if let Some(m) = &r.model {
        a.str("gen_ai.request.model", &redact_secrets(m));
    }
    if let Some(b) = &r.backend {
        a.str("ditto.backend", &redact_secrets(b));
    }
    a.bool("ditto.stream", r.stream);
    a.int("http.request.body.size", r.bytes_in);
    a.int("http.response.body.size", r.bytes_out);
    a.int("ditto.duration_us", r.duration_us);
    if let Some(t) = r.ttfb_us {
        a.int("ditto.ttfb_us", t);
    }
    a.int("ditto.overhead_us", r.overhead_us);
    if let Some(t) = r.prompt_tokens {
        a.int("gen_ai.usage.input_tokens", t);
    }
    if let Some(t) = r.completion_tokens {
        a.int("gen_ai.usage.output_tokens", t);
    }
    if let Some(c) = r.cost_pico_usd {
        a.key("ditto.cost_usd");
        a.out.push_str("{\"doubleValue\":");
        write_usd(a.out, c);
        a.out.push_str("}}");
    }
    let error = r.error.as_deref().map(redact_secrets);
    if let Some(e) = &error {
        a.str("error.type", e);
    }
    out.push(']');
    if r.status >= 500 {
        let _ = write!(
            out,
            ",\"status\":{{\"code\":{STATUS_CODE_ERROR},\"message\":"
        );
        let msg = match &error {
            Some(e) => e.to_string(),
            None => format!("HTTP {}", r.status),
        };
        write_json_str(out, &msg);
        out.push('}');
    }
    out.push('}');
}

/// Writes OTLP `KeyValue`s (int64 values are strings in the proto3 JSON mapping).
struct Attrs<'a> {
    out: &'a mut String,
    first: bool,
}

impl Attrs<'_> {
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push_str("{\"key\":\"");
        self.out.push_str(k);
        self.out.push_str("\",\"value\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str("{\"stringValue\":");
        write_json_str(self.out, v);
        self.out.push_str("}}");
    }

    fn int(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = write!(self.out, "{{\"intValue\":\"{v}\"}}}}");
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        let _ = write!(self.out, "{{\"boolValue\":{v}}}}}");
    }
}

#[cfg(feature = "gateway-otel")]
pub use export::{traces_url, ExportConfig, OtelExporter, SpanSender};

#[cfg(feature = "gateway-otel")]
mod export {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use super::{encode_otlp_json, SpanRecord};
    use crate::metrics::ExternalCounter;

    /// Exporter tuning.
    #[derive(Debug, Clone, Copy)]
    pub struct ExportConfig {
        /// Spans queued before new ones are dropped.
        pub capacity: usize,
        /// Most spans per POST.
        pub batch_max: usize,
        /// Longest a span waits for its batch to fill.
        pub batch_interval: Duration,
        /// How often the exporter looks at its queue.
        pub poll: Duration,
        /// Whole-request timeout of one POST.
        pub timeout: Duration,
    }

    impl Default for ExportConfig {
        fn default() -> Self {
            ExportConfig {
                capacity: 8192,
                batch_max: 512,
                batch_interval: Duration::from_secs(1),
                poll: Duration::from_millis(50),
                timeout: Duration::from_secs(5),
            }
        }
    }

    /// `<endpoint>/v1/traces` (kept as is when the endpoint already names it). Only `http` and
    /// `https` endpoints are accepted.
    pub fn traces_url(endpoint: &str) -> Result<String, String> {
        let u =
            url::Url::parse(endpoint).map_err(|e| format!("--otel-endpoint {endpoint:?}: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!(
                "--otel-endpoint {endpoint:?}: scheme must be http or https"
            ));
        }
        let base = endpoint.trim_end_matches('/');
        Ok(if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        })
    }

    /// The exporter thread and its queue. Dropping it (or [`OtelExporter::close`]) exports what
    /// is queued, then stops the thread.
    pub struct OtelExporter {
        tx: Option<flume::Sender<SpanRecord>>,
        stop: Arc<AtomicBool>,
        dropped: Arc<AtomicU64>,
        exported: Arc<AtomicU64>,
        failures: Arc<AtomicU64>,
        thread: Option<JoinHandle<()>>,
    }

    /// A core's handle to the exporter.
    #[derive(Clone)]
    pub struct SpanSender {
        tx: flume::Sender<SpanRecord>,
        dropped: Arc<AtomicU64>,
    }

    impl SpanSender {
        /// Queue a span. Never blocks; `false` when it was dropped (queue full) and counted.
        #[inline]
        pub fn send(&self, span: SpanRecord) -> bool {
            match self.tx.try_send(span) {
                Ok(()) => true,
                Err(_) => {
                    // Overload path only.
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    false
                }
            }
        }
    }

    impl OtelExporter {
        /// Start exporting to `endpoint` (`--otel-endpoint`, e.g. [`super::DEFAULT_ENDPOINT`]).
        pub fn start(endpoint: &str, config: ExportConfig) -> Result<OtelExporter, String> {
            let url = traces_url(endpoint)?;
            let (tx, rx) = flume::bounded(config.capacity.max(1));
            let stop = Arc::new(AtomicBool::new(false));
            let dropped = Arc::new(AtomicU64::new(0));
            let exported = Arc::new(AtomicU64::new(0));
            let failures = Arc::new(AtomicU64::new(0));
            let thread = {
                let ctx = Loop {
                    url,
                    config,
                    stop: stop.clone(),
                    dropped: dropped.clone(),
                    exported: exported.clone(),
                    failures: failures.clone(),
                };
                std::thread::Builder::new()
                    .name("ditto-otel-export".into())
                    .spawn(move || ctx.run(rx))
                    .map_err(|e| format!("cannot start the trace exporter: {e}"))?
            };
            Ok(OtelExporter {
                tx: Some(tx),
                stop,
                dropped,
                exported,
                failures,
                thread: Some(thread),
            })
        }

        /// A handle for one core.
        pub fn sender(&self) -> SpanSender {
            SpanSender {
                tx: match &self.tx {
                    Some(tx) => tx.clone(),
                    None => flume::bounded(0).0,
                },
                dropped: self.dropped.clone(),
            }
        }

        /// Spans dropped (queue full or export failed).
        pub fn dropped(&self) -> u64 {
            self.dropped.load(Ordering::Relaxed)
        }

        /// Spans the collector accepted.
        pub fn exported(&self) -> u64 {
            self.exported.load(Ordering::Relaxed)
        }

        /// Failed POSTs.
        pub fn failures(&self) -> u64 {
            self.failures.load(Ordering::Relaxed)
        }

        /// The exporter's counters, for [`crate::metrics::Registry::add_external`].
        pub fn counters(&self) -> [ExternalCounter; 3] {
            [
                ExternalCounter {
                    name: "ditto_gateway_otel_spans_exported_total",
                    help: "Trace spans accepted by the OTLP collector.",
                    value: self.exported.clone(),
                },
                ExternalCounter {
                    name: "ditto_gateway_otel_spans_dropped_total",
                    help: "Trace spans dropped (queue full or export failed).",
                    value: self.dropped.clone(),
                },
                ExternalCounter {
                    name: "ditto_gateway_otel_export_failures_total",
                    help: "OTLP export requests that failed.",
                    value: self.failures.clone(),
                },
            ]
        }

        /// Export what is queued, then stop.
        pub fn close(mut self) {
            self.shutdown();
        }

        fn shutdown(&mut self) {
            self.tx = None;
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    impl Drop for OtelExporter {
        fn drop(&mut self) {
            self.shutdown();
        }
    }

    struct Loop {
        url: String,
        config: ExportConfig,
        stop: Arc<AtomicBool>,
        dropped: Arc<AtomicU64>,
        exported: Arc<AtomicU64>,
        failures: Arc<AtomicU64>,
    }

    impl Loop {
        fn run(self, rx: flume::Receiver<SpanRecord>) {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(self.config.timeout))
                .http_status_as_error(false)
                .build()
                .into();
            let mut batch: Vec<SpanRecord> = Vec::with_capacity(self.config.batch_max);
            let mut oldest: Option<Instant> = None;
            let mut body = String::new();
            loop {
                let finished = self.stop.load(Ordering::Relaxed) || rx.is_disconnected();
                let mut ok = true;
                for span in rx.try_iter() {
                    if finished && !ok {
                        // Shutting down and the collector fails: do not hold the process's
                        // exit for one timeout per remaining batch.
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    oldest.get_or_insert_with(Instant::now);
                    batch.push(span);
                    if batch.len() >= self.config.batch_max {
                        ok = self.post(&agent, &mut batch, &mut body);
                        oldest = None;
                    }
                }
                let due = oldest.is_some_and(|t| t.elapsed() >= self.config.batch_interval);
                if !batch.is_empty() && (due || finished) {
                    if finished && !ok {
                        self.dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        batch.clear();
                    } else {
                        self.post(&agent, &mut batch, &mut body);
                    }
                    oldest = None;
                }
                if finished {
                    return;
                }
                std::thread::sleep(self.config.poll);
            }
        }

        /// POST one batch. A failed batch is dropped and counted, not retried: traces are
        /// best effort, and a retry queue would only grow while the collector is down.
        fn post(
            &self,
            agent: &ureq::Agent,
            batch: &mut Vec<SpanRecord>,
            body: &mut String,
        ) -> bool {
            body.clear();
            encode_otlp_json(batch, body);
            let n = batch.len() as u64;
            batch.clear();
            let ok = match agent
                .post(&self.url)
                .content_type("application/json")
                .send(body.as_str())
            {
                Ok(mut resp) => {
                    // Read (a bounded amount of) the answer so the connection can be reused.
                    let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
                    resp.status().is_success()
                }
                Err(_) => false,
            };
            if ok {
                self.exported.fetch_add(n, Ordering::Relaxed);
            } else {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
            ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_parses_and_rejects_per_spec() {
        let tp = parse_traceparent(VALID.as_bytes()).expect("valid");
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
        assert!(
            parse_traceparent(b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ")
                .is_some()
        );
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 must be exact
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn contexts_join_or_start_traces() {
        let ids = IdGen::with_seed(7);
        let joined = TraceContext::start(Some(VALID.as_bytes()), &ids);
        assert_eq!(push(&joined.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            joined.parent_span_id.map(|p| push(&p)),
            Some("00f067aa0ba902b7".into())
        );
        let out = joined.traceparent();
        assert_eq!(out.len(), 55);
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(
            !out.contains("00f067aa0ba902b7"),
            "our span is the parent upstream"
        );
        let back = parse_traceparent(out.as_bytes()).expect("our header is valid");
        assert_eq!(back.parent_id, joined.span_id);

        let fresh = TraceContext::start(Some(b"garbage"), &ids);
        assert!(fresh.parent_span_id.is_none());
        assert_eq!(fresh.flags, 1);
        let other = TraceContext::start(None, &ids);
        assert_ne!(fresh.trace_id, other.trace_id);
        assert_ne!(fresh.span_id, other.span_id);
    }

    fn push(b: &[u8]) -> String {
        let mut s = String::new();
        push_hex(&mut s, b);
        s
    }

    pub(crate) fn span(status: u16) -> SpanRecord {
        SpanRecord {
            ctx: TraceContext::start(Some(VALID.as_bytes()), &IdGen::with_seed(1)),
            record: AccessRecord {
                start_unix_nanos: 1_700_000_000_000_000_000,
                request_id: "req-1".into(),
                key_id: Some("team-a".into()),
                model: Some("gpt-4o".into()),
                backend: Some("openai".into()),
                method: "POST".into(),
                path: "/v1/chat/completions?key=sk-abcdefghijklmnopq".into(),
                status,
                stream: true,
                bytes_in: 10,
                bytes_out: 20,
                duration_us: 1_500,
                ttfb_us: Some(700),
                overhead_us: 30,
                prompt_tokens: Some(3),
                completion_tokens: Some(4),
                cost_pico_usd: Some(5_000_000),
                error: (status >= 500).then(|| "backend_timeout".into()),
                trace_id: None,
            },
        }
    }

    fn attr<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
        span["attributes"]
            .as_array()?
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| &a["value"])
    }

    #[test]
    fn otlp_json_has_the_expected_shape() {
        let mut body = String::new();
        encode_otlp_json(&[span(200), span(504)], &mut body);
        assert!(
            !body.contains("abcdefghijklmnopq"),
            "secret in span: {body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "ditto-gateway"
        );
        let spans = rs["scopeSpans"][0]["spans"].as_array().expect("spans");
        assert_eq!(spans.len(), 2);
        let s = &spans[0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["traceId"].as_str().map(str::len), Some(32));
        assert_eq!(s["spanId"].as_str().map(str::len), Some(16));
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["name"], "POST /v1/chat/completions");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(s["endTimeUnixNano"], "1700000000001500000");
        assert_eq!(
            attr(s, "http.response.status_code").map(|v| &v["intValue"]),
            Some(&"200".into())
        );
        assert_eq!(
            attr(s, "url.path").map(|v| &v["stringValue"]),
            Some(&"/v1/chat/completions".into())
        );
        assert_eq!(
            attr(s, "url.query").map(|v| &v["stringValue"]),
            Some(&"key=[REDACTED]".into())
        );
        assert_eq!(
            attr(s, "ditto.key_id").map(|v| &v["stringValue"]),
            Some(&"team-a".into())
        );
        assert_eq!(
            attr(s, "gen_ai.usage.input_tokens").map(|v| &v["intValue"]),
            Some(&"3".into())
        );
        assert_eq!(
            attr(s, "ditto.stream").map(|v| &v["boolValue"]),
            Some(&true.into())
        );
        assert_eq!(
            attr(s, "ditto.cost_usd").and_then(|v| v["doubleValue"].as_f64()),
            Some(0.000005)
        );
        assert!(s.get("status").is_none(), "2xx leaves the status unset");
        let e = &spans[1];
        assert_eq!(e["status"]["code"], 2);
        assert_eq!(e["status"]["message"], "backend_timeout");
        assert_eq!(
            attr(e, "error.type").map(|v| &v["stringValue"]),
            Some(&"backend_timeout".into())
        );
    }

    #[cfg(feature = "gateway-otel")]
    mod export {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::net::TcpListener;
        use std::time::Duration;

        use super::*;

        /// A one-request OTLP collector: returns the request line, headers and body it got.
        fn collector(status: &'static str) -> (String, flume::Receiver<(String, String)>) {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            let (tx, rx) = flume::unbounded();
            std::thread::spawn(move || {
                let Ok((s, _)) = l.accept() else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(s);
                let mut head = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let mut s = r.into_inner();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                );
                let _ = tx.send((head, String::from_utf8_lossy(&body).into_owned()));
            });
            (format!("http://{addr}"), rx)
        }

        fn fast() -> ExportConfig {
            ExportConfig {
                batch_interval: Duration::from_millis(20),
                poll: Duration::from_millis(5),
                ..ExportConfig::default()
            }
        }

        #[test]
        fn spans_arrive_at_the_collector_as_otlp_json() {
            let (endpoint, got) = collector("200 OK");
            let exp = OtelExporter::start(&endpoint, fast()).expect("exporter");
            let s = exp.sender();
            assert!(s.send(span(200)));
            assert!(s.send(span(502)));
            let (head, body) = got.recv_timeout(Duration::from_secs(10)).expect("a POST");
            assert!(head.starts_with("POST /v1/traces HTTP/1.1"), "{head}");
            assert!(head
                .to_ascii_lowercase()
                .contains("content-type: application/json"));
            let v: serde_json::Value = serde_json::from_str(&body).expect("json body");
            let spans = &v["resourceSpans"][0]["scopeSpans"][0]["spans"];
            assert_eq!(spans.as_array().map(Vec::len), Some(2));
            exp.close();
        }

        #[test]
        fn a_failing_collector_costs_only_dropped_spans() {
            let (endpoint, got) = collector("500 Internal Server Error");
            let exp = OtelExporter::start(&endpoint, fast()).expect("exporter");
            let s = exp.sender();
            assert!(s.send(span(200)));
            got.recv_timeout(Duration::from_secs(10)).expect("a POST");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while exp.failures() == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!((exp.failures(), exp.dropped(), exp.exported()), (1, 1, 0));
            exp.close();
        }

        #[test]
        fn endpoints_become_trace_urls() {
            assert_eq!(
                traces_url(DEFAULT_ENDPOINT).as_deref(),
                Ok("http://127.0.0.1:4318/v1/traces")
            );
            assert_eq!(
                traces_url("https://otel.example/").as_deref(),
                Ok("https://otel.example/v1/traces")
            );
            assert_eq!(
                traces_url("http://c:4318/v1/traces").as_deref(),
                Ok("http://c:4318/v1/traces")
            );
            assert!(traces_url("grpc://c:4317").is_err());
            assert!(traces_url("not a url").is_err());
        }

        #[test]
        fn a_full_queue_drops_without_blocking() {
            // Nothing listens on port 9 of a TEST-NET address; the queue fills while the
            // exporter waits on its connect.
            let exp = OtelExporter::start(
                "http://192.0.2.1:9",
                ExportConfig {
                    capacity: 4,
                    batch_max: 1,
                    timeout: Duration::from_millis(200),
                    ..fast()
                },
            )
            .expect("exporter");
            let s = exp.sender();
            let t = std::time::Instant::now();
            let accepted = (0..100).filter(|_| s.send(span(200))).count();
            assert!(t.elapsed() < Duration::from_millis(500));
            assert!(accepted < 100);
            assert!(exp.dropped() >= (100 - accepted) as u64);
            drop(s);
        }
    }
}
