use serde_json::json;

use super::*;

fn g(v: serde_json::Value) -> Guardrails {
    Guardrails::from_json(&v).expect("valid guardrails")
}

fn chat(content: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}],
    }))
    .expect("json")
}

fn reason(r: Result<(), Violation>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(v) => v.reason,
    }
}

#[test]
fn config_types_are_checked_and_name_the_field() {
    let bad = [
        (json!([]), "expected an object, found an array"),
        (
            json!({"allow_models": "x"}),
            "allow_models: expected an array of strings, found a string",
        ),
        (
            json!({"deny_models": ["a", 3]}),
            "deny_models[1]: expected a string, found a number",
        ),
        (
            json!({"max_input_tokens": -1}),
            "max_input_tokens: expected a non-negative integer, found a number",
        ),
        (
            json!({"max_input_tokens": "10"}),
            "max_input_tokens: expected a non-negative integer, found a string",
        ),
        (
            json!({"block_pii": "yes"}),
            "block_pii: expected true or false, found a string",
        ),
        (
            json!({"validate_schema": 1}),
            "validate_schema: expected true or false, found a number",
        ),
    ];
    for (v, want) in bad {
        assert_eq!(
            Guardrails::from_json(&v).err().as_deref(),
            Some(want),
            "{v}"
        );
    }
    assert!(Guardrails::from_json(&json!(null))
        .expect("null")
        .is_empty());
    assert!(
        Guardrails::from_json(&json!({"unknown": 1, "max_input_tokens": null}))
            .expect("unknown keys are left to the config layer")
            .is_empty()
    );
}

#[test]
fn invalid_regex_fails_naming_index_and_pattern() {
    let err = Guardrails::from_json(&json!({"banned_regexes": ["ok+", "", "(unclosed"]}))
        .expect_err("invalid");
    assert!(
        err.starts_with("banned_regexes[2]: invalid regex \"(unclosed\": "),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn deny_first_then_allow_exact_or_prefix() {
    let gr = g(json!({
        "allow_models": ["gpt-4*", "claude-3-opus", " "],
        "deny_models": ["gpt-4-32k*"],
    }));
    let check = |m: &str| reason(gr.check(Endpoint::Other, Some(m), b""));
    assert_eq!(check("gpt-4o"), "ok");
    assert_eq!(check("claude-3-opus"), "ok");
    assert_eq!(
        check("claude-3-opus-x"),
        "model_not_allowed:claude-3-opus-x"
    );
    assert_eq!(check("gpt-4-32k-0613"), "deny_model:gpt-4-32k*");
    assert_eq!(check("  "), "ok", "a blank model is not policed");
    let v = gr
        .check(Endpoint::Other, Some("llama"), b"")
        .expect_err("refused");
    assert_eq!((v.status, v.code), (403, "model_not_allowed"));
    let e = v.to_error();
    assert_eq!(e.etype, ErrorType::Policy);
    assert_eq!(e.message, "guardrail rejected: model_not_allowed:llama");

    let star = g(json!({"deny_models": ["*"]}));
    assert_eq!(
        reason(star.check(Endpoint::Other, Some("anything"), b"")),
        "deny_model:*"
    );
    let long = "m".repeat(10_000);
    let r = reason(gr.check(Endpoint::Other, Some(&long), b""));
    assert_eq!(r.len(), "model_not_allowed:".len() + MAX_REASON_MODEL);
}

#[test]
fn every_model_in_the_body_is_checked() {
    let gr = g(json!({"deny_models": ["bad*"]}));
    // Duplicate keys: serde derives refuse them and Python upstreams take the last one.
    let body = br#"{"model":"good","messages":[],"model":"bad-1"}"#;
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, body)),
        "deny_model:bad*"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, Some("good"), body)),
        "deny_model:bad*"
    );
    let allow = g(json!({"allow_models": ["good"]}));
    assert_eq!(
        reason(allow.check(Endpoint::Chat, None, br#"{"messages":[]}"#)),
        "model_not_allowed:(none)"
    );
    assert_eq!(
        reason(allow.check(Endpoint::Other, None, b"")),
        "ok",
        "a GET without a model is not a model request"
    );
}

#[test]
fn banned_phrases_case_insensitive_in_text_fields_only() {
    let gr = g(json!({"banned_phrases": ["Secret Plan", "  ", "ÉCOLE"]}));
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("our sEcReT pLaN is"))),
        "banned_phrase:Secret Plan"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("à l'école"))),
        "banned_phrase:ÉCOLE"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("secret  plan"))),
        "ok"
    );
    // Escapes are decoded before scanning.
    let escaped = br#"{"model":"m","messages":[{"role":"user","content":"secret\u0020plan"}]}"#;
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, escaped)),
        "banned_phrase:Secret Plan"
    );
    // Not text: keys, model names, tool schemas, image data, metadata.
    let not_text = serde_json::to_vec(&json!({
        "model": "secret plan",
        "secret plan": 1,
        "messages": [{"role": "user", "name": "secret plan", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,secret plan"}}]}],
        "tools": [{"type": "function", "function": {"description": "secret plan"}}],
        "metadata": {"note": "secret plan"},
    }))
    .expect("json");
    assert_eq!(reason(gr.check(Endpoint::Chat, None, &not_text)), "ok");
    for (endpoint, body) in [
        (
            Endpoint::Completions,
            json!({"model": "m", "prompt": ["x", "the secret plan"]}),
        ),
        (
            Endpoint::Embeddings,
            json!({"model": "m", "input": "secret plan"}),
        ),
        (
            Endpoint::Responses,
            json!({"model": "m", "instructions": "SECRET PLAN", "input": "hi"}),
        ),
        (
            Endpoint::Responses,
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "secret plan"}]}]}),
        ),
        (
            Endpoint::Other,
            json!({"model": "m", "system": [{"type": "text", "text": "secret plan"}]}),
        ),
        (
            Endpoint::Other,
            json!({"query": "secret plan", "documents": ["a"]}),
        ),
    ] {
        let b = serde_json::to_vec(&body).expect("json");
        assert_eq!(
            reason(gr.check(endpoint, None, &b)),
            "banned_phrase:Secret Plan",
            "{body}"
        );
    }
}

#[test]
fn banned_regexes_are_case_insensitive_and_named() {
    let gr = g(json!({"banned_regexes": ["sk-[a-z0-9]{8}", "(?-i)EXACT"]}));
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("key SK-ABCD1234 here"))),
        "banned_regex:sk-[a-z0-9]{8}"
    );
    assert_eq!(reason(gr.check(Endpoint::Chat, None, &chat("exact"))), "ok");
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("EXACT"))),
        "banned_regex:(?-i)EXACT"
    );
}

#[test]
fn verbose_regexes_with_comments_do_not_swallow_others() {
    let gr = g(json!({"banned_regexes": ["(?x) foo # a comment", "bar"]}));
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("BAR"))),
        "banned_regex:bar"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("Foo"))),
        "banned_regex:(?x) foo # a comment"
    );
    assert_eq!(reason(gr.check(Endpoint::Chat, None, &chat("baz"))), "ok");
}

#[test]
fn phrases_across_fold_windows_and_very_long_phrases() {
    let gr = g(json!({"banned_phrases": ["needle in a haystack"]}));
    for offset in [
        0, 1, 462, 463, 480, 8_180, 8_185, 8_191, 8_192, 12_000, 16_370, 20_000,
    ] {
        let mut text = "x".repeat(offset);
        text.push_str("Needle In A Haystack");
        text.push_str(&"y".repeat(30));
        assert_eq!(
            reason(gr.check(Endpoint::Chat, None, &chat(&text))),
            "banned_phrase:needle in a haystack",
            "offset {offset}"
        );
    }
    let long = "ab".repeat(3_000);
    let gr = g(json!({"banned_phrases": [long.clone()]}));
    let text = format!("zz{}zz", long.to_uppercase());
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat(&text))),
        format!("banned_phrase:{long}")
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat(&long[1..]))),
        "ok"
    );
}

#[test]
fn pii_in_text_but_not_in_images_or_model() {
    let gr = g(json!({"block_pii": true}));
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("write to a@b.com"))),
        "pii:email"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("ssn 123-45-6789"))),
        "pii:ssn"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("4111 1111 1111 1111"))),
        "pii:card"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat("ssn 666-45-6789"))),
        "ok"
    );
    let image = serde_json::to_vec(&json!({
        "model": "a@b.com",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,4111111111111111 a@b.com"}}]}],
        "user": "123-45-6789",
    }))
    .expect("json");
    assert_eq!(reason(gr.check(Endpoint::Chat, None, &image)), "ok");
}

#[test]
fn max_input_tokens_uses_the_estimate() {
    let gr = g(json!({"max_input_tokens": 10}));
    assert_eq!(reason(gr.check(Endpoint::Chat, None, &chat("short"))), "ok");
    let r = reason(gr.check(Endpoint::Chat, None, &chat(&"word ".repeat(20))));
    assert_eq!(r, "max_input_tokens:26>10");
    // Token arrays count one per number.
    let tokens = serde_json::to_vec(&json!({"model": "e", "input": vec![1; 11]})).expect("json");
    assert_eq!(
        reason(gr.check(Endpoint::Embeddings, None, &tokens)),
        "max_input_tokens:11>10"
    );
    assert_eq!(estimate_input_tokens(&chat("abcd")), Some(2));
    assert_eq!(estimate_input_tokens(b"nope"), None);
}

#[test]
fn token_estimate_by_script() {
    let est = |s: &str| {
        let mut c = TokenCounts::default();
        c.add(s);
        c.estimate() - 1 // minus the per-text framing token
    };
    assert_eq!(est(""), 0);
    assert_eq!(est("abcdefgh"), 2);
    assert_eq!(est("abcdefghi"), 3);
    assert_eq!(est("привет"), 3, "6 Cyrillic letters, 2 per token");
    assert_eq!(est("你好世界"), 4, "one per CJK character");
    assert_eq!(est("👍"), 2);
}

#[test]
fn schema_rules() {
    let gr = g(json!({"validate_schema": true}));
    let cases: &[(Endpoint, serde_json::Value, &str)] = &[
        (
            Endpoint::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            "ok",
        ),
        (
            Endpoint::Chat,
            json!({"model": "m", "messages": [{"role": "assistant", "content": null, "tool_calls": []}]}),
            "ok",
        ),
        (Endpoint::Chat, json!({"messages": []}), "schema:model"),
        (
            Endpoint::Chat,
            json!({"model": " ", "messages": []}),
            "schema:model",
        ),
        (
            Endpoint::Chat,
            json!({"model": 3, "messages": []}),
            "schema:model",
        ),
        (Endpoint::Chat, json!({"model": "m"}), "schema:messages"),
        (
            Endpoint::Chat,
            json!({"model": "m", "messages": "hi"}),
            "schema:messages",
        ),
        (
            Endpoint::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}, {"content": "y"}]}),
            "schema:messages[1].role",
        ),
        (
            Endpoint::Chat,
            json!({"model": "m", "messages": [{"role": "user"}]}),
            "schema:messages[0].content",
        ),
        (
            Endpoint::Chat,
            json!({"model": "m", "messages": ["hi"]}),
            "schema:messages[0]",
        ),
        (Endpoint::Chat, json!([1]), "schema:body_not_object"),
        (
            Endpoint::Embeddings,
            json!({"model": "m", "input": ["a"]}),
            "ok",
        ),
        (Endpoint::Embeddings, json!({"model": "m"}), "schema:input"),
        (
            Endpoint::Embeddings,
            json!({"model": "m", "input": {"a": 1}}),
            "schema:input",
        ),
        (
            Endpoint::Responses,
            json!({"model": "m", "input": "hi"}),
            "ok",
        ),
        (
            Endpoint::Responses,
            json!({"model": "m", "input": null}),
            "schema:input",
        ),
        (
            Endpoint::Completions,
            json!({"model": "m", "prompt": "hi"}),
            "ok",
        ),
        (
            Endpoint::Completions,
            json!({"model": "m"}),
            "schema:prompt",
        ),
        (Endpoint::Other, json!({"anything": true}), "ok"),
    ];
    for (endpoint, body, want) in cases {
        let b = serde_json::to_vec(body).expect("json");
        let r = gr.check(*endpoint, None, &b);
        if let Err(v) = &r {
            assert_eq!((v.status, v.etype), (400, ErrorType::InvalidRequest));
        }
        assert_eq!(reason(r), *want, "{endpoint:?} {body}");
    }
}

#[test]
fn bodies_that_cannot_be_checked_fail_closed() {
    let gr = g(json!({"banned_phrases": ["x"]}));
    for body in [
        &b""[..],
        b"not json",
        b"{\"model\":",
        b"{\"input\":\"\\ud800 x\"}",
    ] {
        let v = gr.check(Endpoint::Chat, None, body).expect_err("refused");
        assert_eq!(
            (v.status, v.code, v.reason.as_str()),
            (400, "invalid_json", "schema:invalid_json")
        );
    }
    // Non-JSON bodies of other endpoints (multipart, audio) are not JSON text to police.
    assert_eq!(
        reason(gr.check(Endpoint::Other, None, b"--boundary\r\n x")),
        "ok"
    );
    assert_eq!(reason(gr.check(Endpoint::Other, None, b"")), "ok");
    assert_eq!(
        reason(gr.check(Endpoint::Other, None, b" {\"prompt\": \"x\"")),
        "schema:invalid_json"
    );
}

#[test]
fn no_rules_means_no_parsing() {
    let gr = Guardrails::default();
    assert!(gr.is_empty());
    assert_eq!(
        reason(gr.check(Endpoint::Chat, Some("m"), b"not json at all")),
        "ok"
    );
}

#[test]
fn precedence_model_then_schema_then_tokens_then_text() {
    let gr = g(json!({
        "deny_models": ["bad"], "validate_schema": true, "max_input_tokens": 3,
        "banned_phrases": ["boom"], "block_pii": true,
    }));
    let body = |model: &str, text: &str| {
        serde_json::to_vec(
            &json!({"model": model, "messages": [{"role": "user", "content": text}]}),
        )
        .expect("json")
    };
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &body("bad", "boom boom boom boom"))),
        "deny_model:bad"
    );
    assert_eq!(
        reason(gr.check(
            Endpoint::Chat,
            None,
            br#"{"model":"m","messages":[{"content":"boom"}]}"#
        )),
        "schema:messages[0].role"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &body("m", "boom boom boom boom"))),
        "max_input_tokens:6>3"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &body("m", "boom"))),
        "banned_phrase:boom"
    );
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &body("m", "a@b.io"))),
        "pii:email"
    );
}

#[test]
fn endpoint_from_path() {
    assert_eq!(Endpoint::from_path("/v1/chat/completions"), Endpoint::Chat);
    assert_eq!(
        Endpoint::from_path("/v1/chat/completions/?x=1"),
        Endpoint::Chat
    );
    assert_eq!(Endpoint::from_path("/v1/embeddings"), Endpoint::Embeddings);
    assert_eq!(Endpoint::from_path("/v1/responses"), Endpoint::Responses);
    assert_eq!(
        Endpoint::from_path("/v1/responses/resp_1/cancel"),
        Endpoint::Other
    );
    assert_eq!(
        Endpoint::from_path("/v1/completions"),
        Endpoint::Completions
    );
    assert_eq!(Endpoint::from_path("/v1/models"), Endpoint::Other);
}

#[test]
fn phrase_at_the_end_of_a_large_body_is_found() {
    let gr = g(
        json!({"banned_phrases": ["forbidden words"], "block_pii": true, "max_input_tokens": 10_000_000}),
    );
    let mut text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(18_000);
    assert_eq!(reason(gr.check(Endpoint::Chat, None, &chat(&text))), "ok");
    text.push_str("FORBIDDEN WORDS");
    assert_eq!(
        reason(gr.check(Endpoint::Chat, None, &chat(&text))),
        "banned_phrase:forbidden words"
    );
}

#[test]
fn never_panics_on_arbitrary_bodies() {
    let gr = g(json!({
        "allow_models": ["a*"], "max_input_tokens": 5, "banned_phrases": ["x"],
        "banned_regexes": ["y+"], "block_pii": true, "validate_schema": true,
    }));
    // A cheap deterministic generator over JSON-ish bytes (no rand dependency).
    let alphabet = b"{}[]\":,\\u0123456789abcdefxy@.- \t\n\xc3\xa9\xff";
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..2_000usize {
        let mut body = Vec::with_capacity(len % 64);
        for _ in 0..len % 64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            body.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        for ep in [Endpoint::Chat, Endpoint::Other] {
            let _ = gr.check(ep, Some("a"), &body);
        }
    }
}
