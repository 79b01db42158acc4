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

/// Rate windows are wall-clock minutes: start a counting test well inside one.
fn wait_for_fresh_minute_if_needed() {
    let secs = now_secs();
    if secs % 60 > 50 {
        std::thread::sleep(std::time::Duration::from_secs(61 - secs % 60));
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current rate window; a counting test whose requests straddle two windows proves
/// nothing and returns early (on a slow machine the startup alone can take seconds).
fn minute() -> u64 {
    now_secs() / 60
}

fn limited_config(mock: &Mock) -> String {
    json!({
        "backends": [{"name": "a", "base_url": mock.v1()}],
        "virtual_keys": [
            {"id": "small", "token": "sk-small", "limits": {"rpm": 3}},
            {"id": "t1", "token": "sk-t1", "tenant_id": "acme", "tenant_limits": {"rpm": 4}},
            {"id": "t2", "token": "sk-t2", "tenant_id": "acme"},
            {"id": "blocked", "token": "sk-blocked", "limits": {"rpm": 0}},
            {"id": "busy", "token": "sk-busy", "limits": {"rpm": 10}}
        ],
        "router": {}
    })
    .to_string()
}

#[test]
fn key_rpm_limit_is_exact_and_the_429_says_which_limit() {
    wait_for_fresh_minute_if_needed();
    let mock = Mock::start();
    let gw = Gateway::start(&limited_config(&mock));
    let url = gw.url("/v1/chat/completions");
    let auth = [("authorization", "Bearer sk-small")];
    for i in 0..3 {
        assert_eq!(
            post(&url, &chat("gpt-4o", false), &auth).status,
            200,
            "request {i}"
        );
    }
    let r = post(&url, &chat("gpt-4o", false), &auth);
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("key \"small\"") && m.contains("3 requests per minute")),
        "{v}"
    );
    let retry: u64 = r
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .expect("retry-after");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(r.header("x-ratelimit-reset-requests").is_some());
    assert_eq!(mock.requests(), 3, "the refused request was not forwarded");
    // rpm 0 blocks every request.
    let r = post(
        &url,
        &chat("gpt-4o", false),
        &[("authorization", "Bearer sk-blocked")],
    );
    assert_eq!(r.status, 429, "{}", r.text());
}

#[test]
fn a_tenant_limit_is_shared_by_the_tenants_keys() {
    wait_for_fresh_minute_if_needed();
    let mock = Mock::start();
    let gw = Gateway::start(&limited_config(&mock));
    let url = gw.url("/v1/chat/completions");
    let w = minute();
    let mut statuses = Vec::new();
    for token in ["sk-t1", "sk-t2", "sk-t1", "sk-t2", "sk-t2", "sk-t1"] {
        let auth = format!("Bearer {token}");
        statuses.push(
            post(
                &url,
                &chat("gpt-4o", false),
                &[("authorization", auth.as_str())],
            )
            .status,
        );
    }
    let r = post(
        &url,
        &chat("gpt-4o", false),
        &[("authorization", "Bearer sk-t2")],
    );
    if minute() != w {
        return;
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 429, 429]);
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("tenant \"acme\"")));
}

#[test]
fn concurrent_clients_on_every_core_never_exceed_the_limit() {
    wait_for_fresh_minute_if_needed();
    let mock = Mock::start();
    let gw = Gateway::start(&limited_config(&mock));
    let url = gw.url("/v1/chat/completions");
    let w = minute();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..4)
                    .map(|_| {
                        post(
                            &url,
                            &chat("gpt-4o", false),
                            &[("authorization", "Bearer sk-busy")],
                        )
                        .status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let all: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    if minute() != w {
        return;
    }
    let ok = all.iter().filter(|s| **s == 200).count();
    let limited = all.iter().filter(|s| **s == 429).count();
    assert_eq!(ok, 10, "32 requests over 2 cores, rpm 10: {all:?}");
    assert_eq!(limited, 22);
    assert_eq!(mock.requests(), 10);
}

#[test]
fn models_listing_counts_against_the_rate_limit() {
    let mock = Mock::start();
    let gw = Gateway::start(&limited_config(&mock));
    let r = get(
        &gw.url("/v1/models"),
        &[("authorization", "Bearer sk-blocked")],
    );
    assert_eq!(r.status, 429, "rpm 0 blocks /v1/models too: {}", r.text());
    assert_eq!(mock.requests(), 0);
}
