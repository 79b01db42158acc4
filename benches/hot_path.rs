//! Criterion benches for every hot-path piece of a proxied request.
//!
//! `cargo bench --bench hot_path` (add `-- <filter>` for one group). JSON extraction compares
//! serde_json (what the proxy uses), simd-json and sonic-rs lazy field access on 1 KiB and
//! 200 KiB bodies; README records the outcome.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ditto_gateway::config::BackendConfig;
use ditto_gateway::http::{ChunkedDecoder, RequestHead, ResponseHead};
use ditto_gateway::proxy::headers::{client_response, upstream_request, OutFraming};
use ditto_gateway::proxy::json;
use ditto_gateway::router::{Group, Router, Weighted};
use ditto_gateway::upstream::Backend;
use ditto_gateway::usage::SseUsageScanner;
use sonic_rs::JsonValueTrait;

/// A request head as the OpenAI Python SDK sends it.
const REQUEST_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\n\
Content-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.3\r\nX-Stainless-Lang: python\r\n\
X-Stainless-Package-Version: 1.54.3\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\n\
X-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.11.7\r\n\
Authorization: Bearer sk-proj-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\
X-Stainless-Async: false\r\nx-stainless-retry-count: 0\r\nContent-Length: 95\r\n\r\n";

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nDate: Fri, 27 Nov 2026 13:00:00 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 339\r\nConnection: keep-alive\r\n\
access-control-expose-headers: X-Request-ID\r\nopenai-organization: org-x\r\nopenai-processing-ms: 312\r\n\
openai-version: 2020-10-01\r\nx-ratelimit-limit-requests: 10000\r\nx-ratelimit-remaining-requests: 9999\r\n\
x-request-id: req_0123456789abcdef\r\nstrict-transport-security: max-age=31536000\r\n\r\n";

fn json_body(target: usize) -> Vec<u8> {
    let mut messages = Vec::new();
    let mut size = 0;
    while size < target {
        let m = serde_json::json!({"role": "user", "content": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \"incididunt\" ut labore."});
        size += m.to_string().len() + 1;
        messages.push(m);
    }
    // `model` last: the worst case for a lazy extractor that scans from the start.
    serde_json::to_vec(
        &serde_json::json!({"messages": messages, "stream": true, "model": "gpt-4o-mini"}),
    )
    .expect("json")
}

fn sse_stream(events: usize) -> Vec<u8> {
    let mut s = Vec::new();
    for i in 0..events {
        s.extend_from_slice(format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n").as_bytes());
    }
    s.extend_from_slice(b"data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":50,\"total_tokens\":59}}\n\ndata: [DONE]\n\n");
    s
}

fn chunked(payload: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in payload.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn backend() -> Backend {
    let mut c = BackendConfig::passthrough("primary", "https://api.openai.com/v1");
    c.headers = vec![("authorization".into(), "Bearer sk-backend".into())];
    c.query_params = vec![("api-version".into(), "2024-10-01".into())];
    Backend::from_config(0, &c).expect("backend")
}

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("head_parse");
    g.bench_function("request", |b| {
        b.iter(|| RequestHead::parse(black_box(REQUEST_HEAD)))
    });
    g.bench_function("response", |b| {
        b.iter(|| ResponseHead::parse(black_box(RESPONSE_HEAD), false))
    });
    g.finish();
}

fn chunked_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunked_decode");
    let payload = vec![b'x'; 64 * 1024];
    for size in [64usize, 1024, 16 * 1024] {
        let body = chunked(&payload, size);
        g.throughput(Throughput::Bytes(payload.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("64KiB_in_chunks_of", size),
            &body,
            |b, body| {
                b.iter(|| {
                    let mut d = ChunkedDecoder::new();
                    let mut n = 0;
                    let p = d.decode(black_box(body), |r| n += r.len()).expect("valid");
                    assert!(p.done);
                    n
                })
            },
        );
    }
    g.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let be = backend();
    let (req, _) = RequestHead::parse(REQUEST_HEAD)
        .expect("parse")
        .expect("complete");
    let (resp, _) = ResponseHead::parse(RESPONSE_HEAD, false)
        .expect("parse")
        .expect("complete");
    let mut g = c.benchmark_group("header_rewrite");
    g.bench_function("upstream_request", |b| {
        let mut out = BytesMut::with_capacity(2048);
        b.iter(|| {
            out.clear();
            upstream_request(
                &mut out,
                black_box(&req),
                &be,
                "/v1/chat/completions",
                "ditto-0123456789abcdef-00-000000000001",
                Some(b"sk-proj-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".as_slice()),
                OutFraming::Length(95),
            );
            out.len()
        })
    });
    g.bench_function("client_response", |b| {
        let mut out = BytesMut::with_capacity(2048);
        b.iter(|| {
            out.clear();
            client_response(
                &mut out,
                black_box(&resp),
                "ditto-0123456789abcdef-00-000000000001",
                "primary",
                OutFraming::Length(339),
                false,
                "",
            );
            out.len()
        })
    });
    g.bench_function("url_join", |b| {
        let mut s = String::with_capacity(256);
        b.iter(|| {
            s.clear();
            be.write_target(&mut s, black_box("/v1/chat/completions"), Some("x=1"));
            s.len()
        })
    });
    g.finish();
}

fn json_extract(c: &mut Criterion) {
    let mut g = c.benchmark_group("json_model_stream");
    for (label, size) in [("1KiB", 1024usize), ("200KiB", 200 * 1024)] {
        let body = json_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("serde_json_probe", label),
            &body,
            |b, body| {
                b.iter(|| {
                    let f = json::probe(black_box(body));
                    assert_eq!(f.model.as_deref(), Some("gpt-4o-mini"));
                    f
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("simd_json_borrowed", label),
            &body,
            |b, body| {
                let mut scratch = body.clone();
                b.iter(|| {
                    // simd-json parses in place, so every run needs a fresh mutable copy.
                    scratch.copy_from_slice(body);
                    let v = simd_json::to_borrowed_value(black_box(&mut scratch)).expect("json");
                    use simd_json::prelude::*;
                    let model = v.get_str("model").map(str::to_string);
                    let stream = v.get_bool("stream").unwrap_or(false);
                    assert_eq!(model.as_deref(), Some("gpt-4o-mini"));
                    (model, stream)
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("sonic_rs_lazy", label),
            &body,
            |b, body| {
                b.iter(|| {
                    let model = sonic_rs::get_from_slice(black_box(body), &["model"])
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string));
                    let stream = sonic_rs::get_from_slice(black_box(body), &["stream"])
                        .ok()
                        .map(|v| v.as_raw_str() == "true");
                    assert_eq!(model.as_deref(), Some("gpt-4o-mini"));
                    (model, stream)
                })
            },
        );
    }
    g.finish();
}

fn sse_usage(c: &mut Criterion) {
    let stream = sse_stream(50);
    let mut g = c.benchmark_group("sse_usage_scan");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    for piece in [64usize, 1024, usize::MAX] {
        let label = if piece == usize::MAX {
            "whole".to_string()
        } else {
            format!("{piece}B_pieces")
        };
        g.bench_function(BenchmarkId::new("50_events", label), |b| {
            b.iter(|| {
                let mut s = SseUsageScanner::new();
                for p in stream.chunks(piece.min(stream.len())) {
                    s.feed(black_box(p));
                }
                assert!(s.usage().is_some());
                s.usage()
            })
        });
    }
    g.finish();
}

fn router(c: &mut Criterion) {
    let group = |ids: &[usize]| {
        Group::new(ids.iter().map(|&backend| Weighted {
            backend,
            weight: 1.0 + backend as f64,
        }))
    };
    let rules: Vec<(String, bool, Group)> = (0..20)
        .map(|i| {
            (
                format!("model-{i}"),
                i % 2 == 0,
                group(&[i % 4, (i + 1) % 4]),
            )
        })
        .chain(std::iter::once((
            "gpt-4o".to_string(),
            false,
            group(&[0, 1, 2]),
        )))
        .collect();
    let r = Router::new(rules, group(&[0, 1, 2, 3]));
    let mut g = c.benchmark_group("router");
    g.bench_function("candidates_prefix_rule", |b| {
        b.iter(|| {
            r.candidates(
                black_box(Some("gpt-4o-mini")),
                black_box("ditto-0123456789abcdef-00-000000000001"),
            )
            .count()
        })
    });
    g.bench_function("candidates_default", |b| {
        b.iter(|| {
            r.candidates(
                black_box(Some("llama-3")),
                black_box("ditto-0123456789abcdef-00-000000000001"),
            )
            .count()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    heads,
    chunked_decode,
    header_rewrite,
    json_extract,
    sse_usage,
    router
);
criterion_main!(benches);
