//! Virtual keys: with keys configured, nothing reaches an upstream without a valid one, and the
//! key never travels upstream.

use serde_json::{json, Value};

use crate::harness::{chat, echo_header, get, post, Gateway, Mock, Resp};

fn keyed_config(mock_a: &Mock, mock_b: &Mock, backend_headers: Value) -> String {
    let hashed = format!("sha256:{}", sha256_hex("sk-hashed"));
    json!({
        "backends": [
            {"name": "a", "base_url": mock_a.v1(), "headers": backend_headers},
            {"name": "b", "base_url": mock_b.v1()}
        ],
        "virtual_keys": [
            {"id": "team-a", "token": "sk-live-a", "tenant_id": "acme"},
            {"id": "off", "token": "sk-off", "enabled": false},
            {"id": "pinned", "token": "sk-pinned", "route": "b"},
            {"id": "hashed", "token": hashed}
        ],
        "router": {"default_backends": [{"backend": "a", "weight": 1.0}]}
    })
    .to_string()
}

fn sha256_hex(s: &str) -> String {
    ditto_gateway::auth::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn assert_401(r: &Resp, code: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(r.header("x-request-id").is_some());
    assert!(r.header("x-ditto-request-id").is_some());
}

#[test]
fn requests_without_a_valid_key_never_reach_an_upstream() {
    let (ma, mb) = (Mock::start(), Mock::start());
    let gw = Gateway::start(&keyed_config(&ma, &mb, json!({})));
    let url = gw.url("/v1/chat/completions");
    assert_401(&post(&url, &chat("gpt-4o", false), &[]), "missing_api_key");
    assert_401(
        &post(
            &url,
            &chat("gpt-4o", false),
            &[("authorization", "Bearer sk-nope")],
        ),
        "invalid_api_key",
    );
    assert_401(
        &post(&url, &chat("gpt-4o", false), &[("x-api-key", "sk-off")]),
        "key_disabled",
    );
    // A non-bearer Authorization is not a key.
    assert_401(
        &post(
            &url,
            &chat("gpt-4o", false),
            &[("authorization", "sk-live-a")],
        ),
        "missing_api_key",
    );
    assert_401(&get(&gw.url("/v1/models"), &[]), "missing_api_key");
    assert_eq!(ma.requests() + mb.requests(), 0, "nothing was forwarded");
    // The gateway's own health endpoints stay open.
    assert_eq!(get(&gw.url("/health"), &[]).status, 200);
}

#[test]
fn a_valid_key_in_any_supported_header_is_admitted_and_not_forwarded() {
    let (ma, mb) = (Mock::start(), Mock::start());
    let gw = Gateway::start(&keyed_config(&ma, &mb, json!({})));
    let url = gw.url("/v1/echo");
    for (header, value) in [
        ("authorization", "Bearer sk-live-a"),
        ("x-api-key", "sk-live-a"),
        ("x-litellm-api-key", "Bearer sk-live-a"),
        ("x-ditto-virtual-key", "sk-live-a"),
        ("authorization", "Bearer sk-hashed"),
    ] {
        let r = post(&url, &json!({"model": "gpt-4o"}), &[(header, value)]);
        assert_eq!(r.status, 200, "{header}: {}", r.text());
        let echo = r.json();
        assert!(
            echo_header(&echo, header).is_empty(),
            "{header} must not be forwarded: {echo}"
        );
        let all = echo["headers"].to_string();
        assert!(
            !all.contains("sk-live-a") && !all.contains("sk-hashed"),
            "key leaked upstream: {all}"
        );
    }
}

#[test]
fn mode_a_backend_credentials_replace_the_virtual_key() {
    let (ma, mb) = (Mock::start(), Mock::start());
    let gw = Gateway::start(&keyed_config(
        &ma,
        &mb,
        json!({"authorization": "Bearer upstream-secret"}),
    ));
    let r = post(
        &gw.url("/v1/echo"),
        &json!({"model": "gpt-4o"}),
        &[("authorization", "Bearer sk-live-a")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        echo_header(&r.json(), "authorization"),
        vec!["Bearer upstream-secret".to_string()]
    );
}

#[test]
fn a_key_pinned_to_a_backend_goes_only_there() {
    let ma = Mock::start_with(&["--models", "model-a"]);
    let mb = Mock::start_with(&["--models", "model-b"]);
    let gw = Gateway::start(&keyed_config(&ma, &mb, json!({})));
    let r = post(
        &gw.url("/v1/chat/completions"),
        &chat("gpt-4o", false),
        &[("authorization", "Bearer sk-pinned")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ditto-backend"), Some("b"));
    let r = post(
        &gw.url("/v1/chat/completions"),
        &chat("gpt-4o", false),
        &[("authorization", "Bearer sk-live-a")],
    );
    assert_eq!(r.header("x-ditto-backend"), Some("a"));
    // The pinned key sees its backend's models only; an unpinned key sees both.
    let ids = |r: Resp| -> Vec<String> {
        r.json()["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        ids(get(
            &gw.url("/v1/models"),
            &[("authorization", "Bearer sk-pinned")]
        )),
        vec!["model-b"]
    );
    let mut both = ids(get(
        &gw.url("/v1/models"),
        &[("authorization", "Bearer sk-live-a")],
    ));
    both.sort();
    assert_eq!(both, vec!["model-a", "model-b"]);
}

#[test]
fn duplicate_tokens_stop_startup_without_echoing_the_token() {
    let mock = Mock::start();
    let hashed = format!("sha256:{}", sha256_hex("sk-same"));
    let cfg = json!({
        "backends": [{"name": "a", "base_url": mock.v1()}],
        "virtual_keys": [{"id": "k1", "token": "sk-same"}, {"id": "k2", "token": hashed}],
        "router": {}
    })
    .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = crate::harness::write_file(dir.path(), "gateway.json", &cfg);
    let run = crate::harness::run_cli(
        &[path.to_str().expect("utf8 path"), "--listen", "127.0.0.1:0"],
        &[],
        &[],
    );
    assert!(!run.status.success(), "startup must fail");
    assert!(
        run.stderr.contains("virtual_keys[1].token"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("sk-same"), "{}", run.stderr);
}
