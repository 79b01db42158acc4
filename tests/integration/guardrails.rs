//! Guardrails over real sockets (REFERENCE section 5): per key, replaced by a matching router
//! rule's; checked after auth and before quota, so a refused request costs nothing.

use serde_json::{json, Value};

use crate::harness::{agent, post, run_cli, write_file, Gateway, Mock, Resp};

const ADMIN: &str = "adm-secret";
const TOKEN: &str = "sk-guarded";

fn cfg(mock: &Mock, guardrails: Value, rules: Value) -> String {
    json!({
        "backends": [{"name": "m", "base_url": mock.v1()}],
        "virtual_keys": [{
            "id": "guarded", "token": TOKEN,
            "limits": {"rpm": 3},
            "guardrails": guardrails,
        }],
        "router": {"default_backends": [{"backend": "m"}], "rules": rules}
    })
    .to_string()
}

fn send(gw: &Gateway, body: &Value) -> Resp {
    post(
        &gw.url("/v1/chat/completions"),
        body,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
}

fn say(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

fn refused(r: &Resp, status: u16, code: &str, reason: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], code, "{e}");
    let msg = e["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains(reason), "{msg} lacks {reason}");
    if status == 403 {
        assert_eq!(e["error"]["type"], "policy_error");
    }
}

#[test]
fn key_guardrails_refuse_before_quota_is_spent() {
    let m = Mock::start();
    let gw = Gateway::builder(&cfg(
        &m,
        json!({
            "allow_models": ["gpt-4o*"],
            "deny_models": ["gpt-4o-realtime*"],
            "max_input_tokens": 2000,
            "banned_phrases": ["Project Nightingale"],
            "banned_regexes": ["sk-[A-Za-z0-9]{20,}"],
            "block_pii": true,
            "validate_schema": true,
        }),
        json!([]),
    ))
    .args(&["--admin-token", ADMIN])
    .start();
    refused(
        &send(&gw, &say("llama-3", "hi")),
        403,
        "model_not_allowed",
        "model_not_allowed:llama-3",
    );
    refused(
        &send(&gw, &say("gpt-4o-realtime-preview", "hi")),
        403,
        "deny_model",
        "deny_model:gpt-4o-realtime*",
    );
    refused(
        &send(&gw, &say("gpt-4o", &"word ".repeat(4000))),
        403,
        "max_input_tokens",
        "max_input_tokens:",
    );
    refused(
        &send(&gw, &say("gpt-4o", "tell me about project NIGHTINGALE")),
        403,
        "banned_phrase",
        "banned_phrase:Project Nightingale",
    );
    refused(
        &send(
            &gw,
            &say("gpt-4o", "my key is sk-abcdefghijklmnopqrstuvwxyz"),
        ),
        403,
        "banned_regex",
        "banned_regex:",
    );
    refused(
        &send(&gw, &say("gpt-4o", "mail bob@example.com")),
        403,
        "pii",
        "pii:email",
    );
    refused(
        &send(&gw, &say("gpt-4o", "ssn 123-45-6789")),
        403,
        "pii",
        "pii:ssn",
    );
    refused(
        &send(&gw, &say("gpt-4o", "card 4111 1111 1111 1111")),
        403,
        "pii",
        "pii:card",
    );
    refused(
        &send(
            &gw,
            &json!({"model": "gpt-4o", "messages": [{"content": "no role"}]}),
        ),
        400,
        "invalid_schema",
        "schema:",
    );
    assert_eq!(m.requests(), 0, "nothing refused reached the backend");
    // Nine refusals and rpm 3: all three allowed requests still pass.
    for _ in 0..3 {
        let r = send(&gw, &say("gpt-4o-mini", "hello"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        send(&gw, &say("gpt-4o-mini", "hello")).status,
        429,
        "rpm spent by allowed ones only"
    );
}

#[test]
fn banned_phrase_at_the_end_of_a_1_mib_body() {
    let m = Mock::start();
    let gw = Gateway::start(&cfg(
        &m,
        json!({"banned_phrases": ["forbidden words"]}),
        json!([]),
    ));
    let mut text = "lorem ipsum ".repeat((1 << 20) / 12);
    text.push_str("FORBIDDEN words");
    let r = send(&gw, &say("gpt-4o", &text));
    refused(&r, 403, "banned_phrase", "banned_phrase:forbidden words");
    let ok = send(&gw, &say("gpt-4o", &"lorem ipsum ".repeat((1 << 20) / 12)));
    assert_eq!(ok.status, 200);
}

#[test]
fn a_rules_guardrails_replace_the_keys() {
    let m = Mock::start();
    let gw = Gateway::start(&cfg(
        &m,
        json!({"banned_phrases": ["keyphrase"]}),
        json!([{"model_prefix": "rule-", "backend": "m", "guardrails": {"banned_phrases": ["rulephrase"]}}]),
    ));
    assert_eq!(send(&gw, &say("rule-model", "keyphrase")).status, 200);
    refused(
        &send(&gw, &say("rule-model", "rulephrase")),
        403,
        "banned_phrase",
        "banned_phrase:rulephrase",
    );
    refused(
        &send(&gw, &say("gpt-4o", "keyphrase")),
        403,
        "banned_phrase",
        "keyphrase",
    );
    assert_eq!(send(&gw, &say("gpt-4o", "rulephrase")).status, 200);
    // Rule guardrails apply without keys too.
    let open = Gateway::start(
        &json!({
            "backends": [{"name": "m", "base_url": m.v1()}],
            "virtual_keys": [],
            "router": {"default_backends": [{"backend": "m"}],
                       "rules": [{"model_prefix": "a", "backend": "m", "guardrails": {"deny_models": ["*"]}}]}
        })
        .to_string(),
    );
    let r = post(&open.url("/v1/chat/completions"), &say("any", "x"), &[]);
    assert_eq!(r.status, 403);
}

#[test]
fn invalid_regexes_fail_startup_and_admin_changes_naming_the_field() {
    let m = Mock::start();
    let dir = std::env::temp_dir().join(format!("ditto-guard-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = write_file(
        &dir,
        "bad.json",
        &cfg(&m, json!({"banned_regexes": ["ok", "("]}), json!([])),
    );
    let run = run_cli(
        &[path.to_str().expect("path"), "--listen", "127.0.0.1:0"],
        &[],
        &[],
    );
    assert!(!run.status.success());
    assert!(
        run.stderr
            .contains("virtual_keys[0].guardrails.banned_regexes[1]"),
        "{}",
        run.stderr
    );
    let path = write_file(
        &dir,
        "bad-rule.json",
        &cfg(
            &m,
            json!({}),
            json!([{"model_prefix": "x", "backend": "m", "guardrails": {"banned_regexes": ["["]}}]),
        ),
    );
    let run = run_cli(
        &[path.to_str().expect("path"), "--listen", "127.0.0.1:0"],
        &[],
        &[],
    );
    assert!(!run.status.success());
    assert!(
        run.stderr
            .contains("router.rules[0].guardrails.banned_regexes[0]"),
        "{}",
        run.stderr
    );

    let gw = Gateway::builder(&cfg(&m, json!({}), json!([])))
        .args(&["--admin-token", ADMIN])
        .start();
    let r = crate::harness::into_resp_pub(
        agent()
            .post(&gw.url("/admin/keys"))
            .header("authorization", &format!("Bearer {ADMIN}"))
            .send_json(
                json!({"id": "k2", "token": "sk-k2", "guardrails": {"banned_regexes": ["("]}}),
            ),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("guardrails.banned_regexes[0]"),
        "{}",
        r.text()
    );
    // A valid one is enforced at once.
    let r = crate::harness::into_resp_pub(
        agent()
            .post(&gw.url("/admin/keys"))
            .header("authorization", &format!("Bearer {ADMIN}"))
            .send_json(
                json!({"id": "k3", "token": "sk-k3", "guardrails": {"deny_models": ["gpt-*"]}}),
            ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post(
        &gw.url("/v1/chat/completions"),
        &say("gpt-4o", "x"),
        &[("authorization", "Bearer sk-k3")],
    );
    assert_eq!(r.status, 403);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `multipart/form-data` upload (as the OpenAI SDKs send audio and image edits) to the mock's
/// echo endpoint.
fn upload(gw: &Gateway, model: &str, prompt: &str, file: &[u8], close: bool) -> Resp {
    let mut body = Vec::new();
    body.extend_from_slice(
        b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\
          Content-Type: audio/mpeg\r\n\r\n",
    );
    body.extend_from_slice(file);
    for (name, value) in [("model", model), ("prompt", prompt)] {
        body.extend_from_slice(
            format!(
                "\r\n--b0undary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}"
            )
            .as_bytes(),
        );
    }
    if close {
        body.extend_from_slice(b"\r\n--b0undary--\r\n");
    }
    send_form(gw, &body)
}

fn send_form(gw: &Gateway, body: &[u8]) -> Resp {
    crate::harness::into_resp_pub(
        agent()
            .post(&gw.url("/v1/echo"))
            .header("authorization", &format!("Bearer {TOKEN}"))
            .header("content-type", "multipart/form-data; boundary=b0undary")
            .send(body),
    )
}

#[test]
fn a_rules_guardrails_police_uploads_of_a_key_without_its_own() {
    let mock = Mock::start();
    let config = json!({
        "backends": [{"name": "m", "base_url": mock.v1()}],
        "virtual_keys": [{"id": "plain", "token": TOKEN}],
        "router": {"default_backends": [{"backend": "m"}],
                   "rules": [{"model_prefix": "whisper", "backend": "m",
                              "guardrails": {"deny_models": ["whisper-2*"]}}]}
    })
    .to_string();
    let gw = Gateway::start(&config);
    assert_eq!(upload(&gw, "whisper-1", "hi", b"x", true).status, 200);
    let r = upload(&gw, "whisper-2-large", "hi", b"x", true);
    refused(&r, 403, "deny_model", "deny_model:whisper-2*");
    // Unreadable, or read differently by different parsers: refused even though no guardrails
    // of the key apply and no rule matched (the model could not be known).
    let r = upload(&gw, "whisper-2-large", "hi", b"x", false);
    refused(&r, 400, "invalid_multipart", "multipart:Malformed");
    let twice = b"--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\
                  \r\n--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-2\
                  \r\n--b0undary--\r\n";
    refused(
        &send_form(&gw, twice),
        400,
        "invalid_multipart",
        "DuplicateField",
    );
    assert_eq!(mock.requests(), 1, "refusals never reach the upstream");
}

#[test]
fn uploads_are_policed_by_their_form_fields_and_forwarded_whole() {
    let mock = Mock::start();
    let config = cfg(
        &mock,
        json!({"allow_models": ["whisper*"], "banned_phrases": ["nightingale"]}),
        json!([]),
    );
    let gw = Gateway::builder(&config).start();
    // File parts are not text: a banned phrase inside the audio is no violation.
    let audio = b"ID3\x00\xff nightingale \r\n-- not a boundary";
    let ok = upload(&gw, "whisper-1", "a meeting", audio, true);
    assert_eq!(ok.status, 200, "{}", ok.text());
    let echo = ok.json();
    let headers = echo["headers"].as_array().cloned().unwrap_or_default();
    assert!(
        headers
            .iter()
            .any(|h| h[1] == "multipart/form-data; boundary=b0undary"),
        "{echo}"
    );
    assert!(
        echo["body"]
            .as_str()
            .is_some_and(|b| b.contains("a meeting")
                && b.contains("name=\"model\"")
                && b.ends_with("--b0undary--\r\n")),
        "{echo}"
    );
    assert_eq!(mock.requests(), 1);

    let r = upload(&gw, "gpt-4o-transcribe", "a meeting", audio, true);
    refused(
        &r,
        403,
        "model_not_allowed",
        "model_not_allowed:gpt-4o-transcribe",
    );
    let r = upload(&gw, "whisper-1", "project NIGHTINGALE notes", audio, true);
    refused(&r, 403, "banned_phrase", "banned_phrase:nightingale");
    // A form the gateway cannot read is refused, not waved through.
    let r = upload(&gw, "gpt-4o-transcribe", "x", audio, false);
    refused(&r, 400, "invalid_multipart", "multipart:Malformed");
    assert_eq!(mock.requests(), 1, "refusals never reach the upstream");
}
