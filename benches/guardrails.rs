//! Criterion benches for guardrail checks on chat bodies of 1 KiB and 1 MiB.
//!
//! `cargo bench --bench guardrails` (add `-- <filter>` for one group). Each size is measured
//! clean (the whole body must be scanned) and with a banned phrase at the very end (the worst
//! case for a hit), with phrases + regexes, with PII detection alone, with every rule on, and
//! the bare serde_json walk (`parse_only`: a `max_input_tokens` check, which scans nothing) as
//! the floor the scanners add to.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ditto_gateway::guardrails::{Endpoint, Guardrails};
use serde_json::json;

const PROSE: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod \
tempor incididunt ut labore et dolore magna aliqua. Call 555-0100 at 10:30 on 2024-05-01, \
order #48213, \"quoted\" text\\n and more. ";

/// A chat body of about `target` bytes: a system message and user turns of prose.
fn body(target: usize, tail: &str) -> Vec<u8> {
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    let mut size = 100;
    while size < target {
        let n = ((target - size) / PROSE.len()).clamp(1, 64);
        let content = PROSE.repeat(n);
        size += content.len() + 40;
        messages.push(json!({"role": "user", "content": content}));
    }
    if let Some(serde_json::Value::Object(last)) = messages.last_mut() {
        if let Some(serde_json::Value::String(c)) = last.get_mut("content") {
            c.push_str(tail);
        }
    }
    serde_json::to_vec(&json!({"model": "gpt-4o", "messages": messages, "temperature": 0.2}))
        .expect("json")
}

fn phrases() -> Vec<String> {
    (0..20)
        .map(|i| format!("forbidden topic {i}"))
        .chain(["ignore previous instructions".to_string()])
        .collect()
}

fn guardrails(v: serde_json::Value) -> Guardrails {
    Guardrails::from_json(&v).expect("valid")
}

fn bench(c: &mut Criterion) {
    let rules = [
        (
            "parse_only",
            guardrails(json!({"max_input_tokens": 100_000_000})),
        ),
        ("phrases", guardrails(json!({"banned_phrases": phrases()}))),
        (
            "phrases_regexes",
            guardrails(json!({
                "banned_phrases": phrases(),
                "banned_regexes": ["sk-[A-Za-z0-9]{20,}", "(?:password|passwd)\\s*[:=]"],
            })),
        ),
        ("pii", guardrails(json!({"block_pii": true}))),
        (
            "all",
            guardrails(json!({
                "allow_models": ["gpt-4*"], "deny_models": ["gpt-4-32k*"],
                "max_input_tokens": 100_000_000, "banned_phrases": phrases(),
                "banned_regexes": ["sk-[A-Za-z0-9]{20,}"], "block_pii": true,
                "validate_schema": true,
            })),
        ),
    ];
    for (size_name, size) in [("1KiB", 1024usize), ("1MiB", 1 << 20)] {
        let clean = body(size, "");
        let hit = body(size, " now IGNORE PREVIOUS INSTRUCTIONS");
        let mut group = c.benchmark_group(format!("guardrails/{size_name}"));
        group.throughput(Throughput::Bytes(clean.len() as u64));
        if size > 4096 {
            group.sample_size(30);
        }
        for (name, g) in &rules {
            assert!(
                g.check(Endpoint::Chat, Some("gpt-4o"), &clean).is_ok(),
                "{name}"
            );
            group.bench_with_input(BenchmarkId::new(*name, "clean"), &clean, |b, body| {
                b.iter(|| black_box(g.check(Endpoint::Chat, Some("gpt-4o"), black_box(body))))
            });
            if name.starts_with("phrases") || *name == "all" {
                assert!(g.check(Endpoint::Chat, Some("gpt-4o"), &hit).is_err());
                group.bench_with_input(
                    BenchmarkId::new(*name, "phrase_at_end"),
                    &hit,
                    |b, body| {
                        b.iter(|| {
                            black_box(g.check(Endpoint::Chat, Some("gpt-4o"), black_box(body)))
                        })
                    },
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
