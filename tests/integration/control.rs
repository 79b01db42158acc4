//! The control plane over real sockets: the admin API (original and LiteLLM-style), budgets and
//! token limits settled on real usage, streams charged even when the client did not ask for
//! usage, the SQLite store across restarts, `kill -9`, and a store that stops writing.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{agent, chat, get, post, sse_data, Gateway, Mock, Resp};

const ADMIN: &str = "adm-secret";

fn cfg(mock: &Mock, keys: Value) -> String {
    json!({
        "backends": [{"name": "m", "base_url": mock.v1()}],
        "virtual_keys": keys,
        "router": {"default_backends": [{"backend": "m"}]}
    })
    .to_string()
}

fn with_admin(config: &str) -> crate::harness::GatewayBuilder {
    Gateway::builder(config).args(&["--admin-token", ADMIN, "--admin-read-token", "ro-secret"])
}

/// An admin call with `token` (None: no credentials).
fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> Resp {
    let a = agent();
    let url = gw.url(path);
    let auth = token.map(|t| format!("Bearer {t}"));
    macro_rules! send {
        ($req:expr) => {{
            let mut req = $req;
            if let Some(a) = &auth {
                req = req.header("authorization", a.as_str());
            }
            req
        }};
    }
    let r = match (method, body) {
        ("GET", _) => send!(a.get(&url)).call(),
        ("DELETE", _) => send!(a.delete(&url)).call(),
        ("POST", Some(b)) => send!(a.post(&url)).send_json(&b),
        ("POST", None) => send!(a.post(&url)).send_empty(),
        ("PUT", Some(b)) => send!(a.put(&url)).send_json(&b),
        (m, b) => panic!("unsupported {m} {b:?}"),
    };
    crate::harness::into_resp_pub(r)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn chat_as(gw: &Gateway, token: &str, body: &Value) -> Resp {
    post(
        &gw.url("/v1/chat/completions"),
        body,
        &[("authorization", &bearer(token))],
    )
}

/// A chat body whose output is capped: the mock answers 5 tokens, so the estimate covers it.
fn capped(stream: bool) -> Value {
    let mut b = chat("gpt-4o", stream);
    b["max_tokens"] = json!(5);
    b
}

/// Poll `f` until it returns Some (settlements travel core -> plane in batches).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn budget_row(gw: &Gateway, scope: &str, unit: &str) -> Value {
    let r = admin(gw, "GET", "/admin/budgets", None, Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["scope"] == scope && b["unit"] == unit)
        .cloned()
        .unwrap_or_else(|| panic!("no {scope} {unit} budget in {}", r.text()))
}

fn spent(gw: &Gateway, scope: &str) -> u64 {
    budget_row(gw, scope, "tokens")["spent"]
        .as_u64()
        .expect("spent")
}

#[test]
fn admin_api_authenticates_and_changes_are_live_at_once() {
    let mock = Mock::start();
    let gw = with_admin(&cfg(&mock, json!([]))).start();
    // Without keys the gateway is in passthrough mode.
    assert_eq!(
        post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]).status,
        200
    );

    let r = admin(&gw, "GET", "/admin/keys", None, None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (401, Some("missing_admin_token"))
    );
    let r = admin(&gw, "GET", "/admin/keys", None, Some("wrong"));
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (401, Some("invalid_admin_token"))
    );
    let r = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"id": "x"})),
        Some("ro-secret"),
    );
    assert_eq!(r.status, 403, "read-only token cannot write");
    assert_eq!(
        admin(&gw, "GET", "/admin/keys", None, Some("ro-secret")).status,
        200
    );
    // x-admin-token works too.
    let r = get(&gw.url("/admin/keys"), &[("x-admin-token", ADMIN)]);
    assert_eq!(r.status, 200);

    let r = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"id": "svc", "limits": {"rpm": 100}})),
        Some(ADMIN),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"]
        .as_str()
        .expect("token shown once")
        .to_string();
    // Live at once, on every core: the next requests (2 workers, new connections) need it.
    for _ in 0..4 {
        assert_eq!(
            post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]).status,
            401
        );
        assert_eq!(chat_as(&gw, &token, &chat("gpt-4o", false)).status, 200);
    }
    let listed = admin(&gw, "GET", "/admin/keys", None, Some(ADMIN)).text();
    assert!(
        !listed.contains(&token),
        "tokens are never listed: {listed}"
    );

    let r = admin(
        &gw,
        "PUT",
        "/admin/keys/svc",
        Some(json!({"enabled": false})),
        Some(ADMIN),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..4 {
        let r = chat_as(&gw, &token, &chat("gpt-4o", false));
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (401, Some("key_disabled"))
        );
    }
    assert_eq!(
        admin(&gw, "DELETE", "/admin/keys/svc", None, Some(ADMIN)).status,
        200
    );
    let r = chat_as(&gw, &token, &chat("gpt-4o", false));
    assert_eq!(r.status, 200, "no keys left: passthrough mode again");

    // Bad bodies name the field; duplicates are 409.
    let r = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"id": "a", "budget": {"total_tokens": "lots"}})),
        Some(ADMIN),
    );
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("budget.total_tokens"))
    );
    let r = crate::harness::raw_admin(&gw, "POST", "/admin/keys", "{not json", ADMIN);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    assert_eq!(
        admin(
            &gw,
            "POST",
            "/admin/keys",
            Some(json!({"id": "a", "token": "sk-a"})),
            Some(ADMIN)
        )
        .status,
        201
    );
    assert_eq!(
        admin(
            &gw,
            "POST",
            "/admin/keys",
            Some(json!({"id": "a"})),
            Some(ADMIN)
        )
        .status,
        409
    );
    let r = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"id": "b", "token": "sk-a"})),
        Some(ADMIN),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (409, Some("duplicate_token"))
    );
    let audit = admin(&gw, "GET", "/admin/audit?limit=50", None, Some(ADMIN)).text();
    assert!(
        audit.contains("key.create") && audit.contains("key.delete"),
        "{audit}"
    );
    let r = admin(
        &gw,
        "POST",
        "/admin/reservations/reap",
        Some(json!({"older_than_secs": 60})),
        Some(ADMIN),
    );
    assert_eq!(
        (r.status, r.json()["reaped"].as_bool()),
        (200, Some(true)),
        "{}",
        r.text()
    );
    let r = admin(
        &gw,
        "POST",
        "/admin/reservations/reap",
        Some(json!({"older_than_secs": "x"})),
        Some(ADMIN),
    );
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("older_than_secs"))
    );
    let audit = admin(&gw, "GET", "/admin/audit?limit=50", None, Some(ADMIN)).text();
    assert!(audit.contains("reservations.reap"), "{audit}");
    assert!(
        !audit.contains(&token) && !audit.contains("sk-a"),
        "no tokens in the audit log"
    );
}

#[test]
fn admin_api_is_absent_without_a_token_and_litellm_keys_work() {
    let mock = Mock::start();
    let gw = Gateway::start(&cfg(&mock, json!([])));
    assert_eq!(
        admin(&gw, "GET", "/admin/keys", None, Some(ADMIN)).status,
        404
    );
    assert_eq!(
        admin(&gw, "POST", "/key/generate", Some(json!({})), Some(ADMIN)).status,
        404
    );

    let gw = with_admin(&cfg(&mock, json!([]))).start();
    let r = admin(
        &gw,
        "POST",
        "/key/generate",
        Some(json!({"key_alias": "app", "rpm_limit": 2, "max_budget": 10.0})),
        Some(ADMIN),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let key = r.json()["key"].as_str().expect("key").to_string();
    assert_eq!(chat_as(&gw, &key, &chat("gpt-4o", false)).status, 200);
    let r = get(
        &gw.url(&format!("/key/info?key={key}")),
        &[("authorization", &bearer(ADMIN))],
    );
    assert_eq!(r.json()["info"]["rpm_limit"], 2, "{}", r.text());
    let r = admin(
        &gw,
        "POST",
        "/key/update",
        Some(json!({"key": key, "blocked": true})),
        Some(ADMIN),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat_as(&gw, &key, &chat("gpt-4o", false)).status, 401);
    let r = admin(
        &gw,
        "POST",
        "/key/delete",
        Some(json!({"keys": [key]})),
        Some(ADMIN),
    );
    assert_eq!(r.json()["deleted_keys"], json!(["app"]));
    assert_eq!(
        admin(&gw, "GET", "/key/list", None, Some(ADMIN)).json()["total_count"],
        0
    );
}

#[test]
fn concurrent_admin_writes_all_land() {
    let mock = Mock::start();
    let gw = with_admin(&cfg(&mock, json!([]))).start();
    std::thread::scope(|s| {
        for t in 0..8 {
            let gw = &gw;
            s.spawn(move || {
                for i in 0..10 {
                    let r = admin(
                        gw,
                        "POST",
                        "/admin/keys",
                        Some(json!({"id": format!("k{t}-{i}")})),
                        Some(ADMIN),
                    );
                    assert_eq!(r.status, 201, "{}", r.text());
                }
            });
        }
    });
    let r = admin(&gw, "GET", "/admin/keys", None, Some(ADMIN));
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(80));
}

#[test]
fn token_budget_settles_on_real_usage_and_refuses_with_402() {
    let mock = Mock::start();
    let gw = with_admin(&cfg(
        &mock,
        json!([{"id": "b", "token": "sk-b", "budget": {"total_tokens": 200}}]),
    ))
    .start();
    let mut ok = 0;
    let last = loop {
        let r = chat_as(&gw, "sk-b", &capped(false));
        if r.status != 200 {
            break r;
        }
        ok += 1;
        assert!(ok < 100, "the budget never ran out");
    };
    assert_eq!(last.status, 402, "{}", last.text());
    let e = last.json();
    assert_eq!(e["error"]["type"], "insufficient_quota");
    assert_eq!(e["error"]["code"], "budget_exceeded");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("key \"b\"")),
        "{e}"
    );
    // Each request used 2 prompt + 5 completion tokens: the ledger holds exactly that.
    let spent = eventually("settlement", || {
        let s = spent(&gw, "key:b");
        (s == 7 * ok).then_some(s)
    });
    assert!(spent <= 200);
    let costs = admin(&gw, "GET", "/admin/costs?key_id=b", None, Some(ADMIN)).json();
    assert_eq!(costs["data"][0]["requests"], ok);
    assert_eq!(costs["data"][0]["completion_tokens"], 5 * ok);
}

#[test]
fn a_stream_is_charged_without_showing_the_usage_chunk_it_did_not_ask_for() {
    let mock = Mock::start();
    let gw = with_admin(&cfg(
        &mock,
        json!([{"id": "s", "token": "sk-s", "budget": {"total_tokens": 100000}}]),
    ))
    .start();
    let r = chat_as(&gw, "sk-s", &capped(true));
    assert_eq!(r.status, 200);
    let events = sse_data(&r.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(events.len(), 6, "5 content events and [DONE]: {events:?}");
    assert!(
        events.iter().all(|e| !e.contains("\"choices\":[]")),
        "{events:?}"
    );
    eventually("stream settlement", || {
        (spent(&gw, "key:s") == 7).then_some(())
    });

    // A client that asked for usage gets it, and is charged the same.
    let mut body = capped(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = chat_as(&gw, "sk-s", &body);
    let events = sse_data(&r.text());
    assert!(
        events
            .iter()
            .any(|e| e.contains("\"choices\":[]") && e.contains("\"total_tokens\":7")),
        "{events:?}"
    );
    eventually("second settlement", || {
        (spent(&gw, "key:s") == 14).then_some(())
    });
}

#[test]
fn a_client_leaving_mid_stream_still_settles() {
    let mock = Mock::start();
    let gw = with_admin(&cfg(
        &mock,
        json!([{"id": "d", "token": "sk-d", "budget": {"total_tokens": 100000}}]),
    ))
    .start();
    let mut c = gw.raw();
    let body = capped(true).to_string();
    c.send(&crate::harness::raw_post(
        "/v1/chat/completions",
        &body,
        "authorization: Bearer sk-d\r\nx-mock-events: 5\r\nx-mock-delay-ms: 300\r\n",
    ));
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    drop(c);
    // No usage arrived: the reservation (estimate) is what gets charged, not nothing.
    let s = eventually("settlement after disconnect", || {
        let s = spent(&gw, "key:d");
        (s > 0).then_some(s)
    });
    let est = (body.len() as u64).div_ceil(4) + 5;
    assert_eq!(s, est, "charged the reservation");
    // The core gives its unused lease back once idle (1 s): nothing stays reserved.
    eventually("leases given back", || {
        (budget_row(&gw, "key:d", "tokens")["reserved"] == 0).then_some(())
    });
}

#[test]
fn tpm_limit_refuses_with_openai_token_headers() {
    let mock = Mock::start();
    let gw = Gateway::start(&cfg(
        &mock,
        json!([{"id": "t", "token": "sk-t", "limits": {"tpm": 40}}]),
    ));
    let mut big = capped(false);
    big["messages"][0]["content"] = json!("word ".repeat(100));
    let r = chat_as(&gw, "sk-t", &big);
    assert_eq!(r.status, 429, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "tokens_rate_limit_exceeded");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("key \"t\"")),
        "{e}"
    );
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("40"));
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("0"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        mock.requests(),
        0,
        "a refused request never reaches the upstream"
    );
}

#[test]
fn a_budget_hit_by_64_concurrent_clients_is_never_overspent() {
    let mock = Mock::start();
    let gw = with_admin(&cfg(
        &mock,
        json!([{"id": "hot", "token": "sk-hot", "tenant_id": "acme",
                "tenant_budget": {"total_tokens": 1400}}]),
    ))
    .start();
    let ok: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let gw = &gw;
                s.spawn(move || {
                    let a = agent();
                    let mut ok = 0u64;
                    for _ in 0..20 {
                        let r = crate::harness::post_with(
                            &a,
                            &gw.url("/v1/chat/completions"),
                            &capped(false),
                            &[("authorization", "Bearer sk-hot")],
                        );
                        match r.status {
                            200 => ok += 1,
                            402 => break,
                            s => panic!("unexpected {s}: {}", r.text()),
                        }
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client")).sum()
    });
    let spent = eventually("all settlements", || {
        let s = spent(&gw, "tenant:acme");
        (s == 7 * ok).then_some(s)
    });
    // The documented bound: with max_tokens set, a request never uses more than it reserved,
    // so the budget is never exceeded at all.
    assert!(spent <= 1400, "overspent: {spent}");
    assert!(ok >= 1400 / 7 - 64, "refused too early: {ok} requests");
    assert_eq!(
        mock.requests(),
        ok,
        "every admitted request reached the upstream once"
    );
}

/// A gateway on `db` with the admin token.
fn on_sqlite(config: &str, db: &Path, extra: &[&str]) -> Gateway {
    let mut args = vec!["--sqlite", db.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    with_admin(config).args(&args).start()
}

fn sigterm(gw: &mut Gateway) {
    // SAFETY: kill(2) with the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(gw.pid(), libc::SIGTERM) }, 0);
    assert!(gw
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[test]
fn sqlite_keeps_keys_and_ledgers_across_restarts_and_sigterm_flushes() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("gw.db");
    let config = cfg(
        &mock,
        json!([{"id": "c", "token": "sk-c", "budget": {"total_tokens": 100000}}]),
    );
    // A long flush interval: only the SIGTERM flush can have written the usage.
    let mut gw = on_sqlite(&config, &db, &["--store-flush-ms", "60000"]);
    let r = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"id": "made", "budget": {"total_tokens": 500}})),
        Some(ADMIN),
    );
    let made = r.json()["token"].as_str().expect("token").to_string();
    for t in ["sk-c", "sk-c", made.as_str()] {
        assert_eq!(chat_as(&gw, t, &capped(false)).status, 200);
    }
    eventually("settled", || (spent(&gw, "key:c") == 14).then_some(()));
    sigterm(&mut gw);

    let gw = on_sqlite(&config, &db, &[]);
    assert_eq!(
        chat_as(&gw, &made, &capped(false)).status,
        200,
        "the admin-made key survived"
    );
    assert_eq!(spent(&gw, "key:c"), 14);
    eventually("settled", || (spent(&gw, "key:made") == 14).then_some(()));
    let costs = admin(&gw, "GET", "/admin/costs?key_id=c", None, Some(ADMIN)).json();
    assert_eq!(costs["data"][0]["requests"], 2);
}

#[test]
fn kill_9_loses_at_most_the_flush_interval() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("gw.db");
    let config = cfg(
        &mock,
        json!([{"id": "k", "token": "sk-k", "budget": {"total_tokens": 100000}}]),
    );
    let gw = on_sqlite(&config, &db, &["--store-flush-ms", "200"]);
    for _ in 0..10 {
        assert_eq!(chat_as(&gw, "sk-k", &capped(false)).status, 200);
    }
    // Longer than one core tick (20 ms) plus one flush interval (200 ms).
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: kill(2) with the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(gw.pid(), libc::SIGKILL) }, 0);
    drop(gw);
    let gw = on_sqlite(&config, &db, &[]);
    assert_eq!(
        spent(&gw, "key:k"),
        70,
        "settled usage older than the flush interval survived kill -9"
    );
}

#[test]
fn a_restart_mid_stream_reaps_the_dead_process_reservations() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("gw.db");
    let config = cfg(
        &mock,
        json!([{"id": "r", "token": "sk-r", "budget": {"total_tokens": 100000}}]),
    );
    let gw = on_sqlite(&config, &db, &["--store-flush-ms", "50"]);
    let mut c = gw.raw();
    c.send(&crate::harness::raw_post(
        "/v1/chat/completions",
        &capped(true).to_string(),
        "authorization: Bearer sk-r\r\nx-mock-events: 20\r\nx-mock-delay-ms: 100\r\n",
    ));
    assert_eq!(c.read_head().0, 200);
    eventually("the reservation is stored", || {
        (budget_row(&gw, "key:r", "tokens")["reserved"].as_u64() > Some(0)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill(2) with the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(gw.pid(), libc::SIGKILL) }, 0);
    loop {
        match c.read_chunk() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended cleanly although the gateway was killed"),
            Err(_) => break,
        }
    }
    drop(gw);
    let gw = on_sqlite(&config, &db, &[]);
    assert!(gw.log().contains("reaped 1 reservation"), "{}", gw.log());
    let row = budget_row(&gw, "key:r", "tokens");
    assert_eq!(row["reserved"], 0, "{row}");
    assert_eq!(chat_as(&gw, "sk-r", &capped(false)).status, 200);
}

#[test]
fn an_unusable_sqlite_path_stops_startup_with_a_clear_error() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = crate::harness::write_file(dir.path(), "not-a-db", &"not a database\n".repeat(100));
    let config = crate::harness::write_file(dir.path(), "gateway.json", &cfg(&mock, json!([])));
    for db in [file.join("gw.db"), dir.path().to_path_buf(), file.clone()] {
        let run = crate::harness::run_cli(
            &[
                config.to_str().expect("utf-8"),
                "--listen",
                "127.0.0.1:0",
                "--sqlite",
                db.to_str().expect("utf-8"),
            ],
            &[],
            &[],
        );
        assert!(!run.status.success(), "{}", run.stderr);
        assert!(
            run.stderr.contains("--sqlite") && run.stderr.contains(db.to_str().expect("utf-8")),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_locked_store_keeps_requests_flowing_and_refuses_admin_changes() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("gw.db");
    let config = cfg(
        &mock,
        json!([{"id": "l", "token": "sk-l", "budget": {"total_tokens": 100000}}]),
    );
    let gw = on_sqlite(&config, &db, &["--store-flush-ms", "50"]);
    let lock = rusqlite::Connection::open(&db).expect("open");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    // Fail open: requests keep their limits (in memory) and keep flowing.
    for _ in 0..3 {
        assert_eq!(chat_as(&gw, "sk-l", &capped(false)).status, 200);
    }
    eventually("/ready reports the store", || {
        let r = get(&gw.url("/ready"), &[]);
        (r.text().contains(r#""name":"store","ok":false"#)).then_some(())
    });
    let r = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"id": "new"})),
        Some(ADMIN),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{}",
        r.text()
    );
    lock.execute_batch("COMMIT").expect("unlock");
    eventually("the store recovers", || {
        let r = get(&gw.url("/ready"), &[]);
        (r.text().contains(r#""name":"store","ok":true"#)).then_some(())
    });
    assert_eq!(
        spent(&gw, "key:l"),
        21,
        "all three settled in memory meanwhile"
    );
    // Two flush intervals, then a crash: what the store holds is what it was given late.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) with the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(gw.pid(), libc::SIGKILL) }, 0);
    drop(gw);
    let gw = on_sqlite(&config, &db, &[]);
    assert_eq!(
        spent(&gw, "key:l"),
        21,
        "usage held while the store was locked was written later"
    );
    assert_eq!(
        admin(&gw, "GET", "/admin/keys/new", None, Some(ADMIN)).status,
        404,
        "the refused change was not applied"
    );
}

#[test]
fn budget_fail_closed_refuses_while_the_store_fails() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("gw.db");
    let config = cfg(
        &mock,
        json!([{"id": "f", "token": "sk-f", "budget": {"total_tokens": 100000}},
               {"id": "free", "token": "sk-free"}]),
    );
    let gw = on_sqlite(
        &config,
        &db,
        &["--store-flush-ms", "50", "--budget-fail-closed"],
    );
    let lock = rusqlite::Connection::open(&db).expect("open");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    assert_eq!(chat_as(&gw, "sk-f", &capped(false)).status, 200);
    let r = eventually("fail closed", || {
        let r = chat_as(&gw, "sk-f", &capped(false));
        (r.status == 503).then_some(r)
    });
    assert_eq!(r.json()["error"]["code"], "store_unavailable");
    assert_eq!(
        chat_as(&gw, "sk-free", &capped(false)).status,
        200,
        "keys without budgets are unaffected"
    );
    assert_eq!(get(&gw.url("/ready"), &[]).status, 503);
    lock.execute_batch("COMMIT").expect("unlock");
    eventually("recovered", || {
        (chat_as(&gw, "sk-f", &capped(false)).status == 200).then_some(())
    });
}

/// Two backends on one mock (told apart by `x-ditto-backend`), routed to `a` by the file.
fn two_backends(mock: &Mock) -> String {
    json!({
        "backends": [{"name": "a", "base_url": mock.v1()}, {"name": "b", "base_url": mock.v1()}],
        "virtual_keys": [{"id": "r", "token": "sk-r"}],
        "router": {"default_backends": [{"backend": "a"}]}
    })
    .to_string()
}

fn routed_to(gw: &Gateway) -> String {
    let r = chat_as(gw, "sk-r", &capped(false));
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-ditto-backend").unwrap_or("").to_string()
}

#[test]
fn sqlite_keeps_a_put_router_across_restarts_and_a_refused_one_is_not_applied() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("gw.db");
    let config = two_backends(&mock);
    let gw = on_sqlite(&config, &db, &["--store-flush-ms", "50"]);
    assert_eq!(routed_to(&gw), "a");
    let to_b = json!({"default_backends": [{"backend": "b"}]});
    let r = admin(&gw, "PUT", "/admin/config/router", Some(to_b), Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(routed_to(&gw), "b");

    // A store that refuses the write: 503, and the old router stays.
    let lock = rusqlite::Connection::open(&db).expect("open");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let to_a = json!({"default_backends": [{"backend": "a"}]});
    let r = admin(&gw, "PUT", "/admin/config/router", Some(to_a), Some(ADMIN));
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{}",
        r.text()
    );
    assert_eq!(routed_to(&gw), "b");
    lock.execute_batch("COMMIT").expect("unlock");
    drop(lock);

    // Restarted: the stored router wins over the file's, from the first request on.
    drop(gw);
    let gw = on_sqlite(&config, &db, &[]);
    assert_eq!(routed_to(&gw), "b");
    let r = admin(&gw, "GET", "/admin/config/router", None, Some(ADMIN));
    assert_eq!(r.json()["default_backends"][0]["backend"], "b");
    assert!(gw.log().contains("using the router stored"), "{}", gw.log());

    // A stored router that no longer validates: logged, and the file's is used.
    drop(gw);
    let c = rusqlite::Connection::open(&db).expect("open");
    c.execute(
        "UPDATE settings SET value = ?1 WHERE name = 'router'",
        [r#"{"default_backends": [{"backend": "gone"}]}"#],
    )
    .expect("update");
    drop(c);
    let gw = on_sqlite(&config, &db, &[]);
    assert_eq!(routed_to(&gw), "a");
    assert!(
        gw.log()
            .contains("router stored in the sqlite store is invalid"),
        "{}",
        gw.log()
    );
}
