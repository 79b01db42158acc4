//! Several gateway replicas sharing one real `redis-server` (started here on a free port, no
//! persistence unless a test asks for it): global rpm and budgets under load on every replica,
//! key changes live everywhere within a second, Redis killed and restarted mid-load, a replica
//! killed mid-stream, and a stalled Redis.
//!
//! Without `redis-server` on the PATH these tests say so and pass (`.ci/run` installs it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{agent, chat, get, into_resp_pub, post, Gateway, Mock, Resp};

const ADMIN: &str = "adm-secret";

/// A real `redis-server` on a loopback port, shared with the store's unit tests.
pub type Redis = ditto_gateway::mock::redis_server::RedisServer;

pub fn unix_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

fn cfg(mock: &Mock, keys: Value) -> String {
    json!({
        "backends": [{"name": "m", "base_url": mock.v1()}],
        "virtual_keys": keys,
        "router": {"default_backends": [{"backend": "m"}]}
    })
    .to_string()
}

fn replica(config: &str, redis: &Redis, prefix: &str) -> Gateway {
    Gateway::builder(config)
        .args(&[
            "--redis",
            &redis.url(),
            "--redis-prefix",
            prefix,
            "--admin-token",
            ADMIN,
            "--store-flush-ms",
            "100",
        ])
        .start()
}

fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Resp {
    let a = agent();
    let url = gw.url(path);
    let auth = format!("Bearer {ADMIN}");
    let r = match (method, body) {
        ("GET", _) => a.get(&url).header("authorization", &auth).call(),
        ("DELETE", _) => a.delete(&url).header("authorization", &auth).call(),
        ("POST", Some(b)) => a.post(&url).header("authorization", &auth).send_json(&b),
        ("POST", None) => a.post(&url).header("authorization", &auth).send_empty(),
        ("PUT", Some(b)) => a.put(&url).header("authorization", &auth).send_json(&b),
        (m, b) => panic!("unsupported {m} {b:?}"),
    };
    into_resp_pub(r)
}

fn chat_as(gw: &Gateway, token: &str, body: &Value) -> Resp {
    post(
        &gw.url("/v1/chat/completions"),
        body,
        &[("authorization", &format!("Bearer {token}"))],
    )
}

fn capped(stream: bool) -> Value {
    let mut b = chat("gpt-4o", stream);
    b["max_tokens"] = json!(5);
    b
}

fn budget_row(gw: &Gateway, scope: &str) -> Value {
    let r = admin(gw, "GET", "/admin/budgets", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|x| x["scope"] == scope && x["unit"] == "tokens")
        })
        .cloned()
        .unwrap_or(Value::Null)
}

fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Poll `f` until it returns Some, for at most `limit`.
pub fn wait_for<T>(limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    eventually("a condition", limit, f)
}

fn store_ok(gw: &Gateway) -> bool {
    get(&gw.url("/ready"), &[])
        .text()
        .contains(r#""name":"store","ok":true"#)
}

/// Send `per_replica` requests from 4 threads per replica at once; (2xx count, total tokens of
/// the 2xx answers, statuses seen).
fn hammer(gws: &[&Gateway], token: &str, per_replica: usize) -> (u64, u64, Vec<u16>) {
    let ok = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for gw in gws {
            for _ in 0..4 {
                let (ok, tokens, statuses) = (ok.clone(), tokens.clone(), statuses.clone());
                s.spawn(move || {
                    for _ in 0..per_replica / 4 {
                        let r = chat_as(gw, token, &capped(false));
                        if r.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let used = r.json()["usage"]["total_tokens"].as_u64().unwrap_or(0);
                            tokens.fetch_add(used, Ordering::Relaxed);
                        }
                        statuses.lock().expect("lock").push(r.status);
                    }
                });
            }
        }
    });
    let st = statuses.lock().expect("lock").clone();
    (
        ok.load(Ordering::Relaxed),
        tokens.load(Ordering::Relaxed),
        st,
    )
}

#[test]
fn rpm_and_budget_hold_across_three_replicas_hammered_at_once() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([
            {"id": "rate", "token": "sk-rate", "limits": {"rpm": 20}},
            {"id": "spend", "token": "sk-spend", "budget": {"total_tokens": 600}}
        ]),
    );
    let gws: Vec<Gateway> = (0..3).map(|_| replica(&config, &redis, "t1")).collect();
    let refs: Vec<&Gateway> = gws.iter().collect();

    let minute = unix_minute();
    let (ok, _, statuses) = hammer(&refs, "sk-rate", 24);
    let windows = unix_minute() - minute + 1;
    // 72 requests on 3 replicas: the limit is global (one replica alone would admit 20).
    assert!(
        ok <= 20 * windows,
        "{ok} requests admitted for rpm 20: {statuses:?}"
    );
    assert!(ok >= 18, "only {ok} admitted: quota parked somewhere");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );

    // Rounds until the budget is gone: a refusal can come while other cores still hold
    // unused lease (they give it back after 1 s idle), so later rounds pick that up.
    let (mut ok, mut used) = (0, 0);
    for _ in 0..8 {
        let (n, t, statuses) = hammer(&refs, "sk-spend", 48);
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 402),
            "{statuses:?}"
        );
        ok += n;
        used += t;
        eprintln!(
            "budget 600: {ok} admitted, {used} tokens; {}",
            budget_row(&gws[0], "key:spend")
        );
        if n == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1300));
    }
    // Leases never exceed the budget, and each answer fits its estimate: no overshoot.
    assert!(used <= 600, "{used} tokens spent of 600 ({ok} requests)");
    assert!(
        used >= 450,
        "only {used} tokens spent: quota parked somewhere"
    );
    // Every replica reports the same global ledger and cost totals.
    for gw in &gws {
        eventually("the global ledger", Duration::from_secs(5), || {
            (budget_row(gw, "key:spend")["spent"].as_u64() == Some(used)).then_some(())
        });
        eventually("the global cost totals", Duration::from_secs(5), || {
            let c = admin(gw, "GET", "/admin/costs?key_id=spend", None).json();
            let requests: u64 = c["data"]
                .as_array()
                .map_or(0, |d| d.iter().filter_map(|r| r["requests"].as_u64()).sum());
            (requests == ok).then_some(())
        });
    }
}

#[test]
fn a_key_changed_on_one_replica_is_live_on_the_others_within_a_second() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(&mock, json!([{"id": "seed", "token": "sk-seed"}]));
    let a = replica(&config, &redis, "t2");
    let b = replica(&config, &redis, "t2");
    let c = replica(&config, &redis, "t2");
    assert_eq!(chat_as(&b, "sk-new", &capped(false)).status, 401);

    let r = admin(
        &a,
        "POST",
        "/admin/keys",
        Some(json!({"id": "new", "token": "sk-new", "limits": {"rpm": 1000}})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let t0 = Instant::now();
    for gw in [&b, &c] {
        eventually(
            "the new key on another replica",
            Duration::from_secs(1),
            || (chat_as(gw, "sk-new", &capped(false)).status == 200).then_some(()),
        );
    }
    let created = t0.elapsed();

    let r = admin(&b, "DELETE", "/admin/keys/new", None);
    assert!(r.status == 200 || r.status == 204, "{}", r.text());
    let t0 = Instant::now();
    for gw in [&a, &c] {
        eventually(
            "the deletion on another replica",
            Duration::from_secs(1),
            || (chat_as(gw, "sk-new", &capped(false)).status == 401).then_some(()),
        );
    }
    eprintln!("propagation: create {created:?}, delete {:?}", t0.elapsed());
}

#[test]
fn a_router_changed_on_one_replica_routes_on_the_others_within_a_second() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mock = Mock::start();
    // Two backends on one mock, told apart by `x-ditto-backend`.
    let config = json!({
        "backends": [{"name": "a", "base_url": mock.v1()}, {"name": "b", "base_url": mock.v1()}],
        "virtual_keys": [{"id": "r", "token": "sk-r"}],
        "router": {"default_backends": [{"backend": "a"}]}
    })
    .to_string();
    let routed = |gw: &Gateway| {
        let r = chat_as(gw, "sk-r", &capped(false));
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-ditto-backend").unwrap_or("").to_string()
    };
    let a = replica(&config, &redis, "t7");
    let b = replica(&config, &redis, "t7");
    assert_eq!(routed(&b), "a");

    let r = admin(
        &a,
        "PUT",
        "/admin/config/router",
        Some(json!({"default_backends": [{"backend": "b"}]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(routed(&a), "b");
    let t0 = Instant::now();
    eventually(
        "the new router on the other replica",
        Duration::from_secs(1),
        || (routed(&b) == "b").then_some(()),
    );
    eprintln!("router propagation: {:?}", t0.elapsed());
    let r = admin(&b, "GET", "/admin/config/router", None);
    assert_eq!(r.json()["default_backends"][0]["backend"], "b");

    // A replica started later takes the stored router, not its config file's.
    let c = replica(&config, &redis, "t7");
    assert_eq!(routed(&c), "b");

    // A dry run changes nothing anywhere.
    let r = admin(
        &b,
        "PUT",
        "/admin/config/router?dry_run=true",
        Some(json!({"default_backends": [{"backend": "a"}]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(300));
    for gw in [&a, &b, &c] {
        assert_eq!(routed(gw), "b");
    }
}

#[test]
fn usage_served_while_redis_was_down_survives_the_replica_and_the_next_one_replays_it() {
    let Some(mut redis) = Redis::start(true) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([{"id": "gone", "token": "sk-gone", "budget": {"total_tokens": 10_000_000}}]),
    );
    let mut a = replica(&config, &redis, "t9");
    redis.kill();
    let mut used = 0;
    for _ in 0..20 {
        let r = chat_as(&a, "sk-gone", &capped(false));
        assert_eq!(r.status, 200, "fail open: {}", r.text());
        used += r.json()["usage"]["total_tokens"].as_u64().unwrap_or(0);
    }
    assert!(used > 0);
    // A few failed flushes (every 100 ms) put the usage on disk; then the replica dies
    // without any chance to write more.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child process by its pid.
    assert_eq!(unsafe { libc::kill(a.pid(), libc::SIGKILL) }, 0);
    assert!(a.wait_exit(Duration::from_secs(5)).is_some());
    redis.restart();
    let b = replica(&config, &redis, "t9");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = budget_row(&b, "key:gone")["spent"].as_u64();
        if got == Some(used) {
            break;
        }
        assert!(
            Instant::now() < end,
            "the shared ledger holds {got:?} tokens, the clients were served {used}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        b.log().contains("adopted usage a stopped replica left"),
        "{}",
        b.log()
    );
}

#[test]
fn redis_killed_and_restarted_mid_load_loses_no_usage_and_limits_recover() {
    let Some(mut redis) = Redis::start(true) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([{"id": "load", "token": "sk-load", "budget": {"total_tokens": 10_000_000}}]),
    );
    let a = replica(&config, &redis, "t3");
    let b = replica(&config, &redis, "t3");
    let stop = AtomicBool::new(false);
    let ok = AtomicU64::new(0);
    let used = AtomicU64::new(0);
    let other = AtomicU64::new(0);
    std::thread::scope(|s| {
        for gw in [&a, &b, &a, &b] {
            let (stop, ok, used, other) = (&stop, &ok, &used, &other);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = chat_as(gw, "sk-load", &capped(false));
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let t = r.json()["usage"]["total_tokens"].as_u64().unwrap_or(0);
                        used.fetch_add(t, Ordering::Relaxed);
                    } else {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(700));
        redis.kill();
        // Fail open: requests keep flowing while Redis is gone.
        let before = ok.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            ok.load(Ordering::Relaxed) > before,
            "requests stopped without Redis"
        );
        assert!(!store_ok(&a), "/ready does not show the lost store");
        redis.restart();
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "fail open: no request refused"
    );
    for gw in [&a, &b] {
        eventually("the store is back", Duration::from_secs(10), || {
            store_ok(gw).then_some(())
        });
    }
    let want = used.load(Ordering::Relaxed);
    assert!(want > 0);
    for gw in [&a, &b] {
        // Exactly: less is lost usage, more is a batch counted twice.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let got = budget_row(gw, "key:load")["spent"].as_u64();
            if got == Some(want) {
                break;
            }
            assert!(
                Instant::now() < end,
                "the shared ledger holds {got:?} tokens, the clients were served {want}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    // Limits recover: a tight key created now is enforced globally through Redis again.
    let r = admin(
        &a,
        "POST",
        "/admin/keys",
        Some(json!({"id": "tight", "token": "sk-tight", "limits": {"rpm": 5}})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    std::thread::sleep(Duration::from_millis(1200));
    let minute = unix_minute();
    let (n, _, _) = hammer(&[&a, &b], "sk-tight", 12);
    assert!(
        n <= 5 * (unix_minute() - minute + 1),
        "{n} admitted for rpm 5"
    );
    assert!(redis.dir().exists());
}

#[test]
fn a_replica_killed_mid_stream_has_its_reservations_reaped() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([{"id": "r", "token": "sk-r", "budget": {"total_tokens": 100000}}]),
    );
    let a = replica(&config, &redis, "t4");
    let b = replica(&config, &redis, "t4");
    let mut c = a.raw();
    c.send(&crate::harness::raw_post(
        "/v1/chat/completions",
        &capped(true).to_string(),
        "authorization: Bearer sk-r\r\nx-mock-events: 50\r\nx-mock-delay-ms: 100\r\n",
    ));
    assert_eq!(c.read_head().0, 200);
    eventually("the reservation is global", Duration::from_secs(5), || {
        (budget_row(&b, "key:r")["reserved"].as_u64() > Some(0)).then_some(())
    });
    // SAFETY: kill(2) with the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(a.pid(), libc::SIGKILL) }, 0);
    drop(a);
    // A live replica's leases are never reaped: only processes silent for 3 s.
    std::thread::sleep(Duration::from_millis(3500));
    let r = admin(
        &b,
        "POST",
        "/admin/reservations/reap",
        Some(json!({"older_than_secs": 0})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(
        "the dead replica's reservation released",
        Duration::from_secs(5),
        || (budget_row(&b, "key:r")["reserved"].as_u64() == Some(0)).then_some(()),
    );
    assert_eq!(chat_as(&b, "sk-r", &capped(false)).status, 200);
}

#[test]
fn a_stalled_redis_gives_timeouts_not_hangs() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([{"id": "s", "token": "sk-s", "limits": {"rpm": 100000},
                "budget": {"total_tokens": 10_000_000}}]),
    );
    let a = replica(&config, &redis, "t5");
    assert_eq!(chat_as(&a, "sk-s", &capped(false)).status, 200);
    redis.pause();
    let t0 = Instant::now();
    for _ in 0..20 {
        let t = Instant::now();
        let r = chat_as(&a, "sk-s", &capped(false));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "a request hung {:?}",
            t.elapsed()
        );
    }
    let t = Instant::now();
    let r = admin(
        &a,
        "POST",
        "/admin/keys",
        Some(json!({"id": "during-stall"})),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "an admin call hung {:?}",
        t.elapsed()
    );
    eventually(
        "/ready shows the stalled store",
        Duration::from_secs(5),
        || (!store_ok(&a)).then_some(()),
    );
    eprintln!("20 requests during the stall in {:?}", t0.elapsed());
    redis.resume();
    eventually("the store is back", Duration::from_secs(10), || {
        store_ok(&a).then_some(())
    });
    let r = admin(
        &a,
        "POST",
        "/admin/keys",
        Some(json!({"id": "after-stall"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn redis_down_at_startup_is_a_clear_error_without_the_password() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = crate::harness::write_file(
        dir.path(),
        "gateway.json",
        &json!({"backends": [{"name": "m", "base_url": "http://127.0.0.1:1/v1"}],
                "virtual_keys": [],
                "router": {"default_backends": [{"backend": "m"}]}})
        .to_string(),
    );
    // Port 1: privileged, so nothing of ours listens there; the connection is refused.
    let url = "redis://:hunter2@127.0.0.1:1/0".to_string();
    let run = crate::harness::run_cli(
        &[
            config.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--redis-env",
            "R_URL",
        ],
        &[("R_URL", &url)],
        &[],
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("--redis") && run.stderr.contains("127.0.0.1"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
}

#[test]
fn budget_fail_closed_refuses_budgeted_requests_while_redis_is_gone() {
    let Some(mut redis) = Redis::start(true) else {
        return;
    };
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!([
            {"id": "b", "token": "sk-b", "budget": {"total_tokens": 100000}},
            {"id": "free", "token": "sk-free"}
        ]),
    );
    let gw = Gateway::builder(&config)
        .args(&[
            "--redis",
            &redis.url(),
            "--redis-prefix",
            "t6",
            "--admin-token",
            ADMIN,
            "--store-flush-ms",
            "100",
            "--budget-fail-closed",
        ])
        .start();
    assert_eq!(chat_as(&gw, "sk-b", &capped(false)).status, 200);
    redis.kill();
    eventually("budgeted requests refused", Duration::from_secs(5), || {
        let r = chat_as(&gw, "sk-b", &capped(false));
        (r.status == 503).then_some(())
    });
    assert_eq!(get(&gw.url("/ready"), &[]).status, 503);
    // A key without a budget is not affected.
    assert_eq!(chat_as(&gw, "sk-free", &capped(false)).status, 200);
    redis.restart();
    eventually("the store is back", Duration::from_secs(10), || {
        (chat_as(&gw, "sk-b", &capped(false)).status == 200).then_some(())
    });
    assert_eq!(get(&gw.url("/ready"), &[]).status, 200);
}
