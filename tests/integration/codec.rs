//! Our HTTP/1.1 codec seen from a raw socket: keep-alive, pipelining, chunked bodies, HEAD,
//! 100-continue, HTTP/1.0, size limits, the request-smuggling table and slow clients.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{raw_post, single, Gateway, Mock};

fn gateway(mock: &Mock) -> Gateway {
    Gateway::start(&single("m", &mock.v1(), json!({"timeout_seconds": 5})))
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    for i in 0..3 {
        c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
        assert_eq!(c.read_response().status, 200, "health {i}");
        c.send(&raw_post(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o"}"#,
            "",
        ));
        let r = c.read_response();
        assert_eq!(r.status, 200, "chat {i}");
        assert_eq!(r.json()["model"], "gpt-4o");
        assert_ne!(r.header("connection"), Some("close"));
    }
    c.send(b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    // Connection: close is honoured after the answer.
    c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.header("connection"), Some("close"));
    c.assert_closed();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let mut batch = Vec::new();
    batch.extend_from_slice(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    batch.extend_from_slice(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"first"}"#,
        "",
    ));
    batch.extend_from_slice(&raw_post("/v1/echo", r#"{"model":"second"}"#, "x-n: 2\r\n"));
    batch.extend_from_slice(b"GET /nope HTTP/1.1\r\nhost: gw\r\n\r\n");
    batch.extend_from_slice(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"third","stream":true}"#,
        "",
    ));
    batch.extend_from_slice(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    c.send(&batch);
    assert_eq!(c.read_response().json()["status"], "ok");
    assert_eq!(c.read_response().json()["model"], "first");
    assert_eq!(c.read_response().json()["body"], r#"{"model":"second"}"#);
    assert_eq!(c.read_response().status, 404);
    let s = c.read_response();
    assert!(
        s.complete && s.text().contains("\"third\"") && s.text().ends_with("data: [DONE]\n\n"),
        "{}",
        s.text()
    );
    assert_eq!(c.read_response().json()["status"], "ok");
}

#[test]
fn chunked_request_body_is_decoded_and_reframed() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    // JSON is read whole (to find the model) and sent with a Content-Length.
    c.send(
        b"POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
          5;ext=1\r\n{\"mod\r\n9\r\nel\":\"m1\"}\r\n0\r\nx-trailer: t\r\n\r\n",
    );
    let v = c.read_response().json();
    assert_eq!(v["body"], r#"{"model":"m1"}"#);
    assert_eq!(v["framing"], "length");
    // A binary upload is streamed, chunked again with only framing we validated.
    c.send(
        b"POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n\
          3;big-ext=yes\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    );
    let v = c.read_response().json();
    assert_eq!(v["body"], "abcdefg");
    assert_eq!(v["framing"], "chunked");
    // A streamed Content-Length upload.
    c.send(b"POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: audio/wav\r\ncontent-length: 4\r\n\r\nRIFF");
    let v = c.read_response().json();
    assert_eq!(
        (v["body"].as_str(), v["framing"].as_str()),
        (Some("RIFF"), Some("length"))
    );
}

#[test]
fn head_requests_get_headers_without_a_body() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    c.send(b"HEAD /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    let r = c.read_response_for(true);
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some_and(|l| l != "0"));
    // Passthrough HEAD: the upstream's length is kept, no body follows.
    c.send(b"HEAD /v1/models/gpt-4o HTTP/1.1\r\nhost: gw\r\n\r\n");
    let r = c.read_response_for(true);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-length").is_some_and(|l| l != "0"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-ditto-backend"), Some("m"));
    // Had a body followed either HEAD, this would read it as a status line.
    c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(c.read_response().json()["status"], "ok");
}

#[test]
fn expect_100_continue_gets_an_interim_response_first() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let body = r#"{"model":"gpt-4o"}"#;
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.line().expect("interim"), "HTTP/1.1 100 Continue");
    assert_eq!(c.line().expect("end of interim"), "");
    c.send(body.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "gpt-4o");
    // Same for a streamed upload; the mock never sees the Expect field.
    c.send(b"POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: image/png\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n");
    assert_eq!(c.line().expect("interim"), "HTTP/1.1 100 Continue");
    assert_eq!(c.line().expect("end of interim"), "");
    c.send(b"png");
    let v = c.read_response().json();
    assert_eq!(v["body"], "png");
    assert!(crate::harness::echo_header(&v, "expect").is_empty());
}

#[test]
fn http10_client_gets_a_response_and_the_connection_closed() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    c.send(b"GET /health HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    c.assert_closed();

    // A stream to a 1.0 client: no chunked framing, the end is our close.
    let mut c = gw.raw();
    let body = r#"{"model":"gpt-4o","stream":true}"#;
    c.send(format!("POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none(), "{:?}", r.headers);
    assert!(
        r.text().starts_with("data: ") && r.text().ends_with("data: [DONE]\n\n"),
        "{}",
        r.text()
    );

    // A Content-Length answer to a 1.0 client keeps its length, then closes.
    let mut c = gw.raw();
    c.send(b"POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some());
    assert_eq!(r.json()["object"], "chat.completion");
    c.assert_closed();
}

#[test]
fn head_over_32_kib_is_431_and_closed() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let big = "a".repeat(40 * 1024);
    c.send(format!("GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-big: {big}\r\n\r\n").as_bytes());
    let r = c.read_response();
    r.gateway_error(431, "request_header_fields_too_large");
    c.assert_closed();
    assert_eq!(mock.requests(), 0);
}

#[test]
fn more_than_100_header_fields_is_431_and_100_is_fine() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let fields = |n: usize| (0..n).map(|i| format!("x-f{i}: v\r\n")).collect::<String>();
    // Host plus 99 others: exactly at the limit.
    let mut c = gw.raw();
    c.send(format!("GET /health HTTP/1.1\r\nhost: gw\r\n{}\r\n", fields(99)).as_bytes());
    assert_eq!(c.read_response().status, 200);
    let mut c = gw.raw();
    c.send(format!("GET /health HTTP/1.1\r\nhost: gw\r\n{}\r\n", fields(100)).as_bytes());
    c.read_response()
        .gateway_error(431, "request_header_fields_too_large");
    c.assert_closed();
}

fn small_body_gateway(mock: &Mock) -> Gateway {
    Gateway::builder(&single("m", &mock.v1(), json!({})))
        .args(&["--proxy-max-body-bytes", "1024"])
        .start()
}

#[test]
fn content_length_over_the_body_limit_is_413_before_reading_it() {
    let mock = Mock::start();
    let gw = small_body_gateway(&mock);
    // Only the head is sent: the answer must not wait for a body it will refuse.
    let mut c = gw.raw();
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 1025\r\n\r\n");
    c.read_response().gateway_error(413, "request_too_large");
    c.assert_closed();
    // Also for a body that would be streamed.
    let mut c = gw.raw();
    c.send(b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: gw\r\ncontent-type: audio/wav\r\ncontent-length: 5000\r\n\r\n");
    c.read_response().gateway_error(413, "request_too_large");
    // At the limit is fine.
    let mut c = gw.raw();
    let body = format!(r#"{{"model":"gpt-4o","pad":"{}"}}"#, "x".repeat(1024 - 27));
    assert_eq!(body.len(), 1024);
    c.send(&raw_post("/v1/chat/completions", &body, ""));
    assert_eq!(c.read_response().status, 200);
    assert_eq!(mock.requests(), 1);
}

/// A client that sends its whole oversized body without waiting gets its 413 and then a clean
/// end of stream, not a reset: the gateway lingers (reads and discards) before closing, since
/// closing a socket with unread input sends a reset, which on many stacks destroys the
/// response the client has not read yet (RFC 9112 section 9.6).
#[test]
fn refused_body_sent_anyway_gets_its_413_and_a_clean_close() {
    use std::io::{Read, Write};
    let mock = Mock::start();
    let gw = small_body_gateway(&mock);
    let body = vec![b'x'; 3 * 1024 * 1024];
    let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    // The answer comes at once; the body floods in while the gateway is closing.
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&body)
        .expect("the gateway keeps reading while it lingers");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("expected a clean close after the response, got {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("request_too_large"), "{text}");
    assert_eq!(mock.requests(), 0);
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let mock = Mock::start();
    let gw = small_body_gateway(&mock);
    for ct in ["application/json", "application/octet-stream"] {
        let mut c = gw.raw();
        let mut req = format!("POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: {ct}\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes();
        for _ in 0..3 {
            req.extend_from_slice(format!("200\r\n{}\r\n", "y".repeat(512)).as_bytes());
        }
        req.extend_from_slice(b"0\r\n\r\n");
        c.send(&req);
        c.read_response().gateway_error(413, "request_too_large");
        c.assert_closed();
    }
    assert_eq!(mock.requests(), 0);
}

/// Each case: a request that must be refused with this status, the connection closed, and
/// nothing forwarded.
#[test]
fn smuggling_and_malformed_requests_are_refused_closed_and_never_forwarded() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let post =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n";
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "TE and CL",
            format!("{post}content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            "CL and TE",
            format!("{post}transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            "two different CLs",
            format!("{post}content-length: 2\r\ncontent-length: 3\r\n\r\n{{}} "),
            400,
        ),
        (
            "CL list that differs",
            format!("{post}content-length: 2, 3\r\n\r\n{{}} "),
            400,
        ),
        (
            "CL with a sign",
            format!("{post}content-length: +2\r\n\r\n{{}}"),
            400,
        ),
        (
            "CL not a number",
            format!("{post}content-length: 0x2\r\n\r\n{{}}"),
            400,
        ),
        (
            "chunked, identity",
            format!("{post}transfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            "xchunked",
            format!("{post}transfer-encoding: xchunked\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            "chunked then gzip fields",
            format!("{post}transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            "gzip, chunked",
            format!("{post}transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            501,
        ),
        (
            "bad chunk size",
            format!("{post}transfer-encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"),
            400,
        ),
        (
            "chunk size overflow",
            format!(
                "{post}transfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\n{{}}\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "chunk data without CRLF",
            format!("{post}transfer-encoding: chunked\r\n\r\n2\r\n{{}}XX0\r\n\r\n"),
            400,
        ),
        (
            "obs-fold",
            format!("{post}x-folded: a\r\n  b\r\ncontent-length: 2\r\n\r\n{{}}"),
            400,
        ),
        (
            "space before colon",
            format!("{post}content-length : 2\r\n\r\n{{}}"),
            400,
        ),
        (
            "invalid method token",
            "G(T /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n".to_string(),
            400,
        ),
        (
            "unsupported method",
            "TRACE /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n".to_string(),
            501,
        ),
        (
            "HTTP/2.0",
            "GET /v1/models HTTP/2.0\r\nhost: gw\r\n\r\n".to_string(),
            400,
        ),
        (
            "HTTP/1.2",
            "GET /v1/models HTTP/1.2\r\nhost: gw\r\n\r\n".to_string(),
            400,
        ),
        (
            "garbage version",
            "GET /v1/models FOO/1.1\r\nhost: gw\r\n\r\n".to_string(),
            400,
        ),
        (
            "missing Host in 1.1",
            "GET /v1/models HTTP/1.1\r\naccept: */*\r\n\r\n".to_string(),
            400,
        ),
        (
            "two Hosts",
            "GET /v1/models HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n".to_string(),
            400,
        ),
        (
            "absolute-form target",
            "GET http://evil/v1/models HTTP/1.1\r\nhost: gw\r\n\r\n".to_string(),
            400,
        ),
        (
            "chunked in HTTP/1.0",
            "POST /v1/chat/completions HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_string(),
            400,
        ),
        (
            "NUL in a header value",
            format!("{post}x-a: a\0b\r\ncontent-length: 2\r\n\r\n{{}}"),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (name, req, status) in &cases {
        let mut c = gw.raw();
        c.send(req.as_bytes());
        let r = c.read_response();
        if r.status != *status {
            failures.push(format!(
                "{name}: status {} (want {status}): {}",
                r.status,
                r.text()
            ));
            continue;
        }
        if r.json()["error"]["code"].as_str().is_none() || r.header("x-request-id").is_none() {
            failures.push(format!(
                "{name}: not a gateway error: {:?} {}",
                r.headers,
                r.text()
            ));
        }
        if !c.closes_within(Duration::from_secs(2)) {
            failures.push(format!("{name}: connection left open"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(mock.requests(), 0, "a refused request reached the upstream");
}

fn slow_client_gateway(mock: &Mock) -> Gateway {
    Gateway::builder(&single("m", &mock.v1(), json!({})))
        .env("DITTO_TEST_HEADER_TIMEOUT_MS", "500")
        .env("DITTO_TEST_BODY_TIMEOUT_MS", "500")
        .start()
}

#[test]
fn slowloris_head_is_408_and_closed() {
    let mock = Mock::start();
    let gw = slow_client_gateway(&mock);
    let mut c = gw.raw();
    let head = b"GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let t0 = Instant::now();
    // One byte every 50 ms: each read is quick, the whole head is not.
    let mut sent = 0;
    while sent < head.len() && !c.readable_within(Duration::from_millis(50)) {
        if c.try_send(&head[sent..sent + 1]).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent < head.len(), "the whole head went through");
    let r = c.read_response();
    r.gateway_error(408, "request_timeout");
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    c.assert_closed();
    assert_eq!(mock.requests(), 0);
    // An idle keep-alive connection is not subject to the head timeout.
    let mut c = gw.raw();
    c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    std::thread::sleep(Duration::from_millis(800));
    c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn stalled_request_body_is_408_and_closed() {
    let mock = Mock::start();
    let gw = slow_client_gateway(&mock);
    for ct in ["application/json", "application/octet-stream"] {
        let mut c = gw.raw();
        c.send(format!("POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: {ct}\r\ncontent-length: 100\r\n\r\n{{\"model\"").as_bytes());
        let t0 = Instant::now();
        let r = c.read_response();
        r.gateway_error(408, "request_timeout");
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{ct}: {:?}",
            t0.elapsed()
        );
        c.assert_closed();
    }
    assert_eq!(mock.requests(), 0);
}

#[test]
fn http10_keep_alive_client_is_told_and_kept() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    for path in ["/health", "/v1/models"] {
        c.send(format!("GET {path} HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-length").is_some(),
            "{path}: {:?}",
            r.headers
        );
        assert!(
            r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
            "{path}: a 1.0 client only keeps the connection when told: {:?}",
            r.headers
        );
    }
    let body = r#"{"model":"gpt-4o"}"#;
    c.send(format!("POST /v1/chat/completions HTTP/1.0\r\nconnection: keep-alive\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
        "{:?}",
        r.headers
    );
    c.send(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    c.assert_closed();
}

#[test]
fn unsupported_expectation_is_417() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nexpect: 200-ok\r\ncontent-length: 2\r\n\r\n{}");
    c.read_response().gateway_error(417, "expectation_failed");
    c.assert_closed();
    assert_eq!(mock.requests(), 0);
}

#[test]
fn large_request_bodies_arrive_intact() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    let pad = "z".repeat(3 * 1024 * 1024);
    // Buffered (JSON), Content-Length.
    let body = format!(r#"{{"model":"gpt-4o","pad":"{pad}"}}"#);
    c.send(&raw_post("/v1/echo", &body, ""));
    let v = c.read_response().json();
    assert_eq!(v["body_len"].as_u64(), Some(body.len() as u64));
    assert!(v["body"].as_str() == Some(body.as_str()));
    // Streamed (binary), Content-Length and chunked.
    c.send(format!("POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n{pad}", pad.len()).as_bytes());
    let v = c.read_response().json();
    assert_eq!(v["body_len"].as_u64(), Some(pad.len() as u64));
    let mut req = b"POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in pad.as_bytes().chunks(100_000) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.send(&req);
    let v = c.read_response().json();
    assert_eq!(v["body_len"].as_u64(), Some(pad.len() as u64));
    assert_eq!(v["framing"], "chunked");
}

#[test]
fn no_content_and_not_modified_responses_have_no_body() {
    let mock = Mock::start();
    let gw = gateway(&mock);
    let mut c = gw.raw();
    for status in ["204", "304"] {
        c.send(&raw_post(
            "/v1/chat/completions",
            "{}",
            &format!("x-mock-status: {status}\r\n"),
        ));
        let r = c.read_response();
        assert_eq!(r.status.to_string(), status);
        assert!(r.header("transfer-encoding").is_none(), "{:?}", r.headers);
        if status == "204" {
            assert!(r.header("content-length").is_none(), "{:?}", r.headers);
        }
        assert_eq!(r.header("x-ditto-backend"), Some("m"));
    }
    // Framing stayed in step: the next answer parses.
    c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(c.read_response().json()["status"], "ok");
}
