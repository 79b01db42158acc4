//! Scrape output: Prometheus text format 0.0.4 and the JSON counters of `GET /metrics`.

use std::fmt::Write;

use super::registry::{Registry, Snapshot};
use super::{
    status_slot_label, BackendOutcome, CacheSource, Endpoint, HistTotals, MethodClass, Rejection,
    StreamEnd, BUCKETS_US, STATUS_SLOTS,
};

/// Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (`_total`).
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Fixed-bucket histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: name, type, labels, help. The single list the renderer, the docs test
/// and the dashboard test agree on.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Full name, `ditto_gateway_` prefix included.
    pub name: &'static str,
    /// Metric type.
    pub kind: Kind,
    /// Label names (a histogram's `le` not included).
    pub labels: &'static [&'static str],
    /// The HELP text.
    pub help: &'static str,
}

const fn fam(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Family {
    Family {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric family the gateway exposes, in output order. The last five are kept by the log
/// sink and the trace exporter and appear when those run.
pub const FAMILIES: [Family; 30] = [
    fam("ditto_gateway_requests_total", Counter, &["endpoint", "method"], "Requests received, by endpoint class and method."),
    fam("ditto_gateway_responses_total", Counter, &["endpoint", "code"], "Requests finished, by endpoint class and status code sent (untracked codes by class, e.g. 4xx)."),
    fam("ditto_gateway_requests_in_flight", Gauge, &[], "Requests being served now."),
    fam("ditto_gateway_request_duration_seconds", Histogram, &["endpoint"], "Request head received to last response byte written."),
    fam("ditto_gateway_overhead_seconds", Histogram, &[], "Time spent inside the gateway per request, upstream waits excluded (x-ditto-overhead-us)."),
    fam("ditto_gateway_request_bytes_total", Counter, &[], "Request body bytes read from clients."),
    fam("ditto_gateway_response_bytes_total", Counter, &[], "Response body bytes written to clients."),
    fam("ditto_gateway_rejected_total", Counter, &["reason"], "Requests the gateway refused itself, by reason."),
    fam("ditto_gateway_streams_total", Counter, &["outcome"], "Streamed responses, by how they ended."),
    fam("ditto_gateway_stream_bytes_total", Counter, &[], "Body bytes relayed in streamed responses."),
    fam("ditto_gateway_cache_lookups_total", Counter, &["source", "result"], "Proxy cache lookups by source and result (hit, miss)."),
    fam("ditto_gateway_backend_in_flight", Gauge, &["backend"], "Attempts in flight to a backend now."),
    fam("ditto_gateway_backend_requests_total", Counter, &["backend", "outcome"], "Attempts sent to a backend, by outcome (status class, connect_error, timeout, io_error)."),
    fam("ditto_gateway_backend_duration_seconds", Histogram, &["backend"], "Upstream request sent to response head received (or failure)."),
    fam("ditto_gateway_ttfb_seconds", Histogram, &["backend"], "Streamed responses: request received to first body byte written to the client."),
    fam("ditto_gateway_upstream_connections_opened_total", Counter, &["backend"], "New upstream connections."),
    fam("ditto_gateway_upstream_connections_reused_total", Counter, &["backend"], "Requests sent on a pooled (reused) upstream connection."),
    fam("ditto_gateway_upstream_connections_closed_total", Counter, &["backend"], "Upstream connections closed or discarded."),
    fam("ditto_gateway_upstream_connections_open", Gauge, &["backend"], "Upstream connections open now (opened minus closed)."),
    fam("ditto_gateway_upstream_connections_idle", Gauge, &["backend"], "Idle pooled upstream connections now."),
    fam("ditto_gateway_key_requests_total", Counter, &["key", "model"], "Requests that reached an upstream, by virtual key id and model."),
    fam("ditto_gateway_tokens_total", Counter, &["key", "model", "kind"], "Tokens reported by upstreams, by virtual key id, model and kind (prompt, completion)."),
    fam("ditto_gateway_cost_usd_total", Counter, &["key", "model"], "Cost in USD, by virtual key id and model."),
    fam("ditto_gateway_uptime_seconds", Gauge, &[], "Seconds since the metrics registry started."),
    fam("ditto_gateway_cores", Gauge, &[], "Data-plane cores reporting metrics."),
    fam("ditto_gateway_log_lines_total", Counter, &[], "Access log lines written."),
    fam("ditto_gateway_log_dropped_total", Counter, &[], "Access log records dropped because the log queue was full."),
    fam("ditto_gateway_otel_spans_exported_total", Counter, &[], "Trace spans accepted by the OTLP collector."),
    fam("ditto_gateway_otel_spans_dropped_total", Counter, &[], "Trace spans dropped (queue full or export failed)."),
    fam("ditto_gateway_otel_export_failures_total", Counter, &[], "OTLP export requests that failed."),
];

/// Prometheus text format 0.0.4 (`Content-Type: text/plain; version=0.0.4`).
pub fn render_prometheus(registry: &Registry) -> String {
    prometheus_from(&registry.snapshot())
}

/// Prometheus text of a snapshot (see [`render_prometheus`]).
pub fn prometheus_from(s: &Snapshot) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let mut w = Out { out: &mut out };
    for f in &FAMILIES {
        match f.name {
            "ditto_gateway_requests_total" => {
                w.head(f);
                for (e, row) in Endpoint::ALL.iter().zip(&s.requests) {
                    for (m, &n) in MethodClass::ALL.iter().zip(row) {
                        if n > 0 {
                            w.sample(
                                f.name,
                                &[("endpoint", e.as_str()), ("method", m.as_str())],
                                n,
                            );
                        }
                    }
                }
            }
            "ditto_gateway_responses_total" => {
                w.head(f);
                for (e, row) in Endpoint::ALL.iter().zip(&s.responses) {
                    for (slot, &n) in row.iter().enumerate().take(STATUS_SLOTS) {
                        if n > 0 {
                            let code = status_slot_label(slot);
                            w.sample(f.name, &[("endpoint", e.as_str()), ("code", &code)], n);
                        }
                    }
                }
            }
            "ditto_gateway_requests_in_flight" => {
                w.head(f);
                w.sample(f.name, &[], s.in_flight);
            }
            "ditto_gateway_request_duration_seconds" => {
                w.head(f);
                for (e, h) in Endpoint::ALL.iter().zip(&s.duration) {
                    if h.count() > 0 {
                        w.histogram(f.name, &[("endpoint", e.as_str())], h);
                    }
                }
            }
            "ditto_gateway_overhead_seconds" => {
                w.head(f);
                w.histogram(f.name, &[], &s.overhead);
            }
            "ditto_gateway_request_bytes_total" => {
                w.head(f);
                w.sample(f.name, &[], s.bytes_in);
            }
            "ditto_gateway_response_bytes_total" => {
                w.head(f);
                w.sample(f.name, &[], s.bytes_out);
            }
            "ditto_gateway_rejected_total" => {
                w.head(f);
                for (r, &n) in Rejection::ALL.iter().zip(&s.rejected) {
                    w.sample(f.name, &[("reason", r.as_str())], n);
                }
            }
            "ditto_gateway_streams_total" => {
                w.head(f);
                for (e, &n) in StreamEnd::ALL.iter().zip(&s.streams) {
                    w.sample(f.name, &[("outcome", e.as_str())], n);
                }
            }
            "ditto_gateway_stream_bytes_total" => {
                w.head(f);
                w.sample(f.name, &[], s.stream_bytes);
            }
            "ditto_gateway_cache_lookups_total" => {
                w.head(f);
                for (src, row) in CacheSource::ALL.iter().zip(&s.cache) {
                    for (result, &n) in ["hit", "miss"].iter().zip(row) {
                        w.sample(f.name, &[("source", src.as_str()), ("result", result)], n);
                    }
                }
            }
            "ditto_gateway_backend_in_flight" => {
                w.head(f);
                for b in &s.backends {
                    w.sample(f.name, &[("backend", &b.name)], b.in_flight);
                }
            }
            "ditto_gateway_backend_requests_total" => {
                w.head(f);
                for b in &s.backends {
                    for (o, &n) in BackendOutcome::LABELS.iter().zip(&b.outcomes) {
                        if n > 0 {
                            w.sample(f.name, &[("backend", &b.name), ("outcome", o)], n);
                        }
                    }
                }
            }
            "ditto_gateway_backend_duration_seconds" => {
                w.head(f);
                for b in &s.backends {
                    w.histogram(f.name, &[("backend", &b.name)], &b.latency);
                }
            }
            "ditto_gateway_ttfb_seconds" => {
                w.head(f);
                for b in &s.backends {
                    w.histogram(f.name, &[("backend", &b.name)], &b.ttfb);
                }
            }
            "ditto_gateway_upstream_connections_opened_total" => {
                w.per_backend(f, s, |b| b.conn_opened as i64);
            }
            "ditto_gateway_upstream_connections_reused_total" => {
                w.per_backend(f, s, |b| b.conn_reused as i64);
            }
            "ditto_gateway_upstream_connections_closed_total" => {
                w.per_backend(f, s, |b| b.conn_closed as i64);
            }
            "ditto_gateway_upstream_connections_open" => {
                w.per_backend(f, s, |b| b.conn_open());
            }
            "ditto_gateway_upstream_connections_idle" => {
                w.per_backend(f, s, |b| b.conn_idle as i64);
            }
            "ditto_gateway_key_requests_total" => {
                w.head(f);
                for u in &s.usage {
                    w.sample(f.name, &[("key", &u.key), ("model", &u.model)], u.requests);
                }
            }
            "ditto_gateway_tokens_total" => {
                w.head(f);
                for u in &s.usage {
                    for (kind, n) in [
                        ("prompt", u.prompt_tokens),
                        ("completion", u.completion_tokens),
                    ] {
                        w.sample(
                            f.name,
                            &[("key", &u.key), ("model", &u.model), ("kind", kind)],
                            n,
                        );
                    }
                }
            }
            "ditto_gateway_cost_usd_total" => {
                w.head(f);
                for u in &s.usage {
                    let usd = Float(u.cost_pico_usd as f64 / 1e12);
                    w.sample(f.name, &[("key", &u.key), ("model", &u.model)], usd);
                }
            }
            "ditto_gateway_uptime_seconds" => {
                w.head(f);
                w.sample(f.name, &[], Float(s.uptime_s));
            }
            "ditto_gateway_cores" => {
                w.head(f);
                w.sample(f.name, &[], s.cores);
            }
            name => {
                // Kept outside the cores: rendered only when its owner registered it.
                if let Some(&(_, _, v)) = s.external.iter().find(|e| e.0 == name) {
                    w.head(f);
                    w.sample(f.name, &[], v);
                }
            }
        }
    }
    out
}

/// A float sample value (Display never uses exponents, which Prometheus would accept anyway).
struct Float(f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_finite() {
            write!(f, "{}", self.0)
        } else if self.0 > 0.0 {
            f.write_str("+Inf")
        } else if self.0 < 0.0 {
            f.write_str("-Inf")
        } else {
            f.write_str("NaN")
        }
    }
}

struct Out<'a> {
    out: &'a mut String,
}

impl Out<'_> {
    fn head(&mut self, f: &Family) {
        let _ = write!(self.out, "# HELP {} ", f.name);
        for c in f.help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = writeln!(self.out, "\n# TYPE {} {}", f.name, f.kind.as_str());
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_value(self.out, v);
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {v}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistTotals) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = match BUCKETS_US.get(i) {
                Some(&us) => Float(us as f64 / 1e6).to_string(),
                None => "+Inf".to_string(),
            };
            self.out.push_str(&bucket);
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", Float(h.sum_us as f64 / 1e6));
        self.out.push_str(name);
        self.out.push_str("_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {cumulative}");
    }

    fn per_backend(&mut self, f: &Family, s: &Snapshot, v: impl Fn(&super::BackendTotals) -> i64) {
        self.head(f);
        for b in &s.backends {
            self.sample(f.name, &[("backend", &b.name)], v(b));
        }
    }
}

/// Escape a label value per the text format: backslash, double quote and line feed.
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The JSON counters of `GET /metrics`: totals a human or a script can read without a
/// Prometheus parser. Shape documented in `docs/observability.md`.
pub fn render_json(registry: &Registry) -> String {
    json_from(&registry.snapshot())
}

/// JSON of a snapshot (see [`render_json`]).
pub fn json_from(s: &Snapshot) -> String {
    use serde_json::{json, Map, Value};
    let mut by_endpoint = Map::new();
    for (i, e) in Endpoint::ALL.iter().enumerate() {
        let started: u64 = s.requests[i].iter().sum();
        if started == 0 && s.responses[i].iter().all(|&n| n == 0) {
            continue;
        }
        let mut codes = Map::new();
        for (slot, &n) in s.responses[i].iter().enumerate() {
            if n > 0 {
                codes.insert(status_slot_label(slot).into_owned(), n.into());
            }
        }
        let h = &s.duration[i];
        by_endpoint.insert(
            e.as_str().to_string(),
            json!({
                "requests": started,
                "responses": codes,
                "duration_us": hist_json(h),
            }),
        );
    }
    let mut responses = Map::new();
    for slot in 0..STATUS_SLOTS {
        let n: u64 = s.responses.iter().map(|r| r[slot]).sum();
        if n > 0 {
            responses.insert(status_slot_label(slot).into_owned(), n.into());
        }
    }
    let rejected: Map<String, Value> = Rejection::ALL
        .iter()
        .zip(&s.rejected)
        .map(|(r, &n)| (r.as_str().to_string(), n.into()))
        .collect();
    let mut streams: Map<String, Value> = StreamEnd::ALL
        .iter()
        .zip(&s.streams)
        .map(|(e, &n)| (e.as_str().to_string(), n.into()))
        .collect();
    streams.insert("bytes".into(), s.stream_bytes.into());
    let cache: Map<String, Value> = CacheSource::ALL
        .iter()
        .zip(&s.cache)
        .map(|(src, r)| (src.as_str().to_string(), json!({"hit": r[0], "miss": r[1]})))
        .collect();
    let backends: Map<String, Value> = s
        .backends
        .iter()
        .map(|b| {
            let outcomes: Map<String, Value> = BackendOutcome::LABELS
                .iter()
                .zip(&b.outcomes)
                .filter(|(_, &n)| n > 0)
                .map(|(o, &n)| (o.to_string(), n.into()))
                .collect();
            (
                b.name.clone(),
                json!({
                    "in_flight": b.in_flight,
                    "requests": b.outcomes.iter().sum::<u64>(),
                    "outcomes": outcomes,
                    "duration_us": hist_json(&b.latency),
                    "ttfb_us": hist_json(&b.ttfb),
                    "connections": {
                        "open": b.conn_open(),
                        "idle": b.conn_idle,
                        "opened": b.conn_opened,
                        "reused": b.conn_reused,
                        "closed": b.conn_closed,
                    },
                }),
            )
        })
        .collect();
    let usage: Vec<Value> = s
        .usage
        .iter()
        .map(|u| {
            json!({
                "key": u.key,
                "model": u.model,
                "requests": u.requests,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "cost_pico_usd": u.cost_pico_usd,
                "cost_usd": u.cost_pico_usd as f64 / 1e12,
            })
        })
        .collect();
    let external: Map<String, Value> = s
        .external
        .iter()
        .map(|&(name, _, v)| {
            let short = name.strip_prefix("ditto_gateway_").unwrap_or(name);
            (short.to_string(), v.into())
        })
        .collect();
    let v = json!({
        "uptime_seconds": s.uptime_s,
        "cores": s.cores,
        "requests_total": s.requests_total(),
        "requests_in_flight": s.in_flight,
        "responses": responses,
        "endpoints": by_endpoint,
        "overhead_us": hist_json(&s.overhead),
        "bytes": {"in": s.bytes_in, "out": s.bytes_out},
        "rejected": rejected,
        "streams": streams,
        "cache": cache,
        "backends": backends,
        "usage": usage,
        "pipelines": external,
    });
    v.to_string()
}

/// A histogram in the JSON output: count, sum and coarse quantile bounds (bucket upper
/// bounds in µs; null when empty or above the last bucket).
fn hist_json(h: &HistTotals) -> serde_json::Value {
    let q = |q: f64| h.quantile_bound_us(q).filter(|&b| b != u64::MAX);
    serde_json::json!({
        "count": h.count(),
        "sum": h.sum_us,
        "p50_le": q(0.5),
        "p99_le": q(0.99),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use crate::metrics::text_format::{parse, value};

    use super::*;
    use crate::metrics::{LabelCaps, RequestDone};

    fn traffic() -> std::sync::Arc<Registry> {
        let reg = Registry::new(["openai", "local"], LabelCaps::default());
        let m = reg.register_core(0);
        let m2 = reg.register_core(1);
        for (core, status, us) in [(&m, 200, 800), (&m, 200, 3_000), (&m2, 502, 70_000)] {
            core.request_started(Endpoint::ChatCompletions, MethodClass::Post);
            let g = core.backend_started(0);
            core.backend_response(0, crate::metrics::BackendOutcome::Status(status), us);
            drop(g);
            core.usage(Some("team \"a\"\\x"), "gpt-4o", 10, 20, 2_500_000_000);
            core.request_finished(&RequestDone {
                endpoint: Endpoint::ChatCompletions,
                status,
                duration_us: us + 40,
                overhead_us: 40,
                bytes_in: 10,
                bytes_out: 100,
            });
        }
        m.rejected(Rejection::RateLimited);
        m.pool_opened(1);
        m.pool_reused(1);
        m.pool_idle(1, 1);
        m.stream_first_byte(0, 1_500);
        m.stream_ended(StreamEnd::Completed, 1234);
        let external = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(7));
        reg.add_external(crate::metrics::ExternalCounter {
            name: "ditto_gateway_log_dropped_total",
            help: "x",
            value: external,
        });
        reg
    }

    #[test]
    fn prometheus_output_parses_and_has_the_traffic() {
        let text = render_prometheus(&traffic());
        let (samples, types) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for (name, want) in [
            ("ditto_gateway_requests_total", "counter"),
            ("ditto_gateway_request_duration_seconds", "histogram"),
            ("ditto_gateway_backend_in_flight", "gauge"),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(want));
        }
        assert!(samples.iter().all(|s| s.name.starts_with("ditto_gateway_")));
        let v = |n: &str, l: &[(&str, &str)]| value(&samples, n, l);
        let chat = ("endpoint", "chat_completions");
        assert_eq!(
            v("ditto_gateway_requests_total", &[chat, ("method", "POST")]),
            Some(3.0)
        );
        assert_eq!(
            v("ditto_gateway_responses_total", &[chat, ("code", "200")]),
            Some(2.0)
        );
        assert_eq!(
            v("ditto_gateway_responses_total", &[chat, ("code", "502")]),
            Some(1.0)
        );
        assert_eq!(v("ditto_gateway_requests_in_flight", &[]), Some(0.0));
        assert_eq!(
            v("ditto_gateway_request_duration_seconds_count", &[chat]),
            Some(3.0)
        );
        assert_eq!(
            v(
                "ditto_gateway_request_duration_seconds_bucket",
                &[chat, ("le", "0.001")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v(
                "ditto_gateway_request_duration_seconds_bucket",
                &[chat, ("le", "+Inf")]
            ),
            Some(3.0)
        );
        let sum = v("ditto_gateway_request_duration_seconds_sum", &[chat]).unwrap_or(0.0);
        assert!((sum - 0.07392).abs() < 1e-9, "{sum}");
        assert_eq!(
            v(
                "ditto_gateway_rejected_total",
                &[("reason", "rate_limited")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v("ditto_gateway_rejected_total", &[("reason", "auth_failed")]),
            Some(0.0)
        );
        let openai = ("backend", "openai");
        assert_eq!(
            v(
                "ditto_gateway_backend_requests_total",
                &[openai, ("outcome", "5xx")]
            ),
            Some(1.0)
        );
        assert_eq!(v("ditto_gateway_ttfb_seconds_count", &[openai]), Some(1.0));
        let local = ("backend", "local");
        assert_eq!(
            v("ditto_gateway_upstream_connections_open", &[local]),
            Some(1.0)
        );
        assert_eq!(
            v("ditto_gateway_upstream_connections_reused_total", &[local]),
            Some(1.0)
        );
        assert_eq!(
            v("ditto_gateway_upstream_connections_idle", &[local]),
            Some(1.0)
        );
        let key = ("key", "team \"a\"\\x");
        let model = ("model", "gpt-4o");
        assert_eq!(
            v(
                "ditto_gateway_tokens_total",
                &[key, model, ("kind", "prompt")]
            ),
            Some(30.0)
        );
        assert_eq!(
            v(
                "ditto_gateway_tokens_total",
                &[key, model, ("kind", "completion")]
            ),
            Some(60.0)
        );
        assert_eq!(
            v("ditto_gateway_cost_usd_total", &[key, model]),
            Some(0.0075)
        );
        assert_eq!(
            v("ditto_gateway_key_requests_total", &[key, model]),
            Some(3.0)
        );
        assert_eq!(v("ditto_gateway_stream_bytes_total", &[]), Some(1234.0));
        assert_eq!(v("ditto_gateway_log_dropped_total", &[]), Some(7.0));
        assert_eq!(v("ditto_gateway_cores", &[]), Some(2.0));
        assert!(
            v("ditto_gateway_otel_spans_dropped_total", &[]).is_none(),
            "external families appear only when registered"
        );
    }

    /// A series' labels without `le`.
    type Labels = Vec<(String, String)>;

    #[test]
    fn histograms_are_cumulative_and_end_at_count() {
        let text = render_prometheus(&traffic());
        let (samples, types) = parse(&text).expect("parses");
        for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
            let bucket = format!("{family}_bucket");
            let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for s in samples.iter().filter(|s| s.name == bucket) {
                let le: f64 = match s.labels["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    x => x.parse().expect("le"),
                };
                let key = s
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                series.entry(key).or_default().push((le, s.value));
            }
            for (labels, buckets) in series {
                assert_eq!(buckets.len(), crate::metrics::NBUCKETS);
                assert!(buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
                let count = samples
                    .iter()
                    .find(|s| {
                        s.name == format!("{family}_count")
                            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
                    })
                    .map(|s| s.value);
                assert_eq!(count, buckets.last().map(|b| b.1));
            }
        }
    }

    #[test]
    fn every_family_is_documented_and_named_consistently() {
        let doc = include_str!("../../docs/observability.md");
        for f in &FAMILIES {
            assert!(f.name.starts_with("ditto_gateway_"), "{}", f.name);
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            if f.kind == Kind::Histogram {
                assert!(f.name.ends_with("_seconds"), "{}", f.name);
            }
            assert!(
                doc.contains(&format!("`{}`", f.name)),
                "{} missing from docs",
                f.name
            );
        }
        let names: std::collections::HashSet<_> = FAMILIES.iter().map(|f| f.name).collect();
        assert_eq!(names.len(), FAMILIES.len(), "no duplicates");
    }

    #[test]
    fn no_secret_reaches_the_metrics() {
        let reg = Registry::new(["b"], LabelCaps::default());
        let m = reg.register_core(0);
        for s in crate::log::redact::tests::SECRETS {
            m.usage(Some(s), s, 1, 1, 1);
            m.usage(Some("k"), &format!("Bearer {s}"), 1, 1, 1);
        }
        for out in [render_prometheus(&reg), render_json(&reg)] {
            for s in crate::log::redact::tests::SECRETS {
                assert!(!out.contains(s), "{s} leaked");
            }
        }
    }

    #[test]
    fn json_counters() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&traffic())).expect("json");
        assert_eq!(v["requests_total"], 3);
        assert_eq!(v["responses"]["200"], 2);
        assert_eq!(v["responses"]["502"], 1);
        assert_eq!(v["endpoints"]["chat_completions"]["requests"], 3);
        assert_eq!(
            v["endpoints"]["chat_completions"]["duration_us"]["count"],
            3
        );
        assert_eq!(v["rejected"]["rate_limited"], 1);
        assert_eq!(v["streams"]["completed"], 1);
        assert_eq!(v["streams"]["bytes"], 1234);
        assert_eq!(v["backends"]["openai"]["requests"], 3);
        assert_eq!(v["backends"]["openai"]["outcomes"]["2xx"], 2);
        assert_eq!(v["backends"]["local"]["connections"]["open"], 1);
        assert_eq!(v["usage"][0]["prompt_tokens"], 30);
        assert_eq!(v["usage"][0]["cost_pico_usd"], 7_500_000_000u64);
        assert_eq!(v["pipelines"]["log_dropped_total"], 7);
        assert_eq!(v["overhead_us"]["p50_le"], 50);
    }

    /// Every `ditto_gateway_*` name in `text`, histogram suffixes folded to their family.
    fn metric_names(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("ditto_gateway_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| {
                    FAMILIES
                        .iter()
                        .any(|x| x.name == *f && x.kind == Kind::Histogram)
                })
                .unwrap_or(name);
            out.push(family.to_string());
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn dashboards_use_only_metrics_that_exist() {
        let dash = include_str!("../../dashboards/grafana-ditto-gateway.json");
        let v: serde_json::Value = serde_json::from_str(dash).expect("dashboard is JSON");
        assert_eq!(v["uid"], "ditto-gateway");
        let panels = v["panels"].as_array().expect("panels");
        assert!(panels.len() >= 10);
        let alerts = include_str!("../../dashboards/prometheus-alerts.yml");
        for (file, text) in [("dashboard", dash), ("alerts", alerts)] {
            let names = metric_names(text);
            assert!(!names.is_empty());
            for n in names {
                assert!(
                    FAMILIES.iter().any(|f| f.name == n),
                    "{file} uses unknown metric {n}"
                );
            }
        }
        for want in [
            "ditto_gateway_requests_total",
            "ditto_gateway_ttfb_seconds",
            "ditto_gateway_upstream_connections_reused_total",
            "ditto_gateway_cost_usd_total",
            "ditto_gateway_rejected_total",
            "ditto_gateway_backend_in_flight",
        ] {
            assert!(dash.contains(want), "dashboard lacks {want}");
        }
    }

    #[cfg(feature = "gateway-config-yaml")]
    #[test]
    fn alert_rules_are_well_formed() {
        let text = include_str!("../../dashboards/prometheus-alerts.yml");
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("YAML");
        let rules = v["groups"][0]["rules"].as_sequence().expect("rules");
        let mut names = Vec::new();
        for r in rules {
            let name = r["alert"].as_str().expect("alert name");
            let expr = r["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty());
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{name}"
            );
            assert!(r["labels"]["severity"].as_str().is_some(), "{name}");
            assert!(r["annotations"]["summary"].as_str().is_some(), "{name}");
            names.push(name.to_string());
        }
        for want in ["5xx", "Overhead", "Budget", "LogDrops", "BackendDown"] {
            assert!(names.iter().any(|n| n.contains(want)), "no {want} alert");
        }
    }

    #[test]
    fn an_empty_registry_renders() {
        let reg = Registry::new(Vec::<String>::new(), LabelCaps::default());
        let text = render_prometheus(&reg);
        parse(&text).expect("parses");
        serde_json::from_str::<serde_json::Value>(&render_json(&reg)).expect("json");
    }
}
