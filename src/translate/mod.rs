//! Pure, network-free translation between the OpenAI wire formats the gateway speaks and the
//! native APIs of other providers (REFERENCE sections 6 and 7, issue 6).
//!
//! Everything here works on `serde_json::Value`s and byte slices: no sockets, no clocks the
//! caller cannot ignore, no global state beyond an id counter. The proxy pipeline decides
//! *when* to translate; this module only says *how*.
//!
//! - [`anthropic`]: OpenAI chat -> Anthropic Messages, and the answer (whole or SSE) back.
//! - [`gemini`]: OpenAI chat -> Gemini `generateContent` / `streamGenerateContent`, and back.
//! - [`responses`]: the Responses API shim over a Chat Completions upstream.
//! - [`anthropic_inbound`]: Anthropic Messages clients served by an OpenAI-shaped upstream.
//! - [`sse`]: the one SSE line splitter every stream converter uses, and the frame writers.
//! - [`chat`]: pieces of the OpenAI chat format shared by the converters (content parts,
//!   images, chunk building).
//!
//! Errors the client caused (a field the target provider cannot express, a wrong type) are
//! [`TranslateError`]s with status 400 and the offending field's path; a malformed upstream
//! answer is a 502. Converters never panic on any input.

#![warn(missing_docs)]

pub mod anthropic;
pub mod anthropic_inbound;
pub mod chat;
pub mod gemini;
pub mod responses;
pub mod sse;

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

/// Why a request or an answer could not be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    /// The HTTP status to answer with: 400 for the client's request, 502 for a malformed
    /// upstream answer.
    pub status: u16,
    /// The JSON path of the field at fault (`messages[2].content[0].image_url.url`), if any;
    /// sent as OpenAI's `param`.
    pub field: Option<String>,
    /// A human-readable reason.
    pub message: String,
}

impl TranslateError {
    /// A 400 naming `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        TranslateError {
            status: 400,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A 502: the upstream answered something we cannot read.
    pub fn upstream(message: impl Into<String>) -> Self {
        TranslateError {
            status: 502,
            field: None,
            message: message.into(),
        }
    }

    /// The OpenAI error `type` that goes with the status.
    pub fn error_type(&self) -> &'static str {
        if self.status < 500 {
            "invalid_request_error"
        } else {
            "api_error"
        }
    }

    /// The OpenAI-shaped body `{"error":{"message","type","param","code"}}`.
    pub fn openai_body(&self) -> Vec<u8> {
        let code = if self.status < 500 {
            "unsupported_by_provider"
        } else {
            "backend_error"
        };
        let v = json!({"error": {
            "message": self.to_string(),
            "type": self.error_type(),
            "param": self.field,
            "code": code,
        }});
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// The Anthropic-shaped body `{"type":"error","error":{"type","message"}}`.
    pub fn anthropic_body(&self) -> Vec<u8> {
        let etype = if self.status < 500 {
            "invalid_request_error"
        } else {
            "api_error"
        };
        anthropic_inbound::error_body(etype, &self.to_string())
    }
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) if !self.message.starts_with(field.as_str()) => {
                write!(f, "{field}: {}", self.message)
            }
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TranslateError {}

impl From<TranslateError> for crate::error::GatewayError {
    /// A gateway-made, OpenAI-shaped error: 400 `invalid_request_error` with code
    /// `translation_error` (the field is named in the message), or 502 `backend_error`.
    fn from(e: TranslateError) -> Self {
        use crate::error::{ErrorType, GatewayError};
        if e.status < 500 {
            GatewayError::new(
                e.status,
                ErrorType::InvalidRequest,
                "translation_error",
                e.to_string(),
            )
        } else {
            GatewayError::new(e.status, ErrorType::Api, "backend_error", e.to_string())
        }
    }
}

/// A provider's error answer rewritten into the client's dialect: the status to send and the
/// JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedError {
    /// The status to answer with.
    pub status: u16,
    /// The JSON error body.
    pub body: Vec<u8>,
}

/// Token counts of one exchange, richer than [`crate::usage::Usage`]: the cache and reasoning
/// splits that costing needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// All input tokens, cached ones included (OpenAI's `prompt_tokens`).
    pub prompt_tokens: u64,
    /// Output tokens, reasoning included.
    pub completion_tokens: u64,
    /// Input plus output.
    pub total_tokens: u64,
    /// Input tokens read from a prompt cache (part of `prompt_tokens`).
    pub cached_tokens: u64,
    /// Input tokens written to a prompt cache (Anthropic; part of `prompt_tokens`).
    pub cache_creation_tokens: u64,
    /// Output tokens spent on reasoning (part of `completion_tokens`).
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// The plain counts budgets settle on.
    pub fn usage(&self) -> crate::usage::Usage {
        crate::usage::Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            cached_tokens: self.cached_tokens,
            cache_creation_tokens: self.cache_creation_tokens,
        }
    }

    /// The OpenAI chat `usage` object.
    pub fn openai_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }

    /// Read an OpenAI chat `usage` object (missing fields are zero).
    pub fn from_openai(u: &Value) -> TokenUsage {
        let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        let prompt = n("/prompt_tokens");
        let completion = n("/completion_tokens");
        let total = match n("/total_tokens") {
            0 => prompt + completion,
            t => t,
        };
        TokenUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
            cached_tokens: n("/prompt_tokens_details/cached_tokens"),
            cache_creation_tokens: 0,
            reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
        }
    }
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A fresh id like `resp_0193a5c1f00d2e7a0000000000000001`: the clock in nanoseconds and a
/// process-wide counter, so ids are unique within a process and unlikely to repeat across
/// restarts. Not secret, not a security token.
pub fn fresh_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{nanos:016x}{n:016x}")
}

/// `v` as an object, or a 400 naming `field`.
pub(crate) fn expect_object<'a>(
    v: &'a Value,
    field: &str,
) -> Result<&'a serde_json::Map<String, Value>, TranslateError> {
    v.as_object()
        .ok_or_else(|| TranslateError::field(field, format!("{field} must be an object")))
}

/// An optional field that, when present and not null, must be a string.
pub(crate) fn opt_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, TranslateError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TranslateError::field(
            field,
            format!("{field} must be a string"),
        )),
    }
}

/// An optional number field (kept as the JSON number, so 0.7 is not turned into 0.69999).
pub(crate) fn opt_number(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<Value>, TranslateError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(_) => Err(TranslateError::field(
            key,
            format!("{key} must be a number"),
        )),
    }
}

/// An optional non-negative integer field.
pub(crate) fn opt_u64(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<u64>, TranslateError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            TranslateError::field(key, format!("{key} must be a non-negative integer"))
        }),
    }
}

/// An optional boolean field.
pub(crate) fn opt_bool(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<bool>, TranslateError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(TranslateError::field(
            key,
            format!("{key} must be a boolean"),
        )),
    }
}

/// A rough token estimate for text: about four bytes a token, at least one for non-empty text.
pub fn estimate_tokens(text: &str) -> u64 {
    if text.is_empty() {
        0
    } else {
        (text.len() as u64).div_ceil(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_name_the_field_in_both_dialects() {
        let e = TranslateError::field("n", "Anthropic returns one choice; n must be 1");
        let v: Value = serde_json::from_slice(&e.openai_body()).expect("json");
        assert_eq!(v["error"]["param"], "n");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("n: ")));
        let a: Value = serde_json::from_slice(&e.anthropic_body()).expect("json");
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "invalid_request_error");
        let up = TranslateError::upstream("bad body");
        assert_eq!(up.status, 502);
        assert_eq!(up.error_type(), "api_error");
    }

    #[test]
    fn translate_error_becomes_a_gateway_error_naming_the_field() {
        let g: crate::error::GatewayError =
            TranslateError::field("tools[0].type", "not supported").into();
        assert_eq!(g.status, 400);
        assert_eq!(g.code, "translation_error");
        assert!(g.message.starts_with("tools[0].type: "));
        let g: crate::error::GatewayError = TranslateError::upstream("bad").into();
        assert_eq!((g.status, g.code), (502, "backend_error"));
    }

    #[test]
    fn usage_from_openai_fills_total_and_details() {
        let u = TokenUsage::from_openai(&json!({
            "prompt_tokens": 10, "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 6},
            "completion_tokens_details": {"reasoning_tokens": 1}
        }));
        assert_eq!(u.total_tokens, 14);
        assert_eq!(u.cached_tokens, 6);
        assert_eq!(u.reasoning_tokens, 1);
        assert_eq!(u.usage().total_tokens, 14);
        assert_eq!(u.openai_json()["prompt_tokens_details"]["cached_tokens"], 6);
    }

    /// Every copy of `v` with one node replaced by a value of another type.
    fn mutations(v: &Value) -> Vec<Value> {
        let alternatives = [
            Value::Null,
            json!(-5),
            json!(1e300),
            json!("s"),
            json!([]),
            json!({}),
            json!(true),
            json!([{"type": "x"}]),
        ];
        let mut out = Vec::new();
        for alt in &alternatives {
            out.push(alt.clone());
        }
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    for mutated in mutations(child) {
                        let mut copy = v.clone();
                        copy[k] = mutated;
                        out.push(copy);
                    }
                    let mut without = m.clone();
                    without.remove(k);
                    out.push(Value::Object(without));
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    for mutated in mutations(child) {
                        let mut copy = items.clone();
                        copy[i] = mutated;
                        out.push(Value::Array(copy));
                    }
                }
            }
            _ => {}
        }
        out
    }

    #[test]
    fn converters_never_panic_on_mutated_requests_and_answers() {
        let chat_req = json!({
            "model": "m", "stream": true, "n": 1, "temperature": 0.5, "top_p": 1, "max_tokens": 5,
            "stop": ["x"], "parallel_tool_calls": false, "user": "u",
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {"a": {"type": ["string", "null"]}}}}},
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "t"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "r"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        });
        for m in mutations(&chat_req) {
            let _ = anthropic::chat_to_messages(&m, None);
            let _ = gemini::chat_to_generate(&m, None);
        }
        let resp_req = json!({"model": "m", "instructions": "i", "stream": true, "max_output_tokens": 3,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "t"}, {"type": "input_image", "image_url": "https://x/a.png"}]},
                      {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": "c", "output": "o"}],
            "tools": [{"type": "function", "name": "f", "parameters": {}}], "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}}, "reasoning": {"effort": "low"}});
        for m in mutations(&resp_req) {
            let _ = responses::responses_to_chat(&m);
            let _ = responses::chat_to_response(
                &json!({"choices": [{"message": {"content": "x"}}]}),
                &m,
            );
        }
        let anth_req = json!({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "s"}], "stream": true,
            "stop_sequences": ["x"], "metadata": {"user_id": "u"},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "t"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                         {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r"}], "is_error": true}]}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "f"}});
        for m in mutations(&anth_req) {
            let _ = anthropic_inbound::messages_to_chat(&m, None);
            let _ = anthropic_inbound::count_tokens(&m);
        }
        let anth_resp = json!({"id": "i", "type": "message", "model": "m", "stop_reason": "tool_use",
            "content": [{"type": "text", "text": "t"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
            "usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 3}});
        for m in mutations(&anth_resp) {
            let _ = anthropic::messages_to_chat_response(&m, "");
        }
        let gem_resp = json!({"candidates": [{"index": 0, "finishReason": "STOP", "content": {"parts": [{"text": "t"}, {"functionCall": {"name": "f", "args": {}}}]}}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2}, "promptFeedback": {"blockReason": "SAFETY"}});
        for m in mutations(&gem_resp) {
            let _ = gemini::generate_to_chat_response(&m, "");
            let mut s = gemini::GeminiStream::new("m", true);
            let _ = s.feed(format!("data: {m}\n\n").as_bytes());
            let _ = s.finish();
        }
        let chat_resp = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"content": "c", "refusal": "r",
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}}], "usage": {"prompt_tokens": 1}});
        for m in mutations(&chat_resp) {
            let _ = responses::chat_to_response(&m, &json!({}));
            let _ = anthropic_inbound::chat_to_messages_response(&m, "");
            let chunk = format!("data: {m}\n\n");
            let mut r = responses::ResponsesStream::new(&json!({}));
            let _ = r.feed(chunk.as_bytes());
            let _ = r.finish();
            let mut a = anthropic_inbound::ChatToAnthropicStream::new("m", 1);
            let _ = a.feed(chunk.as_bytes());
            let _ = a.finish();
        }
        let anth_events = [
            json!({"type": "message_start", "message": {"id": "i", "usage": {"input_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
            json!({"type": "error", "error": {"type": "x", "message": "m"}}),
        ];
        for ev in &anth_events {
            for m in mutations(ev) {
                let mut s = anthropic::AnthropicStream::new("m", true);
                let _ = s.feed(format!("data: {}\n\n", anth_events[0]).as_bytes());
                let _ = s.feed(format!("data: {m}\n\n").as_bytes());
                let _ = s.finish();
            }
        }
    }

    #[test]
    fn fresh_ids_are_unique() {
        let a = fresh_id("resp");
        let b = fresh_id("resp");
        assert_ne!(a, b);
        assert!(a.starts_with("resp_"));
    }
}
