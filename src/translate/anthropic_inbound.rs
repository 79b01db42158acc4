//! Inbound Anthropic: `POST /v1/messages` (and `/v1/messages/count_tokens`) from Anthropic SDK
//! clients and coding agents, served by an OpenAI-shaped upstream. The mirror image of
//! [`super::anthropic`]: Anthropic request -> chat request ([`messages_to_chat`]), chat
//! answer -> Anthropic message ([`chat_to_messages_response`]), chat SSE -> Anthropic events
//! ([`ChatToAnthropicStream`]), and Anthropic-shaped errors ([`error_body`],
//! [`openai_error_to_anthropic`]).
//!
//! The stream keeps Anthropic's event order: `message_start`, then per block
//! `content_block_start`, `content_block_delta`..., `content_block_stop`, then
//! `message_delta` (stop reason and usage) and `message_stop`. Chat streams report usage in a
//! chunk after the finish reason, so `message_delta` goes out at `[DONE]`.

use serde_json::{json, Map, Value};

use super::chat::{self, StreamEvent};
use super::sse::{self, write_event, Convert, SseEvent, SseInput};
use super::{MappedError, TokenUsage, TranslateError};

/// The Anthropic error body `{"type":"error","error":{"type","message"}}`.
pub fn error_body(etype: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "error", "error": {"type": etype, "message": message}}))
        .unwrap_or_default()
}

/// The Anthropic error `type` for an HTTP status (gateway-made errors included: 402 is
/// `billing_error`).
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ if (400..500).contains(&status) => "invalid_request_error",
        _ => "api_error",
    }
}

/// Rewrite an OpenAI-shaped error answer (upstream or gateway-made) as an Anthropic one, same
/// status.
pub fn openai_error_to_anthropic(status: u16, body: &[u8]) -> MappedError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| super::anthropic::truncated_text(body));
    let status = chat::error_status(status);
    MappedError {
        status,
        body: error_body(error_type_for_status(status), &message),
    }
}

/// Convert an Anthropic Messages request to an OpenAI chat request. `model_override` replaces
/// the client's model.
pub fn messages_to_chat(
    req: &Value,
    model_override: Option<&str>,
) -> Result<Value, TranslateError> {
    let req = super::expect_object(req, "body")?;
    let model = chat::request_model(req, model_override, "model: Field required")?;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let mut messages: Vec<Value> = Vec::new();
    let system = system_text(req.get("system"))?;
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    let list = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::field("messages", "messages: Field required"))?;
    for (i, m) in list.iter().enumerate() {
        let mf = format!("messages[{i}]");
        let msg = super::expect_object(m, &mf)?;
        let role = super::opt_str(msg, "role", &format!("{mf}.role"))?.unwrap_or("");
        let cf = format!("{mf}.content");
        match role {
            "user" => user_message(msg.get("content"), &cf, &mut messages)?,
            "assistant" => messages.push(assistant_message(msg.get("content"), &cf)?),
            other => {
                return Err(TranslateError::field(
                    format!("{mf}.role"),
                    format!("role {other:?} is not one of user, assistant"),
                ))
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    let max_tokens = super::opt_u64(req, "max_tokens")?
        .ok_or_else(|| TranslateError::field("max_tokens", "max_tokens: Field required"))?;
    out.insert("max_tokens".into(), json!(max_tokens));
    for key in ["temperature", "top_p"] {
        if let Some(v) = super::opt_number(req, key)? {
            out.insert(key.into(), v);
        }
    }
    if let Some(stops) = req.get("stop_sequences").filter(|v| !v.is_null()) {
        let stops = chat::stop_list(Some(stops), "stop_sequences")?;
        if !stops.is_empty() {
            out.insert("stop".into(), json!(stops));
        }
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    if super::opt_bool(req, "stream")? == Some(true) {
        out.insert("stream".into(), json!(true));
        // The usage chunk is what message_delta reports and budgets settle on.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }

    let tools = chat::flat_tools(req, |f, t, ttype| {
        match ttype {
            None | Some("custom") => {}
            Some(other) => {
                return Err(TranslateError::field(
                    format!("{f}.type"),
                    format!(
                        "server tool {other:?} cannot be served by an OpenAI-compatible backend"
                    ),
                ))
            }
        }
        let name = super::opt_str(t, "name", &format!("{f}.name"))?
            .ok_or_else(|| TranslateError::field(format!("{f}.name"), "name: Field required"))?;
        let mut func = json!({
            "name": name,
            "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
        });
        if let Some(d) = super::opt_str(t, "description", &format!("{f}.description"))? {
            func["description"] = json!(d);
        }
        Ok(func)
    })?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let tc = super::expect_object(tc, "tool_choice")?;
        let choice = match super::opt_str(tc, "type", "tool_choice.type")? {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = super::opt_str(tc, "name", "tool_choice.name")?.ok_or_else(|| {
                    TranslateError::field("tool_choice.name", "name: Field required")
                })?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => {
                return Err(TranslateError::field(
                    "tool_choice.type",
                    "tool_choice.type must be auto, any, tool or none",
                ))
            }
        };
        out.insert("tool_choice".into(), choice);
        if super::opt_bool(tc, "disable_parallel_tool_use")? == Some(true)
            && out.contains_key("tools")
        {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(Value::Object(out))
}

/// `system`: a string or an array of text blocks.
fn system_text(system: Option<&Value>) -> Result<String, TranslateError> {
    match system {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut text = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                match (
                    b.get("type").and_then(Value::as_str),
                    b.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push(t),
                    _ => {
                        return Err(TranslateError::field(
                            format!("system[{i}]"),
                            "system blocks must be text blocks",
                        ))
                    }
                }
            }
            Ok(text.join("\n"))
        }
        Some(_) => Err(TranslateError::field(
            "system",
            "system must be a string or an array of text blocks",
        )),
    }
}

/// A content field as a list of blocks (a string is one text block).
fn blocks_of<'a>(
    content: Option<&'a Value>,
    field: &str,
) -> Result<Vec<std::borrow::Cow<'a, Value>>, TranslateError> {
    match content {
        Some(Value::String(s)) => Ok(vec![std::borrow::Cow::Owned(
            json!({"type": "text", "text": s}),
        )]),
        Some(Value::Array(blocks)) => Ok(blocks.iter().map(std::borrow::Cow::Borrowed).collect()),
        _ => Err(TranslateError::field(
            field,
            "content must be a string or an array of content blocks",
        )),
    }
}

/// An image block's source as a chat `image_url` part.
fn image_part(block: &Value, f: &str) -> Result<Value, TranslateError> {
    let source = block
        .get("source")
        .ok_or_else(|| TranslateError::field(format!("{f}.source"), "source: Field required"))?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let mt = source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("");
            let data = source.get("data").and_then(Value::as_str).unwrap_or("");
            format!("data:{mt};base64,{data}")
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => {
            return Err(TranslateError::field(
                format!("{f}.source.type"),
                "only base64 and url image sources can be forwarded",
            ))
        }
    };
    // Validate the same way outbound translation does, so a bad image is a clear 400 here.
    super::chat::parse_image_url(&url, &format!("{f}.source"))?;
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `document` block as a chat part: PDF data as a `file` part, plain text as text.
fn document_part(block: &Value, f: &str) -> Result<Value, TranslateError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    match (
        source.get("type").and_then(Value::as_str),
        source.get("media_type").and_then(Value::as_str),
    ) {
        (Some("base64"), Some(mt)) => {
            let data = source.get("data").and_then(Value::as_str).unwrap_or("");
            let name = block
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("document.pdf");
            Ok(
                json!({"type": "file", "file": {"filename": name, "file_data": format!("data:{mt};base64,{data}")}}),
            )
        }
        (Some("text"), _) => Ok(json!({"type": "text",
            "text": source.get("data").and_then(Value::as_str).unwrap_or("")})),
        _ => Err(TranslateError::field(
            format!("{f}.source"),
            "only base64 and text document sources can be forwarded",
        )),
    }
}

/// A user turn: `tool_result` blocks become `tool` messages (first, since they answer the
/// previous assistant turn), the rest one user message.
fn user_message(
    content: Option<&Value>,
    f: &str,
    messages: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let blocks = blocks_of(content, f)?;
    let mut parts: Vec<Value> = Vec::new();
    let mut tool_images: Vec<Value> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bf = format!("{f}[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text",
                "text": b.get("text").and_then(Value::as_str).unwrap_or("")})),
            Some("image") => parts.push(image_part(b, &bf)?),
            Some("document") => parts.push(document_part(b, &bf)?),
            Some("tool_result") => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        TranslateError::field(
                            format!("{bf}.tool_use_id"),
                            "tool_use_id: Field required",
                        )
                    })?;
                let mut text = Vec::new();
                match b.get("content") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => text.push(s.clone()),
                    Some(Value::Array(inner)) => {
                        for (k, ib) in inner.iter().enumerate() {
                            match ib.get("type").and_then(Value::as_str) {
                                Some("text") => text.push(
                                    ib.get("text")
                                        .and_then(Value::as_str)
                                        .unwrap_or("")
                                        .to_string(),
                                ),
                                // Chat tool messages are text only: images ride in a user
                                // message right after the tool results.
                                Some("image") => {
                                    tool_images.push(image_part(ib, &format!("{bf}.content[{k}]"))?)
                                }
                                _ => {
                                    return Err(TranslateError::field(
                                        format!("{bf}.content[{k}].type"),
                                        "tool results can hold text and image blocks",
                                    ))
                                }
                            }
                        }
                    }
                    Some(_) => {
                        return Err(TranslateError::field(
                            format!("{bf}.content"),
                            "content must be a string or an array of blocks",
                        ))
                    }
                }
                let mut content = text.join("\n");
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    content = format!("Error: {content}");
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            // Thinking is the model's own; an OpenAI upstream cannot take it back.
            Some("thinking") | Some("redacted_thinking") => {}
            other => {
                return Err(TranslateError::field(
                    format!("{bf}.type"),
                    format!(
                        "content block type {:?} cannot be forwarded",
                        other.unwrap_or("")
                    ),
                ))
            }
        }
    }
    parts.extend(tool_images);
    if parts.is_empty() {
        return Ok(());
    }
    let only_text = parts.iter().all(|p| p["type"] == "text");
    let content = if only_text && parts.len() == 1 {
        parts[0]["text"].clone()
    } else {
        Value::Array(parts)
    };
    messages.push(json!({"role": "user", "content": content}));
    Ok(())
}

/// An assistant turn: text blocks joined, `tool_use` blocks as `tool_calls`.
fn assistant_message(content: Option<&Value>, f: &str) -> Result<Value, TranslateError> {
    let blocks = blocks_of(content, f)?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bf = format!("{f}[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let id = b.get("id").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::field(format!("{bf}.id"), "id: Field required")
                })?;
                let name = b.get("name").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::field(format!("{bf}.name"), "name: Field required")
                })?;
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": input.to_string()}}));
            }
            Some("thinking") | Some("redacted_thinking") => {}
            other => {
                return Err(TranslateError::field(
                    format!("{bf}.type"),
                    format!(
                        "content block type {:?} cannot be forwarded",
                        other.unwrap_or("")
                    ),
                ))
            }
        }
    }
    let mut msg = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    Ok(msg)
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason`.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic `usage` from token counts: cached input is reported apart from `input_tokens`.
fn usage_json(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": u.cache_creation_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    })
}

/// Tool call arguments as an Anthropic `input` object. Arguments that are not a JSON object
/// are kept as a string under `_raw_arguments` rather than lost.
fn input_of(args: &str) -> Value {
    if args.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw_arguments": args}),
    }
}

/// Convert a whole `chat.completion` into an Anthropic message. `model` is the model the
/// client asked for (empty: the upstream's).
pub fn chat_to_messages_response(chat_resp: &Value, model: &str) -> Result<Value, TranslateError> {
    let choice = chat::first_choice(chat_resp)?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    if let Some(r) = msg
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": r}));
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let call = chat::call_fields(call);
        content.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": input_of(call.arguments),
        }));
    }
    let usage = TokenUsage::from_openai(chat_resp.get("usage").unwrap_or(&Value::Null));
    let model = chat::reported_model(model, chat_resp.get("model").and_then(Value::as_str));
    Ok(json!({
        "id": super::fresh_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage_json(&usage),
    }))
}

/// A rough input token count for `/v1/messages/count_tokens`: about four bytes a token over
/// the system prompt, text, tool inputs and results and tool definitions, a few tokens per
/// message, and a flat 1600 per image (Anthropic's ceiling for a full-size image).
pub fn count_tokens(req: &Value) -> Result<u64, TranslateError> {
    let obj = super::expect_object(req, "body")?;
    let mut total = super::estimate_tokens(&system_text(obj.get("system"))?);
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::field("messages", "messages: Field required"))?;
    for m in messages {
        total += 4;
        match m.get("content") {
            Some(Value::String(s)) => total += super::estimate_tokens(s),
            Some(Value::Array(blocks)) => {
                for b in blocks {
                    total += block_tokens(b);
                }
            }
            _ => {}
        }
    }
    for t in obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        total += super::estimate_tokens(&t.to_string());
    }
    Ok(total.max(1))
}

fn block_tokens(b: &Value) -> u64 {
    match b.get("type").and_then(Value::as_str) {
        Some("text") => super::estimate_tokens(b.get("text").and_then(Value::as_str).unwrap_or("")),
        Some("image") | Some("document") => 1600,
        Some("tool_use") => {
            super::estimate_tokens(&b.get("input").map(Value::to_string).unwrap_or_default())
        }
        Some("tool_result") => match b.get("content") {
            Some(Value::String(s)) => super::estimate_tokens(s),
            Some(Value::Array(inner)) => inner.iter().map(block_tokens).sum(),
            _ => 0,
        },
        _ => 0,
    }
}

/// The block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    /// A tool call, by its chat `tool_calls[].index`.
    Tool(u64),
}

/// Converts a chat completion SSE stream into Anthropic Messages SSE events.
#[derive(Debug)]
pub struct ChatToAnthropicStream {
    input: SseInput,
    id: String,
    model: String,
    input_estimate: u64,
    started: bool,
    /// Index of the next content block.
    next_block: u64,
    open: Option<OpenBlock>,
    /// Chat tool indexes already given a block, with that block's index.
    tool_blocks: Vec<(u64, u64)>,
    finish_reason: Option<String>,
    usage: Option<TokenUsage>,
    finished: bool,
}

impl ChatToAnthropicStream {
    /// A converter answering as `model`; `input_estimate` is the `input_tokens` reported in
    /// `message_start` (the chat stream only tells the real count at its end, in
    /// `message_delta`).
    pub fn new(model: &str, input_estimate: u64) -> Self {
        ChatToAnthropicStream {
            input: SseInput::default(),
            id: super::fresh_id("msg"),
            model: model.to_string(),
            input_estimate,
            started: false,
            next_block: 0,
            open: None,
            tool_blocks: Vec::new(),
            finish_reason: None,
            usage: None,
            finished: false,
        }
    }

    /// The usage of the upstream's usage chunk, if it came.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// True once `message_stop` or an error event went out.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feed the next piece of the upstream chat SSE body; returns Anthropic SSE bytes.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        sse::feed(self, input)
    }

    /// The upstream body ended: a missing `[DONE]` after a finish reason is forgiven; a stream
    /// cut before one ends with an `error` event.
    pub fn finish(&mut self) -> Vec<u8> {
        sse::finish(self)
    }

    fn error(&mut self, out: &mut Vec<u8>, etype: &str, message: &str) {
        write_event(
            out,
            "error",
            &json!({"type": "error", "error": {"type": etype, "message": message}}),
        );
        self.finished = true;
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        write_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
            }}),
        );
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            let index = self.next_block - 1;
            write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, kind: OpenBlock, block: Value) -> u64 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some(kind);
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn event(&mut self, data: &str, out: &mut Vec<u8>) {
        let v = match chat::stream_event(data) {
            StreamEvent::Done => {
                self.start(out);
                self.end(out);
                return;
            }
            StreamEvent::NotJson => {
                self.error(out, "api_error", "upstream sent an event that is not JSON");
                return;
            }
            StreamEvent::Error(err) => {
                self.stream_error(out, &err);
                return;
            }
            StreamEvent::Chunk(v) => v,
        };
        self.start(out);
        if let Some(u) = chat::usage_of(&v) {
            self.usage = Some(u);
        }
        let Some(choice) = chat::choice_zero(&v) else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = chat::delta_text(delta, "content") {
            if self.open != Some(OpenBlock::Text) {
                self.open_block(out, OpenBlock::Text, json!({"type": "text", "text": ""}));
            }
            let index = self.next_block - 1;
            write_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let call = chat::call_fields(call);
            let ci = call.index;
            let block = match self.tool_blocks.iter().find(|(c, _)| *c == ci) {
                Some(&(_, b)) => b,
                None => {
                    let b = self.open_block(
                        out,
                        OpenBlock::Tool(ci),
                        json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}),
                    );
                    self.tool_blocks.push((ci, b));
                    b
                }
            };
            if !call.arguments.is_empty() {
                write_event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": block,
                            "delta": {"type": "input_json_delta", "partial_json": call.arguments}}),
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(f.to_string());
            self.close_block(out);
        }
    }

    /// An upstream error event, as an Anthropic `error` event of the nearest type.
    fn stream_error(&mut self, out: &mut Vec<u8>, err: &Value) {
        let message = chat::error_message(err);
        let etype = match err.get("type").and_then(Value::as_str) {
            Some("rate_limit_error") => "rate_limit_error",
            Some("invalid_request_error") => "invalid_request_error",
            _ if err.get("code").and_then(Value::as_str) == Some("overloaded_error") => {
                "overloaded_error"
            }
            _ => "api_error",
        };
        self.error(out, etype, &message);
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.close_block(out);
        let mut usage = match &self.usage {
            Some(u) => usage_json(u),
            None => json!({"output_tokens": 0}),
        };
        if self.usage.is_none() {
            usage["input_tokens"] = json!(self.input_estimate);
        }
        write_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
                    "usage": usage}),
        );
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.finished = true;
    }
}

impl Convert for ChatToAnthropicStream {
    fn input(&mut self) -> &mut SseInput {
        &mut self.input
    }

    fn done(&self) -> bool {
        self.finished
    }

    fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) {
        self.event(&ev.data, out);
    }

    fn too_large(&mut self, out: &mut Vec<u8>) {
        self.error(out, "api_error", "upstream SSE event too large");
    }

    fn ended(&mut self, out: &mut Vec<u8>) {
        if self.finish_reason.is_some() {
            self.end(out);
        } else {
            self.error(out, "api_error", "upstream stream ended before completion");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_system_blocks_images_tools_and_tool_results() {
        let c = messages_to_chat(
            &json!({
                "model": "claude-sonnet",
                "max_tokens": 1024,
                "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": 1}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a cat"}]},
                        {"type": "text", "text": "so?"}]},
                ],
                "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "stop_sequences": ["END"], "temperature": 0.5, "top_k": 5, "stream": true,
                "metadata": {"user_id": "u1"},
            }),
            None,
        )
        .expect("converts");
        let m = c["messages"].as_array().expect("messages");
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(
            m[1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}})
        );
        assert_eq!(
            m[1]["content"][2]["image_url"]["url"],
            "https://x.test/a.jpg"
        );
        assert_eq!(m[2]["content"], "Checking.");
        assert_eq!(
            m[2]["tool_calls"],
            json!([{"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}])
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"})
        );
        assert_eq!(m[4], json!({"role": "user", "content": "so?"}));
        assert_eq!(
            c["tools"][0],
            json!({"type": "function", "function": {"name": "look", "description": "d", "parameters": {"type": "object"}}})
        );
        assert_eq!(c["tool_choice"], "required");
        assert_eq!(c["parallel_tool_calls"], false);
        assert_eq!(c["stop"], json!(["END"]));
        assert_eq!(c["max_tokens"], 1024);
        assert_eq!(c["user"], "u1");
        assert_eq!(c["stream_options"], json!({"include_usage": true}));
        assert!(c.get("top_k").is_none());
        let tc = |v: Value| {
            messages_to_chat(
                &json!({"model": "m", "max_tokens": 1, "messages": [], "tool_choice": v}),
                None,
            )
            .expect("ok")["tool_choice"]
                .clone()
        };
        assert_eq!(tc(json!({"type": "auto"})), json!("auto"));
        assert_eq!(tc(json!({"type": "none"})), json!("none"));
        assert_eq!(
            tc(json!({"type": "tool", "name": "f"})),
            json!({"type": "function", "function": {"name": "f"}})
        );
    }

    #[test]
    fn request_errors_name_the_field() {
        let cases = [
            (json!({"model": "m", "messages": []}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 5}), "messages"),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "nope"}}]}]}),
                "messages[0].content[0].source",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "container_upload"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [], "tool_choice": {"type": "sometimes"}}),
                "tool_choice.type",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
        ];
        for (req, field) in cases {
            let e = messages_to_chat(&req, None).expect_err(field);
            assert_eq!(e.field.as_deref(), Some(field), "{req}");
            let body: Value = serde_json::from_slice(&e.anthropic_body()).expect("json");
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn response_text_tool_use_stop_reason_and_cache_usage() {
        let chat = json!({"id": "c1", "model": "up", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "bad", "arguments": "[oops"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                      "prompt_tokens_details": {"cached_tokens": 60}}});
        let a = chat_to_messages_response(&chat, "claude-x").expect("converts");
        assert_eq!(a["type"], "message");
        assert_eq!(a["model"], "claude-x");
        assert!(a["id"].as_str().is_some_and(|i| i.starts_with("msg_")));
        assert_eq!(
            a["content"][0],
            json!({"type": "text", "text": "Let me look."})
        );
        assert_eq!(
            a["content"][1],
            json!({"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": 1}})
        );
        assert_eq!(a["content"][2]["input"], json!({"_raw_arguments": "[oops"}));
        assert_eq!(a["stop_reason"], "tool_use");
        assert_eq!(
            a["usage"],
            json!({"input_tokens": 40, "output_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 60})
        );
        for (f, s) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("content_filter", "refusal"),
        ] {
            let chat = json!({"choices": [{"finish_reason": f, "message": {"content": "x"}}]});
            assert_eq!(
                chat_to_messages_response(&chat, "m").expect("ok")["stop_reason"],
                s
            );
        }
        assert_eq!(
            chat_to_messages_response(&json!({}), "m")
                .expect_err("502")
                .status,
            502
        );
    }

    #[test]
    fn errors_are_anthropic_shaped() {
        let m = openai_error_to_anthropic(
            429,
            br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
        );
        assert_eq!(m.status, 429);
        let v: Value = serde_json::from_slice(&m.body).expect("json");
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
        assert_eq!(error_type_for_status(402), "billing_error");
        assert_eq!(error_type_for_status(503), "overloaded_error");
        assert_eq!(error_type_for_status(400), "invalid_request_error");
        assert_eq!(openai_error_to_anthropic(200, b"").status, 502);
    }

    #[test]
    fn count_tokens_is_rough_but_monotonic() {
        let small =
            count_tokens(&json!({"messages": [{"role": "user", "content": "hi"}]})).expect("ok");
        let big = count_tokens(&json!({"system": "a long system prompt here",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there, a longer question"},
                                                       {"type": "image", "source": {}}]}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}]}))
        .expect("ok");
        assert!(small >= 1 && big > small + 1600, "{small} {big}");
        assert!(count_tokens(&json!({"messages": 3})).is_err());
    }

    use crate::translate::chat::test_chunk as chunk;
    use crate::translate::sse::named_events as events;

    #[test]
    fn stream_event_order_text_then_tool_with_usage_in_message_delta() {
        let mut input = chunk(json!({"role": "assistant", "content": ""}), None);
        input += &chunk(json!({"content": "Hi"}), None);
        input += &chunk(json!({"content": " there"}), None);
        input += &chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "look", "arguments": ""}}]}),
            None,
        );
        for p in ["{\"q\"", ":1", "}"] {
            input += &chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
                None,
            );
        }
        input += &chunk(json!({}), Some("tool_calls"));
        input += "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":9,\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":5}}}\n\n";
        input += "data: [DONE]\n\n";
        for step in [1, 7, input.len()] {
            let mut s = ChatToAnthropicStream::new("claude-x", 17);
            let mut out = Vec::new();
            for piece in input.as_bytes().chunks(step) {
                out.extend(s.feed(piece));
            }
            out.extend(s.finish());
            let ev = events(&out);
            let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop",
                ],
                "step {step}"
            );
            assert_eq!(ev[0].1["message"]["usage"]["input_tokens"], 17);
            assert_eq!(ev[0].1["message"]["model"], "claude-x");
            assert_eq!(
                ev[2].1["delta"],
                json!({"type": "text_delta", "text": "Hi"})
            );
            assert_eq!(ev[5].1["index"], 1);
            assert_eq!(
                ev[5].1["content_block"],
                json!({"type": "tool_use", "id": "call_1", "name": "look", "input": {}})
            );
            assert_eq!(
                ev[6].1["delta"],
                json!({"type": "input_json_delta", "partial_json": "{\"q\""})
            );
            assert_eq!(ev[9].1["index"], 1);
            assert_eq!(ev[10].1["delta"]["stop_reason"], "tool_use");
            assert_eq!(ev[10].1["usage"]["output_tokens"], 9);
            assert_eq!(ev[10].1["usage"]["input_tokens"], 15);
            assert_eq!(ev[10].1["usage"]["cache_read_input_tokens"], 5);
            assert_eq!(s.usage().map(|u| u.total_tokens), Some(29));
        }
    }

    #[test]
    fn stream_upstream_error_and_cut_become_anthropic_error_events() {
        let mut s = ChatToAnthropicStream::new("m", 1);
        let mut out = s.feed(chunk(json!({"content": "Hi"}), None).as_bytes());
        out.extend(s.feed(b"data: {\"error\":{\"message\":\"boom\",\"type\":\"api_error\",\"code\":\"overloaded_error\"}}\n\n"));
        out.extend(s.finish());
        let ev = events(&out);
        let (name, last) = ev.last().expect("events");
        assert_eq!(name, "error");
        assert_eq!(
            last["error"],
            json!({"type": "overloaded_error", "message": "boom"})
        );

        let mut s = ChatToAnthropicStream::new("m", 1);
        let mut out = s.feed(chunk(json!({"content": "Hi"}), None).as_bytes());
        out.extend(s.finish());
        assert_eq!(events(&out).last().map(|(n, _)| n.as_str()), Some("error"));

        // A finish reason without [DONE] still ends properly.
        let mut s = ChatToAnthropicStream::new("m", 1);
        let mut out = s.feed(
            (chunk(json!({"content": "Hi"}), None) + &chunk(json!({}), Some("stop"))).as_bytes(),
        );
        out.extend(s.finish());
        let ev = events(&out);
        assert_eq!(ev.last().map(|(n, _)| n.as_str()), Some("message_stop"));
        assert_eq!(ev[ev.len() - 2].1["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn stream_garbage_never_panics() {
        for input in [
            &b"data: {\"choices\": [{\"delta\": {\"tool_calls\": [{\"index\": 5}]}}]}\n\n"[..],
            b"data: {\"choices\": \"x\"}\n\n",
            b"data: {\"error\": []}\n\n",
            b"data: \xff\n\n",
        ] {
            let mut s = ChatToAnthropicStream::new("m", 0);
            let _ = s.feed(input);
            let _ = s.finish();
        }
    }
}
