//! The OpenAI-shaped bodies the mock answers with: model lists, chat completions (whole and as
//! SSE chunks), embeddings, errors, and the echo of a request.
//!
//! Everything here is a pure function of its inputs (plus `created`, the wall clock), so the
//! shapes can be unit-tested without a socket. Stream chunks are built with `format!` from
//! pre-escaped pieces rather than through `serde_json::Value`, because a load test may ask the
//! mock for hundreds of thousands of them a second and the gateway, not the mock, should be the
//! bottleneck being measured.

use serde_json::{json, Value};

use crate::http::{BodyFraming, RequestHead};

/// `created` of every model in the list: a fixed instant, so model lists compare equal.
pub const MODEL_CREATED: u64 = 1_700_000_000;

/// `s` as a JSON string literal (quoted and escaped).
fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// One model object, fields in OpenAI's order.
pub fn model(id: &str) -> String {
    format!(
        r#"{{"id":{},"object":"model","created":{MODEL_CREATED},"owned_by":"mock"}}"#,
        quote(id)
    )
}

/// The `GET /v1/models` body.
pub fn model_list(ids: &[String]) -> Vec<u8> {
    let data: Vec<String> = ids.iter().map(|id| model(id)).collect();
    format!(r#"{{"object":"list","data":[{}]}}"#, data.join(",")).into_bytes()
}

/// The OpenAI `type` and `code` that go with an HTTP status, as the real API uses them.
fn error_kind(status: u16) -> (&'static str, Option<&'static str>) {
    match status {
        400 | 405 | 409 | 413 | 415 | 422 => ("invalid_request_error", None),
        401 => ("authentication_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("invalid_request_error", Some("not_found")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("api_error", None),
    }
}

/// An OpenAI-shaped error body: `{"error":{"message","type","param","code"}}`.
pub fn error_body(status: u16, message: &str, code: Option<&str>) -> Vec<u8> {
    let (etype, default_code) = error_kind(status);
    let code = code
        .or(default_code)
        .map_or_else(|| "null".to_string(), quote);
    format!(
        r#"{{"error":{{"message":{},"type":"{etype}","param":null,"code":{code}}}}}"#,
        quote(message)
    )
    .into_bytes()
}

/// What the mock takes from a chat completion request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    /// `model` as sent (echoed back); the first configured model when absent.
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`: send a final usage chunk.
    pub include_usage: bool,
    /// A deterministic stand-in for the tokenizer: whitespace-separated words of every text
    /// part of every message, at least 1.
    pub prompt_tokens: u64,
}

/// Read the fields the mock needs from a parsed request body.
pub fn chat_request(body: &Value, default_model: &str) -> ChatRequest {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(default_model)
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut words = 0u64;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for m in messages {
            words += text_words(m.get("content"));
        }
    }
    ChatRequest {
        model,
        stream,
        include_usage,
        prompt_tokens: words.max(1),
    }
}

/// Words in a message `content`: a string, or an array of parts with `text`.
fn text_words(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => s.split_whitespace().count() as u64,
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|s| s.split_whitespace().count() as u64)
            .sum(),
        _ => 0,
    }
}

/// The content token `i`: the same words whole and streamed, so a test can compare the two.
fn token(i: u32) -> String {
    format!("tok{i} ")
}

/// Seconds since the Unix epoch (what OpenAI puts in `created` of a completion).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Usage object for `completion_tokens` generated tokens.
fn usage(prompt_tokens: u64, completion_tokens: u64) -> String {
    format!(
        r#"{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},"total_tokens":{}}}"#,
        prompt_tokens + completion_tokens
    )
}

/// A whole `chat.completion` whose content is the `events` tokens a stream would carry, padded
/// with `x` so the body is about `size` bytes when `size` is larger. Fields are in OpenAI's
/// order (serde_json would sort them), `usage` last as the real API sends it.
pub fn completion(id: &str, created: u64, req: &ChatRequest, events: u32, size: usize) -> Vec<u8> {
    let content: String = (0..events).map(token).collect();
    let model = quote(&req.model);
    let usage = usage(req.prompt_tokens, u64::from(events));
    // Content is `tokN ` words and `x` padding only: nothing to escape.
    let build = |content: &str| {
        format!(
            concat!(
                r#"{{"id":"{id}","object":"chat.completion","created":{created},"model":{model},"#,
                r#""choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null}},"#,
                r#""logprobs":null,"finish_reason":"stop"}}],"usage":{usage},"system_fingerprint":"fp_mock"}}"#
            ),
            id = id,
            created = created,
            model = model,
            content = content,
            usage = usage,
        )
        .into_bytes()
    };
    let body = build(&content);
    if body.len() >= size {
        return body;
    }
    let padded = format!("{content}{}", "x".repeat(size - body.len()));
    build(&padded)
}

/// Builds the events of one streamed completion.
#[derive(Debug, Clone)]
pub struct ChunkStream {
    /// Everything of a chunk before the delta: id, object, created, model (JSON-escaped).
    prefix: String,
    include_usage: bool,
    prompt_tokens: u64,
    /// Number of content events.
    pub events: u32,
    /// Target size of each event in bytes (0: no padding).
    size: usize,
}

impl ChunkStream {
    /// The stream for `req`, with `events` content events padded to about `size` bytes each.
    pub fn new(id: &str, created: u64, req: &ChatRequest, events: u32, size: usize) -> Self {
        // Escaping through serde_json keeps a model name with quotes or control characters from
        // breaking the JSON; ids are ours and plain ASCII.
        let model = quote(&req.model);
        ChunkStream {
            prefix: format!(
                r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":{model},"system_fingerprint":"fp_mock","choices":["#
            ),
            include_usage: req.include_usage,
            prompt_tokens: req.prompt_tokens,
            events,
            size,
        }
    }

    /// Content event `i` (0-based) as `data: {...}\n\n`: the first carries the role, the last
    /// `finish_reason: "stop"`.
    pub fn event(&self, i: u32) -> Vec<u8> {
        let build = |content: &str| {
            let role = if i == 0 { r#""role":"assistant","# } else { "" };
            let finish = if i + 1 == self.events {
                r#""stop""#
            } else {
                "null"
            };
            // OpenAI sends `"usage":null` in every chunk once include_usage is on; usage
            // scanners must skip it, so the mock sends it too.
            let usage = if self.include_usage {
                r#","usage":null"#
            } else {
                ""
            };
            format!(
                "data: {}{{\"index\":0,\"delta\":{{{role}\"content\":\"{content}\"}},\"logprobs\":null,\"finish_reason\":{finish}}}]{usage}}}\n\n",
                self.prefix
            )
            .into_bytes()
        };
        let content = token(i);
        let event = build(&content);
        if event.len() >= self.size {
            return event;
        }
        let padded = format!("{content}{}", "x".repeat(self.size - event.len()));
        build(&padded)
    }

    /// The usage chunk (`"choices":[]`) sent after the content when include_usage is on.
    pub fn usage_event(&self) -> Option<Vec<u8>> {
        if !self.include_usage {
            return None;
        }
        let usage = usage(self.prompt_tokens, u64::from(self.events));
        Some(format!("data: {}],\"usage\":{usage}}}\n\n", self.prefix).into_bytes())
    }
}

/// The stream terminator event.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// The OpenAI-shaped error event the `error-event-mid-stream` fault sends in a chat stream.
pub fn stream_error_event() -> Vec<u8> {
    let body = error_body(
        503,
        "The server is overloaded (mock error mid-stream)",
        Some("overloaded"),
    );
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\n");
    out
}

/// An embeddings list: one small deterministic vector per input (a string or an array).
pub fn embeddings(body: &Value, default_model: &str) -> Vec<u8> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(default_model);
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(other) => vec![other.to_string()],
        None => vec![String::new()],
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += (text.split_whitespace().count() as u64).max(1);
            // Eight values derived from the text length and index: stable across runs.
            let seed = text.len() as f64 + i as f64;
            let vector: Vec<f64> = (0..8)
                .map(|k| ((seed + f64::from(k)) * 0.618).fract() - 0.5)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
    .to_string()
    .into_bytes()
}

/// The echo of a request: what a proxy forwarded, field by field, in order.
pub fn echo(head: &RequestHead, body: &[u8], framing: BodyFraming) -> Vec<u8> {
    let headers: Vec<Value> = head
        .fields
        .iter()
        .map(|(name, value)| json!([name, String::from_utf8_lossy(value)]))
        .collect();
    let framing = match framing {
        BodyFraming::Length(_) => "length",
        BodyFraming::Chunked => "chunked",
        BodyFraming::Empty | BodyFraming::UntilClose => "none",
    };
    json!({
        "method": head.method.as_str(),
        "target": head.target(),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
        "body_len": body.len(),
        "framing": framing,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(stream: bool, include_usage: bool) -> ChatRequest {
        chat_request(
            &json!({
                "model": "m\"q",
                "stream": stream,
                "stream_options": {"include_usage": include_usage},
                "messages": [{"role": "user", "content": "hello there"},
                             {"role": "user", "content": [{"type": "text", "text": "a b c"}]}],
            }),
            "default",
        )
    }

    #[test]
    fn chat_request_reads_fields_and_counts_words() {
        let r = req(true, true);
        assert_eq!(r.model, "m\"q");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.prompt_tokens, 5);
        assert_eq!(chat_request(&json!({}), "d").model, "d");
    }

    #[test]
    fn completion_is_valid_and_padded() {
        let r = req(false, false);
        let body = completion("chatcmpl-mock-1", 1, &r, 3, 0);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
        assert_eq!(v["usage"]["total_tokens"], 8);
        assert_eq!(v["model"], "m\"q");
        let padded = completion("chatcmpl-mock-1", 1, &r, 3, 2000);
        assert_eq!(padded.len(), 2000);
        serde_json::from_slice::<Value>(&padded).expect("padded json");
    }

    #[test]
    fn stream_events_are_valid_json() {
        let r = req(true, true);
        let s = ChunkStream::new("chatcmpl-mock-2", 5, &r, 3, 0);
        let parse = |e: &[u8]| -> Value {
            let text = std::str::from_utf8(e).expect("utf8");
            let data = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .expect("framing");
            serde_json::from_str(data).expect("json")
        };
        let first = parse(&s.event(0));
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "tok0 ");
        assert!(first["choices"][0]["finish_reason"].is_null());
        assert!(first["usage"].is_null());
        let last = parse(&s.event(2));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let usage = parse(&s.usage_event().expect("usage on"));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        let big = s.event(1);
        assert!(big.len() < 300);
        let padded = ChunkStream::new("c", 5, &r, 3, 1000).event(1);
        assert_eq!(padded.len(), 1000);
        parse(&padded);
    }

    #[test]
    fn errors_and_embeddings_are_shaped_like_openai() {
        let e: Value = serde_json::from_slice(&error_body(429, "slow down", None)).expect("json");
        assert_eq!(e["error"]["type"], "rate_limit_error");
        assert_eq!(e["error"]["code"], "rate_limit_exceeded");
        let v: Value = serde_json::from_slice(&embeddings(&json!({"input": ["a", "b c"]}), "e"))
            .expect("json");
        assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
    }
}
