//! Upstream keep-alive: connections are pooled and reused, and a pooled connection the server
//! closed while idle is never used for a request.

use std::time::Duration;

use serde_json::json;

use crate::harness::{agent, chat, post_with, raw_post, single, Gateway, Mock};

#[test]
fn sequential_requests_reuse_few_upstream_connections() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    // Over one client connection...
    let a = agent();
    for _ in 0..10 {
        let r = post_with(
            &a,
            &gw.url("/v1/chat/completions"),
            &chat("gpt-4o", false),
            &[],
        );
        assert_eq!(r.status, 200);
    }
    // ...and over a fresh client connection each time (which may land on either core).
    for _ in 0..10 {
        let mut c = gw.raw();
        c.send(&raw_post(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","stream":true}"#,
            "connection: close\r\n",
        ));
        let r = c.read_response();
        assert!(r.complete && r.status == 200);
    }
    let stats = mock.stats();
    assert_eq!(stats["requests"], 20, "{stats}");
    // Two gateway cores, each with at most one pooled connection, plus this stats connection.
    assert!(
        stats["connections"].as_u64().expect("connections") <= 3,
        "{stats}"
    );
}

#[test]
fn connection_closed_by_the_upstream_while_idle_is_not_reused() {
    let mock = Mock::start_with(&["--keepalive-timeout-secs", "1"]);
    let gw = Gateway::builder(&single("m", &mock.v1(), json!({"idle_ttl_seconds": 30})))
        .args(&["--workers", "1"])
        .start();
    let a = agent();
    for round in 0..3 {
        let r = post_with(
            &a,
            &gw.url("/v1/chat/completions"),
            &chat("gpt-4o", false),
            &[],
        );
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        // Past the mock's keep-alive: it has closed the pooled connection.
        std::thread::sleep(Duration::from_millis(1300));
    }
    let stats = mock.stats();
    assert_eq!(stats["requests"], 3, "{stats}");
    // One fresh upstream connection per round, plus the stats connection.
    assert_eq!(stats["connections"], 4, "{stats}");
}

#[test]
fn idle_ttl_zero_disables_pooling() {
    let mock = Mock::start();
    let gw = Gateway::builder(&single("m", &mock.v1(), json!({"idle_ttl_seconds": 0})))
        .args(&["--workers", "1"])
        .start();
    let a = agent();
    for _ in 0..3 {
        assert_eq!(
            post_with(
                &a,
                &gw.url("/v1/chat/completions"),
                &chat("gpt-4o", false),
                &[]
            )
            .status,
            200
        );
    }
    assert_eq!(mock.stats()["connections"], 4);
}

/// A hand-written upstream: on its first connection it answers one request with keep-alive,
/// then closes on the second without a byte (as a server whose idle timeout fires just as the
/// request arrives). Every later connection answers normally. Returns the base URL and a
/// counter of accepted connections.
fn dropping_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for (i, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                let mut served = 0;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if i == 0 && served == 1 {
                        return; // drop the connection unanswered
                    }
                    if s.write_all(answer).is_err() {
                        return;
                    }
                    served += 1;
                }
            });
        }
    });
    (format!("http://{addr}/v1"), accepted)
}

#[test]
fn pooled_connection_dropped_unanswered_is_retried_once_on_a_fresh_one() {
    let (url, accepted) = dropping_upstream();
    let gw = Gateway::builder(&single("m", &url, json!({"timeout_seconds": 5})))
        .args(&["--workers", "1"])
        .start();
    let a = agent();
    for i in 0..3 {
        let r = post_with(
            &a,
            &gw.url("/v1/chat/completions"),
            &chat("gpt-4o", false),
            &[],
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["ok"], true);
    }
    // The second request was retried on a second connection, which then served the third.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}
