//! Routing that survives failing backends (REFERENCE section 9): retry and fallback with the
//! safety guard, Retry-After and bounded attempts, circuit breakers shared by every core, active
//! health checks feeding routing and /ready, and the admin API for backends and the router.
//!
//! Faults come from the mock's `x-mock-*` headers, injected per backend through the backend's
//! `headers` (which override the client's), so one backend fails while another answers.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{agent, chat, config, dead_addr, get, post, Gateway, Mock, Resp};

const ADMIN: &str = "adm-secret";

fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Resp {
    let a = agent();
    let url = gw.url(path);
    let auth = format!("Bearer {ADMIN}");
    let r = match (method, body) {
        ("GET", _) => a.get(&url).header("authorization", &auth).call(),
        ("POST", _) => a.post(&url).header("authorization", &auth).send_empty(),
        ("PUT", Some(b)) => a.put(&url).header("authorization", &auth).send_json(&b),
        (m, b) => panic!("unsupported {m} {b:?}"),
    };
    crate::harness::into_resp_pub(r)
}

fn backend_state(gw: &Gateway, name: &str) -> Value {
    let r = admin(gw, "GET", "/admin/backends", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["backends"]
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {name}"))
}

/// `first` is (almost surely) the weighted choice, `second` its fallback.
fn two(first: (&str, &str, Value), second: (&str, &str, Value)) -> String {
    let (a, b) = (first.0, second.0);
    config(
        &[first, second],
        json!({"default_backends": [{"backend": a, "weight": 1e9}, {"backend": b, "weight": 1e-9}]}),
    )
}

fn chat_req(gw: &Gateway, id: Option<&str>) -> Resp {
    let mut h = vec![];
    if let Some(id) = id {
        h.push(("x-request-id", id));
    }
    post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &h)
}

fn dead_url() -> String {
    format!("http://{}/v1", dead_addr())
}

#[test]
fn refused_connection_falls_back_to_the_next_backend() {
    let good = Mock::start();
    let gw = Gateway::start(&two(
        ("dead", &dead_url(), json!({})),
        ("good", &good.v1(), json!({})),
    ));
    // Nothing was sent: safe to move on even for a POST without x-request-id.
    let r = chat_req(&gw, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ditto-backend"), Some("good"));
    assert_eq!(r.header("x-ditto-attempts"), Some("2"));
}

#[test]
fn reset_mid_headers_moves_on_only_when_the_client_sent_a_request_id() {
    let bad = Mock::start();
    let good = Mock::start();
    let gw = Gateway::builder(&two(
        (
            "bad",
            &bad.v1(),
            json!({"headers": {"x-mock-fault": "reset-before-headers"}}),
        ),
        ("good", &good.v1(), json!({})),
    ))
    .args(&["--proxy-retry"])
    .start();
    // Bytes reached "bad": a POST without x-request-id is never sent again.
    let r = chat_req(&gw, None);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-ditto-backend"), Some("bad"));
    assert_eq!(
        good.requests(),
        0,
        "the safety guard kept it off the second backend"
    );
    // With x-request-id the client accepts a repeat.
    let r = chat_req(&gw, Some("reset-1"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ditto-backend"), Some("good"));
    assert_eq!(r.header("x-ditto-attempts"), Some("2"));
    assert_eq!(good.requests(), 1);
}

#[test]
fn status_500_falls_over_and_429_retry_after_is_honoured() {
    let bad = Mock::start();
    let good = Mock::start();
    let gw = Gateway::builder(&two(
        (
            "bad",
            &bad.v1(),
            json!({"headers": {"x-mock-status": "500"}}),
        ),
        ("good", &good.v1(), json!({})),
    ))
    .args(&["--proxy-retry"])
    .start();
    let r = chat_req(&gw, Some("s500"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ditto-backend"), Some("good"));
    assert_eq!(r.header("x-ditto-attempts"), Some("2"));

    // One backend answering 429 with Retry-After: 1, retried on itself after waiting.
    let limited = Mock::start();
    let gw = Gateway::builder(&crate::harness::single(
        "limited",
        &limited.v1(),
        json!({"headers": {"x-mock-status": "429", "x-mock-retry-after": "1"}}),
    ))
    .args(&["--proxy-retry", "--proxy-retry-max-attempts", "2"])
    .start();
    let t = Instant::now();
    let r = chat_req(&gw, Some("s429"));
    let took = t.elapsed();
    assert_eq!(r.status, 429, "the backend's own answer comes back");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("x-ditto-attempts"), Some("2"));
    assert_eq!(limited.requests(), 2);
    assert!(
        took >= Duration::from_millis(900),
        "Retry-After waited: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "sanity: {took:?}");

    // Without --proxy-retry a status goes straight back.
    let gw = Gateway::start(&two(
        (
            "bad",
            &bad.v1(),
            json!({"headers": {"x-mock-status": "500"}}),
        ),
        ("good", &good.v1(), json!({})),
    ));
    let r = chat_req(&gw, Some("s500-off"));
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-ditto-attempts"), Some("1"));
}

#[test]
fn stall_before_headers_times_out_and_falls_back() {
    let slow = Mock::start();
    let good = Mock::start();
    let gw = Gateway::builder(&two(
        (
            "slow",
            &slow.v1(),
            json!({"timeout_seconds": 0.5, "headers": {"x-mock-fault": "stall"}}),
        ),
        ("good", &good.v1(), json!({})),
    ))
    .args(&["--proxy-retry", "--proxy-timeout-error-action", "fallback"])
    .start();
    let r = chat_req(&gw, Some("stall-1"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ditto-backend"), Some("good"));
    // Without x-request-id the POST may have been processed: 504, not resent.
    let r = chat_req(&gw, None);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "backend_timeout");
}

#[test]
fn a_stream_is_never_retried_after_its_first_byte() {
    let stalling = Mock::start();
    let good = Mock::start();
    let gw = Gateway::builder(&two(
        (
            "stalling",
            &stalling.v1(),
            json!({"timeout_seconds": 1, "headers": {"x-mock-fault": "stall-mid-stream"}}),
        ),
        ("good", &good.v1(), json!({})),
    ))
    .args(&["--proxy-retry", "--proxy-timeout-error-action", "retry"])
    .start();
    let body = chat("gpt-4o", true).to_string();
    let mut c = gw.raw();
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-request-id: mid-stream\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.set_read_timeout(Duration::from_secs(20));
    let (status, headers) = c.read_head();
    assert_eq!(status, 200);
    let backend = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-ditto-backend"))
        .map(|(_, v)| v.clone());
    assert_eq!(backend.as_deref(), Some("stalling"));
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c.stream(), &mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("[DONE]"),
        "the stream was cut, not completed"
    );
    assert_eq!(good.requests(), 0, "no second answer spliced in");
}

#[test]
fn all_backends_down_is_a_clean_502_naming_the_last_error() {
    let gw = Gateway::builder(&two(
        ("d1", &dead_url(), json!({})),
        ("d2", &dead_url(), json!({})),
    ))
    .args(&["--proxy-retry"])
    .start();
    let r = chat_req(&gw, Some("down"));
    assert_eq!(r.status, 502);
    let e = r.json();
    assert_eq!(e["error"]["code"], "backend_error");
    assert_eq!(
        r.header("x-ditto-backend"),
        Some("d2"),
        "the last one tried"
    );
    assert_eq!(r.header("x-ditto-attempts"), Some("2"));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("connect"),
        "{e}"
    );
}

#[test]
fn a_retry_storm_is_bounded_with_backoff() {
    let m = Mock::start();
    let gw = Gateway::builder(&config(
        &[
            ("a", &m.v1(), json!({"headers": {"x-mock-status": "503"}})),
            ("b", &m.v1(), json!({"headers": {"x-mock-status": "503"}})),
        ],
        json!({"default_backends": [{"backend": "a"}, {"backend": "b"}]}),
    ))
    .args(&["--proxy-retry", "--proxy-retry-max-attempts", "5"])
    .start();
    let t = Instant::now();
    let r = chat_req(&gw, Some("storm"));
    let took = t.elapsed();
    assert_eq!(r.status, 503, "the last backend's answer");
    assert_eq!(r.header("x-ditto-attempts"), Some("5"));
    assert_eq!(m.requests(), 5, "exactly max attempts reached upstream");
    assert!(took < Duration::from_secs(20), "sanity: {took:?}");
}

#[test]
fn breaker_opens_for_every_core_and_a_half_open_probe_closes_it() {
    let flappy = Mock::start();
    let addr = flappy.addr.to_string();
    let good = Mock::start();
    let gw = Gateway::builder(&two(
        ("flappy", &flappy.v1(), json!({})),
        ("good", &good.v1(), json!({})),
    ))
    .args(&[
        "--workers",
        "2",
        "--proxy-circuit-breaker",
        "--proxy-cb-failure-threshold",
        "2",
        "--proxy-cb-cooldown-secs",
        "1",
        "--admin-token",
        ADMIN,
    ])
    .start();
    let r = chat_req(&gw, Some("up"));
    assert_eq!(r.header("x-ditto-backend"), Some("flappy"));
    drop(flappy); // connections refused from now on
    for i in 0..2 {
        let r = chat_req(&gw, Some(&format!("fail-{i}")));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ditto-attempts"), Some("2"));
    }
    assert_eq!(backend_state(&gw, "flappy")["breaker"], "open");
    // Open: skipped on every core (fresh connections spread over both workers).
    for i in 0..8 {
        let r = chat_req(&gw, Some(&format!("skip-{i}")));
        assert_eq!(r.header("x-ditto-backend"), Some("good"));
        assert_eq!(
            r.header("x-ditto-attempts"),
            Some("1"),
            "skipped, not tried"
        );
    }
    // It comes back on the same port; after the cooldown one probe closes the breaker.
    let back = Mock::start_with(&["--listen", &addr]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = chat_req(&gw, Some("probe"));
        if r.header("x-ditto-backend") == Some("flappy") {
            break;
        }
        assert!(Instant::now() < deadline, "the probe never went to flappy");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(backend_state(&gw, "flappy")["breaker"], "closed");
    assert!(back.requests() >= 1);
}

#[test]
fn health_checks_mark_a_dead_backend_and_ready_reports_it() {
    let good = Mock::start();
    let gw = Gateway::builder(&two(
        ("dead", &dead_url(), json!({})),
        ("good", &good.v1(), json!({})),
    ))
    .args(&[
        "--proxy-health-checks",
        "--proxy-health-check-interval-secs",
        "1",
        "--proxy-health-check-timeout-secs",
        "1",
        "--admin-token",
        ADMIN,
    ])
    .start();
    let deadline = Instant::now() + Duration::from_secs(15);
    while backend_state(&gw, "dead")["health"]["status"] != "down" {
        assert!(Instant::now() < deadline, "never marked down");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(backend_state(&gw, "good")["health"]["status"], "up");
    let ready = get(&gw.url("/ready"), &[]);
    assert_eq!(ready.status, 200, "one backend is still up");
    let checks = ready.json()["checks"].clone();
    let health = checks
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "health")
        .cloned()
        .expect("health check");
    assert_eq!(health["down"], json!(["dead"]));
    // Routing skips it: the first attempt goes to the healthy backend.
    let r = chat_req(&gw, None);
    assert_eq!(r.header("x-ditto-backend"), Some("good"));
    assert_eq!(r.header("x-ditto-attempts"), Some("1"));

    // Every backend down: not ready, and requests still try the full list.
    let gw = Gateway::builder(&crate::harness::single("only", &dead_url(), json!({})))
        .args(&[
            "--proxy-health-checks",
            "--proxy-health-check-interval-secs",
            "1",
            "--proxy-health-check-timeout-secs",
            "1",
        ])
        .start();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&gw.url("/ready"), &[]).status != 503 {
        assert!(Instant::now() < deadline, "never not-ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = chat_req(&gw, None);
    assert_eq!(r.status, 502, "tried anyway: filtering left nothing");
}

#[test]
fn admin_backends_reset_and_router_changes() {
    let m = Mock::start();
    let gw = Gateway::builder(&config(
        &[
            ("a", &m.v1(), json!({"headers": {"x-mock-status": "500"}})),
            ("b", &m.v1(), json!({})),
        ],
        json!({"default_backends": [{"backend": "a"}]}),
    ))
    .args(&[
        "--proxy-circuit-breaker",
        "--proxy-cb-failure-threshold",
        "2",
        "--proxy-cb-cooldown-secs",
        "300",
        "--admin-token",
        ADMIN,
    ])
    .start();
    for _ in 0..2 {
        assert_eq!(chat_req(&gw, None).status, 500);
    }
    let a = backend_state(&gw, "a");
    assert_eq!(a["breaker"], "open");
    assert_eq!(a["consecutive_failures"], 2);
    assert_eq!(a["last_failure"], "status 500");
    assert_eq!(a["in_flight"], 0);
    assert!(a["latency_ms"].is_number(), "{a}");
    let r = admin(&gw, "POST", "/admin/backends/a/reset", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend_state(&gw, "a")["breaker"], "closed");
    assert_eq!(
        admin(&gw, "POST", "/admin/backends/nope/reset", None).status,
        404
    );

    // Invalid router: 400 naming the field, the old router stays.
    let r = admin(
        &gw,
        "PUT",
        "/admin/config/router",
        Some(json!({"default_backends": [{"backend": "missing"}]})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("router.default_backends[0].backend"),
        "{}",
        r.text()
    );
    let r = admin(
        &gw,
        "PUT",
        "/admin/config/router",
        Some(
            json!({"default_backends": [{"backend": "b"}], "rules": [{"model_prefix": "x", "backend": "b", "guardrails": {"banned_regexes": ["("]}}]}),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("guardrails.banned_regexes[0]"),
        "{}",
        r.text()
    );
    assert_eq!(chat_req(&gw, None).header("x-ditto-backend"), Some("a"));

    // Dry run: validated, not applied.
    let r = admin(
        &gw,
        "PUT",
        "/admin/config/router?dry_run=true",
        Some(json!({"default_backends": [{"backend": "b"}], "strategy": "least_in_flight"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["valid"], true);
    assert_eq!(chat_req(&gw, None).header("x-ditto-backend"), Some("a"));

    // Applied: live on every core at once.
    let r = admin(
        &gw,
        "PUT",
        "/admin/config/router",
        Some(json!({"default_backends": [{"backend": "b"}], "strategy": "latency"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..6 {
        let r = chat_req(&gw, None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ditto-backend"), Some("b"));
    }
    let r = admin(&gw, "GET", "/admin/backends", None);
    assert_eq!(r.json()["strategy"], "latency");
    let r = admin(&gw, "GET", "/admin/config/router", None);
    assert_eq!(r.json()["default_backends"][0]["backend"], "b");
}

#[test]
fn model_map_rewrites_the_model_per_backend() {
    let m = Mock::start();
    let gw = Gateway::start(&config(
        &[(
            "mapped",
            &m.v1(),
            json!({"model_map": {"gpt-4o": "provider-4o", "*": "fallback-model"}}),
        )],
        json!({"default_backends": [{"backend": "mapped"}]}),
    ));
    let r = chat_req(&gw, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "provider-4o");
    let r = post(&gw.url("/v1/chat/completions"), &chat("other", false), &[]);
    assert_eq!(r.json()["model"], "fallback-model");
}
