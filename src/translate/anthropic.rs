//! OpenAI Chat Completions -> Anthropic Messages (`POST /v1/messages`), and the answer back:
//! whole, streamed ([`AnthropicStream`]) and errors ([`error_to_openai`]).
//!
//! The upstream request needs the headers `x-api-key` and `anthropic-version: 2023-06-01`
//! ([`ANTHROPIC_VERSION`]); the body is built here.
//!
//! Mapping notes (the "why" of the less obvious choices):
//! - `system`/`developer` messages, wherever they are, become the top-level `system`:
//!   Anthropic has no system turns inside the conversation.
//! - Consecutive messages of the same role are merged (Anthropic requires alternation), and
//!   `tool` messages become `tool_result` blocks of a user turn.
//! - `response_format` json_schema/json_object has no native field in the stable API, so it is
//!   expressed as a forced tool named [`JSON_TOOL_NAME`] whose input schema is the requested
//!   schema; the answer converters turn that tool's input back into the message text. This
//!   cannot be combined with the client's own tools (a 400 naming `response_format`).
//! - `temperature` above 1 and `n` above 1 cannot be expressed: 400s naming the field.

use serde_json::{json, Map, Value};

use super::chat::{self, ChunkWriter, Image, JsonFormat, Part, ToolChoice};
use super::sse::{self, Convert, SseEvent, SseInput, DONE};
use super::{MappedError, TokenUsage, TranslateError};

/// The `anthropic-version` header value the request body is written for.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` when the client sets none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The forced tool that carries `response_format` (see the module docs).
pub const JSON_TOOL_NAME: &str = "ditto_json_response";

/// The upstream path of a Messages request.
pub const MESSAGES_PATH: &str = "/v1/messages";

/// Convert an OpenAI chat request to an Anthropic Messages request body. `model_override`
/// replaces the client's model (a backend's model mapping).
pub fn chat_to_messages(
    req: &Value,
    model_override: Option<&str>,
) -> Result<Value, TranslateError> {
    let req = super::expect_object(req, "body")?;
    let mut out = Map::new();
    let model = chat::request_model(req, model_override, "model is required")?;
    out.insert("model".into(), Value::String(model));

    if let Some(n) = super::opt_u64(req, "n")? {
        if n != 1 {
            return Err(TranslateError::field(
                "n",
                "Anthropic returns one choice per request; n must be 1",
            ));
        }
    }

    let messages = chat::messages(req)?;
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut has_tool_blocks = false;
    for (i, m) in messages.iter().enumerate() {
        let m = chat::message(m, i)?;
        let (msg, mf, cf) = (m.msg, &m.field, m.content_field.clone());
        let (role, blocks) = match m.role {
            "system" | "developer" => {
                let text = chat::content_text(msg.get("content"), &cf)?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => ("user", user_blocks(msg.get("content"), &cf)?),
            "assistant" => {
                let mut blocks = user_blocks(msg.get("content"), &cf)?;
                if blocks.iter().any(|b| b["type"] == "image") {
                    return Err(TranslateError::field(
                        cf,
                        "assistant messages cannot carry images",
                    ));
                }
                for call in chat::tool_calls(msg, i)? {
                    has_tool_blocks = true;
                    blocks.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments,
                    }));
                }
                if blocks.is_empty() {
                    // An empty assistant turn is refused by Anthropic and says nothing.
                    continue;
                }
                ("assistant", blocks)
            }
            "tool" => {
                has_tool_blocks = true;
                let id = super::opt_str(msg, "tool_call_id", &format!("{mf}.tool_call_id"))?
                    .ok_or_else(|| {
                        TranslateError::field(format!("{mf}.tool_call_id"), "missing tool_call_id")
                    })?;
                let content = match msg.get("content") {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    other => Value::Array(user_blocks(other, &cf)?),
                };
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": content})],
                )
            }
            _ => return Err(chat::unsupported_role(&m)),
        };
        match turns.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return Err(chat::no_turns());
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    out.insert("messages".into(), Value::Array(messages));

    match chat::max_tokens(req)? {
        Some(0) => {
            return Err(TranslateError::field(
                "max_tokens",
                "max_tokens must be at least 1",
            ))
        }
        Some(n) => out.insert("max_tokens".into(), json!(n)),
        None => out.insert("max_tokens".into(), json!(DEFAULT_MAX_TOKENS)),
    };
    if let Some(t) = super::opt_number(req, "temperature")? {
        if t.as_f64().is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(TranslateError::field(
                "temperature",
                "Anthropic accepts temperature from 0 to 1",
            ));
        }
        out.insert("temperature".into(), t);
    }
    if let Some(p) = super::opt_number(req, "top_p")? {
        out.insert("top_p".into(), p);
    }
    let stop = chat::stop_list(req.get("stop"), "stop")?;
    if !stop.is_empty() {
        out.insert("stop_sequences".into(), json!(stop));
    }
    if super::opt_bool(req, "stream")? == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = super::opt_str(req, "user", "user")? {
        out.insert("metadata".into(), json!({"user_id": user}));
    }

    // Tools and tool_choice.
    let tools = chat::function_tools(req)?;
    let choice = chat::tool_choice(req)?;
    let parallel = super::opt_bool(req, "parallel_tool_calls")?;
    let mut anthropic_tools: Vec<Value> = Vec::with_capacity(tools.len() + 1);
    for (i, t) in tools.iter().enumerate() {
        if t.name == JSON_TOOL_NAME {
            return Err(TranslateError::field(
                format!("tools[{i}].function.name"),
                format!("{JSON_TOOL_NAME} is reserved by the gateway"),
            ));
        }
        let mut tool = json!({
            "name": t.name,
            "input_schema": t.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
        if let Some(d) = &t.description {
            tool["description"] = Value::String(d.clone());
        }
        anthropic_tools.push(tool);
    }
    let mut tool_choice = match &choice {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Function(name)) => {
            if !tools.iter().any(|t| &t.name == name) {
                return Err(TranslateError::field(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not in tools"),
                ));
            }
            Some(json!({"type": "tool", "name": name}))
        }
        Some(ToolChoice::None) => {
            if has_tool_blocks {
                // Anthropic wants the tools defined when the history has tool blocks, so keep
                // them and forbid their use instead.
                Some(json!({"type": "none"}))
            } else {
                anthropic_tools.clear();
                None
            }
        }
    };
    if parallel == Some(false) && !anthropic_tools.is_empty() {
        let tc = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if tc["type"] != "none" {
            tc["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }

    if let Some(schema) = json_response_schema(req)? {
        if !anthropic_tools.is_empty() {
            return Err(TranslateError::field(
                "response_format",
                "response_format cannot be combined with tools for Anthropic backends",
            ));
        }
        anthropic_tools.push(json!({
            "name": JSON_TOOL_NAME,
            "description": "Respond with a JSON object matching this schema.",
            "input_schema": schema,
        }));
        tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL_NAME}));
    }
    if !anthropic_tools.is_empty() {
        out.insert("tools".into(), Value::Array(anthropic_tools));
    }
    if let Some(tc) = tool_choice {
        out.insert("tool_choice".into(), tc);
    }
    Ok(Value::Object(out))
}

/// The schema `response_format` asks for, if it asks for JSON. Anthropic tool inputs are
/// objects, so a schema whose root is not an object cannot be expressed.
fn json_response_schema(req: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    match chat::json_format(req)? {
        None => Ok(None),
        Some(JsonFormat::Object) => Ok(Some(json!({"type": "object"}))),
        Some(JsonFormat::Schema(schema)) => {
            let is_object_root = schema.get("type").and_then(Value::as_str) == Some("object");
            if !is_object_root {
                return Err(TranslateError::field(
                    "response_format.json_schema.schema",
                    "Anthropic backends can only express a schema whose root is an object",
                ));
            }
            Ok(Some(schema.clone()))
        }
    }
}

/// Content of a user (or tool/assistant) message as Anthropic blocks; empty text is dropped
/// because Anthropic refuses empty text blocks.
fn user_blocks(content: Option<&Value>, field: &str) -> Result<Vec<Value>, TranslateError> {
    let parts = chat::content_parts(content, field)?;
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Part::Text(t) if t.is_empty() => {}
            Part::Text(t) => blocks.push(json!({"type": "text", "text": t})),
            Part::Image(Image::Url(url)) => {
                blocks.push(json!({"type": "image", "source": {"type": "url", "url": url}}))
            }
            Part::Image(Image::Base64 { media_type, data }) => blocks.push(json!({
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            })),
        }
    }
    Ok(blocks)
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, absent.
        _ => "stop",
    }
}

/// Token usage from an Anthropic `usage` object. OpenAI's `prompt_tokens` includes cached
/// input, Anthropic's `input_tokens` does not: the cache counts are added back.
pub fn usage_from(u: &Value) -> TokenUsage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cache_read = n("cache_read_input_tokens");
    let cache_write = n("cache_creation_input_tokens");
    let prompt = n("input_tokens") + cache_read + cache_write;
    let completion = n("output_tokens");
    TokenUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        cached_tokens: cache_read,
        cache_creation_tokens: cache_write,
        reasoning_tokens: 0,
    }
}

/// Convert an Anthropic Messages response to an OpenAI `chat.completion`. `model` is the
/// model the client asked for (empty: the upstream's). A body that is not a message is a 502.
pub fn messages_to_chat_response(resp: &Value, model: &str) -> Result<Value, TranslateError> {
    let obj = resp
        .as_object()
        .filter(|o| o.get("type").and_then(Value::as_str) == Some("message"))
        .ok_or_else(|| TranslateError::upstream("Anthropic answer is not a message object"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut json_tool = false;
    for block in obj
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                if name == JSON_TOOL_NAME {
                    json_tool = true;
                    text.push_str(&input.to_string());
                    continue;
                }
                calls.push(chat::tool_call_json(
                    block.get("id").and_then(Value::as_str).unwrap_or(""),
                    name,
                    &input.to_string(),
                ));
            }
            // thinking, redacted_thinking, server tool blocks: nothing OpenAI-shaped to say.
            _ => {}
        }
    }
    let stop_reason = obj.get("stop_reason").and_then(Value::as_str);
    let finish = if json_tool && stop_reason == Some("tool_use") {
        "stop"
    } else {
        finish_reason(stop_reason)
    };
    let message = chat::assistant_message(text, calls);
    let usage = usage_from(obj.get("usage").unwrap_or(&Value::Null));
    Ok(chat::completion(
        obj.get("id").and_then(Value::as_str).unwrap_or(""),
        chat::reported_model(model, obj.get("model").and_then(Value::as_str)),
        vec![json!({"index": 0, "message": message, "logprobs": null, "finish_reason": finish})],
        &usage,
    ))
}

/// Anthropic error `type` -> (OpenAI status, OpenAI type). 529 (`overloaded_error`) has no
/// OpenAI equivalent; 503 says the same thing to OpenAI clients and their retry logic.
fn map_error_type(etype: &str, status: u16) -> (u16, &'static str) {
    match etype {
        "invalid_request_error" => (
            if status == 0 { 400 } else { status },
            "invalid_request_error",
        ),
        "authentication_error" => (401, "authentication_error"),
        "permission_error" => (403, "permission_error"),
        "not_found_error" => (404, "invalid_request_error"),
        "request_too_large" => (413, "invalid_request_error"),
        "rate_limit_error" => (429, "rate_limit_error"),
        "overloaded_error" => (503, "api_error"),
        "timeout_error" => (504, "api_error"),
        _ => {
            let s = match status {
                529 => 503,
                400..=599 => status,
                _ => 500,
            };
            (s, chat::openai_type_for_status(s))
        }
    }
}

/// Rewrite an Anthropic error answer (`{"type":"error","error":{"type","message"}}`) as an
/// OpenAI-shaped one with the matching status. A body that is not an Anthropic error keeps
/// the status (529 -> 503) and carries the text as the message.
pub fn error_to_openai(status: u16, body: &[u8]) -> MappedError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let etype = err
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| truncated_text(body));
    let (status, otype) = map_error_type(etype, status);
    let code = (!etype.is_empty()).then_some(etype);
    chat::openai_error(status, otype, code, &message)
}

/// A body's text for an error message, cut to a sane length.
pub(crate) fn truncated_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    if text.trim().is_empty() {
        "upstream error".to_string()
    } else {
        text.into_owned()
    }
}

/// What one Anthropic content block turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// A tool call, with its OpenAI `tool_calls[].index`.
    Tool(u64),
    /// The response_format tool: its input is the message text.
    Json,
    /// thinking and friends: dropped.
    Other,
}

/// Converts an Anthropic Messages SSE stream into OpenAI `chat.completion.chunk` SSE, event by
/// event: each upstream delta produces one chunk at once; nothing is held back but the
/// unfinished line.
#[derive(Debug)]
pub struct AnthropicStream {
    input: SseInput,
    writer: ChunkWriter,
    include_usage: bool,
    /// Content blocks by their Anthropic index.
    blocks: Vec<(u64, Block)>,
    next_tool: u64,
    json_tool: bool,
    usage: TokenUsage,
    saw_usage: bool,
    finished: bool,
}

impl AnthropicStream {
    /// A converter answering as `model`; `include_usage` adds the final usage chunk.
    pub fn new(model: &str, include_usage: bool) -> Self {
        AnthropicStream {
            input: SseInput::default(),
            writer: ChunkWriter::new(model),
            include_usage,
            blocks: Vec::new(),
            next_tool: 0,
            json_tool: false,
            usage: TokenUsage::default(),
            saw_usage: false,
            finished: false,
        }
    }

    /// The usage seen so far (input from `message_start`, output from `message_delta`).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.saw_usage.then_some(self.usage)
    }

    /// True once the stream ended (`message_stop`, an error, or [`Self::finish`]).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feed the next piece of the upstream body; returns the OpenAI SSE bytes it produced.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        sse::feed(self, input)
    }

    /// The upstream body ended. A stream cut before `message_stop` ends with an error event.
    pub fn finish(&mut self) -> Vec<u8> {
        sse::finish(self)
    }

    fn fail(&mut self, out: &mut Vec<u8>, message: &str) {
        chat::write_error_event(out, message, "api_error", Some("upstream_stream_error"));
        self.finished = true;
    }

    fn block(&self, index: u64) -> Block {
        self.blocks
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map_or(Block::Other, |(_, b)| *b)
    }

    fn event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            self.fail(out, "upstream sent an event that is not JSON");
            return;
        };
        let etype = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(ev.event.as_str());
        match etype {
            "message_start" => {
                let msg = v.get("message").unwrap_or(&Value::Null);
                if let Some(id) = msg.get("id").and_then(Value::as_str) {
                    self.writer.id = id.to_string();
                }
                if let Some(u) = msg.get("usage") {
                    self.usage = usage_from(u);
                    self.saw_usage = true;
                }
                self.writer
                    .delta(out, 0, json!({"role": "assistant", "content": ""}), None);
            }
            "content_block_start" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let cb = v.get("content_block").unwrap_or(&Value::Null);
                match cb.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        self.blocks.push((index, Block::Text));
                        let text = cb.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            self.writer.delta(out, 0, json!({"content": text}), None);
                        }
                    }
                    Some("tool_use") => {
                        let name = cb.get("name").and_then(Value::as_str).unwrap_or("");
                        if name == JSON_TOOL_NAME {
                            self.json_tool = true;
                            self.blocks.push((index, Block::Json));
                            return;
                        }
                        let tool_index = self.next_tool;
                        self.next_tool += 1;
                        self.blocks.push((index, Block::Tool(tool_index)));
                        let id = cb.get("id").and_then(Value::as_str).unwrap_or("");
                        self.writer.delta(
                            out,
                            0,
                            json!({"tool_calls": [{
                                "index": tool_index, "id": id, "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }]}),
                            None,
                        );
                    }
                    _ => self.blocks.push((index, Block::Other)),
                }
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = v.get("delta").unwrap_or(&Value::Null);
                match (self.block(index), delta.get("type").and_then(Value::as_str)) {
                    (Block::Text, Some("text_delta")) => {
                        let text = delta.get("text").and_then(Value::as_str).unwrap_or("");
                        self.writer.delta(out, 0, json!({"content": text}), None);
                    }
                    (Block::Tool(ti), Some("input_json_delta")) => {
                        let part = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        self.writer.delta(
                            out,
                            0,
                            json!({"tool_calls": [{"index": ti, "function": {"arguments": part}}]}),
                            None,
                        );
                    }
                    (Block::Json, Some("input_json_delta")) => {
                        let part = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        self.writer.delta(out, 0, json!({"content": part}), None);
                    }
                    // thinking_delta, signature_delta, citations_delta, or a block we drop.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    // message_delta counts are cumulative; input counts may be repeated.
                    let mut merged = self.usage;
                    if let Some(o) = u.get("output_tokens").and_then(Value::as_u64) {
                        merged.completion_tokens = o;
                    }
                    if u.get("input_tokens").is_some() {
                        let fresh = usage_from(u);
                        merged.prompt_tokens = fresh.prompt_tokens;
                        merged.cached_tokens = fresh.cached_tokens;
                        merged.cache_creation_tokens = fresh.cache_creation_tokens;
                    }
                    merged.total_tokens = merged.prompt_tokens + merged.completion_tokens;
                    self.usage = merged;
                    self.saw_usage = true;
                }
                let stop = v.pointer("/delta/stop_reason").and_then(Value::as_str);
                if stop.is_some() {
                    let finish = if self.json_tool && stop == Some("tool_use") {
                        "stop"
                    } else {
                        finish_reason(stop)
                    };
                    self.writer.delta(out, 0, json!({}), Some(finish));
                }
            }
            "message_stop" => {
                if self.include_usage {
                    self.usage.total_tokens =
                        self.usage.prompt_tokens + self.usage.completion_tokens;
                    self.writer.usage(out, &self.usage);
                }
                out.extend_from_slice(DONE);
                self.finished = true;
            }
            "error" => {
                let e = v.get("error").unwrap_or(&Value::Null);
                let atype = e.get("type").and_then(Value::as_str).unwrap_or("api_error");
                let message = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error");
                let (_, otype) = map_error_type(atype, 0);
                chat::write_error_event(out, message, otype, Some(atype));
                self.finished = true;
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
    }
}

impl Convert for AnthropicStream {
    fn input(&mut self) -> &mut SseInput {
        &mut self.input
    }

    fn done(&self) -> bool {
        self.finished
    }

    fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) {
        self.event(ev, out);
    }

    fn too_large(&mut self, out: &mut Vec<u8>) {
        self.fail(out, "upstream SSE event too large");
    }

    fn ended(&mut self, out: &mut Vec<u8>) {
        self.fail(out, "upstream stream ended before message_stop");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(req: Value) -> Value {
        chat_to_messages(&req, None).expect("converts")
    }

    fn err(req: Value) -> TranslateError {
        chat_to_messages(&req, None).expect_err("refused")
    }

    #[test]
    fn system_and_developer_hoisted_roles_merged_default_max_tokens() {
        let a = convert(json!({
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "text", "text": "use metric"}]},
                {"role": "user", "content": [{"type": "text", "text": "again"}]},
                {"role": "assistant", "content": "ok"},
            ],
            "frequency_penalty": 0.5,
            "stop": "END",
        }));
        assert_eq!(a["system"], "be brief\n\nuse metric");
        assert_eq!(a["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(a["stop_sequences"], json!(["END"]));
        let msgs = a["messages"].as_array().expect("messages");
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0]["role"], "user");
        assert_eq!(
            msgs[0]["content"],
            json!([{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}])
        );
        assert!(a.get("frequency_penalty").is_none());
        let a = chat_to_messages(
            &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7}),
            Some("claude-override"),
        )
        .expect("ok");
        assert_eq!(a["model"], "claude-override");
        assert_eq!(a["max_tokens"], 7);
    }

    #[test]
    fn images_url_and_base64_become_image_blocks() {
        let a = convert(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "low"}},
            ]}]}),
        );
        let c = &a["messages"][0]["content"];
        assert_eq!(
            c[1],
            json!({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}})
        );
        assert_eq!(
            c[2],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}})
        );
        let e = err(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "gopher://x"}}]}]}),
        );
        assert_eq!(
            e.field.as_deref(),
            Some("messages[0].content[0].image_url.url")
        );
    }

    #[test]
    fn tools_tool_calls_and_tool_results_round_trip_into_blocks() {
        let a = convert(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
                {"role": "user", "content": "thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
        }));
        assert_eq!(
            a["tools"][0],
            json!({"name": "get_weather", "description": "d",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}})
        );
        assert_eq!(
            a["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        let msgs = a["messages"].as_array().expect("messages");
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs[1]["content"][0],
            json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}})
        );
        let results = &msgs[2]["content"];
        assert_eq!(
            results[0],
            json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"})
        );
        assert_eq!(
            results[1]["content"],
            json!([{"type": "text", "text": "rain"}])
        );
        assert_eq!(results[2], json!({"type": "text", "text": "thanks"}));
    }

    #[test]
    fn tool_choice_mappings() {
        let base = |tc: Value| {
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": tc})
        };
        assert_eq!(
            convert(base(json!("auto")))["tool_choice"],
            json!({"type": "auto"})
        );
        let none = convert(base(json!("none")));
        assert!(none.get("tools").is_none() && none.get("tool_choice").is_none());
        assert_eq!(
            convert(base(json!({"type": "function", "function": {"name": "f"}})))["tool_choice"],
            json!({"type": "tool", "name": "f"})
        );
    }

    #[test]
    fn tool_choice_naming_an_unknown_tool_is_refused() {
        let e = err(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}}),
        );
        assert_eq!(e.field.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn tool_choice_none_with_tool_history_keeps_tools() {
        let a = convert(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t", "content": "r"}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}));
        assert_eq!(a["tool_choice"], json!({"type": "none"}));
        assert_eq!(a["tools"][0]["name"], "f");
    }

    #[test]
    fn inexpressible_requests_are_400s_naming_the_field() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        assert_eq!(
            err(json!({"model": "m", "messages": msgs, "n": 2}))
                .field
                .as_deref(),
            Some("n")
        );
        assert_eq!(
            err(json!({"model": "m", "messages": msgs, "temperature": 1.5}))
                .field
                .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            err(json!({"model": "m", "messages": msgs, "response_format":
                {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}}}))
            .field
            .as_deref(),
            Some("response_format.json_schema.schema")
        );
        assert_eq!(
            err(
                json!({"model": "m", "messages": msgs, "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": "f"}}]})
            )
            .field
            .as_deref(),
            Some("response_format")
        );
        assert_eq!(
            err(json!({"model": "m", "messages": msgs, "tools": [{"type": "web_search"}]}))
                .field
                .as_deref(),
            Some("tools[0].type")
        );
        assert_eq!(
            err(
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": "{bad"}}]}]})
            )
            .field
            .as_deref(),
            Some("messages[0].tool_calls[0].function.arguments")
        );
        assert_eq!(
            err(json!({"model": "m", "messages": "hi"}))
                .field
                .as_deref(),
            Some("messages")
        );
        assert_eq!(err(json!([1, 2])).field.as_deref(), Some("body"));
        assert_eq!(
            err(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))
                .field
                .as_deref(),
            Some("messages[0].tool_call_id")
        );
        assert_eq!(
            err(json!({"model": 5, "messages": msgs})).field.as_deref(),
            Some("model")
        );
    }

    #[test]
    fn response_format_json_schema_becomes_a_forced_tool_and_comes_back_as_text() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let a = convert(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}}),
        );
        assert_eq!(a["tools"][0]["name"], JSON_TOOL_NAME);
        assert_eq!(a["tools"][0]["input_schema"], schema);
        assert_eq!(
            a["tool_choice"],
            json!({"type": "tool", "name": JSON_TOOL_NAME})
        );
        let resp = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "tool_use", "id": "toolu_9", "name": JSON_TOOL_NAME, "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 2}});
        let c = messages_to_chat_response(&resp, "m").expect("converts");
        assert_eq!(c["choices"][0]["message"]["content"], "{\"a\":1}");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert!(c["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn response_text_tool_use_stop_reasons_and_cache_usage() {
        let resp = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}});
        let c = messages_to_chat_response(&resp, "my-model").expect("converts");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "my-model");
        let m = &c["choices"][0]["message"];
        assert_eq!(m["content"], "Let me check.");
        assert_eq!(m["tool_calls"][0]["id"], "toolu_1");
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["usage"]["prompt_tokens"], 130);
        assert_eq!(c["usage"]["completion_tokens"], 5);
        assert_eq!(c["usage"]["total_tokens"], 135);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        for (stop, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
        ] {
            let r = json!({"type": "message", "content": [{"type": "text", "text": "x"}], "stop_reason": stop});
            assert_eq!(
                messages_to_chat_response(&r, "m").expect("ok")["choices"][0]["finish_reason"],
                want
            );
        }
        assert_eq!(
            messages_to_chat_response(&json!({"type": "error"}), "m")
                .expect_err("502")
                .status,
            502
        );
        assert_eq!(
            messages_to_chat_response(&json!("x"), "m")
                .expect_err("502")
                .status,
            502
        );
    }

    #[test]
    fn errors_map_to_openai_shape_and_status() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let m = error_to_openai(529, body);
        assert_eq!(m.status, 503);
        let v: Value = serde_json::from_slice(&m.body).expect("json");
        assert_eq!(v["error"]["message"], "Overloaded");
        assert_eq!(v["error"]["code"], "overloaded_error");
        let cases = [
            (400, "invalid_request_error", 400, "invalid_request_error"),
            (401, "authentication_error", 401, "authentication_error"),
            (403, "permission_error", 403, "permission_error"),
            (404, "not_found_error", 404, "invalid_request_error"),
            (413, "request_too_large", 413, "invalid_request_error"),
            (429, "rate_limit_error", 429, "rate_limit_error"),
            (500, "api_error", 500, "api_error"),
        ];
        for (status, atype, want_status, want_type) in cases {
            let body =
                json!({"type": "error", "error": {"type": atype, "message": "m"}}).to_string();
            let m = error_to_openai(status, body.as_bytes());
            let v: Value = serde_json::from_slice(&m.body).expect("json");
            assert_eq!(
                (m.status, v["error"]["type"].as_str()),
                (want_status, Some(want_type)),
                "{atype}"
            );
        }
        let m = error_to_openai(529, b"<html>busy</html>");
        assert_eq!(m.status, 503);
        let v: Value = serde_json::from_slice(&m.body).expect("json");
        assert_eq!(v["error"]["message"], "<html>busy</html>");
    }

    /// A real-shaped stream: ping, text in pieces, a tool_use with input_json_delta in small
    /// pieces, then text again, cache usage.
    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":30,\"cache_creation_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_A\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"ci\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ty\\\": \\\"Par\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":25}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    use crate::translate::sse::data_payloads as datas;

    #[test]
    fn stream_converts_at_every_split_point_with_interleaved_text_and_tool() {
        let mut reference: Option<Vec<String>> = None;
        for step in [1, 2, 3, 7, 16, 64, STREAM.len()] {
            let mut s = AnthropicStream::new("my-model", true);
            let mut out = Vec::new();
            for piece in STREAM.as_bytes().chunks(step) {
                out.extend(s.feed(piece));
            }
            assert!(s.is_finished());
            out.extend(s.finish());
            let d = datas(&out);
            // Chunk ids and timestamps are fixed per stream; compare the shapes across splits.
            let stripped: Vec<String> = d.clone();
            if let Some(r) = &reference {
                assert_eq!(r, &stripped, "step {step}");
            } else {
                reference = Some(stripped);
            }
            let u = s.usage().expect("usage");
            assert_eq!(
                (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
                (42, 25, 30)
            );
        }
        let d = reference.expect("ran");
        assert_eq!(d.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = d[..d.len() - 1]
            .iter()
            .map(|c| serde_json::from_str(c).expect("json"))
            .collect();
        // role, Hel, lo, tool start, 4 arg deltas, "!", finish, usage.
        assert_eq!(chunks.len(), 11, "{chunks:#?}");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["id"], "msg_01");
        assert_eq!(chunks[0]["model"], "my-model");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hel");
        let start = &chunks[3]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(start["index"], 0);
        assert_eq!(start["id"], "toolu_A");
        assert_eq!(start["function"]["name"], "get_weather");
        let args: String = chunks[4..8]
            .iter()
            .map(|c| {
                let tc = &c["choices"][0]["delta"]["tool_calls"][0];
                assert_eq!(tc["index"], 0);
                assert!(tc.get("id").is_none());
                tc["function"]["arguments"]
                    .as_str()
                    .expect("str")
                    .to_string()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).expect("args json"),
            json!({"city": "Paris"})
        );
        assert_eq!(chunks[8]["choices"][0]["delta"]["content"], "!");
        assert_eq!(chunks[9]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[10]["choices"], json!([]));
        assert_eq!(chunks[10]["usage"]["prompt_tokens"], 42);
        assert_eq!(
            chunks[10]["usage"]["prompt_tokens_details"]["cached_tokens"],
            30
        );
        assert_eq!(chunks[10]["usage"]["total_tokens"], 67);
    }

    #[test]
    fn stream_emits_one_chunk_per_delta_without_waiting() {
        let mut s = AnthropicStream::new("m", false);
        let head = STREAM.find("event: content_block_stop").expect("pos");
        let out = s.feed(&STREAM.as_bytes()[..head]);
        // role chunk + 2 text deltas, available before the rest of the stream exists.
        assert_eq!(datas(&out).len(), 3);
    }

    #[test]
    fn stream_error_event_mid_stream_becomes_openai_error_event() {
        let mut s = AnthropicStream::new("m", true);
        let mut out = s.feed(
            STREAM
                .split("event: content_block_stop")
                .next()
                .expect("head")
                .as_bytes(),
        );
        out.extend(s.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"));
        assert!(s.is_finished());
        out.extend(s.feed(b"data: {\"type\":\"message_stop\"}\n\n"));
        out.extend(s.finish());
        let d = datas(&out);
        let last: Value = serde_json::from_str(d.last().expect("events")).expect("json");
        assert_eq!(last["error"]["message"], "Overloaded");
        assert_eq!(last["error"]["code"], "overloaded_error");
        assert!(!d.iter().any(|x| x == "[DONE]"));
        // Budgets can still settle on what was seen.
        assert_eq!(s.usage().map(|u| u.prompt_tokens), Some(42));
    }

    #[test]
    fn stream_cut_before_message_stop_ends_with_an_error_event() {
        let mut s = AnthropicStream::new("m", false);
        let mut out = s.feed(&STREAM.as_bytes()[..STREAM.len() / 2]);
        out.extend(s.finish());
        let d = datas(&out);
        let last: Value = serde_json::from_str(d.last().expect("events")).expect("json");
        assert_eq!(last["error"]["code"], "upstream_stream_error");
    }

    #[test]
    fn stream_garbage_never_panics() {
        let inputs: [&[u8]; 6] = [
            b"data: not json\n\n",
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":\"x\",\"delta\":7}\n\n",
            b"data: {\"type\":\"message_start\",\"message\":5}\n\n",
            b"data: {\"type\":\"content_block_start\",\"content_block\":null}\n\n",
            b"data: []\n\n",
            b"\xff\xfe\r\r\n\n",
        ];
        for input in inputs {
            let mut s = AnthropicStream::new("m", true);
            let _ = s.feed(input);
            let _ = s.finish();
        }
    }
}
