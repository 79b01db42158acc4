//! In-flight caps: per backend (`max_in_flight`: next candidate, else 429) and global
//! (`--proxy-max-in-flight`: 429).

use std::time::Duration;

use serde_json::json;

use crate::harness::{config, raw_post, single, Gateway, Mock, Raw};

/// Start a slow stream (10 events, 100 ms apart) and read its head, so it holds its permits.
fn slow_stream(gw: &Gateway) -> (Raw, String) {
    let mut c = gw.raw();
    c.send(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true}"#,
        "x-mock-events: 10\r\nx-mock-delay-ms: 100\r\n",
    ));
    let (status, headers) = c.read_head();
    assert_eq!(status, 200);
    let backend = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-ditto-backend"))
        .map(|(_, v)| v.clone())
        .expect("x-ditto-backend");
    (c, backend)
}

fn finish(c: &mut Raw) {
    while c.read_chunk().expect("stream ends cleanly").is_some() {}
}

fn quick_chat(gw: &Gateway) -> crate::harness::Response {
    let mut c = gw.raw();
    c.send(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"gpt-4o"}"#,
        "",
    ));
    c.read_response()
}

#[test]
fn full_backend_sends_the_request_to_the_next_candidate() {
    let mock = Mock::start();
    let cfg = config(
        &[
            ("a", &mock.v1(), json!({"max_in_flight": 1})),
            ("b", &mock.v1(), json!({"max_in_flight": 1})),
        ],
        json!({"default_backends": [{"backend": "a"}, {"backend": "b"}]}),
    );
    let gw = Gateway::start(&cfg);
    let (mut slow, first) = slow_stream(&gw);
    let r = quick_chat(&gw);
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.header("x-ditto-backend").expect("backend");
    assert_ne!(second, first, "the busy backend was used twice");
    finish(&mut slow);
}

#[test]
fn full_backend_without_another_candidate_is_429() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("only", &mock.v1(), json!({"max_in_flight": 1})));
    let (mut slow, _) = slow_stream(&gw);
    let r = quick_chat(&gw);
    r.gateway_error(429, "inflight_limit_backend");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("retry-after").is_some());
    finish(&mut slow);
    // Released when the stream ended.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(quick_chat(&gw).status, 200);
}

#[test]
fn global_in_flight_cap_is_429() {
    let mock = Mock::start();
    let gw = Gateway::builder(&single("m", &mock.v1(), json!({})))
        .args(&["--proxy-max-in-flight", "1"])
        .start();
    let (mut slow, _) = slow_stream(&gw);
    let r = quick_chat(&gw);
    r.gateway_error(429, "inflight_limit");
    // The gateway's own endpoints are not proxied requests.
    let mut c = gw.raw();
    c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    finish(&mut slow);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(quick_chat(&gw).status, 200);
    assert_eq!(mock.requests(), 2);
}
