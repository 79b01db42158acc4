//! Passthrough behaviour the seed's users rely on: the quickstart config, `/v1/models`
//! aggregation, auth modes A and B, URL joining, header rewriting, request ids, error shapes.

use serde_json::{json, Value};

use crate::harness::{
    chat, config, dead_addr, echo_header, get, post, raw_post, single, sse_data, Gateway, Mock,
};

/// The seed's Mode A `gateway.json`, verbatim except that `base_url` points at the mock.
fn seed_mode_a(base_url: &str) -> String {
    r#"{
  "backends": [
    {
      "name": "primary",
      "base_url": "BASE_URL",
      "max_in_flight": 64,
      "timeout_seconds": 60,
      "headers": { "authorization": "Bearer ${OPENAI_API_KEY}" },
      "query_params": {}
    }
  ],
  "virtual_keys": [],
  "router": { "default_backends": [{ "backend": "primary", "weight": 1.0 }], "rules": [] }
}"#
    .replace("BASE_URL", base_url)
}

#[test]
fn seed_quickstart_health_models_chat_and_stream() {
    let mock = Mock::start();
    let gw = Gateway::builder(&seed_mode_a(&mock.v1()))
        .env("OPENAI_API_KEY", "sk-seed-test")
        .start();

    let h = get(&gw.url("/health"), &[]);
    assert_eq!(h.status, 200);
    assert_eq!(h.json(), json!({"status": "ok"}));

    let m = get(&gw.url("/v1/models"), &[]);
    assert_eq!(m.status, 200, "{}", m.text());
    let ids: Vec<Value> = m.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x["id"].clone())
        .collect();
    assert_eq!(ids, [json!("gpt-4o-mini"), json!("gpt-4o")]);

    let body =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]});
    let c = post(
        &gw.url("/v1/chat/completions"),
        &body,
        &[("content-type", "application/json")],
    );
    assert_eq!(c.status, 200, "{}", c.text());
    let v = c.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(c.header("x-ditto-backend"), Some("primary"));

    let s = post(
        &gw.url("/v1/chat/completions"),
        &chat("gpt-4o-mini", true),
        &[],
    );
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let data = sse_data(&s.text());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let content: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).expect("chunk JSON"))
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        content,
        v["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
}

#[test]
fn models_are_aggregated_over_backends_and_merged_by_id() {
    let a = Mock::start_with(&["--models", "only-a,shared"]);
    let b = Mock::start_with(&["--models", "shared,only-b"]);
    let cfg = config(
        &[("a", &a.v1(), json!({})), ("b", &b.v1(), json!({}))],
        json!({}),
    );
    let gw = Gateway::start(&cfg);
    for path in ["/v1/models", "/models"] {
        let r = get(&gw.url(path), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["object"], "list");
        let mut ids: Vec<String> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["only-a", "only-b", "shared"]);
        assert!(r.header("x-request-id").is_some());
    }
}

#[test]
fn models_still_listed_when_one_backend_is_down() {
    let a = Mock::start_with(&["--models", "alive"]);
    let dead = format!("http://{}/v1", dead_addr());
    let cfg = config(
        &[("dead", &dead, json!({})), ("a", &a.v1(), json!({}))],
        json!({}),
    );
    let gw = Gateway::start(&cfg);
    let r = get(&gw.url("/v1/models"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["id"], "alive");
}

#[test]
fn models_502_when_every_backend_is_down() {
    let d1 = format!("http://{}/v1", dead_addr());
    let d2 = format!("http://{}/v1", dead_addr());
    let gw = Gateway::start(&config(
        &[("d1", &d1, json!({})), ("d2", &d2, json!({}))],
        json!({}),
    ));
    let mut c = gw.raw();
    c.send(b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n");
    let r = c.read_response();
    r.gateway_error(502, "backend_error");
}

#[test]
fn mode_a_backend_authorization_overrides_the_clients() {
    let mock = Mock::start();
    let gw = Gateway::builder(&seed_mode_a(&mock.v1()))
        .env("OPENAI_API_KEY", "sk-backend")
        .start();
    let echo = get(
        &gw.url("/v1/echo"),
        &[("authorization", "Bearer sk-client")],
    )
    .json();
    assert_eq!(echo_header(&echo, "authorization"), ["Bearer sk-backend"]);
}

#[test]
fn mode_b_client_authorization_is_forwarded() {
    let mock = Mock::start();
    let cfg =
        seed_mode_a(&mock.v1()).replace(r#"{ "authorization": "Bearer ${OPENAI_API_KEY}" }"#, "{}");
    let gw = Gateway::start(&cfg);
    let echo = get(
        &gw.url("/v1/echo"),
        &[("authorization", "Bearer sk-client")],
    )
    .json();
    assert_eq!(echo_header(&echo, "authorization"), ["Bearer sk-client"]);
}

#[test]
fn url_join_never_doubles_v1_and_appends_query_params() {
    let mock = Mock::start();
    // One backend whose base_url ends in /v1, one with a bare host.
    let cfg = config(
        &[
            (
                "with-v1",
                &format!("{}/v1/", mock.url),
                json!({"query_params": {"api-version": "2024-01 01"}}),
            ),
            ("bare", &mock.url, json!({})),
        ],
        json!({"default_backends": [{"backend": "with-v1"}],
               "rules": [{"model_prefix": "bare", "exact": true, "backend": "bare"}]}),
    );
    let gw = Gateway::start(&cfg);
    let echo = get(&gw.url("/v1/echo/sub?x=1"), &[]).json();
    assert_eq!(echo["target"], "/v1/echo/sub?x=1&api-version=2024-01+01");
    let echo = get(&gw.url("/v1/echo"), &[]).json();
    assert_eq!(echo["target"], "/v1/echo?api-version=2024-01+01");
    let r = post(&gw.url("/v1/echo"), &json!({"model": "bare"}), &[]);
    assert_eq!(r.header("x-ditto-backend"), Some("bare"));
    assert_eq!(r.json()["target"], "/v1/echo");
}

#[test]
fn hop_by_hop_and_internal_headers_are_dropped_and_host_is_the_backends() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let mut c = gw.raw();
    c.send(
        b"GET /v1/echo HTTP/1.1\r\nHost: client.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\n\
          Proxy-Authorization: Basic cDpw\r\nX-Ditto-Debug: 1\r\nx-ditto-virtual-key: vk\r\nX-Keep: yes\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    let names: Vec<String> = echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| h[0].as_str().expect("name").to_ascii_lowercase())
        .collect();
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "x-ditto-debug",
        "x-ditto-virtual-key",
    ] {
        assert!(
            !names.iter().any(|n| n == gone),
            "{gone} was forwarded: {names:?}"
        );
    }
    assert_eq!(echo_header(&echo, "x-keep"), ["yes"]);
    assert_eq!(echo_header(&echo, "host"), [mock.addr.to_string()]);
    // The connection stays usable after all that.
    c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn client_request_id_is_reused_upstream_and_returned() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let r = get(&gw.url("/v1/echo"), &[("x-request-id", "client-id-42")]);
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    assert_eq!(r.header("x-ditto-request-id"), Some("client-id-42"));
    assert_eq!(r.header("x-ditto-backend"), Some("m"));
    // The mock's own id is kept under another name.
    assert!(r
        .header("x-upstream-request-id")
        .is_some_and(|v| v.starts_with("req_mock_")));
    assert_eq!(echo_header(&r.json(), "x-request-id"), ["client-id-42"]);
}

#[test]
fn request_id_is_generated_when_absent_and_sent_upstream() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let r1 = get(&gw.url("/v1/echo"), &[]);
    let r2 = get(&gw.url("/v1/echo"), &[]);
    let id1 = r1.header("x-request-id").expect("generated id").to_string();
    let id2 = r2.header("x-request-id").expect("generated id").to_string();
    assert_ne!(id1, id2);
    assert_eq!(r1.header("x-ditto-request-id"), Some(id1.as_str()));
    assert_eq!(echo_header(&r1.json(), "x-request-id"), [id1]);
    // An id with a space is not reused (it would end up in logs and headers).
    let r3 = get(&gw.url("/v1/echo"), &[("x-request-id", "has space")]);
    assert_ne!(r3.header("x-request-id"), Some("has space"));
}

#[test]
fn gateway_errors_are_openai_shaped_with_request_id_headers() {
    let gw = Gateway::start(&single(
        "m",
        &format!("http://{}/v1", dead_addr()),
        json!({}),
    ));
    let mut c = gw.raw();
    c.send(b"GET /nope HTTP/1.1\r\nhost: gw\r\nx-request-id: err-1\r\n\r\n");
    let r = c.read_response();
    let v = r.gateway_error(404, "not_found");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(r.header("x-request-id"), Some("err-1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // A 404 on a request without a body keeps the connection.
    c.send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn path_aliases_without_v1_are_rewritten() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let r = post(
        &gw.url("/chat/completions"),
        &chat("gpt-4o-mini", false),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    let r = post(
        &gw.url("/embeddings"),
        &json!({"model": "e", "input": "hi"}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "list");
    // The mock only knows /v1/...: an alias that reached it unrewritten would be a 404.
    let mut c = gw.raw();
    c.send(&raw_post("/chat/completions", r#"{"model":"gpt-4o"}"#, ""));
    assert_eq!(c.read_response().json()["model"], "gpt-4o");
}

#[test]
fn unknown_path_is_a_404_json_error_and_never_forwarded() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    for path in ["/", "/v2/chat/completions", "/completionsX", "/admin/keys"] {
        let r = get(&gw.url(path), &[]);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"]["code"], "not_found", "{path}");
        assert!(r.header("x-request-id").is_some());
    }
    assert_eq!(mock.requests(), 0);
}

#[test]
fn upstream_error_statuses_pass_through_unchanged() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let r = post(
        &gw.url("/v1/chat/completions"),
        &chat("gpt-4o", false),
        &[("x-mock-status", "429"), ("x-mock-retry-after", "7")],
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.header("x-ditto-backend"), Some("m"));
}

#[test]
fn dot_segments_cannot_escape_the_backend_base_path() {
    let mock = Mock::start();
    // Mode A: the injected key must only ever reach paths under the backend's base.
    let gw = Gateway::builder(&seed_mode_a(&mock.v1()))
        .env("OPENAI_API_KEY", "sk-backend")
        .start();
    for path in [
        "/v1/../echo",
        "/v1/./echo",
        "/v1/x/../../echo",
        "/v1/%2e%2e/echo",
        "/v1/%2E./echo",
        "/v1/..%2fecho",
        "/v1/..",
        "/chat/../v1/echo",
    ] {
        let mut c = gw.raw();
        c.send(format!("GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    assert_eq!(mock.requests(), 0);
    // Dots inside a segment are ordinary characters.
    let r = get(&gw.url("/v1/models/gpt-4.1..x"), &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "model_not_found",
        "the mock answered"
    );
}

#[test]
fn ready_reports_ready_with_backends() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let r = get(&gw.url("/ready"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
}
