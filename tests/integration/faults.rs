//! Upstream faults become 502/504 (or a fallback), mid-stream faults cut the client's response
//! so it can never mistake it for a complete one, and a client that leaves mid-stream releases
//! the upstream connection and its permits at once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{config, dead_addr, raw_post, single, Gateway, Mock, Raw};

/// A gateway with one backend `m` on `mock` and a 1 s timeout.
fn gateway(mock: &Mock) -> Gateway {
    Gateway::start(&single("m", &mock.v1(), json!({"timeout_seconds": 1})))
}

fn chat_with(c: &mut Raw, stream: bool, headers: &str) -> crate::harness::Response {
    let body = if stream {
        r#"{"model":"gpt-4o","stream":true}"#
    } else {
        r#"{"model":"gpt-4o"}"#
    };
    c.send(&raw_post("/v1/chat/completions", body, headers));
    c.read_response()
}

#[test]
fn refused_connection_is_502_naming_the_backend() {
    let gw = Gateway::start(&single(
        "down",
        &format!("http://{}/v1", dead_addr()),
        json!({}),
    ));
    let mut c = gw.raw();
    let r = chat_with(&mut c, false, "");
    let v = r.gateway_error(502, "backend_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("\"down\""),
        "{v}"
    );
    assert_eq!(r.header("x-ditto-backend"), Some("down"));
}

#[test]
fn refused_first_candidate_falls_back_to_the_second() {
    let mock = Mock::start();
    let dead = format!("http://{}/v1", dead_addr());
    // The dead backend carries nearly all the weight, so it is almost always tried first.
    let cfg = config(
        &[("dead", &dead, json!({})), ("live", &mock.v1(), json!({}))],
        json!({"default_backends": [{"backend": "dead", "weight": 1.0}, {"backend": "live", "weight": 0.000001}]}),
    );
    let gw = Gateway::start(&cfg);
    for i in 0..5 {
        let mut c = gw.raw();
        let r = chat_with(&mut c, false, &format!("x-request-id: fallback-{i}\r\n"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ditto-backend"), Some("live"));
    }
    assert_eq!(mock.requests(), 5);
}

#[test]
fn close_before_headers_is_502() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let r = chat_with(&mut c, false, "x-mock-fault: close-before-headers\r\n");
    r.gateway_error(502, "backend_error");
    assert_eq!(r.header("x-ditto-backend"), Some("m"));
}

#[test]
fn reset_before_headers_is_502() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    chat_with(&mut c, false, "x-mock-fault: reset-before-headers\r\n")
        .gateway_error(502, "backend_error");
}

#[test]
fn slow_headers_within_the_timeout_succeed() {
    let mock = Mock::start();
    // The mock sends its head one byte every 50 ms (about 5 s in all): allow 15 s.
    let gw = Gateway::start(&single("m", &mock.v1(), json!({"timeout_seconds": 15})));
    let mut c = gw.raw();
    let r = chat_with(&mut c, false, "x-mock-fault: slow-headers\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    // A delayed (not trickled) head within the timeout.
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let r = chat_with(&mut c, false, "x-mock-header-delay-ms: 500\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn stall_before_headers_is_504_after_the_timeout() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let t0 = Instant::now();
    let r = chat_with(&mut c, false, "x-mock-fault: stall\r\n");
    let elapsed = t0.elapsed();
    let v = r.gateway_error(504, "backend_timeout");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("\"m\""),
        "{v}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );
}

/// Start a stream with `fault` and check the client's chunked body is cut (no last chunk,
/// connection closed) within `limit`.
fn assert_stream_cut(fault: &str, limit: Duration) {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let t0 = Instant::now();
    for stream in [true, false] {
        let chunked = if stream { "" } else { "x-mock-chunked: 1\r\n" };
        let r = chat_with(
            &mut c,
            stream,
            &format!("x-mock-fault: {fault}\r\nx-mock-events: 6\r\n{chunked}"),
        );
        assert_eq!(r.status, 200, "{fault}");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert!(
            !r.complete,
            "{fault} (stream {stream}): the cut body looked complete: {}",
            r.text()
        );
        if stream {
            assert_eq!(
                r.text().matches("data: ").count(),
                3,
                "{fault}: the events before the fault arrive"
            );
        }
        c.assert_closed();
        assert!(t0.elapsed() < limit, "{fault}: took {:?}", t0.elapsed());
        c = gw.raw();
    }
}

#[test]
fn reset_mid_stream_cuts_the_clients_response() {
    assert_stream_cut("reset-mid-stream", Duration::from_secs(2));
}

#[test]
fn close_mid_stream_cuts_the_clients_response() {
    assert_stream_cut("close-mid-stream", Duration::from_secs(2));
}

#[test]
fn stall_mid_stream_cuts_the_clients_response_after_the_timeout() {
    // Two requests, each cut about 1 s (the backend timeout) after the stall.
    assert_stream_cut("stall-mid-stream", Duration::from_millis(4500));
}

#[test]
fn content_length_body_cut_mid_way_is_short_and_closed() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let r = chat_with(
        &mut c,
        false,
        "x-mock-fault: close-mid-stream\r\nx-mock-size: 100000\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some());
    assert!(
        !r.complete && r.body.len() < 100000,
        "got {} bytes",
        r.body.len()
    );
}

#[test]
fn client_leaving_mid_stream_closes_upstream_and_frees_permits() {
    let mock = Mock::start();
    let gw = Gateway::builder(&single(
        "m",
        &mock.v1(),
        json!({"timeout_seconds": 10, "max_in_flight": 1}),
    ))
    .args(&["--proxy-max-in-flight", "1"])
    .start();
    let mut c = gw.raw();
    // 40 events 100 ms apart: 4 s if nobody stopped it.
    c.send(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true}"#,
        "x-mock-events: 40\r\nx-mock-delay-ms: 100\r\n",
    ));
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    assert!(c.read_chunk().expect("first event").is_some());
    let t0 = Instant::now();
    drop(c);
    // The upstream connection goes away promptly (only our stats connection stays open).
    loop {
        let open = mock.stats()["open_connections"].as_u64().expect("open");
        if open == 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "upstream still open ({open})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Both permits (global and backend, each of 1) are free again.
    let mut c = gw.raw();
    let r = chat_with(&mut c, false, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn upstream_invalid_response_is_502() {
    // A raw "upstream" that answers garbage.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = l.accept() {
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxx");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let gw = Gateway::start(&single(
        "bad",
        &format!("http://{addr}/v1"),
        json!({"timeout_seconds": 2}),
    ));
    let mut c = gw.raw();
    let r = chat_with(&mut c, false, "");
    r.gateway_error(502, "backend_error");
    let _ = t.join();
}

#[test]
fn client_leaving_before_the_response_head_cancels_upstream_and_frees_permits() {
    let mock = Mock::start();
    let gw = Gateway::builder(&single(
        "m",
        &mock.v1(),
        json!({"timeout_seconds": 20, "max_in_flight": 1}),
    ))
    .args(&["--proxy-max-in-flight", "1"])
    .start();
    // A completion that takes a long time before its head (a slow non-stream answer).
    let mut c = gw.raw();
    c.send(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"gpt-4o"}"#,
        "x-mock-fault: stall\r\n",
    ));
    // Wait until the mock has it, then leave.
    let t0 = Instant::now();
    while mock.stats()["open_connections"].as_u64() != Some(2) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "request never reached the mock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    let t0 = Instant::now();
    loop {
        let open = mock.stats()["open_connections"].as_u64().expect("open");
        if open == 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "upstream request not cancelled ({open} open)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = gw.raw();
    let r = chat_with(&mut c, false, "");
    assert_eq!(r.status, 200, "permits still held: {}", r.text());
}
