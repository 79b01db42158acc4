//! Observability over real sockets: Prometheus and JSON metrics after known traffic, the access
//! log (JSON lines, no secrets anywhere), `x-ditto-overhead-us` on every kind of response, and
//! OTLP spans that join the caller's trace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ditto_gateway::metrics::text_format::{self, Sample};
use serde_json::{json, Value};

use crate::harness::{chat, echo_header, get, post, Gateway, Mock, Raw, Resp};

const KEY_A: &str = "vk-obs-team-a-secret-0123456789";
const KEY_B: &str = "vk-obs-team-b-secret-9876543210";
const ADMIN: &str = "adm-obs-secret-token-abcdef";
const PROVIDER: &str = "sk-provider-obs-secret-5555555555";

fn cfg(mock: &Mock) -> String {
    json!({
        "backends": [{
            "name": "m",
            "base_url": mock.v1(),
            "headers": {"authorization": format!("Bearer {PROVIDER}")},
        }],
        "virtual_keys": [
            {"id": "team-a", "token": KEY_A},
            {"id": "team-b", "token": KEY_B, "limits": {"rpm": 1}},
        ],
        "router": {"default_backends": [{"backend": "m"}]}
    })
    .to_string()
}

fn chat_as(gw: &Gateway, key: Option<&str>, body: &Value) -> Resp {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    post(&gw.url("/v1/chat/completions"), body, &headers)
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scrape(gw: &Gateway) -> Vec<Sample> {
    let r = get(&gw.url("/metrics/prometheus"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let (samples, types) = text_format::parse(&r.text()).expect("valid text format 0.0.4");
    assert_eq!(
        types
            .get("ditto_gateway_requests_total")
            .map(String::as_str),
        Some("counter")
    );
    samples
}

fn val(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    text_format::value(s, name, labels).unwrap_or(0.0)
}

fn overhead(r: &Resp) -> u64 {
    r.header("x-ditto-overhead-us")
        .unwrap_or_else(|| panic!("no x-ditto-overhead-us; headers {:?}", r.headers))
        .parse()
        .expect("overhead is a number of microseconds")
}

/// Known traffic on two cores: 5 + 1 ok, a stream, a 401 and a 429; every counter and
/// histogram count is then exact (summed over cores at scrape time).
#[test]
fn prometheus_and_json_metrics_count_known_traffic() {
    let mock = Mock::start();
    let gw = Gateway::builder(&cfg(&mock))
        .args(&["--workers", "2", "--prometheus-metrics"])
        .start();
    for _ in 0..5 {
        let r = chat_as(&gw, Some(KEY_A), &chat("gpt-4o-mini", false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(chat_as(&gw, None, &chat("gpt-4o-mini", false)).status, 401);
    assert_eq!(
        chat_as(&gw, Some(KEY_B), &chat("gpt-4o-mini", false)).status,
        200
    );
    assert_eq!(
        chat_as(&gw, Some(KEY_B), &chat("gpt-4o-mini", false)).status,
        429
    );
    let s = chat_as(&gw, Some(KEY_A), &chat("gpt-4o-mini", true));
    assert_eq!(s.status, 200);
    assert!(s.text().contains("[DONE]"));

    let chat_ep = ("endpoint", "chat_completions");
    // The last request is counted when its core has finished it, a moment after the client
    // read the response: wait for the total rather than race it.
    let m = eventually("9 finished chat requests", || {
        let m = scrape(&gw);
        (val(
            &m,
            "ditto_gateway_request_duration_seconds_count",
            &[chat_ep],
        ) == 9.0)
            .then_some(m)
    });
    let post_m = ("method", "POST");
    assert_eq!(
        val(&m, "ditto_gateway_requests_total", &[chat_ep, post_m]),
        9.0
    );
    let code = |c| val(&m, "ditto_gateway_responses_total", &[chat_ep, ("code", c)]);
    assert_eq!((code("200"), code("401"), code("429")), (7.0, 1.0, 1.0));
    let rejected = |r| val(&m, "ditto_gateway_rejected_total", &[("reason", r)]);
    assert_eq!(rejected("auth_failed"), 1.0);
    assert_eq!(rejected("rate_limited"), 1.0);
    assert_eq!(rejected("budget_exceeded"), 0.0);
    let b = ("backend", "m");
    assert_eq!(
        val(
            &m,
            "ditto_gateway_backend_requests_total",
            &[b, ("outcome", "2xx")]
        ),
        7.0
    );
    assert_eq!(
        val(&m, "ditto_gateway_backend_duration_seconds_count", &[b]),
        7.0
    );
    assert_eq!(val(&m, "ditto_gateway_backend_in_flight", &[b]), 0.0);
    assert_eq!(
        val(
            &m,
            "ditto_gateway_streams_total",
            &[("outcome", "completed")]
        ),
        1.0
    );
    assert!(val(&m, "ditto_gateway_stream_bytes_total", &[]) > 0.0);
    assert_eq!(val(&m, "ditto_gateway_ttfb_seconds_count", &[b]), 1.0);
    let opened = val(&m, "ditto_gateway_upstream_connections_opened_total", &[b]);
    let reused = val(&m, "ditto_gateway_upstream_connections_reused_total", &[b]);
    assert!(
        opened >= 1.0 && opened + reused == 7.0,
        "{opened} + {reused}"
    );
    assert!(val(&m, "ditto_gateway_overhead_seconds_count", &[]) >= 9.0);
    let a = [("key", "team-a"), ("model", "gpt-4o-mini")];
    assert_eq!(val(&m, "ditto_gateway_key_requests_total", &a), 6.0);
    let completion = val(
        &m,
        "ditto_gateway_tokens_total",
        &[a[0], a[1], ("kind", "completion")],
    );
    assert!(
        completion >= 25.0,
        "5 completions of 5 tokens: {completion}"
    );
    assert_eq!(
        val(
            &m,
            "ditto_gateway_key_requests_total",
            &[("key", "team-b"), ("model", "gpt-4o-mini")]
        ),
        1.0,
        "the refused request never reached an upstream"
    );
    assert_eq!(val(&m, "ditto_gateway_cores", &[]), 2.0);

    let j = get(&gw.url("/metrics"), &[]).json();
    assert_eq!(j["rejected"]["auth_failed"], 1, "{j}");
    assert_eq!(j["endpoints"]["chat_completions"]["requests"], 9, "{j}");
    assert_eq!(j["endpoints"]["chat_completions"]["responses"]["200"], 7);
    assert_eq!(j["backends"]["m"]["outcomes"]["2xx"], 7, "{j}");
    assert_eq!(j["streams"]["completed"], 1);
    let usage = j["usage"].as_array().expect("usage");
    assert!(
        usage
            .iter()
            .any(|u| u["key"] == "team-a" && u["requests"] == 6),
        "{j}"
    );
}

#[test]
fn prometheus_endpoint_needs_the_flag_and_json_is_always_there() {
    let mock = Mock::start();
    let gw = Gateway::start(&cfg(&mock));
    let r = get(&gw.url("/metrics/prometheus"), &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("--prometheus-metrics"));
    let r = get(&gw.url("/metrics"), &[]);
    assert_eq!(r.status, 200);
    assert!(r.json()["requests_total"].as_u64().is_some());
}

/// JSON access lines parse and carry the fields; no virtual key token, admin token or provider
/// key shows up in any log line or in the metrics, whatever the request did.
#[test]
fn json_logs_carry_the_fields_and_no_secret_ever_shows() {
    let mock = Mock::start();
    let gw = Gateway::builder(&cfg(&mock))
        .args(&[
            "--json-logs",
            "--prometheus-metrics",
            "--admin-token",
            ADMIN,
        ])
        .start();
    let ok = chat_as(&gw, Some(KEY_A), &chat("gpt-4o-mini", false));
    assert_eq!(ok.status, 200);
    let rid = ok.header("x-request-id").expect("request id").to_string();
    let wrong = "vk-obs-wrong-secret-token-777777";
    assert_eq!(
        chat_as(&gw, Some(wrong), &chat("gpt-4o-mini", false)).status,
        401
    );
    // Secrets in places a careless logger would print: the query string, and a provider key
    // pasted into the model field (the gateway cannot know an arbitrary string is secret, but
    // it masks everything shaped like a credential).
    let pasted = "sk-proj-obsPastedModelSecret0123456789abcdef";
    let r = post(
        &gw.url(&format!("/v1/chat/completions?api_key={KEY_A}")),
        &chat(pasted, false),
        &[("authorization", &format!("Bearer {KEY_A}"))],
    );
    assert_eq!(r.status, 200);
    let adm = get(
        &gw.url("/admin/keys"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
    );
    assert_eq!(adm.status, 200);
    let stream = chat_as(&gw, Some(KEY_A), &chat("gpt-4o-mini", true));
    assert_eq!(stream.status, 200);
    let metrics =
        get(&gw.url("/metrics/prometheus"), &[]).text() + &get(&gw.url("/metrics"), &[]).text();

    // Each core flushes its own buffer of lines (every 20 ms), so lines arrive in no set
    // order: wait for the very lines checked below, not for a count.
    let log = eventually(
        "the access lines of the ok, 401 and streamed requests",
        || {
            let log = gw.log();
            let access: Vec<Value> = log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["kind"] == "access")
                .collect();
            let has = |f: &dyn Fn(&Value) -> bool| access.iter().any(f);
            (access.len() >= 5
                && has(&|v| v["request_id"] == rid.as_str())
                && has(&|v| v["status"] == 401)
                && has(&|v| v["stream"] == true))
            .then_some(log)
        },
    );
    for secret in [KEY_A, KEY_B, ADMIN, PROVIDER, wrong, pasted] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!metrics.contains(secret), "{secret} in the metrics");
    }
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&Value> = lines.iter().filter(|v| v["kind"] == "access").collect();
    let line = access
        .iter()
        .find(|v| v["request_id"] == rid.as_str())
        .expect("the ok request's line");
    assert_eq!(line["key_id"], "team-a");
    assert_eq!(line["model"], "gpt-4o-mini");
    assert_eq!(line["backend"], "m");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/chat/completions");
    assert_eq!(line["status"], 200);
    assert_eq!(line["stream"], false);
    assert_eq!(line["bytes_out"].as_u64(), Some(ok.body.len() as u64));
    assert!(line["bytes_in"].as_u64().is_some_and(|n| n > 0));
    for f in ["duration_us", "ttfb_us", "overhead_us", "prompt_tokens"] {
        assert!(line[f].as_u64().is_some(), "{f}: {line}");
    }
    assert_eq!(line["completion_tokens"], 5);
    assert!(line["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    let denied = access
        .iter()
        .find(|v| v["status"] == 401)
        .expect("the 401's line");
    assert_eq!(denied["error"], "invalid_api_key");
    assert!(denied.get("key_id").is_none(), "{denied}");
    let streamed = access
        .iter()
        .find(|v| v["stream"] == true)
        .expect("the stream's line");
    assert!(streamed["ttfb_us"].as_u64().is_some());
    // Operator lines are JSON too.
    assert!(lines
        .iter()
        .any(|v| v["level"] == "info" && v["msg"].as_str().is_some()));
}

#[test]
fn text_access_log_is_the_default_and_can_be_turned_off() {
    let mock = Mock::start();
    let gw = Gateway::start(&cfg(&mock));
    assert_eq!(
        chat_as(&gw, Some(KEY_A), &chat("gpt-4o-mini", false)).status,
        200
    );
    let line = eventually("a text access line", || {
        gw.log()
            .lines()
            .find(|l| l.contains("kind=access"))
            .map(str::to_string)
    });
    assert!(line.contains(" key_id=team-a "), "{line}");
    assert!(line.contains(" status=200 "), "{line}");
    assert!(!line.contains(KEY_A));

    let quiet = Gateway::builder(&cfg(&mock))
        .env("DITTO_ACCESS_LOG", "off")
        .start();
    assert_eq!(
        chat_as(&quiet, Some(KEY_A), &chat("gpt-4o-mini", false)).status,
        200
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(!quiet.log().contains("kind=access"), "{}", quiet.log());
}

/// Every response carries `x-ditto-overhead-us`, and it leaves out the upstream's time.
#[test]
fn overhead_header_on_success_error_and_stream_excludes_upstream_time() {
    let mock = Mock::start_with(&["--delay-ms", "150"]);
    let gw = Gateway::builder(&cfg(&mock))
        .args(&["--prometheus-metrics"])
        .start();
    let t = Instant::now();
    let ok = chat_as(&gw, Some(KEY_A), &chat("gpt-4o-mini", false));
    let wall = t.elapsed();
    assert_eq!(ok.status, 200);
    assert!(wall >= Duration::from_millis(150));
    let o = overhead(&ok);
    assert!(
        o < 100_000,
        "overhead {o} us leaves out the 150 ms upstream wait"
    );

    let denied = chat_as(&gw, None, &chat("gpt-4o-mini", false));
    assert_eq!(denied.status, 401);
    assert!(overhead(&denied) < 1_000_000);

    let stream = chat_as(&gw, Some(KEY_A), &chat("gpt-4o-mini", true));
    assert_eq!(stream.status, 200);
    assert!(overhead(&stream) < 100_000);

    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/metrics/prometheus",
        "/nope",
    ] {
        let r = get(&gw.url(path), &[]);
        overhead(&r);
    }
    // A request head the gateway cannot parse still gets the header.
    let mut raw = Raw::connect(gw.addr);
    raw.send(b"GET / HTTP/1.1\r\nbad header\r\n\r\n");
    let r = raw.read_response();
    assert_eq!(r.status, 400);
    assert!(r.header("x-ditto-overhead-us").is_some(), "{:?}", r.headers);
}

/// A minimal OTLP/HTTP collector: every POST body it receives goes to the channel.
fn collector() -> (String, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind collector");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(conn.try_clone().expect("clone"));
            loop {
                let mut len = 0usize;
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    break;
                }
                let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                );
            }
        }
    });
    (url, rx)
}

#[test]
fn otel_spans_join_the_callers_trace_and_traceparent_goes_upstream() {
    let mock = Mock::start();
    let (endpoint, spans) = collector();
    let gw = Gateway::builder(&cfg(&mock))
        .args(&["--otel-endpoint", &endpoint])
        .start();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{parent}-01");
    let auth = format!("Bearer {KEY_A}");
    let echo = get(
        &gw.url("/v1/echo"),
        &[("authorization", &auth), ("traceparent", &tp)],
    );
    assert_eq!(echo.status, 200, "{}", echo.text());
    let sent = echo_header(&echo.json(), "traceparent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let parts: Vec<&str> = sent[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{sent:?}");
    assert_eq!(parts[1], trace, "same trace upstream");
    assert_ne!(
        parts[2], parent,
        "the gateway's span is the upstream's parent"
    );
    let gateway_span = parts[2].to_string();

    let body = eventually("a span with the caller's trace id", || {
        spans
            .recv_timeout(Duration::from_millis(200))
            .ok()
            .filter(|b| b.contains(trace))
    });
    let v: Value = serde_json::from_str(&body).expect("OTLP JSON");
    let all: Vec<&Value> = v["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .collect();
    let span = all
        .iter()
        .find(|s| s["traceId"] == trace)
        .expect("the request's span");
    assert_eq!(span["parentSpanId"], parent);
    assert_eq!(span["spanId"], gateway_span.as_str());
    assert!(!body.contains(KEY_A) && !body.contains(PROVIDER));

    // Without an incoming traceparent, a new trace starts and still goes upstream.
    let echo = get(&gw.url("/v1/echo"), &[("authorization", &auth)]);
    let sent = echo_header(&echo.json(), "traceparent");
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].contains(trace));
}
