//! The proxy cache over real sockets: memory hits that cost no quota, bypass headers, scoping
//! per virtual key, size caps, SSE replayed as a stream, one upstream call for a stampede,
//! the Redis tier shared by replicas (corrupt entries ignored), and the purge endpoint.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{agent, chat, into_resp_pub, post, sse_data, Gateway, Mock, Resp};
use crate::replicas::Redis;

const ADMIN: &str = "adm-secret";

fn cfg(mock: &Mock, keys: Value) -> String {
    json!({
        "backends": [{"name": "m", "base_url": mock.v1()}],
        "virtual_keys": keys,
        "router": {"default_backends": [{"backend": "m"}]}
    })
    .to_string()
}

fn ask(gw: &Gateway, token: Option<&str>, body: &Value, extra: &[(&str, &str)]) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    post(&gw.url("/v1/chat/completions"), body, &h)
}

fn purge(gw: &Gateway) -> Resp {
    into_resp_pub(
        agent()
            .post(&gw.url("/admin/proxy_cache/purge"))
            .header("authorization", &format!("Bearer {ADMIN}"))
            .send_empty(),
    )
}

#[test]
fn identical_requests_hit_memory_and_cost_no_quota() {
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([{"id": "k", "token": "sk-k", "limits": {"rpm": 1}}]),
    );
    let gw = Gateway::builder(&config)
        .args(&["--proxy-cache", "--workers", "1"])
        .start();
    let body = chat("gpt-4o", false);
    let minute = crate::replicas::unix_minute();
    let first = ask(&gw, Some("sk-k"), &body, &[]);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-ditto-cache"), None);
    for _ in 0..3 {
        let r = ask(&gw, Some("sk-k"), &body, &[]);
        assert_eq!(r.status, 200, "a hit is not charged to rpm 1: {}", r.text());
        assert_eq!(r.header("x-ditto-cache"), Some("hit"));
        assert_eq!(r.header("x-ditto-cache-source"), Some("memory"));
        assert_eq!(r.header("x-ditto-cache-key").map(str::len), Some(32));
        assert!(r.header("x-request-id").is_some());
        assert!(
            r.header("x-ditto-overhead-us")
                .is_some_and(|v| v.parse::<u64>().is_ok()),
            "a hit reports the gateway's time like any answer"
        );
        assert_eq!(r.text(), first.text());
    }
    assert_eq!(mock.requests(), 1);
    let metrics = crate::harness::get(&gw.url("/metrics"), &[]).json();
    assert_eq!(metrics["cache"]["memory"]["hit"], 3, "{metrics}");
    assert_eq!(metrics["cache"]["memory"]["miss"], 1, "{metrics}");
    // The one request of the minute went upstream: anything else is refused (unless a new
    // rpm window began meanwhile).
    let other = ask(&gw, Some("sk-k"), &chat("gpt-4o-mini", false), &[]);
    if crate::replicas::unix_minute() == minute {
        assert_eq!(other.status, 429);
    }
}

#[test]
fn bypass_headers_scope_and_caps_make_misses() {
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([{"id": "a", "token": "sk-a"}, {"id": "b", "token": "sk-b"}]),
    );
    let gw = Gateway::builder(&config)
        .args(&[
            "--proxy-cache",
            "--workers",
            "1",
            "--proxy-cache-max-body-bytes",
            "100000",
        ])
        .start();
    let body = chat("gpt-4o", false);
    assert_eq!(ask(&gw, Some("sk-a"), &body, &[]).status, 200);
    assert_eq!(mock.requests(), 1);
    for h in [
        ("x-ditto-cache-bypass", "1"),
        ("x-ditto-bypass-cache", "true"),
        ("cache-control", "no-cache"),
        ("cache-control", "no-store"),
    ] {
        let r = ask(&gw, Some("sk-a"), &body, &[h]);
        assert_eq!((r.status, r.header("x-ditto-cache")), (200, None), "{h:?}");
    }
    assert_eq!(mock.requests(), 5);
    // Another virtual key never sees key a's answers.
    let r = ask(&gw, Some("sk-b"), &body, &[]);
    assert_eq!(r.header("x-ditto-cache"), None);
    assert_eq!(mock.requests(), 6);
    // Bigger than the body cap: never stored.
    let body = chat("gpt-4o-mini", false);
    let big = ask(&gw, Some("sk-a"), &body, &[("x-mock-size", "200000")]);
    assert_eq!(big.status, 200);
    assert!(big.text().len() > 100_000);
    let again = ask(&gw, Some("sk-a"), &body, &[("x-mock-size", "200000")]);
    assert_eq!(again.header("x-ditto-cache"), None);
    assert_eq!(mock.requests(), 8);
}

#[test]
fn streams_are_cached_only_when_asked_and_replayed_as_a_stream() {
    let mock = Mock::start();
    let config = cfg(&mock, json!([]));
    let plain = Gateway::builder(&config)
        .args(&["--proxy-cache", "--workers", "1"])
        .start();
    let body = chat("gpt-4o", true);
    for _ in 0..2 {
        let r = ask(&plain, None, &body, &[]);
        assert_eq!((r.status, r.header("x-ditto-cache")), (200, None));
    }
    assert_eq!(mock.requests(), 2);

    let gw = Gateway::builder(&config)
        .args(&["--proxy-cache", "--proxy-cache-streaming", "--workers", "1"])
        .start();
    let first = ask(&gw, None, &body, &[]);
    let hit = ask(&gw, None, &body, &[]);
    assert_eq!(mock.requests(), 3);
    assert_eq!(hit.header("x-ditto-cache"), Some("hit"));
    assert!(hit
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert_eq!(hit.header("transfer-encoding"), Some("chunked"));
    assert_eq!(sse_data(&hit.text()), sse_data(&first.text()));
    assert!(sse_data(&hit.text()).len() > 2);
}

#[test]
fn a_stampede_on_one_hot_key_makes_one_upstream_call() {
    let mock = Mock::start();
    let config = cfg(&mock, json!([]));
    // Four cores and twelve connections: tasks wait on their core's fetcher, and cores wait
    // on the one core that fetches.
    let gw = Gateway::builder(&config)
        .args(&["--proxy-cache", "--workers", "4"])
        .start();
    let body = chat("gpt-4o", false);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    let r = ask(&gw, None, &body, &[("x-mock-delay-ms", "400")]);
                    (r.status, r.header("x-ditto-cache").map(str::to_string))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    assert_eq!(mock.requests(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|(_, c)| c.is_some()).count(), 11);
}

#[test]
fn a_stampede_whose_fetch_fails_sends_the_waiters_upstream_together_not_in_turn() {
    // One core: tasks waiting on their core's fetcher; four: cores waiting on another core.
    for workers in ["1", "4"] {
        stampede_with_failing_fetch(workers);
    }
}

fn stampede_with_failing_fetch(workers: &str) {
    let mock = Mock::start();
    let config = cfg(&mock, json!([]));
    let gw = Gateway::builder(&config)
        .args(&["--proxy-cache", "--workers", workers])
        .start();
    let body = chat("gpt-4o", false);
    let delay = Duration::from_millis(1000);
    let ms = delay.as_millis().to_string();
    let clients = 8;
    let started = std::time::Instant::now();
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let h = [("x-mock-delay-ms", ms.as_str()), ("x-mock-status", "500")];
                    let r = ask(&gw, None, &body, &h);
                    (r.status, r.header("x-ditto-cache").map(str::to_string))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    // An error is never shared or cached: every client got the upstream's own answer.
    assert!(
        statuses.iter().all(|(s, c)| *s == 500 && c.is_none()),
        "{statuses:?}"
    );
    assert_eq!(mock.requests(), clients, "{statuses:?}");
    // Waiters electing a new fetcher after each failure would take `clients` delays in turn;
    // going upstream together once the first fetch failed takes about two.
    let took = started.elapsed();
    assert!(
        took < delay * (clients as u32 - 2),
        "{workers} core(s): waiters queued behind each other: {took:?}"
    );
}

#[test]
fn the_redis_tier_serves_other_replicas_ignores_corrupt_entries_and_purges() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(&mock, json!([{"id": "k", "token": "sk-k"}]));
    let replica = || {
        Gateway::builder(&config)
            .args(&[
                "--redis",
                &redis.url(),
                "--redis-prefix",
                "c1",
                "--proxy-cache",
                "--admin-token",
                ADMIN,
            ])
            .start()
    };
    let a = replica();
    let b = replica();
    let body = chat("gpt-4o", false);
    let first = ask(&a, Some("sk-k"), &body, &[]);
    assert_eq!(first.status, 200);
    let key = crate::replicas::wait_for(Duration::from_secs(2), || {
        let r = ask(&b, Some("sk-k"), &body, &[]);
        (r.header("x-ditto-cache-source") == Some("redis"))
            .then(|| r.header("x-ditto-cache-key").map(str::to_string))
            .flatten()
    });
    assert_eq!(mock.requests(), 1);

    // A corrupt entry is a miss (and is replaced), never a broken answer.
    let rkey = format!("c1:cache:{key}");
    assert!(redis
        .cmd(&[b"SET", rkey.as_bytes(), b"DTC1garbage"])
        .starts_with(b"+OK"));
    let c = replica();
    let r = ask(&c, Some("sk-k"), &body, &[]);
    assert_eq!((r.status, r.header("x-ditto-cache")), (200, None));
    assert_eq!(mock.requests(), 2);

    let p = purge(&c);
    assert_eq!(p.status, 200, "{}", p.text());
    assert_eq!(p.json()["purged"], true);
    assert_eq!(redis.cmd(&[b"EXISTS", rkey.as_bytes()]), b":0\r\n");
    // c's memory tier was purged too: it goes upstream again.
    let r = ask(&c, Some("sk-k"), &body, &[]);
    assert_eq!(r.header("x-ditto-cache"), None);
    assert_eq!(mock.requests(), 3);
}

#[test]
fn a_stampede_across_replicas_makes_one_upstream_call_and_a_failed_fetch_frees_the_rest() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(&mock, json!([]));
    let replica = || {
        Gateway::builder(&config)
            .args(&[
                "--redis",
                &redis.url(),
                "--redis-prefix",
                "c2",
                "--proxy-cache",
                "--workers",
                "2",
            ])
            .start()
    };
    let replicas = [replica(), replica()];
    let stampede = |body: &Value, extra: &[(&str, &str)]| -> Vec<(u16, Option<String>)> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..12)
                .map(|i| {
                    let gw = &replicas[i % 2];
                    s.spawn(move || {
                        let r = ask(gw, None, body, extra);
                        (
                            r.status,
                            r.header("x-ditto-cache-source").map(str::to_string),
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        })
    };
    let got = stampede(&chat("gpt-4o", false), &[("x-mock-delay-ms", "600")]);
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert_eq!(mock.requests(), 1, "one fetch for both replicas: {got:?}");
    assert!(
        got.iter().any(|(_, src)| src.as_deref() == Some("redis")),
        "the other replica took the entry from Redis: {got:?}"
    );
    assert_eq!(
        redis.cmd(&[b"KEYS", b"c2:cache:*:fill"]),
        b"*0\r\n",
        "the fill lock was released"
    );

    // The fetch fails: nothing is shared, every waiter goes upstream itself, promptly.
    let before = mock.requests();
    let started = std::time::Instant::now();
    let got = stampede(
        &chat("gpt-4o-mini", false),
        &[("x-mock-delay-ms", "600"), ("x-mock-status", "500")],
    );
    assert!(
        got.iter().all(|(s, src)| *s == 500 && src.is_none()),
        "{got:?}"
    );
    assert_eq!(mock.requests() - before, 12);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "waiters queued behind each other: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_keys_cache_section_turns_caching_off_or_shortens_the_ttl() {
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([
            {"id": "off", "token": "sk-off", "cache": {"enabled": false}},
            {"id": "short", "token": "sk-short", "cache": {"ttl_seconds": 1}}
        ]),
    );
    let gw = Gateway::builder(&config)
        .args(&[
            "--proxy-cache",
            "--proxy-cache-ttl",
            "300",
            "--workers",
            "1",
        ])
        .start();
    let body = chat("gpt-4o", false);
    for _ in 0..3 {
        let r = ask(&gw, Some("sk-off"), &body, &[]);
        assert_eq!((r.status, r.header("x-ditto-cache")), (200, None));
    }
    assert_eq!(
        mock.requests(),
        3,
        "a key with caching off always goes upstream"
    );

    assert_eq!(
        ask(&gw, Some("sk-short"), &body, &[]).header("x-ditto-cache"),
        None
    );
    assert_eq!(
        ask(&gw, Some("sk-short"), &body, &[]).header("x-ditto-cache"),
        Some("hit")
    );
    std::thread::sleep(Duration::from_millis(1300));
    let r = ask(&gw, Some("sk-short"), &body, &[]);
    assert_eq!(
        r.header("x-ditto-cache"),
        None,
        "the key's 1 s TTL, not the flag's 300 s"
    );
    assert_eq!(mock.requests(), 5);

    // Invalid sections are refused at startup, naming the field.
    let bad = cfg(
        &mock,
        json!([{"id": "b", "token": "sk-b", "cache": {"ttl_seconds": "long"}}]),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let path = crate::harness::write_file(dir.path(), "gateway.json", &bad);
    let run = crate::harness::run_cli(
        &[path.to_str().expect("utf-8"), "--listen", "127.0.0.1:0"],
        &[],
        &[],
    );
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("virtual_keys[0].cache.ttl_seconds"),
        "{}",
        run.stderr
    );
}
