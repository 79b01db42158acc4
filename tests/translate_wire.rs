//! The translation layer against the mock upstream's real-format endpoints, over real sockets:
//! a request is translated, sent to the mock's Anthropic, Gemini or chat route, and the raw
//! answer (whole, or streamed and fed to the converter in small pieces) translated back.
//! Checks the converters and the mock's wire formats together, without the gateway.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ditto_gateway::translate::{anthropic, anthropic_inbound, gemini, responses};
use serde_json::{json, Value};

/// A running mock, killed on drop.
struct Mock {
    child: Child,
    url: String,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mock {
    fn start() -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args(["--events", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock-upstream");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("listening line");
        let url = line
            .trim()
            .strip_prefix("mock-upstream listening on ")
            .expect("listening line format")
            .to_string();
        Mock { child, url }
    }

    /// The mock's Anthropic Messages route.
    fn anthropic_url(&self) -> String {
        format!("{}{}", self.url, anthropic::MESSAGES_PATH)
    }
}

struct Resp {
    status: u16,
    /// The body as received, in the pieces the socket delivered (a cut stream keeps what came).
    pieces: Vec<Vec<u8>>,
}

impl Resp {
    fn body(&self) -> Vec<u8> {
        self.pieces.concat()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).expect("JSON body")
    }

    /// The body fed to a stream converter in the pieces it came in, then the end: all it
    /// produced.
    fn through<C>(
        &self,
        conv: &mut C,
        feed: fn(&mut C, &[u8]) -> Vec<u8>,
        finish: fn(&mut C) -> Vec<u8>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in &self.pieces {
            out.extend(feed(conv, piece));
        }
        out.extend(finish(conv));
        out
    }
}

fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build(),
    );
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send_json(body).expect("request sent");
    let status = r.status().as_u16();
    let mut reader = r.body_mut().as_reader();
    let mut pieces = Vec::new();
    loop {
        // Small reads, so converters see events split across pieces.
        let mut buf = vec![0u8; 37];
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.truncate(n);
                pieces.push(buf);
            }
        }
    }
    Resp { status, pieces }
}

const ANTHROPIC_HEADERS: &[(&str, &str)] = &[
    ("x-api-key", "sk-ant-test"),
    ("anthropic-version", anthropic::ANTHROPIC_VERSION),
];

fn chat_request(stream: bool, tools: bool) -> Value {
    let mut req = json!({
        "model": "client-model",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "weather in Paris"}],
    });
    if tools {
        req["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    }
    req
}

/// The OpenAI chunks of converted output, without `[DONE]`, and whether `[DONE]` ended it.
fn parse_chunks(out: &[u8]) -> (Vec<Value>, bool) {
    let text = std::str::from_utf8(out).expect("utf8");
    let mut done = false;
    let mut list = Vec::new();
    for e in text.split_terminator("\n\n") {
        let data = e.strip_prefix("data: ").expect("data frame");
        if data == "[DONE]" {
            done = true;
        } else {
            list.push(serde_json::from_str(data).expect("chunk JSON"));
        }
    }
    (list, done)
}

fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

fn tool_args_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                .and_then(Value::as_str)
        })
        .collect()
}

#[test]
fn anthropic_whole_answer_with_tool_use_and_cache_usage() {
    let mock = Mock::start();
    let body = anthropic::chat_to_messages(&chat_request(false, true), Some("claude-mock"))
        .expect("translates");
    let res = post(&mock.anthropic_url(), &body, ANTHROPIC_HEADERS);
    assert_eq!(res.status, 200);
    let chat = anthropic::messages_to_chat_response(&res.json(), "client-model").expect("back");
    let m = &chat["choices"][0]["message"];
    assert_eq!(m["content"], "tok0 tok1 tok2 tok3 ");
    assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(
            m["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .expect("str")
        )
        .expect("args"),
        json!({"city": "Paris", "days": 3})
    );
    assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
    // 5 words of input + 3 cache-read tokens.
    assert_eq!(chat["usage"]["prompt_tokens"], 8);
    assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    assert_eq!(chat["model"], "client-model");
}

#[test]
fn anthropic_stream_in_small_pieces_with_tool_argument_deltas() {
    let mock = Mock::start();
    let body = anthropic::chat_to_messages(&chat_request(true, true), Some("claude-mock"))
        .expect("translates");
    let res = post(&mock.anthropic_url(), &body, ANTHROPIC_HEADERS);
    assert_eq!(res.status, 200);
    let mut conv = anthropic::AnthropicStream::new("client-model", true);
    let out = res.through(
        &mut conv,
        anthropic::AnthropicStream::feed,
        anthropic::AnthropicStream::finish,
    );
    let (chunks, done) = parse_chunks(&out);
    assert!(done);
    assert_eq!(content_of(&chunks), "tok0 tok1 tok2 tok3 ");
    let arg_deltas = chunks
        .iter()
        .filter(|c| c.pointer("/choices/0/delta/tool_calls").is_some())
        .count();
    assert!(
        arg_deltas > 5,
        "arguments arrive in many deltas: {arg_deltas}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&tool_args_of(&chunks)).expect("args"),
        json!({"city": "Paris", "days": 3})
    );
    let finish = chunks.iter().find_map(|c| {
        c.pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
    });
    assert_eq!(finish, Some("tool_calls"));
    let usage = conv.usage().expect("usage");
    assert_eq!((usage.prompt_tokens, usage.cached_tokens), (8, 3));
    assert_eq!(usage.completion_tokens, 4 + 5);
    assert_eq!(
        chunks.last().expect("usage chunk")["usage"]["total_tokens"],
        17
    );
}

#[test]
fn anthropic_error_event_mid_stream_and_error_statuses() {
    let mock = Mock::start();
    let body = anthropic::chat_to_messages(&chat_request(true, false), Some("claude-mock"))
        .expect("translates");
    let url = mock.anthropic_url();
    let mut headers = ANTHROPIC_HEADERS.to_vec();
    headers.push(("x-mock-fault", "error-event-mid-stream"));
    let res = post(&url, &body, &headers);
    assert_eq!(res.status, 200);
    let mut conv = anthropic::AnthropicStream::new("m", true);
    let out = res.through(
        &mut conv,
        anthropic::AnthropicStream::feed,
        anthropic::AnthropicStream::finish,
    );
    let (chunks, done) = parse_chunks(&out);
    assert!(!done);
    let last = chunks.last().expect("events");
    assert_eq!(last["error"]["code"], "overloaded_error");
    assert_eq!(last["error"]["message"], "Overloaded");
    assert!(conv.usage().is_some(), "budgets settle on the usage seen");

    // No x-api-key: Anthropic's 401, mapped to OpenAI's.
    let res = post(&url, &body, &[("anthropic-version", "2023-06-01")]);
    assert_eq!(res.status, 401);
    let mapped = anthropic::error_to_openai(res.status, &res.body());
    assert_eq!(mapped.status, 401);
    let v: Value = serde_json::from_slice(&mapped.body).expect("json");
    assert_eq!(v["error"]["type"], "authentication_error");

    // 529 overloaded -> 503.
    let mut headers = ANTHROPIC_HEADERS.to_vec();
    headers.push(("x-mock-status", "529"));
    let res = post(&url, &body, &headers);
    assert_eq!(res.status, 529);
    assert_eq!(res.json()["error"]["type"], "overloaded_error");
    assert_eq!(
        anthropic::error_to_openai(res.status, &res.body()).status,
        503
    );
}

#[test]
fn gemini_whole_stream_error_event_and_missing_key() {
    let mock = Mock::start();
    let key = [("x-goog-api-key", "g-test")];

    let g = gemini::chat_to_generate(&chat_request(false, true), Some("gemini-mock")).expect("ok");
    let res = post(&format!("{}{}", mock.url, g.path), &g.body, &key);
    assert_eq!(res.status, 200);
    let chat = gemini::generate_to_chat_response(&res.json(), "client-model").expect("back");
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 "
    );
    assert_eq!(
        chat["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_0"
    );
    assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chat["usage"]["prompt_tokens"], 5);

    let g = gemini::chat_to_generate(&chat_request(true, true), Some("gemini-mock")).expect("ok");
    assert!(g.path.ends_with(":streamGenerateContent?alt=sse"));
    let res = post(&format!("{}{}", mock.url, g.path), &g.body, &key);
    assert_eq!(res.status, 200);
    let mut conv = gemini::GeminiStream::new("client-model", true);
    let out = res.through(
        &mut conv,
        gemini::GeminiStream::feed,
        gemini::GeminiStream::finish,
    );
    let (chunks, done) = parse_chunks(&out);
    assert!(done);
    assert_eq!(content_of(&chunks), "tok0 tok1 tok2 tok3 ");
    assert_eq!(
        serde_json::from_str::<Value>(&tool_args_of(&chunks)).expect("args"),
        json!({"city": "Paris", "days": 3})
    );
    assert_eq!(conv.usage().map(|u| u.total_tokens), Some(5 + 4 + 5));

    let res = post(
        &format!("{}{}", mock.url, g.path),
        &g.body,
        &[
            ("x-goog-api-key", "g"),
            ("x-mock-fault", "error-event-mid-stream"),
        ],
    );
    let mut conv = gemini::GeminiStream::new("m", true);
    let out = res.through(
        &mut conv,
        gemini::GeminiStream::feed,
        gemini::GeminiStream::finish,
    );
    let (chunks, done) = parse_chunks(&out);
    assert!(!done);
    assert_eq!(
        chunks.last().expect("events")["error"]["code"],
        "unavailable"
    );

    let res = post(&format!("{}{}", mock.url, g.path), &g.body, &[]);
    assert_eq!(res.status, 403);
    assert_eq!(res.json()["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(gemini::error_to_openai(res.status, &res.body()).status, 403);
}

/// (event name, payload) pairs of a Responses or Anthropic SSE body.
fn named_events(out: &[u8]) -> Vec<(String, Value)> {
    std::str::from_utf8(out)
        .expect("utf8")
        .split_terminator("\n\n")
        .map(|e| {
            let (ev, data) = e.split_once('\n').expect("event and data");
            (
                ev.strip_prefix("event: ").expect("event").to_string(),
                serde_json::from_str(data.strip_prefix("data: ").expect("data")).expect("json"),
            )
        })
        .collect()
}

#[test]
fn responses_shim_over_mock_chat_whole_stream_and_faults() {
    let mock = Mock::start();
    let url = format!("{}/v1/chat/completions", mock.url);
    let original = json!({"model": "gpt-x", "instructions": "be brief", "input": "say hi",
                          "max_output_tokens": 50});
    let chat_req = responses::responses_to_chat(&original).expect("translates");
    let res = post(&url, &chat_req, &[]);
    let r = responses::chat_to_response(&res.json(), &original).expect("back");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output_text"], "tok0 tok1 tok2 tok3 ");
    assert_eq!(r["usage"]["input_tokens"], 4);

    let mut original = original;
    original["stream"] = json!(true);
    let chat_req = responses::responses_to_chat(&original).expect("translates");
    let res = post(&url, &chat_req, &[]);
    let mut conv = responses::ResponsesStream::new(&original);
    let out = res.through(
        &mut conv,
        responses::ResponsesStream::feed,
        responses::ResponsesStream::finish,
    );
    let ev = named_events(&out);
    assert_eq!(ev[0].0, "response.created");
    let (name, last) = ev.last().expect("events");
    assert_eq!(name, "response.completed");
    assert_eq!(last["response"]["output_text"], "tok0 tok1 tok2 tok3 ");
    assert_eq!(last["response"]["usage"]["output_tokens"], 4);

    for fault in ["error-event-mid-stream", "close-mid-stream"] {
        let res = post(&url, &chat_req, &[("x-mock-fault", fault)]);
        let mut conv = responses::ResponsesStream::new(&original);
        let out = res.through(
            &mut conv,
            responses::ResponsesStream::feed,
            responses::ResponsesStream::finish,
        );
        let ev = named_events(&out);
        assert_eq!(
            ev.last().map(|(n, _)| n.as_str()),
            Some("response.failed"),
            "{fault}"
        );
    }
}

#[test]
fn responses_stream_composes_over_an_anthropic_upstream() {
    let mock = Mock::start();
    let original = json!({"model": "claude-mock", "input": "weather?", "stream": true,
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]});
    let chat_req = responses::responses_to_chat(&original).expect("responses -> chat");
    let body = anthropic::chat_to_messages(&chat_req, None).expect("chat -> anthropic");
    let res = post(&mock.anthropic_url(), &body, ANTHROPIC_HEADERS);
    let mut to_chat = anthropic::AnthropicStream::new("claude-mock", true);
    let mut to_responses = responses::ResponsesStream::new(&original);
    let mut out = Vec::new();
    for piece in &res.pieces {
        out.extend(to_responses.feed(&to_chat.feed(piece)));
    }
    out.extend(to_responses.feed(&to_chat.finish()));
    out.extend(to_responses.finish());
    let ev = named_events(&out);
    let (name, last) = ev.last().expect("events");
    assert_eq!(name, "response.completed");
    let output = last["response"]["output"].as_array().expect("output");
    assert_eq!(output[0]["content"][0]["text"], "tok0 tok1 tok2 tok3 ");
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(output[1]["call_id"], "toolu_mock_1");
    assert_eq!(output[1]["arguments"], "{\"city\": \"Paris\", \"days\": 3}");
    assert_eq!(
        last["response"]["usage"]["input_tokens_details"]["cached_tokens"],
        3
    );
}

#[test]
fn inbound_anthropic_over_mock_chat_whole_and_stream() {
    let mock = Mock::start();
    let url = format!("{}/v1/chat/completions", mock.url);
    let req = json!({"model": "gpt-x", "max_tokens": 100, "system": "be brief",
                     "messages": [{"role": "user", "content": "say hi"}]});
    let chat_req = anthropic_inbound::messages_to_chat(&req, None).expect("translates");
    let res = post(&url, &chat_req, &[]);
    let a = anthropic_inbound::chat_to_messages_response(&res.json(), "gpt-x").expect("back");
    assert_eq!(a["content"][0]["text"], "tok0 tok1 tok2 tok3 ");
    assert_eq!(a["stop_reason"], "end_turn");
    assert_eq!(a["usage"]["output_tokens"], 4);

    let mut req = req;
    req["stream"] = json!(true);
    let chat_req = anthropic_inbound::messages_to_chat(&req, None).expect("translates");
    let estimate = anthropic_inbound::count_tokens(&req).expect("count");
    let res = post(&url, &chat_req, &[]);
    let mut conv = anthropic_inbound::ChatToAnthropicStream::new("gpt-x", estimate);
    let out = res.through(
        &mut conv,
        anthropic_inbound::ChatToAnthropicStream::feed,
        anthropic_inbound::ChatToAnthropicStream::finish,
    );
    let ev = named_events(&out);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let text: String = ev
        .iter()
        .filter_map(|(_, v)| v.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 ");
    assert_eq!(ev[ev.len() - 2].1["usage"]["output_tokens"], 4);
}
