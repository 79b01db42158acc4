//! What observability costs per request: the metric updates the pipeline makes, the access
//! line (formatted on the core from the request's borrowed strings, into the core's buffer),
//! and the span encoding (on the exporter thread).
//!
//! `cargo bench --bench metrics`. The metric updates and the access line are what runs on a
//! data-plane core per request.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use ditto_gateway::log::access::{AccessRecord, LineCache};
use ditto_gateway::metrics::overhead::Overhead;
use ditto_gateway::metrics::{
    render_prometheus, BackendOutcome, Endpoint, LabelCaps, MethodClass, Registry, RequestDone,
};
use ditto_gateway::otel::{encode_otlp_json, IdGen, SpanRecord, TraceContext};

fn record() -> AccessRecord {
    AccessRecord {
        start_unix_nanos: 1_714_566_896_789_000_000,
        request_id: "ditto-5f0c9a1b2c3d4e5f-01-000000000001".into(),
        trace_id: None,
        key_id: Some("team-a".into()),
        model: Some("gpt-4o-mini".into()),
        backend: Some("openai".into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        stream: false,
        bytes_in: 95,
        bytes_out: 339,
        duration_us: 812,
        ttfb_us: Some(700),
        overhead_us: 42,
        prompt_tokens: Some(12),
        completion_tokens: Some(34),
        cost_pico_usd: Some(123_450_000),
        error: None,
    }
}

fn per_request(c: &mut Criterion) {
    let reg = Registry::new(["openai", "local"], LabelCaps::default());
    let m = reg.register_core(0);
    let mut g = c.benchmark_group("metrics");
    // Everything the pipeline records for one proxied, non-streamed request.
    g.bench_function("per_request_updates", |b| {
        b.iter(|| {
            m.request_started(Endpoint::ChatCompletions, MethodClass::Post);
            m.pool_reused(0);
            let guard = m.backend_started(black_box(0));
            m.backend_response(0, BackendOutcome::Status(200), black_box(750));
            drop(guard);
            m.pool_idle(0, 4);
            m.usage(
                Some("team-a"),
                black_box("gpt-4o-mini"),
                12,
                34,
                123_450_000,
            );
            m.request_finished(&RequestDone {
                endpoint: Endpoint::ChatCompletions,
                status: 200,
                duration_us: black_box(812),
                overhead_us: 42,
                bytes_in: 95,
                bytes_out: 339,
            });
        })
    });
    g.bench_function("usage_by_key_and_model", |b| {
        b.iter(|| m.usage(Some("team-a"), black_box("gpt-4o-mini"), 12, 34, 1))
    });
    g.bench_function("endpoint_classify", |b| {
        b.iter(|| Endpoint::classify(black_box("/v1/chat/completions")))
    });
    g.bench_function("overhead_stopwatch", |b| {
        b.iter(|| {
            let mut o = Overhead::new(Instant::now());
            o.upstream_start(Instant::now());
            o.upstream_end(Instant::now());
            black_box(o.overhead_us(Instant::now()))
        })
    });
    g.bench_function("access_record_build", |b| b.iter(|| black_box(record())));
    let r = record();
    let mut line = String::with_capacity(512);
    let mut clock = LineCache::default();
    g.bench_function("access_json_line", |b| {
        b.iter(|| {
            line.clear();
            black_box(&r).write_json_line(&mut line, &mut clock);
        })
    });
    g.bench_function("access_text_line", |b| {
        b.iter(|| {
            line.clear();
            black_box(&r).write_text_line(&mut line, &mut clock);
        })
    });
    let ids = IdGen::with_seed(1);
    let spans: Vec<SpanRecord> = (0..100)
        .map(|_| SpanRecord {
            ctx: TraceContext::start(None, &ids),
            record: record(),
        })
        .collect();
    let mut body = String::new();
    g.bench_function("otlp_encode_100_spans", |b| {
        b.iter(|| {
            body.clear();
            encode_otlp_json(black_box(&spans), &mut body);
        })
    });
    // A scrape with 8 cores and 100 (key, model) series: the cost is off the hot path.
    let cores: Vec<_> = (1..8).map(|i| reg.register_core(i)).collect();
    for (i, c) in cores.iter().enumerate() {
        for k in 0..100 {
            c.usage(Some(&format!("key{k}")), "gpt-4o", 1, 1, 1);
        }
        c.request_started(Endpoint::Embeddings, MethodClass::Post);
        c.pool_opened(i % 2);
    }
    g.bench_function("scrape_prometheus_8_cores", |b| {
        b.iter(|| black_box(render_prometheus(&reg)))
    });
    g.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
