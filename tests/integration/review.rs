//! Regression tests for defects found in review, one per finding.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{chat, echo_header, post, single, Gateway, Mock};

/// A one-shot upstream on a thread: accepts connections and answers each with `reply` after
/// reading whatever request arrives (or, with `reply = None`, never reads at all).
fn fake_upstream(reply: Option<&'static [u8]>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", l.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            match reply {
                None => held.push(s), // never read: the gateway's writes back up
                Some(r) => {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = [0u8; 65536];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(r);
                    held.push(s);
                }
            }
        }
    });
    url
}

#[test]
fn a_health_check_with_a_body_cannot_smuggle_a_second_request() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let smuggled = "GET /v1/models/x HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut c = gw.raw();
    c.send(
        format!(
            "GET /health HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response().status, 200);
    c.assert_closed();
    assert_eq!(
        mock.requests(),
        0,
        "the body was never treated as a request"
    );
}

#[test]
fn a_backend_that_stops_reading_times_out_and_frees_its_permits() {
    let stuck = fake_upstream(None);
    let gw = Gateway::builder(&single("stuck", &stuck, json!({"timeout_seconds": 1})))
        .args(&["--proxy-max-in-flight", "1"])
        .start();
    let big = json!({"model": "gpt-4o", "pad": "x".repeat(16 * 1024 * 1024)});
    let t0 = Instant::now();
    let r = post(&gw.url("/v1/chat/completions"), &big, &[]);
    assert!(matches!(r.status, 502 | 504), "{} {}", r.status, r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "bounded by the backend timeout: {:?}",
        t0.elapsed()
    );
    // The permit came back: the next request is not refused with inflight_limit.
    let r = post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]);
    assert_ne!(r.status, 429, "{}", r.text());
}

#[test]
fn a_virtual_key_sent_in_two_headers_reaches_the_upstream_in_neither() {
    let mock = Mock::start();
    let cfg = json!({
        "backends": [{"name": "a", "base_url": mock.v1()}],
        "virtual_keys": [{"id": "k", "token": "sk-virtual-secret"}],
        "router": {}
    })
    .to_string();
    let gw = Gateway::start(&cfg);
    for pair in [
        [
            ("authorization", "Bearer sk-virtual-secret"),
            ("x-api-key", "sk-virtual-secret"),
        ],
        [
            ("x-litellm-api-key", "sk-virtual-secret"),
            ("authorization", "Bearer sk-virtual-secret"),
        ],
    ] {
        let r = post(&gw.url("/v1/echo"), &json!({"model": "m"}), &pair);
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert!(
            !echo["headers"].to_string().contains("sk-virtual-secret"),
            "leaked: {echo}"
        );
        assert!(echo_header(&echo, "x-api-key").is_empty());
    }
}

#[test]
fn an_error_answer_to_head_has_no_body_and_keeps_the_connection_in_sync() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let mut c = gw.raw();
    c.send(b"HEAD /nope HTTP/1.1\r\nHost: gw\r\n\r\nGET /health HTTP/1.1\r\nHost: gw\r\n\r\n");
    let first = c.read_response_for(true);
    assert_eq!(first.status, 404);
    assert!(first.body.is_empty());
    let second = c.read_response();
    assert_eq!(
        second.status, 200,
        "the next response starts right after the HEAD head"
    );
    assert_eq!(second.text(), r#"{"status":"ok"}"#);
}

#[test]
fn chunked_on_top_of_another_coding_is_refused_at_once() {
    let up = fake_upstream(Some(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ));
    let gw = Gateway::start(&single("u", &up, json!({"timeout_seconds": 5})));
    let t0 = Instant::now();
    let r = post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "no wait for a close: {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_status_outside_100_to_599_is_a_502() {
    let up = fake_upstream(Some(b"HTTP/1.1 042 Odd\r\nContent-Length: 0\r\n\r\n"));
    let gw = Gateway::start(&single("u", &up, json!({})));
    let r = post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]);
    assert_eq!(r.status, 502, "{}", r.text());
}

#[test]
fn an_http10_expectation_is_ignored() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let body = r#"{"model":"gpt-4o","messages":[]}"#;
    let mut c = gw.raw();
    c.send(format!("POST /v1/chat/completions HTTP/1.0\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    std::thread::sleep(Duration::from_millis(200));
    c.send(body.as_bytes());
    let r = c.read_response();
    assert_eq!(
        r.status, 200,
        "the first thing back is the final response, not a 100"
    );
}

#[test]
fn a_request_that_reaches_no_upstream_consumes_no_rate_quota() {
    let dead = format!("http://{}/v1", crate::harness::dead_addr());
    let cfg = json!({
        "backends": [{"name": "dead", "base_url": dead}],
        "virtual_keys": [{"id": "k", "token": "sk-k", "limits": {"rpm": 2}}],
        "router": {}
    })
    .to_string();
    let gw = Gateway::start(&cfg);
    for i in 0..4 {
        let r = post(
            &gw.url("/v1/chat/completions"),
            &chat("gpt-4o", false),
            &[("authorization", "Bearer sk-k")],
        );
        assert_eq!(
            r.status,
            502,
            "request {i}: refused connects must not use up the rpm: {}",
            r.text()
        );
    }
}

#[test]
fn bytes_an_upstream_sends_after_its_response_never_answer_the_next_request() {
    // Each connection answers its first request with "ok", then 50 ms later sends an
    // unsolicited second response. A pooled connection must not deliver that to anyone.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", l.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                if s.read(&mut buf).unwrap_or(0) == 0 {
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                std::thread::sleep(Duration::from_millis(50));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
                std::thread::sleep(Duration::from_secs(5));
            });
        }
    });
    let gw = Gateway::builder(&single("u", &url, json!({})))
        .args(&["--workers", "1"])
        .start();
    for _ in 0..3 {
        let r = post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]);
        assert_eq!(r.text(), "ok");
        // Long enough for the unsolicited bytes to have arrived even on a loaded machine.
        std::thread::sleep(Duration::from_millis(600));
    }
}

#[test]
fn a_trickled_streamed_upload_cannot_hold_its_permits_for_ever() {
    let mock = Mock::start();
    let gw = Gateway::builder(&single("m", &mock.v1(), json!({})))
        .env("DITTO_TEST_BODY_TIMEOUT_MS", "400")
        .args(&["--proxy-max-in-flight", "1"])
        .start();
    let mut c = gw.raw();
    c.send(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n");
    // Each gap is under the idle timeout, but the average rate is far below the floor. The
    // trickle goes on for 4 s: only the rate floor can answer well before it ends.
    let mut w = c.stream().try_clone().expect("clone");
    let t0 = Instant::now();
    let trickle = std::thread::spawn(move || {
        while t0.elapsed() < Duration::from_secs(4) {
            if w.write_all(b"0123456789").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let r = c.read_response();
    let answered = t0.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        answered < Duration::from_millis(2500),
        "answered after {answered:?}"
    );
    let _ = trickle.join();
    // The permit is free again.
    let r = post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}
