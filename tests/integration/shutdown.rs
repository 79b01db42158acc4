//! Graceful shutdown: on SIGTERM the gateway stops accepting, lets the stream in flight finish,
//! and exits 0 within the drain window.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{raw_post, single, Gateway, Mock};

#[test]
fn sigterm_drains_the_stream_in_flight_refuses_new_connections_and_exits_zero() {
    let mock = Mock::start();
    let mut gw = Gateway::builder(&single("m", &mock.v1(), json!({"timeout_seconds": 10})))
        .args(&["--drain-timeout-secs", "5"])
        .start();
    // An idle keep-alive connection: closed at once by the shutdown.
    let mut idle = gw.raw();
    idle.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(idle.read_response().status, 200);

    let mut c = gw.raw();
    // 10 events 100 ms apart: about 1 s of stream.
    c.send(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true}"#,
        "x-mock-events: 10\r\nx-mock-delay-ms: 100\r\n",
    ));
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    assert!(c.read_chunk().expect("first event").is_some());

    let t0 = Instant::now();
    // SAFETY: kill(2) with the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(gw.pid(), libc::SIGTERM) }, 0);

    assert!(
        idle.closes_within(Duration::from_secs(1)),
        "idle connection not closed on shutdown"
    );
    // New connections are refused once the listener is closed.
    let mut refused = false;
    while t0.elapsed() < Duration::from_millis(700) {
        match std::net::TcpStream::connect_timeout(&gw.addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(refused, "new connections still accepted during the drain");

    // The stream in flight runs to its end.
    let mut events = 1;
    while let Some(chunk) = c.read_chunk().expect("stream cut by the shutdown") {
        events += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    assert_eq!(events, 11, "10 events and [DONE]");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "the stream was not cut short"
    );
    c.assert_closed();

    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("gateway exited within the drain window");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        gw.log()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
}

/// SIGTERM right after the "listening on" line (a supervisor's readiness signal) drains and
/// exits 0: the handlers are in place before the gateway says it is up. Repeated, since the
/// window this guards is short.
#[test]
fn sigterm_with_nothing_in_flight_exits_zero_at_once() {
    let mock = Mock::start();
    for round in 0..4 {
        let mut gw = Gateway::start(&single("m", &mock.v1(), json!({})));
        let t0 = Instant::now();
        // SAFETY: kill(2) with the pid of a child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(gw.pid(), libc::SIGTERM) }, 0);
        let status = gw.wait_exit(Duration::from_secs(5)).expect("exited");
        assert!(
            status.success(),
            "round {round}: {status:?}; log:\n{}",
            gw.log()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn drain_timeout_bounds_the_shutdown() {
    let mock = Mock::start();
    let mut gw = Gateway::builder(&single("m", &mock.v1(), json!({"timeout_seconds": 10})))
        .args(&["--drain-timeout-secs", "1"])
        .start();
    let mut c = gw.raw();
    // A 6 s stream: longer than the drain window.
    c.send(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true}"#,
        "x-mock-events: 30\r\nx-mock-delay-ms: 200\r\n",
    ));
    assert_eq!(c.read_head().0, 200);
    let t0 = Instant::now();
    // SAFETY: kill(2) with the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(gw.pid(), libc::SIGTERM) }, 0);
    let status = gw
        .wait_exit(Duration::from_secs(4))
        .expect("exited after the drain timeout");
    let elapsed = t0.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );
    // The stream was cut, not ended cleanly.
    let cut = loop {
        match c.read_chunk() {
            Ok(Some(_)) => {}
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        cut,
        "a stream longer than the drain window ended as if complete"
    );
}
