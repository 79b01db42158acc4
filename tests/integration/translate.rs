//! Issue 6 end to end: translation backends (Anthropic, Gemini) for chat completions, the
//! Responses shim, Anthropic `/v1/messages` inbound, provider error mapping, faults mid-stream
//! and budgets settled on translated usage. The mock upstream speaks all three wire formats.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{agent, chat, get, post, raw_post, run_cli, sse_data, Gateway, Mock, Resp};

const ADMIN: &str = "adm-secret";

/// One OpenAI passthrough backend (the default), one Anthropic and one Gemini backend, all on
/// `mock`; `claude-*` goes to Anthropic, `gemini-2.0-flash` (exact) to Gemini.
fn cfg(mock: &Mock, keys: Value) -> String {
    json!({
        "backends": [
            {"name": "oai", "base_url": mock.v1()},
            {"name": "claude", "provider": "anthropic",
             "provider_config": {"base_url": mock.url, "api_key": "sk-ant-test", "models": ["claude-test"]}},
            {"name": "gem", "provider": "gemini",
             "provider_config": {"base_url": mock.url, "api_key": "g-test"}},
        ],
        "virtual_keys": keys,
        "router": {
            "default_backends": [{"backend": "oai"}],
            "rules": [
                {"model_prefix": "claude-", "backend": "claude"},
                {"model_prefix": "gemini-2.0-flash", "exact": true, "backend": "gem"},
            ],
        },
    })
    .to_string()
}

fn start(mock: &Mock) -> Gateway {
    Gateway::start(&cfg(mock, json!([])))
}

fn url(gw: &Gateway, p: &str) -> String {
    gw.url(p)
}

/// The JSON payloads of an SSE body (`[DONE]` excluded), with or without `event:` lines.
fn events(r: &Resp) -> Vec<Value> {
    r.text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .filter(|d| d != "[DONE]")
        .map(|d| serde_json::from_str(&d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// The `event:` names of an SSE body, in order.
fn event_names(r: &Resp) -> Vec<String> {
    r.text()
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_string)
        .collect()
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn spent(gw: &Gateway, scope: &str) -> u64 {
    let r = get(
        &gw.url("/admin/budgets"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["scope"] == scope && b["unit"] == "tokens")
        .and_then(|b| b["spent"].as_u64())
        .unwrap_or_else(|| panic!("no {scope} budget in {}", r.text()))
}

#[test]
fn translate_chat_non_stream_through_anthropic_and_gemini() {
    let mock = Mock::start();
    let gw = start(&mock);
    for (model, backend) in [("claude-test", "claude"), ("gemini-2.0-flash", "gem")] {
        let r = post(&url(&gw, "/v1/chat/completions"), &chat(model, false), &[]);
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert_eq!(r.header("x-ditto-translation"), Some(backend));
        assert_eq!(r.header("x-ditto-backend"), Some(backend));
        assert!(r.header("x-ditto-overhead-us").is_some(), "{model}");
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], model);
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "tok0 tok1 tok2 tok3 tok4 "
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0));
    }
    // Anthropic's cache reads are reported as OpenAI cached tokens.
    let r = post(
        &url(&gw, "/v1/chat/completions"),
        &chat("claude-test", false),
        &[],
    );
    assert_eq!(
        r.json()["usage"]["prompt_tokens_details"]["cached_tokens"],
        3
    );
}

#[test]
fn translate_chat_stream_text_through_anthropic_and_gemini() {
    let mock = Mock::start();
    let gw = start(&mock);
    for model in ["claude-test", "gemini-2.0-flash"] {
        let r = post(&url(&gw, "/v1/chat/completions"), &chat(model, true), &[]);
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert!(r
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")));
        assert!(r.header("x-ditto-translation").is_some());
        assert!(r.header("x-ditto-overhead-us").is_some(), "{model}");
        let data = sse_data(&r.text());
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{model}");
        let evs = events(&r);
        let text: String = evs
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 ", "{model}");
        assert!(evs.iter().all(|e| e["object"] == "chat.completion.chunk"));
        // The client did not ask for usage: no usage-only chunk.
        assert!(evs
            .iter()
            .all(|e| e.get("usage").is_none_or(Value::is_null)));
        // It did here: the last chunk carries usage and no choices.
        let mut body = chat(model, true);
        body["stream_options"] = json!({"include_usage": true});
        let r = post(&url(&gw, "/v1/chat/completions"), &body, &[]);
        let evs = events(&r);
        let last = evs.last().expect("events");
        assert_eq!(last["choices"], json!([]), "{model}: {last}");
        assert!(last["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0));
    }
}

#[test]
fn translate_tool_call_in_many_small_deltas_after_text() {
    let mock = Mock::start();
    let gw = start(&mock);
    for model in ["claude-test", "gemini-2.0-flash"] {
        let mut body = chat(model, true);
        body["tools"] = tools();
        let r = post(&url(&gw, "/v1/chat/completions"), &body, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let evs = events(&r);
        let mut text = String::new();
        let mut args = String::new();
        let mut arg_deltas = 0;
        let mut text_after_tool = false;
        let mut name = None;
        for e in &evs {
            let d = &e["choices"][0]["delta"];
            if let Some(t) = d["content"].as_str() {
                text.push_str(t);
                text_after_tool |= name.is_some() && !t.is_empty();
            }
            if let Some(calls) = d["tool_calls"].as_array() {
                for c in calls {
                    assert_eq!(c["index"], 0);
                    if let Some(n) = c["function"]["name"].as_str() {
                        name = Some(n.to_string());
                    }
                    if let Some(a) = c["function"]["arguments"].as_str() {
                        if !a.is_empty() {
                            arg_deltas += 1;
                        }
                        args.push_str(a);
                    }
                }
            }
        }
        assert_eq!(name.as_deref(), Some("get_weather"), "{model}");
        assert!(!text_after_tool, "text then tool, in order");
        assert!(text.starts_with("tok0"), "{model}: {text}");
        let parsed: Value = serde_json::from_str(&args).expect("arguments are JSON");
        assert_eq!(parsed, json!({"city": "Paris", "days": 3}), "{model}");
        if model.starts_with("claude") {
            // The mock streams the input in 5-byte input_json_deltas: each is its own chunk.
            assert!(arg_deltas >= 5, "{arg_deltas} argument deltas");
        }
        let finish = evs
            .iter()
            .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
            .next_back();
        assert_eq!(finish, Some("tool_calls"), "{model}");
    }
    // Non-stream: the text and the call in one message.
    let mut body = chat("claude-test", false);
    body["tools"] = tools();
    let v = post(&url(&gw, "/v1/chat/completions"), &body, &[]).json();
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert!(msg["content"]
        .as_str()
        .is_some_and(|t| t.starts_with("tok0")));
}

#[test]
fn translate_error_event_mid_stream_reaches_the_client_and_the_budget_settles() {
    let mock = Mock::start();
    let keys = json!([{"id": "k", "token": "sk-k", "budget": {"total_tokens": 100000}}]);
    let gw = Gateway::builder(&cfg(&mock, keys))
        .args(&["--admin-token", ADMIN])
        .start();
    for model in ["claude-test", "gemini-2.0-flash"] {
        let r = post(
            &url(&gw, "/v1/chat/completions"),
            &chat(model, true),
            &[
                ("authorization", "Bearer sk-k"),
                ("x-mock-fault", "error-event-mid-stream"),
            ],
        );
        assert_eq!(r.status, 200);
        let evs = events(&r);
        let last = evs.last().expect("events");
        assert!(last["error"]["message"].is_string(), "{model}: {last}");
        assert_eq!(last["error"]["type"], "api_error", "{model}: {last}");
        assert!(
            evs.iter()
                .all(|e| e["choices"][0]["finish_reason"].is_null()),
            "a failed stream never looks finished"
        );
    }
    eventually("settlement", || (spent(&gw, "key:k") > 0).then_some(()));
}

#[test]
fn translate_provider_errors_map_to_openai_statuses() {
    let mock = Mock::start();
    let gw = start(&mock);
    let cases = [
        ("claude-test", "400", 400, "invalid_request_error"),
        ("claude-test", "401", 401, "authentication_error"),
        ("claude-test", "429", 429, "rate_limit_error"),
        ("claude-test", "529", 503, "api_error"),
        ("gemini-2.0-flash", "429", 429, "rate_limit_error"),
        ("gemini-2.0-flash", "403", 403, "permission_error"),
        ("gemini-2.0-flash", "500", 500, "api_error"),
    ];
    for (model, mock_status, status, etype) in cases {
        let r = post(
            &url(&gw, "/v1/chat/completions"),
            &chat(model, false),
            &[("x-mock-status", mock_status)],
        );
        assert_eq!(r.status, status, "{model} {mock_status}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["type"], etype, "{model} {mock_status}: {e}");
        assert!(e["error"]["message"].is_string());
        assert!(r.header("x-ditto-translation").is_some());
    }
}

#[test]
fn translate_invalid_image_url_and_inexpressible_requests_are_400_naming_the_field() {
    let mock = Mock::start();
    let gw = start(&mock);
    let before = mock.requests();
    let mut body = chat("claude-test", false);
    body["messages"] = json!([{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.png"}}]}]);
    let r = post(&url(&gw, "/v1/chat/completions"), &body, &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["param"], "messages[0].content[1].image_url.url");
    assert_eq!(e["error"]["type"], "invalid_request_error");

    let mut body = chat("claude-test", false);
    body["n"] = json!(2);
    let r = post(&url(&gw, "/v1/chat/completions"), &body, &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "n");
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("n")));
    // A base64 image goes through.
    let mut body = chat("gemini-2.0-flash", false);
    body["messages"] = json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]);
    let r = post(&url(&gw, "/v1/chat/completions"), &body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    // Refused requests never reached the mock.
    assert_eq!(mock.requests(), before + 1);
    // Endpoints the provider has no equivalent for: 404 naming why.
    let r = post(
        &url(&gw, "/v1/embeddings"),
        &json!({"model": "claude-test", "input": "x"}),
        &[],
    );
    assert_eq!(r.status, 404);
    assert!(r.text().contains("has no equivalent"), "{}", r.text());
}

#[test]
fn translate_models_lists_the_translation_models() {
    let mock = Mock::start();
    let gw = start(&mock);
    let r = get(&url(&gw, "/v1/models"), &[]);
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    for id in ["gpt-4o", "claude-test", "gemini-2.0-flash"] {
        assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
    }
    let r = get(&url(&gw, "/v1/models/claude-test"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["owned_by"], "anthropic");
}

#[test]
fn translate_responses_shim_non_stream_and_stream() {
    let mock = Mock::start();
    let gw = start(&mock);
    // The mock answers /v1/responses with 404: the gateway retries as chat completions.
    for model in ["gpt-4o", "claude-test", "gemini-2.0-flash"] {
        let body = json!({"model": model, "instructions": "be brief", "input": "hello",
                          "max_output_tokens": 50});
        let r = post(&url(&gw, "/v1/responses"), &body, &[]);
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert_eq!(
            r.header("x-ditto-shim"),
            Some("responses_via_chat_completions")
        );
        let v = r.json();
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["output_text"], "tok0 tok1 tok2 tok3 tok4 ", "{model}");
        assert!(v["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0));

        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        sbody["tools"] = json!([{"type": "function", "name": "get_weather",
                                 "parameters": {"type": "object"}}]);
        let r = post(&url(&gw, "/v1/responses"), &sbody, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-ditto-shim"),
            Some("responses_via_chat_completions")
        );
        let names = event_names(&r);
        assert_eq!(
            names.first().map(String::as_str),
            Some("response.created"),
            "{names:?}"
        );
        assert_eq!(names.last().map(String::as_str), Some("response.completed"));
        assert!(names.iter().any(|n| n == "response.output_text.delta"));
        assert!(names.iter().any(|n| n == "response.output_item.done"));
        if model != "gpt-4o" {
            assert!(
                names
                    .iter()
                    .any(|n| n == "response.function_call_arguments.delta"),
                "{model}: {names:?}"
            );
        }
        let done = events(&r).pop().expect("final");
        assert!(done["response"]["usage"]["total_tokens"].as_u64().is_some());
    }
}

#[test]
fn translate_responses_shim_always_skips_the_first_try() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &json!({
            "backends": [{"name": "oai", "base_url": mock.v1(),
                          "provider_config": {"responses_shim": "always"}}],
            "virtual_keys": [], "router": {"default_backends": [{"backend": "oai"}]}
        })
        .to_string(),
    );
    let before = mock.requests();
    let r = post(
        &url(&gw, "/v1/responses"),
        &json!({"model": "gpt-4o", "input": "hi"}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-ditto-shim"),
        Some("responses_via_chat_completions")
    );
    assert_eq!(
        mock.requests(),
        before + 1,
        "one upstream request, no 404 first"
    );
}

#[test]
fn translate_messages_inbound_stream_non_stream_and_count_tokens() {
    let mock = Mock::start();
    let keys = json!([{"id": "a", "token": "sk-a"}]);
    let gw = Gateway::start(&cfg(&mock, keys));
    let body = json!({"model": "gpt-4o", "max_tokens": 100, "system": "be brief",
                      "messages": [{"role": "user", "content": "hello"}]});
    for model in ["gpt-4o", "claude-test", "gemini-2.0-flash"] {
        let mut b = body.clone();
        b["model"] = json!(model);
        let r = post(&url(&gw, "/v1/messages"), &b, &[("x-api-key", "sk-a")]);
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["content"][0]["type"], "text");
        assert_eq!(v["content"][0]["text"], "tok0 tok1 tok2 tok3 tok4 ");
        assert_eq!(v["stop_reason"], "end_turn");
        assert!(v["usage"]["output_tokens"].as_u64().is_some_and(|t| t > 0));

        b["stream"] = json!(true);
        b["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        let r = post(&url(&gw, "/v1/messages"), &b, &[("x-api-key", "sk-a")]);
        assert_eq!(r.status, 200);
        let names = event_names(&r);
        assert_eq!(names.first().map(String::as_str), Some("message_start"));
        assert_eq!(names.last().map(String::as_str), Some("message_stop"));
        assert!(names.iter().any(|n| n == "content_block_delta"));
        assert!(names.iter().any(|n| n == "message_delta"));
        if model != "gpt-4o" {
            assert!(r.text().contains("input_json_delta"), "{model}");
        }
    }
    // count_tokens is answered by the gateway.
    let r = post(
        &url(&gw, "/v1/messages/count_tokens"),
        &json!({"model": "claude-test", "messages": [{"role": "user", "content": "hello there friend"}]}),
        &[("x-api-key", "sk-a")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["input_tokens"].as_u64().is_some_and(|n| n > 0));
    // Errors are Anthropic-shaped: a bad key, a bad request.
    let r = post(&url(&gw, "/v1/messages"), &body, &[("x-api-key", "wrong")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = post(
        &url(&gw, "/v1/messages"),
        &json!({"model": "claude-test"}),
        &[("x-api-key", "sk-a")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn translate_usage_settles_the_key_budget() {
    let mock = Mock::start();
    let keys = json!([{"id": "b", "token": "sk-b", "budget": {"total_tokens": 100000}}]);
    let gw = Gateway::builder(&cfg(&mock, keys))
        .args(&["--admin-token", ADMIN])
        .start();
    let auth = [("authorization", "Bearer sk-b")];
    let r = post(
        &url(&gw, "/v1/chat/completions"),
        &chat("claude-test", false),
        &auth,
    );
    assert_eq!(r.status, 200);
    let total = r.json()["usage"]["total_tokens"].as_u64().expect("total");
    eventually("non-stream settlement", || {
        (spent(&gw, "key:b") == total).then_some(())
    });
    // A stream settles on the converter's usage too, although the client saw none.
    let r = post(
        &url(&gw, "/v1/chat/completions"),
        &chat("claude-test", true),
        &auth,
    );
    assert_eq!(r.status, 200);
    eventually("stream settlement", || {
        (spent(&gw, "key:b") == 2 * total).then_some(())
    });
    // The Responses shim settles too.
    let r = post(
        &url(&gw, "/v1/responses"),
        &json!({"model": "claude-test", "input": "Say hello."}),
        &auth,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json()["usage"]["total_tokens"].as_u64().expect("total");
    eventually("shim settlement", || {
        (spent(&gw, "key:b") == 2 * total + t).then_some(())
    });
    // A refused request (400 before sending) costs nothing.
    let mut body = chat("claude-test", false);
    body["n"] = json!(3);
    assert_eq!(
        post(&url(&gw, "/v1/chat/completions"), &body, &auth).status,
        400
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(spent(&gw, "key:b"), 2 * total + t);
}

#[test]
fn translate_client_leaving_mid_stream_still_settles() {
    let mock = Mock::start();
    let keys = json!([{"id": "d", "token": "sk-d", "budget": {"total_tokens": 100000}}]);
    let gw = Gateway::builder(&cfg(&mock, keys))
        .args(&["--admin-token", ADMIN])
        .start();
    let mut c = gw.raw();
    let body = chat("claude-test", true).to_string();
    c.send(&raw_post(
        "/v1/chat/completions",
        &body,
        "authorization: Bearer sk-d\r\nx-mock-events: 5\r\nx-mock-delay-ms: 300\r\n",
    ));
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    drop(c);
    eventually("settlement after disconnect", || {
        (spent(&gw, "key:d") > 0).then_some(())
    });
}

#[test]
fn translate_unknown_provider_is_a_startup_error_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = crate::harness::write_file(
        dir.path(),
        "gw.json",
        &json!({"backends": [{"name": "x", "provider": "cohere", "base_url": "http://127.0.0.1:1"}],
                "virtual_keys": [], "router": {}})
        .to_string(),
    );
    let run = run_cli(&[p.to_str().expect("utf8")], &[], &[]);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("backends[0].provider") && run.stderr.contains("cohere"),
        "{}",
        run.stderr
    );
    let _ = agent();
}
