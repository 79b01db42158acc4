//! The Responses API shim (REFERENCE section 6): a `POST /v1/responses` request served by a
//! Chat Completions upstream. [`responses_to_chat`] converts the request,
//! [`chat_to_response`] the whole answer, and [`ResponsesStream`] the SSE stream, event by
//! event, into the Responses event sequence:
//!
//! `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added`, (`response.content_part.added`,
//! `response.output_text.delta`..., `response.output_text.done`, `response.content_part.done`)
//! or (`response.function_call_arguments.delta`..., `response.function_call_arguments.done`),
//! `response.output_item.done`, and finally `response.completed`, `response.incomplete`
//! (`finish_reason` length or content_filter) or `response.failed` (an upstream error event
//! or a cut stream). Every event carries a `sequence_number` from 0.
//!
//! State that a stateless chat upstream cannot have (`previous_response_id`, hosted tools,
//! `background`) is refused with a 400 naming the field.

use serde_json::{json, Map, Value};

use super::chat::{self, StreamEvent};
use super::sse::{self, write_event, Convert, SseEvent, SseInput};
use super::{TokenUsage, TranslateError};

/// Request fields echoed into the response object, with their defaults.
const ECHOED: &[&str] = &[
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "user",
];

/// Convert a Responses request into a Chat Completions request.
pub fn responses_to_chat(req: &Value) -> Result<Value, TranslateError> {
    let req = super::expect_object(req, "body")?;
    let model = super::opt_str(req, "model", "model")?
        .ok_or_else(|| TranslateError::field("model", "model is required"))?;
    if super::opt_str(req, "previous_response_id", "previous_response_id")?.is_some() {
        return Err(TranslateError::field(
            "previous_response_id",
            "previous_response_id needs a stateful Responses upstream; send the whole conversation as input",
        ));
    }
    if super::opt_bool(req, "background")? == Some(true) {
        return Err(TranslateError::field(
            "background",
            "background responses are not supported through the chat completions shim",
        ));
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));

    let mut messages: Vec<Value> = Vec::new();
    if let Some(instr) = super::opt_str(req, "instructions", "instructions")? {
        messages.push(json!({"role": "system", "content": instr}));
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => input_items(items, &mut messages)?,
        None | Some(Value::Null) => {
            return Err(TranslateError::field("input", "input is required"))
        }
        Some(_) => {
            return Err(TranslateError::field(
                "input",
                "input must be a string or an array of items",
            ))
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    let tools = chat::flat_tools(req, |f, t, ttype| {
        match ttype {
            Some("function") => {}
            other => {
                return Err(TranslateError::field(
                    format!("{f}.type"),
                    format!(
                        "tool type {:?} is not supported through the chat completions shim",
                        other.unwrap_or("")
                    ),
                ))
            }
        }
        let name = super::opt_str(t, "name", &format!("{f}.name"))?
            .ok_or_else(|| TranslateError::field(format!("{f}.name"), "missing"))?;
        let mut func = json!({"name": name});
        for key in ["description", "parameters", "strict"] {
            if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                func[key] = v.clone();
            }
        }
        Ok(func)
    })?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => {
            out.insert("tool_choice".into(), json!(s));
        }
        Some(Value::Object(o))
            if o.get("type").and_then(Value::as_str) == Some("function")
                && o.get("name").is_some_and(Value::is_string) =>
        {
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": o["name"]}}),
            );
        }
        Some(_) => {
            return Err(TranslateError::field(
                "tool_choice",
                "tool_choice must be auto, none, required or {\"type\":\"function\",\"name\":...}",
            ))
        }
    }
    if let Some(format) = req.get("text").and_then(|t| t.get("format")) {
        if let Some(rf) = text_format(format)? {
            out.insert("response_format".into(), rf);
        }
    } else if let Some(rf) = req.get("response_format").filter(|v| !v.is_null()) {
        out.insert("response_format".into(), rf.clone());
    }
    if let Some(n) = super::opt_u64(req, "max_output_tokens")? {
        out.insert("max_tokens".into(), json!(n));
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = super::opt_number(req, key)? {
            out.insert(key.into(), v);
        }
    }
    if let Some(p) = super::opt_bool(req, "parallel_tool_calls")? {
        out.insert("parallel_tool_calls".into(), json!(p));
    }
    if let Some(u) = super::opt_str(req, "user", "user")? {
        out.insert("user".into(), json!(u));
    }
    if let Some(effort) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str)
    {
        out.insert("reasoning_effort".into(), json!(effort));
    }
    if super::opt_bool(req, "stream")? == Some(true) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// `text.format` -> chat `response_format`.
fn text_format(format: &Value) -> Result<Option<Value>, TranslateError> {
    let f = super::expect_object(format, "text.format")?;
    match super::opt_str(f, "type", "text.format.type")? {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut js = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = f.get(key).filter(|v| !v.is_null()) {
                    js.insert(key.into(), v.clone());
                }
            }
            if !js.contains_key("schema") {
                return Err(TranslateError::field(
                    "text.format.schema",
                    "missing schema",
                ));
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        Some(other) => Err(TranslateError::field(
            "text.format.type",
            format!("text format {other:?} is not supported"),
        )),
    }
}

/// Input items -> chat messages.
fn input_items(items: &[Value], messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    for (i, item) in items.iter().enumerate() {
        let f = format!("input[{i}]");
        let obj = super::expect_object(item, &f)?;
        let itype = super::opt_str(obj, "type", &format!("{f}.type"))?;
        match itype {
            Some("message") | None if obj.contains_key("role") => {
                let role = super::opt_str(obj, "role", &format!("{f}.role"))?.unwrap_or("user");
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(TranslateError::field(
                        format!("{f}.role"),
                        format!("role {role:?} is not supported"),
                    ));
                }
                let content = message_content(obj.get("content"), role, &format!("{f}.content"))?;
                messages.push(json!({"role": role, "content": content}));
            }
            Some("function_call") => {
                let call_id = super::opt_str(obj, "call_id", &format!("{f}.call_id"))?
                    .ok_or_else(|| TranslateError::field(format!("{f}.call_id"), "missing"))?;
                let name = super::opt_str(obj, "name", &format!("{f}.name"))?
                    .ok_or_else(|| TranslateError::field(format!("{f}.name"), "missing"))?;
                let args =
                    super::opt_str(obj, "arguments", &format!("{f}.arguments"))?.unwrap_or("{}");
                let call = json!({"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": args}});
                // Consecutive calls (and a preceding assistant text) form one assistant turn,
                // which is how chat expresses parallel tool calls.
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let call_id = super::opt_str(obj, "call_id", &format!("{f}.call_id"))?
                    .ok_or_else(|| TranslateError::field(format!("{f}.call_id"), "missing"))?;
                let output = match obj.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // Reasoning items are the model's own notes; a chat upstream cannot take them back.
            Some("reasoning") => {}
            Some(other) => {
                return Err(TranslateError::field(
                    format!("{f}.type"),
                    format!(
                    "input item type {other:?} is not supported through the chat completions shim"
                ),
                ))
            }
            None => {
                return Err(TranslateError::field(
                    format!("{f}.type"),
                    "input item without a type or role",
                ))
            }
        }
    }
    Ok(())
}

/// A message item's content as chat content: a string, or parts for user images.
fn message_content(content: Option<&Value>, role: &str, f: &str) -> Result<Value, TranslateError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(json!(s)),
        Some(Value::Array(parts)) => parts,
        _ => {
            return Err(TranslateError::field(
                f,
                "content must be a string or an array of parts",
            ))
        }
    };
    let mut chat_parts = Vec::with_capacity(parts.len());
    let mut has_image = false;
    for (j, p) in parts.iter().enumerate() {
        let pf = format!("{f}[{j}]");
        let p = super::expect_object(p, &pf)?;
        match super::opt_str(p, "type", &format!("{pf}.type"))? {
            Some("input_text") | Some("output_text") | Some("text") => {
                let text = super::opt_str(p, "text", &format!("{pf}.text"))?.unwrap_or("");
                chat_parts.push(json!({"type": "text", "text": text}));
            }
            Some("refusal") => {
                let text = super::opt_str(p, "refusal", &format!("{pf}.refusal"))?.unwrap_or("");
                chat_parts.push(json!({"type": "text", "text": text}));
            }
            Some("input_image") => {
                let url = super::opt_str(p, "image_url", &format!("{pf}.image_url"))?.ok_or_else(
                    || {
                        TranslateError::field(
                            format!("{pf}.image_url"),
                            "only image_url images are supported (file_id needs the Files API)",
                        )
                    },
                )?;
                super::chat::parse_image_url(url, &format!("{pf}.image_url"))?;
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail").and_then(Value::as_str) {
                    image["detail"] = json!(d);
                }
                chat_parts.push(json!({"type": "image_url", "image_url": image}));
                has_image = true;
            }
            other => {
                return Err(TranslateError::field(
                    format!("{pf}.type"),
                    format!(
                        "content part type {:?} is not supported",
                        other.unwrap_or("")
                    ),
                ))
            }
        }
    }
    if has_image && role != "user" {
        return Err(TranslateError::field(
            f,
            "only user messages can carry images",
        ));
    }
    if has_image {
        return Ok(Value::Array(chat_parts));
    }
    // Plain text is sent as a string: every chat upstream accepts that for every role.
    let text: String = chat_parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    Ok(json!(text))
}

/// Responses `usage` from token counts.
fn usage_json(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    })
}

/// The response object with everything but the outcome filled from the request.
fn response_object(
    id: &str,
    created_at: u64,
    model: &str,
    original: &Value,
    status: &str,
    output: Vec<Value>,
    usage: Option<&TokenUsage>,
) -> Value {
    let mut r = Map::new();
    r.insert("id".into(), json!(id));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(created_at));
    r.insert("status".into(), json!(status));
    r.insert("error".into(), Value::Null);
    r.insert("incomplete_details".into(), Value::Null);
    for key in ECHOED {
        r.insert(
            (*key).into(),
            original.get(*key).cloned().unwrap_or(Value::Null),
        );
    }
    // Defaults the real API reports when the request left them out.
    let defaults = [
        ("parallel_tool_calls", json!(true)),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("text", json!({"format": {"type": "text"}})),
        ("truncation", json!("disabled")),
        ("metadata", json!({})),
        ("reasoning", json!({"effort": null, "summary": null})),
        ("temperature", json!(1.0)),
        ("top_p", json!(1.0)),
    ];
    for (k, v) in defaults {
        if r.get(k).is_none_or(Value::is_null) {
            r.insert(k.into(), v);
        }
    }
    r.insert("model".into(), json!(model));
    let text: String = output
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["type"] == "output_text")
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect();
    r.insert("output".into(), Value::Array(output));
    // `output_text` is an SDK convenience; sending it helps raw-HTTP clients too.
    r.insert("output_text".into(), json!(text));
    r.insert("usage".into(), usage.map_or(Value::Null, usage_json));
    r.insert("store".into(), json!(false));
    Value::Object(r)
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, status: &str, call_id: &str, name: &str, args: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id,
           "name": name, "arguments": args})
}

/// `incomplete_details.reason` for a chat finish reason, if it means incomplete.
fn incomplete_reason(finish: Option<&str>) -> Option<&'static str> {
    match finish {
        Some("length") => Some("max_output_tokens"),
        Some("content_filter") => Some("content_filter"),
        _ => None,
    }
}

/// The model to report: the client's, else the upstream's.
fn model_of(original: &Value, upstream: Option<&str>) -> String {
    original
        .get("model")
        .and_then(Value::as_str)
        .or(upstream)
        .unwrap_or("")
        .to_string()
}

/// Convert a whole `chat.completion` into a Responses `response` object for `original` (the
/// client's Responses request). A body without a choice is a 502.
pub fn chat_to_response(chat_resp: &Value, original: &Value) -> Result<Value, TranslateError> {
    let choice = chat::first_choice(chat_resp)?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let incomplete = incomplete_reason(finish);
    let item_status = if incomplete.is_some() {
        "incomplete"
    } else {
        "completed"
    };
    let mut output = Vec::new();
    let text: String = match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    let refusal = msg.get("refusal").and_then(Value::as_str);
    let calls = msg.get("tool_calls").and_then(Value::as_array);
    if !text.is_empty() || refusal.is_some() || calls.is_none_or(Vec::is_empty) {
        let mut content = Vec::new();
        if !text.is_empty() || refusal.is_none() {
            content.push(text_part(&text));
        }
        if let Some(r) = refusal {
            content.push(json!({"type": "refusal", "refusal": r}));
        }
        output.push(message_item(&super::fresh_id("msg"), item_status, content));
    }
    for call in calls.into_iter().flatten() {
        let call = chat::call_fields(call);
        output.push(call_item(
            &super::fresh_id("fc"),
            "completed",
            call.id,
            call.name,
            call.arguments,
        ));
    }
    let usage = chat::usage_of(chat_resp);
    let status = if incomplete.is_some() {
        "incomplete"
    } else {
        "completed"
    };
    let mut r = response_object(
        &super::fresh_id("resp"),
        chat_resp
            .get("created")
            .and_then(Value::as_u64)
            .unwrap_or_else(super::now_secs),
        &model_of(original, chat_resp.get("model").and_then(Value::as_str)),
        original,
        status,
        output,
        usage.as_ref(),
    );
    if let Some(reason) = incomplete {
        r["incomplete_details"] = json!({"reason": reason});
    }
    Ok(r)
}

/// The output item being streamed.
#[derive(Debug)]
enum Open {
    Message {
        item_id: String,
        output_index: usize,
        text: String,
    },
    Call {
        item_id: String,
        output_index: usize,
        chat_index: u64,
        call_id: String,
        name: String,
        args: String,
    },
}

/// Converts a chat completion SSE stream into Responses SSE events (see the module docs).
#[derive(Debug)]
pub struct ResponsesStream {
    input: SseInput,
    original: Value,
    id: String,
    created_at: u64,
    model: String,
    seq: u64,
    started: bool,
    /// Finished output items, in output order.
    output: Vec<Value>,
    open: Option<Open>,
    /// Chat tool call indexes already closed, with their position in `output` (a late
    /// fragment is added there silently).
    closed_calls: Vec<(u64, usize)>,
    finish_reason: Option<String>,
    usage: Option<TokenUsage>,
    finished: bool,
}

impl ResponsesStream {
    /// A converter for the client's Responses request `original` (echoed into the response
    /// objects of `response.created` and the final event).
    pub fn new(original: &Value) -> Self {
        let mut echo = Map::new();
        for key in ECHOED.iter().chain(["model"].iter()) {
            if let Some(v) = original.get(*key) {
                echo.insert((*key).into(), v.clone());
            }
        }
        ResponsesStream {
            input: SseInput::default(),
            model: model_of(original, None),
            original: Value::Object(echo),
            id: super::fresh_id("resp"),
            created_at: super::now_secs(),
            seq: 0,
            started: false,
            output: Vec::new(),
            open: None,
            closed_calls: Vec::new(),
            finish_reason: None,
            usage: None,
            finished: false,
        }
    }

    /// The response id every event refers to.
    pub fn response_id(&self) -> &str {
        &self.id
    }

    /// The usage of the upstream's usage chunk, if it came.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// True once a final event (completed, incomplete, failed) went out.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feed the next piece of the upstream chat SSE body; returns Responses SSE bytes.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        sse::feed(self, input)
    }

    /// The upstream body ended. Without `[DONE]` (or at least a finish reason) the stream was
    /// cut: `response.failed`.
    pub fn finish(&mut self) -> Vec<u8> {
        sse::finish(self)
    }

    /// End the stream as failed now (the upstream broke, a timeout fired): the
    /// `response.failed` event bytes (after `response.created` if none went out yet). Empty if
    /// the stream already ended.
    pub fn finish_abnormally(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.finished {
            self.fail(&mut out, "upstream stream ended abnormally");
        }
        out
    }

    fn emit(&mut self, out: &mut Vec<u8>, etype: &str, mut payload: Value) {
        payload["type"] = json!(etype);
        payload["sequence_number"] = json!(self.seq);
        self.seq += 1;
        write_event(out, etype, &payload);
    }

    fn snapshot(&self, status: &str, output: Vec<Value>, usage: Option<&TokenUsage>) -> Value {
        response_object(
            &self.id,
            self.created_at,
            &self.model,
            &self.original,
            status,
            output,
            usage,
        )
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.snapshot("in_progress", Vec::new(), None);
        self.emit(out, "response.created", json!({"response": r.clone()}));
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn event(&mut self, data: &str, out: &mut Vec<u8>) {
        let v = match chat::stream_event(data) {
            StreamEvent::Done => {
                self.start(out);
                self.complete(out);
                return;
            }
            StreamEvent::NotJson => {
                self.fail(out, "upstream sent an event that is not JSON");
                return;
            }
            StreamEvent::Error(err) => {
                let code = err
                    .get("code")
                    .and_then(Value::as_str)
                    .or_else(|| err.get("type").and_then(Value::as_str))
                    .unwrap_or("server_error")
                    .to_string();
                self.fail_with(out, &code, &chat::error_message(&err));
                return;
            }
            StreamEvent::Chunk(v) => v,
        };
        self.start(out);
        if let Some(u) = chat::usage_of(&v) {
            self.usage = Some(u);
        }
        if self.model.is_empty() {
            if let Some(m) = v.get("model").and_then(Value::as_str) {
                self.model = m.to_string();
            }
        }
        let Some(choice) = chat::choice_zero(&v) else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        for key in ["content", "refusal"] {
            if let Some(text) = chat::delta_text(delta, key) {
                self.text_delta(out, text);
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call_delta(out, call);
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(f.to_string());
        }
    }

    fn text_delta(&mut self, out: &mut Vec<u8>, text: &str) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close_open(out);
            let item_id = super::fresh_id("msg");
            let output_index = self.output.len();
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": message_item(&item_id, "in_progress", vec![])}),
            );
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                       "part": text_part("")}),
            );
            self.open = Some(Open::Message {
                item_id,
                output_index,
                text: String::new(),
            });
        }
        let Some(Open::Message {
            item_id,
            output_index,
            text: acc,
        }) = &mut self.open
        else {
            return;
        };
        acc.push_str(text);
        let payload = json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                             "delta": text, "logprobs": []});
        self.emit(out, "response.output_text.delta", payload);
    }

    fn call_delta(&mut self, out: &mut Vec<u8>, call: &Value) {
        let call = chat::call_fields(call);
        let chat_index = call.index;
        let fragment = call.arguments;
        let is_open =
            matches!(&self.open, Some(Open::Call { chat_index: ci, .. }) if *ci == chat_index);
        if !is_open {
            if let Some(&(_, pos)) = self.closed_calls.iter().find(|(ci, _)| *ci == chat_index) {
                // A fragment for a call already closed (the upstream interleaved calls): keep
                // the final arguments right even though its events have gone out.
                if let Some(args) = self
                    .output
                    .get_mut(pos)
                    .and_then(|i| i.get_mut("arguments"))
                {
                    let joined = format!("{}{fragment}", args.as_str().unwrap_or(""));
                    *args = json!(joined);
                }
                return;
            }
            self.close_open(out);
            let item_id = super::fresh_id("fc");
            let output_index = self.output.len();
            let call_id = call.id.to_string();
            let name = call.name.to_string();
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": output_index,
                       "item": call_item(&item_id, "in_progress", &call_id, &name, "")}),
            );
            self.open = Some(Open::Call {
                item_id,
                output_index,
                chat_index,
                call_id,
                name,
                args: String::new(),
            });
        }
        let Some(Open::Call {
            item_id,
            output_index,
            args,
            ..
        }) = &mut self.open
        else {
            return;
        };
        if fragment.is_empty() {
            return;
        }
        args.push_str(fragment);
        let payload = json!({"item_id": item_id, "output_index": output_index, "delta": fragment});
        self.emit(out, "response.function_call_arguments.delta", payload);
    }

    /// Close the open item: its done events, and it joins `output`.
    fn close_open(&mut self, out: &mut Vec<u8>) {
        let status = if incomplete_reason(self.finish_reason.as_deref()).is_some() {
            "incomplete"
        } else {
            "completed"
        };
        match self.open.take() {
            None => {}
            Some(Open::Message {
                item_id,
                output_index,
                text,
            }) => {
                let base =
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0});
                let mut done = base.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                self.emit(out, "response.output_text.done", done);
                let mut part_done = base;
                part_done["part"] = text_part(&text);
                self.emit(out, "response.content_part.done", part_done);
                let item = message_item(&item_id, status, vec![text_part(&text)]);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item.clone()}),
                );
                self.output.push(item);
            }
            Some(Open::Call {
                item_id,
                output_index,
                chat_index,
                call_id,
                name,
                args,
            }) => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": output_index, "name": name, "arguments": args}),
                );
                let item = call_item(&item_id, "completed", &call_id, &name, &args);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item.clone()}),
                );
                self.closed_calls.push((chat_index, self.output.len()));
                self.output.push(item);
            }
        }
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        self.close_open(out);
        let incomplete = incomplete_reason(self.finish_reason.as_deref());
        let status = if incomplete.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        let output = std::mem::take(&mut self.output);
        let usage = self.usage;
        let mut r = self.snapshot(status, output, usage.as_ref());
        if let Some(reason) = incomplete {
            r["incomplete_details"] = json!({"reason": reason});
        }
        let etype = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, etype, json!({"response": r}));
        self.finished = true;
    }

    fn fail(&mut self, out: &mut Vec<u8>, message: &str) {
        self.fail_with(out, "server_error", message);
    }

    fn fail_with(&mut self, out: &mut Vec<u8>, code: &str, message: &str) {
        self.start(out);
        // Items cut short are reported as incomplete, without further events.
        let mut output = std::mem::take(&mut self.output);
        match self.open.take() {
            Some(Open::Message { item_id, text, .. }) => {
                output.push(message_item(&item_id, "incomplete", vec![text_part(&text)]))
            }
            Some(Open::Call {
                item_id,
                call_id,
                name,
                args,
                ..
            }) => output.push(call_item(&item_id, "incomplete", &call_id, &name, &args)),
            None => {}
        }
        let usage = self.usage;
        let mut r = self.snapshot("failed", output, usage.as_ref());
        r["error"] = json!({"code": code, "message": message});
        self.emit(out, "response.failed", json!({"response": r}));
        self.finished = true;
    }
}

impl Convert for ResponsesStream {
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
        self.fail(out, "upstream SSE event too large");
    }

    fn ended(&mut self, out: &mut Vec<u8>) {
        if self.finish_reason.is_some() {
            self.complete(out);
        } else {
            self.fail(out, "upstream stream ended before completion");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_instructions_input_items_tools_and_options() {
        let c = responses_to_chat(&json!({
            "model": "gpt-x",
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": [
                    {"type": "input_text", "text": "look: "},
                    {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "reasoning", "summary": []},
                {"type": "function_call_output", "call_id": "c1", "output": "r1"},
                {"type": "function_call_output", "call_id": "c2", "output": "r2"},
                {"role": "developer", "content": "extra rule"},
            ],
            "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
            "max_output_tokens": 99, "temperature": 0.3, "top_p": 0.5, "stream": true,
            "store": true, "reasoning": {"effort": "low"},
        }))
        .expect("converts");
        let m = c["messages"].as_array().expect("messages");
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(
            m[1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}})
        );
        assert_eq!(m[2]["role"], "assistant");
        assert_eq!(m[2]["content"], "Checking.");
        assert_eq!(m[2]["tool_calls"][1]["id"], "c2");
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "r1"})
        );
        assert_eq!(m[5], json!({"role": "developer", "content": "extra rule"}));
        assert_eq!(m.len(), 6);
        assert_eq!(
            c["tools"][0],
            json!({"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}})
        );
        assert_eq!(
            c["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(
            c["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(c["max_tokens"], 99);
        assert_eq!(c["temperature"], 0.3);
        assert_eq!(c["stream_options"], json!({"include_usage": true}));
        assert_eq!(c["reasoning_effort"], "low");
        assert!(c.get("store").is_none());
        let s = responses_to_chat(&json!({"model": "m", "input": "hi"})).expect("string input");
        assert_eq!(s["messages"], json!([{"role": "user", "content": "hi"}]));
        assert!(s.get("stream").is_none());
    }

    #[test]
    fn request_inexpressible_fields_are_400s_naming_the_field() {
        let cases = [
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"model": "m"}), "input"),
            (json!({"input": "x"}), "model"),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].image_url",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]}),
                "input[0].content[0].image_url",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": {"type": "web_search"}}),
                "tool_choice",
            ),
            (json!({"model": "m", "input": 5}), "input"),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": -1}),
                "max_output_tokens",
            ),
        ];
        for (req, field) in cases {
            let e = responses_to_chat(&req).expect_err(field);
            assert_eq!((e.status, e.field.as_deref()), (400, Some(field)), "{req}");
        }
    }

    #[test]
    fn response_message_calls_usage_and_incomplete_status() {
        let chat = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "up",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Sure.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2}}});
        let orig = json!({"model": "client-model", "input": "x", "instructions": "be brief", "temperature": 0.2});
        let r = chat_to_response(&chat, &orig).expect("converts");
        assert_eq!(r["object"], "response");
        assert!(r["id"].as_str().is_some_and(|i| i.starts_with("resp_")));
        assert_eq!(r["status"], "completed");
        assert_eq!(r["model"], "client-model");
        assert_eq!(r["instructions"], "be brief");
        assert_eq!(r["temperature"], 0.2);
        assert_eq!(r["output"][0]["type"], "message");
        assert_eq!(
            r["output"][0]["content"][0],
            json!({"type": "output_text", "text": "Sure.", "annotations": []})
        );
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "call_1");
        assert_eq!(r["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(r["output_text"], "Sure.");
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 5,
                   "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15})
        );
        for (finish, reason) in [
            ("length", "max_output_tokens"),
            ("content_filter", "content_filter"),
        ] {
            let chat =
                json!({"choices": [{"finish_reason": finish, "message": {"content": "partial"}}]});
            let r = chat_to_response(&chat, &orig).expect("ok");
            assert_eq!(r["status"], "incomplete");
            assert_eq!(r["incomplete_details"]["reason"], reason);
            assert_eq!(r["output"][0]["status"], "incomplete");
        }
        assert_eq!(
            chat_to_response(&json!({"choices": []}), &orig)
                .expect_err("502")
                .status,
            502
        );
    }

    use crate::translate::chat::test_chunk as chunk;
    use crate::translate::sse::named_events as events;

    fn chat_stream() -> String {
        let mut s = String::new();
        s += &chunk(json!({"role": "assistant", "content": ""}), None);
        s += &chunk(json!({"content": "Hel"}), None);
        s += &chunk(json!({"content": "lo"}), None);
        s += &chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_A", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
            None,
        );
        for piece in ["{\"ci", "ty\":", "\"Paris\"", "}"] {
            s += &chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                None,
            );
        }
        s += &chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_B", "function": {"name": "g", "arguments": "{}"}}]}),
            None,
        );
        s += &chunk(json!({}), Some("tool_calls"));
        s += "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6,\"total_tokens\":10}}\n\n";
        s += "data: [DONE]\n\n";
        s
    }

    #[test]
    fn stream_event_order_text_then_calls_with_sequence_numbers() {
        let input = chat_stream();
        for step in [1, 9, 50, input.len()] {
            let mut s = ResponsesStream::new(&json!({"model": "client-model", "input": "x"}));
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
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.content_part.added",
                    "response.output_text.delta",
                    "response.output_text.delta",
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.output_item.added",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.done",
                    "response.output_item.done",
                    "response.output_item.added",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.done",
                    "response.output_item.done",
                    "response.completed",
                ],
                "step {step}"
            );
            for (i, (_, v)) in ev.iter().enumerate() {
                assert_eq!(v["sequence_number"], i as u64);
            }
            let id = ev[0].1["response"]["id"].clone();
            assert_eq!(ev[0].1["response"]["status"], "in_progress");
            assert_eq!(ev[4].1["delta"], "Hel");
            assert_eq!(ev[6].1["text"], "Hello");
            assert_eq!(ev[9].1["item"]["call_id"], "call_A");
            assert_eq!(ev[9].1["output_index"], 1);
            assert_eq!(ev[14].1["arguments"], "{\"city\":\"Paris\"}");
            assert_eq!(ev[14].1["name"], "f");
            let done = &ev[20].1["response"];
            assert_eq!(done["id"], id);
            assert_eq!(done["status"], "completed");
            assert_eq!(done["model"], "client-model");
            assert_eq!(done["output"].as_array().map(Vec::len), Some(3));
            assert_eq!(done["output"][2]["name"], "g");
            assert_eq!(done["output_text"], "Hello");
            assert_eq!(done["usage"]["total_tokens"], 10);
            assert_eq!(s.usage().map(|u| u.total_tokens), Some(10));
            assert!(s.is_finished());
        }
    }

    #[test]
    fn stream_length_finish_is_response_incomplete() {
        let input = chunk(json!({"content": "abc"}), None)
            + &chunk(json!({}), Some("length"))
            + "data: [DONE]\n\n";
        let mut s = ResponsesStream::new(&json!({"model": "m"}));
        let mut out = s.feed(input.as_bytes());
        out.extend(s.finish());
        let ev = events(&out);
        let (name, last) = ev.last().expect("events");
        assert_eq!(name, "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");
    }

    #[test]
    fn stream_error_event_mid_stream_is_response_failed() {
        let input = chunk(json!({"content": "abc"}), None)
            + "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"api_error\",\"code\":\"overloaded_error\"}}\n\n";
        let mut s = ResponsesStream::new(&json!({"model": "m"}));
        let mut out = s.feed(input.as_bytes());
        out.extend(s.feed(b"data: [DONE]\n\n"));
        out.extend(s.finish());
        let ev = events(&out);
        let (name, last) = ev.last().expect("events");
        assert_eq!(name, "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(
            last["response"]["error"],
            json!({"code": "overloaded_error", "message": "Overloaded"})
        );
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "abc");
        assert_eq!(ev.iter().filter(|(n, _)| n == "response.failed").count(), 1);
    }

    #[test]
    fn stream_cut_upstream_is_response_failed_via_finish_or_finish_abnormally() {
        let input = chunk(json!({"content": "abc"}), None);
        let mut s = ResponsesStream::new(&json!({"model": "m"}));
        let mut out = s.feed(input.as_bytes());
        out.extend(s.finish());
        assert_eq!(
            events(&out).last().map(|(n, _)| n.as_str()),
            Some("response.failed")
        );

        let mut s = ResponsesStream::new(&json!({"model": "m"}));
        let _ = s.feed(input.as_bytes());
        let failed = s.finish_abnormally();
        let ev = events(&failed);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "response.failed");
        assert!(s.finish_abnormally().is_empty());
        // Before any upstream byte: created, in_progress, failed.
        let mut s = ResponsesStream::new(&json!({"model": "m"}));
        assert_eq!(events(&s.finish_abnormally()).len(), 3);
    }

    #[test]
    fn stream_garbage_never_panics() {
        for input in [
            &b"data: {\"choices\": 5}\n\n"[..],
            b"data: {\"choices\": [{\"delta\": {\"tool_calls\": [{\"index\": \"x\"}]}}]}\n\n",
            b"data: {\"choices\": [{\"delta\": {\"tool_calls\": 3, \"content\": 4}}]}\n\n",
            b"data: nope\n\n",
            b"data: {\"error\": 5}\n\n",
        ] {
            let mut s = ResponsesStream::new(&json!(null));
            let _ = s.feed(input);
            let _ = s.finish();
        }
    }
}
