//! The Anthropic Messages bodies the mock answers `POST /v1/messages` with: a whole message,
//! the SSE event sequence of a streamed one, and Anthropic-shaped errors.
//!
//! Content is deterministic so tests can assert it: the text is the same `tok0 tok1 ...` words
//! as the OpenAI mock (one `text_delta` per word when streamed), and when the request has
//! `tools` the answer ends with a `tool_use` block calling the first tool with
//! [`TOOL_INPUT`], streamed as many small `input_json_delta`s. Usage reports
//! [`CACHE_READ_TOKENS`] cache-read tokens so cache accounting can be checked.

#![warn(missing_docs)]

use serde_json::{json, Value};

/// Input of the mock's `tool_use` block.
pub const TOOL_INPUT: &str = r#"{"city": "Paris", "days": 3}"#;

/// Size of each `input_json_delta` piece of [`TOOL_INPUT`].
pub const TOOL_PIECE_BYTES: usize = 5;

/// `cache_read_input_tokens` of every answer.
pub const CACHE_READ_TOKENS: u64 = 3;

/// Output tokens charged for the tool call.
pub const TOOL_OUTPUT_TOKENS: u64 = 5;

/// Id of the mock's `tool_use` block.
pub const TOOL_USE_ID: &str = "toolu_mock_1";

/// What the mock takes from a Messages request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagesRequest {
    /// `model`, echoed back.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// `max_tokens`: the text is cut there (stop reason `max_tokens`).
    pub max_tokens: u64,
    /// Name of the first tool, if the request has tools (and tool_choice is not none).
    pub tool: Option<String>,
    /// Whitespace-separated words of the system prompt and every text block, at least 1.
    pub input_tokens: u64,
}

/// Validate and read a Messages request as the real API would: `model`, `max_tokens` and
/// `messages` are required. `Err` is the `invalid_request_error` message.
pub fn messages_request(body: &Value) -> Result<MessagesRequest, String> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or("model: Field required")?
        .to_string();
    let max_tokens = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .ok_or("max_tokens: Field required")?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: Field required")?;
    let mut words = match body.get("system") {
        Some(Value::String(s)) => s.split_whitespace().count() as u64,
        Some(Value::Array(blocks)) => blocks.iter().map(block_words).sum(),
        _ => 0,
    };
    for m in messages {
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            _ => return Err("messages: roles must be user or assistant".to_string()),
        }
        words += match m.get("content") {
            Some(Value::String(s)) => s.split_whitespace().count() as u64,
            Some(Value::Array(blocks)) => blocks.iter().map(block_words).sum(),
            _ => return Err("messages: content must be a string or a list".to_string()),
        };
    }
    let tool_choice_none =
        body.pointer("/tool_choice/type").and_then(Value::as_str) == Some("none");
    let tool = body
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str)
        .filter(|_| !tool_choice_none)
        .map(str::to_string);
    Ok(MessagesRequest {
        model,
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        max_tokens,
        tool,
        input_tokens: words.max(1),
    })
}

fn block_words(b: &Value) -> u64 {
    b.get("text")
        .and_then(Value::as_str)
        .map_or(0, |t| t.split_whitespace().count() as u64)
}

/// The text tokens an answer carries (`events`, cut at `max_tokens`) and whether the cut
/// happened.
fn text_tokens(req: &MessagesRequest, events: u32) -> (u64, bool) {
    let n = u64::from(events);
    if req.max_tokens < n {
        (req.max_tokens, true)
    } else {
        (n, false)
    }
}

fn token(i: u64) -> String {
    format!("tok{i} ")
}

/// (stop_reason, output_tokens) of an answer.
fn outcome(req: &MessagesRequest, events: u32) -> (&'static str, u64) {
    let (n, cut) = text_tokens(req, events);
    if cut {
        ("max_tokens", n)
    } else if req.tool.is_some() {
        ("tool_use", n + TOOL_OUTPUT_TOKENS)
    } else {
        ("end_turn", n)
    }
}

fn usage(req: &MessagesRequest, output: u64) -> Value {
    json!({
        "input_tokens": req.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": CACHE_READ_TOKENS,
        "output_tokens": output,
    })
}

/// A whole Messages answer.
pub fn message(id: &str, req: &MessagesRequest, events: u32) -> Vec<u8> {
    let (n, cut) = text_tokens(req, events);
    let text: String = (0..n).map(token).collect();
    let mut content = vec![json!({"type": "text", "text": text})];
    if let (Some(tool), false) = (&req.tool, cut) {
        let input: Value = serde_json::from_str(TOOL_INPUT).unwrap_or(Value::Null);
        content.push(json!({"type": "tool_use", "id": TOOL_USE_ID, "name": tool, "input": input}));
    }
    let (stop, output) = outcome(req, events);
    json!({
        "id": id, "type": "message", "role": "assistant", "model": req.model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": usage(req, output),
    })
    .to_string()
    .into_bytes()
}

fn event(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// The events of a streamed answer, in the real API's order: `message_start`, the text block
/// (`content_block_start`, `ping`, one `text_delta` per word, `content_block_stop`), the
/// tool block if any (an empty first `input_json_delta` as the real API sends, then
/// [`TOOL_INPUT`] in [`TOOL_PIECE_BYTES`] pieces), `message_delta`, `message_stop`.
pub fn stream_events(id: &str, req: &MessagesRequest, events: u32) -> Vec<Vec<u8>> {
    let (n, cut) = text_tokens(req, events);
    let (stop, output) = outcome(req, events);
    let mut out = Vec::new();
    let mut start_usage = usage(req, 1);
    start_usage["output_tokens"] = json!(1);
    out.push(event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": req.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
    ));
    out.push(event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    out.push(event("ping", &json!({"type": "ping"})));
    for i in 0..n {
        out.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": token(i)}}),
        ));
    }
    out.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    if let (Some(tool), false) = (&req.tool, cut) {
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 1,
                    "content_block": {"type": "tool_use", "id": TOOL_USE_ID, "name": tool, "input": {}}}),
        ));
        let mut pieces = vec![""];
        let mut rest = TOOL_INPUT;
        while !rest.is_empty() {
            let cut = rest.len().min(TOOL_PIECE_BYTES);
            let (piece, tail) = rest.split_at(cut);
            pieces.push(piece);
            rest = tail;
        }
        for piece in pieces {
            out.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        out.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    out.push(event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": output}}),
    ));
    out.push(event("message_stop", &json!({"type": "message_stop"})));
    out
}

/// The `event: error` the `error-event-mid-stream` fault sends.
pub fn error_event() -> Vec<u8> {
    event(
        "error",
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
}

/// The Anthropic error `type` for a status, as the real API uses them.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        504 => "timeout_error",
        _ if (400..500).contains(&status) => "invalid_request_error",
        _ => "api_error",
    }
}

/// An Anthropic error body: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tools: bool, max_tokens: u64) -> MessagesRequest {
        let mut body = json!({"model": "claude-mock", "max_tokens": max_tokens, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]});
        if tools {
            body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        }
        messages_request(&body).expect("valid")
    }

    #[test]
    fn request_validation_like_the_real_api() {
        let r = req(true, 100);
        assert_eq!(r.input_tokens, 4);
        assert_eq!(r.tool.as_deref(), Some("get_weather"));
        assert!(messages_request(&json!({"model": "m", "messages": []})).is_err());
        assert!(messages_request(&json!({"max_tokens": 1, "messages": []})).is_err());
        assert!(messages_request(&json!({"model": "m", "max_tokens": 1,
            "messages": [{"role": "system", "content": "x"}]}))
        .is_err());
    }

    #[test]
    fn whole_message_with_tool_use_and_cache_usage() {
        let v: Value = serde_json::from_slice(&message("msg_1", &req(true, 100), 3)).expect("json");
        assert_eq!(v["content"][0]["text"], "tok0 tok1 tok2 ");
        assert_eq!(v["content"][1]["name"], "get_weather");
        assert_eq!(
            v["content"][1]["input"],
            json!({"city": "Paris", "days": 3})
        );
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["usage"]["cache_read_input_tokens"], CACHE_READ_TOKENS);
        assert_eq!(v["usage"]["output_tokens"], 3 + TOOL_OUTPUT_TOKENS);
        let v: Value = serde_json::from_slice(&message("msg_1", &req(true, 2), 3)).expect("json");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["content"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn stream_event_sequence_is_the_real_one() {
        let names: Vec<String> = stream_events("msg_1", &req(true, 100), 2)
            .iter()
            .map(|e| {
                let text = String::from_utf8(e.clone()).expect("utf8");
                let (ev, data) = text.split_once('\n').expect("lines");
                let v: Value =
                    serde_json::from_str(data.trim_end().strip_prefix("data: ").expect("data"))
                        .expect("json");
                let name = ev.strip_prefix("event: ").expect("event").to_string();
                assert_eq!(v["type"], name.as_str());
                name
            })
            .collect();
        let pieces = TOOL_INPUT.len().div_ceil(TOOL_PIECE_BYTES) + 1;
        let mut want = vec!["message_start", "content_block_start", "ping"];
        want.extend(["content_block_delta"; 2]);
        want.extend(["content_block_stop", "content_block_start"]);
        want.extend(std::iter::repeat_n("content_block_delta", pieces));
        want.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, want);
        assert_eq!(error_type(529), "overloaded_error");
    }
}
