//! OpenAI Chat Completions -> Gemini `generateContent` / `streamGenerateContent?alt=sse`, and
//! the answer back: whole, streamed ([`GeminiStream`]) and errors ([`error_to_openai`]).
//!
//! The upstream request authenticates with `x-goog-api-key` (or `?key=`); the path and body
//! are built here ([`chat_to_generate`]).
//!
//! Mapping notes:
//! - `system`/`developer` messages become `systemInstruction`; `assistant` is role `model`;
//!   `tool` results are `functionResponse` parts of a `user` turn; consecutive turns of the same
//!   role are merged so parallel function responses travel together, as Gemini expects.
//! - Gemini function calls carry no ids, so answers get `call_<n>` ids (numbered within one
//!   answer). A tool result needs the function *name*, which is found by looking the
//!   `tool_call_id` up in the assistant turns before it (nearest first, so ids repeated across
//!   turns resolve to the right call); an unknown id is a 400 naming the field.
//! - JSON Schemas (tool parameters, `response_format`) are cut down to the OpenAPI subset
//!   Gemini's `Schema` accepts; `$ref` cannot be expressed and is a 400 naming the field.
//! - `finishReason` STOP with function calls is `tool_calls`; the safety family is
//!   `content_filter`; MAX_TOKENS is `length`.

use serde_json::{json, Map, Value};

use super::chat::{self, ChunkWriter, Image, JsonFormat, Part, ToolChoice};
use super::sse::{self, Convert, SseEvent, SseInput, DONE};
use super::{MappedError, TokenUsage, TranslateError};

/// A translated request: where to send it and what.
#[derive(Debug, Clone, PartialEq)]
pub struct GeminiRequest {
    /// `/v1beta/models/{model}:generateContent` or `...:streamGenerateContent?alt=sse`.
    pub path: String,
    /// The `GenerateContentRequest` body.
    pub body: Value,
    /// The client asked for a stream.
    pub stream: bool,
}

/// The upstream path for `model`. Model ids are restricted to the characters Gemini model
/// names use, so a client cannot steer the path (`../`, `?`, `:`).
pub fn request_path(model: &str, stream: bool) -> Result<String, TranslateError> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let valid = !model.is_empty()
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && model != "."
        && model != "..";
    if !valid {
        return Err(TranslateError::field(
            "model",
            format!("{model:?} is not a valid Gemini model id"),
        ));
    }
    Ok(if stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    })
}

/// Convert an OpenAI chat request to a Gemini request (path and body). `model_override`
/// replaces the client's model.
pub fn chat_to_generate(
    req: &Value,
    model_override: Option<&str>,
) -> Result<GeminiRequest, TranslateError> {
    let req = super::expect_object(req, "body")?;
    let model = chat::request_model(req, model_override, "model is required")?;
    let stream = super::opt_bool(req, "stream")? == Some(true);
    let path = request_path(&model, stream)?;

    let messages = chat::messages(req)?;
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // (tool_call_id, function name) of every assistant tool call so far, in order.
    let mut calls_seen: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let m = chat::message(m, i)?;
        let (msg, mf, cf) = (m.msg, &m.field, m.content_field.clone());
        let (role, parts) = match m.role {
            "system" | "developer" => {
                let text = chat::content_text(msg.get("content"), &cf)?;
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
                continue;
            }
            "user" => ("user", parts_of(msg.get("content"), &cf)?),
            "assistant" => {
                let mut parts = parts_of(msg.get("content"), &cf)?;
                if parts.iter().any(|p| p.get("text").is_none()) {
                    return Err(TranslateError::field(
                        cf,
                        "assistant messages cannot carry images",
                    ));
                }
                for call in chat::tool_calls(msg, i)? {
                    parts
                        .push(json!({"functionCall": {"name": call.name, "args": call.arguments}}));
                    calls_seen.push((call.id, call.name));
                }
                ("model", parts)
            }
            "tool" => {
                let idf = format!("{mf}.tool_call_id");
                let id = super::opt_str(msg, "tool_call_id", &idf)?
                    .ok_or_else(|| TranslateError::field(&idf, "missing tool_call_id"))?;
                let name = calls_seen
                    .iter()
                    .rev()
                    .find(|(cid, _)| cid == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| {
                        TranslateError::field(
                            &idf,
                            format!("tool_call_id {id:?} matches no earlier assistant tool call (Gemini needs the function name)"),
                        )
                    })?;
                let text = chat::content_text(msg.get("content"), &cf)?;
                // `response` must be an object: a JSON object result is passed as is,
                // anything else is wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
            _ => return Err(chat::unsupported_role(&m)),
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    if contents.is_empty() {
        return Err(chat::no_turns());
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }

    // Tools.
    let tools = chat::function_tools(req)?;
    if !tools.is_empty() {
        let mut decls = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let mut d = json!({"name": t.name});
            if let Some(desc) = &t.description {
                d["description"] = Value::String(desc.clone());
            }
            if let Some(p) = &t.parameters {
                // Gemini refuses an OBJECT schema with no properties: leave it out instead.
                let empty = p
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_none_or(Map::is_empty);
                if !empty {
                    d["parameters"] =
                        sanitize_schema(p, &format!("tools[{i}].function.parameters"))?;
                }
            }
            decls.push(d);
        }
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(choice) = chat::tool_choice(req)? {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Function(name) => {
                if !tools.iter().any(|t| t.name == name) {
                    return Err(TranslateError::field(
                        "tool_choice",
                        format!("tool_choice names {name:?}, which is not in tools"),
                    ));
                }
                json!({"mode": "ANY", "allowedFunctionNames": [name]})
            }
        };
        if !tools.is_empty() {
            body.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
    }

    // Generation config.
    let mut gc = Map::new();
    if let Some(t) = super::opt_number(req, "temperature")? {
        gc.insert("temperature".into(), t);
    }
    if let Some(p) = super::opt_number(req, "top_p")? {
        gc.insert("topP".into(), p);
    }
    if let Some(n) = chat::max_tokens(req)? {
        gc.insert("maxOutputTokens".into(), json!(n));
    }
    let stop = chat::stop_list(req.get("stop"), "stop")?;
    if !stop.is_empty() {
        gc.insert("stopSequences".into(), json!(stop));
    }
    if let Some(n) = super::opt_u64(req, "n")? {
        if n == 0 {
            return Err(TranslateError::field("n", "n must be at least 1"));
        }
        if n > 1 {
            gc.insert("candidateCount".into(), json!(n));
        }
    }
    for (from, to) in [
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ] {
        if let Some(v) = super::opt_number(req, from)? {
            gc.insert(to.into(), v);
        }
    }
    match chat::json_format(req)? {
        None => {}
        Some(JsonFormat::Object) => {
            gc.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(JsonFormat::Schema(schema)) => {
            gc.insert("responseMimeType".into(), json!("application/json"));
            gc.insert(
                "responseSchema".into(),
                sanitize_schema(schema, "response_format.json_schema.schema")?,
            );
        }
    }
    if !gc.is_empty() {
        body.insert("generationConfig".into(), Value::Object(gc));
    }
    Ok(GeminiRequest {
        path,
        body: Value::Object(body),
        stream,
    })
}

/// Message content as Gemini parts (empty text dropped).
fn parts_of(content: Option<&Value>, field: &str) -> Result<Vec<Value>, TranslateError> {
    let parts = chat::content_parts(content, field)?;
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            Part::Text(t) if t.is_empty() => {}
            Part::Text(t) => out.push(json!({"text": t})),
            Part::Image(Image::Base64 { media_type, data }) => {
                out.push(json!({"inlineData": {"mimeType": media_type, "data": data}}))
            }
            Part::Image(Image::Url(url)) => out.push(json!({"fileData": {
                "mimeType": chat::guess_image_mime(&url), "fileUri": url,
            }})),
        }
    }
    Ok(out)
}

/// Schema keywords Gemini's `Schema` object understands; everything else is dropped.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// Cut a JSON Schema down to Gemini's OpenAPI subset. `type: [T, "null"]` becomes
/// `type: T, nullable: true`; `const` becomes a one-value `enum`; `$ref` is refused.
pub fn sanitize_schema(schema: &Value, field: &str) -> Result<Value, TranslateError> {
    sanitize_at(schema, field, 0)
}

fn sanitize_at(schema: &Value, field: &str, depth: usize) -> Result<Value, TranslateError> {
    // Deep schemas are legal but a recursion bomb is not worth following.
    if depth > 64 {
        return Err(TranslateError::field(field, "schema nested too deeply"));
    }
    let Some(obj) = schema.as_object() else {
        return Err(TranslateError::field(field, "a schema must be an object"));
    };
    if obj.contains_key("$ref") {
        return Err(TranslateError::field(
            format!("{field}.$ref"),
            "Gemini schemas cannot express $ref; inline the definition",
        ));
    }
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "type" => match v {
                Value::Array(types) => {
                    let non_null: Vec<&Value> = types
                        .iter()
                        .filter(|t| t.as_str() != Some("null"))
                        .collect();
                    if non_null.len() != 1 {
                        return Err(TranslateError::field(
                            format!("{field}.type"),
                            "Gemini schemas take one type (plus null); use anyOf",
                        ));
                    }
                    out.insert("type".into(), non_null[0].clone());
                    if non_null.len() < types.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                }
                other => {
                    out.insert("type".into(), other.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            "properties" => {
                let props = v.as_object().ok_or_else(|| {
                    TranslateError::field(format!("{field}.properties"), "must be an object")
                })?;
                let mut p = Map::new();
                for (name, s) in props {
                    p.insert(
                        name.clone(),
                        sanitize_at(s, &format!("{field}.properties.{name}"), depth + 1)?,
                    );
                }
                out.insert("properties".into(), Value::Object(p));
            }
            "items" => {
                out.insert(
                    "items".into(),
                    sanitize_at(v, &format!("{field}.items"), depth + 1)?,
                );
            }
            "anyOf" => {
                let list = v.as_array().ok_or_else(|| {
                    TranslateError::field(format!("{field}.anyOf"), "must be an array")
                })?;
                let mut items = Vec::with_capacity(list.len());
                for (j, s) in list.iter().enumerate() {
                    items.push(sanitize_at(s, &format!("{field}.anyOf[{j}]"), depth + 1)?);
                }
                out.insert("anyOf".into(), Value::Array(items));
            }
            key if SCHEMA_KEYS.contains(&key) => {
                out.insert(k.clone(), v.clone());
            }
            // additionalProperties, $schema, strict, $defs (unused once $ref is refused)...
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

/// Gemini `finishReason` -> OpenAI `finish_reason`.
pub fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "LANGUAGE" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
        | "IMAGE_SAFETY" => "content_filter",
        _ if has_calls => "tool_calls",
        // STOP, OTHER, MALFORMED_FUNCTION_CALL, FINISH_REASON_UNSPECIFIED.
        _ => "stop",
    }
}

/// Token usage from `usageMetadata`. Thinking tokens are output tokens to OpenAI (and billed
/// as such), so they are added to `completion_tokens` and reported as reasoning tokens.
pub fn usage_from(meta: &Value) -> TokenUsage {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    let prompt = n("promptTokenCount") + n("toolUsePromptTokenCount");
    let thoughts = n("thoughtsTokenCount");
    let completion = n("candidatesTokenCount") + thoughts;
    let total = match n("totalTokenCount") {
        0 => prompt + completion,
        t => t,
    };
    TokenUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: total,
        cached_tokens: n("cachedContentTokenCount"),
        cache_creation_tokens: 0,
        reasoning_tokens: thoughts,
    }
}

/// Text and function calls of one candidate's parts; `next_call` numbers the call ids.
fn read_parts(content: &Value, next_call: &mut u64) -> (String, Vec<(String, String, String)>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(fc) = part.get("functionCall") {
            let name = fc.get("name").and_then(Value::as_str).unwrap_or("");
            let args = fc.get("args").cloned().unwrap_or_else(|| json!({}));
            calls.push((
                format!("call_{next_call}"),
                name.to_string(),
                args.to_string(),
            ));
            *next_call += 1;
        }
    }
    (text, calls)
}

/// Convert a `GenerateContentResponse` to an OpenAI `chat.completion`. `model` is the model
/// the client asked for (empty: the upstream's `modelVersion`).
pub fn generate_to_chat_response(resp: &Value, model: &str) -> Result<Value, TranslateError> {
    let obj = resp
        .as_object()
        .ok_or_else(|| TranslateError::upstream("Gemini answer is not an object"))?;
    if obj.contains_key("error") {
        return Err(TranslateError::upstream("Gemini answered an error object"));
    }
    let mut next_call = 0;
    let mut choices = Vec::new();
    for (pos, cand) in obj
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let index = cand
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let (text, calls) = read_parts(cand.get("content").unwrap_or(&Value::Null), &mut next_call);
        let reason = cand
            .get("finishReason")
            .and_then(Value::as_str)
            .unwrap_or("STOP");
        let finish = finish_reason(reason, !calls.is_empty());
        let calls = calls
            .iter()
            .map(|(id, name, args)| chat::tool_call_json(id, name, args))
            .collect();
        choices.push(json!({
            "index": index, "message": chat::assistant_message(text, calls), "logprobs": null,
            "finish_reason": finish,
        }));
    }
    if choices.is_empty() {
        // A blocked prompt has no candidates, only promptFeedback.blockReason.
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": null, "refusal": null},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let usage = usage_from(obj.get("usageMetadata").unwrap_or(&Value::Null));
    let id = obj
        .get("responseId")
        .and_then(Value::as_str)
        .map_or_else(|| super::fresh_id("chatcmpl"), str::to_string);
    Ok(chat::completion(
        &id,
        chat::reported_model(model, obj.get("modelVersion").and_then(Value::as_str)),
        choices,
        &usage,
    ))
}

/// Google RPC status -> (HTTP status, OpenAI error type).
fn map_status(rpc: &str, http: u16) -> (u16, &'static str) {
    match rpc {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            (400, "invalid_request_error")
        }
        "UNAUTHENTICATED" => (401, "authentication_error"),
        "PERMISSION_DENIED" => (403, "permission_error"),
        "NOT_FOUND" => (404, "invalid_request_error"),
        "RESOURCE_EXHAUSTED" => (429, "rate_limit_error"),
        "UNAVAILABLE" => (503, "api_error"),
        "DEADLINE_EXCEEDED" => (504, "api_error"),
        "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => (500, "api_error"),
        _ => {
            let s = chat::error_status(http);
            (s, chat::openai_type_for_status(s))
        }
    }
}

/// The `error` object of a Gemini error body: `{"error":{...}}`, or the same inside a
/// one-element array (what the non-SSE stream endpoint sends).
fn error_object(v: &Value) -> Option<&Value> {
    match v {
        Value::Array(items) => items.first().and_then(|i| i.get("error")),
        other => other.get("error"),
    }
}

/// (status, type, code, message) of a Gemini error object.
fn read_error(err: &Value, http: u16) -> (u16, &'static str, String, String) {
    let rpc = err.get("status").and_then(Value::as_str).unwrap_or("");
    let http = match http {
        0 => err
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0),
        h => h,
    };
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error")
        .to_string();
    // A bad key is INVALID_ARGUMENT with reason API_KEY_INVALID; to OpenAI clients it is 401.
    let bad_key = err
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
    let (status, otype) = if bad_key {
        (401, "authentication_error")
    } else {
        map_status(rpc, http)
    };
    let code = if rpc.is_empty() {
        "upstream_error".to_string()
    } else {
        rpc.to_ascii_lowercase()
    };
    (status, otype, code, message)
}

/// Rewrite a Gemini error answer (`{"error":{"code","message","status"}}`) as an OpenAI-shaped
/// one with the matching status.
pub fn error_to_openai(status: u16, body: &[u8]) -> MappedError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(error_object) {
        Some(err) => {
            let (s, otype, code, message) = read_error(err, status);
            chat::openai_error(s, otype, Some(&code), &message)
        }
        None => {
            let s = chat::error_status(status);
            chat::openai_error(
                s,
                chat::openai_type_for_status(s),
                None,
                &super::anthropic::truncated_text(body),
            )
        }
    }
}

/// Converts a Gemini `streamGenerateContent?alt=sse` stream into OpenAI
/// `chat.completion.chunk` SSE, one chunk per upstream event and candidate. Gemini streams
/// have no terminator, so the usage chunk and `[DONE]` come from [`GeminiStream::finish`],
/// which the caller must invoke when the upstream body ends.
#[derive(Debug)]
pub struct GeminiStream {
    input: SseInput,
    writer: ChunkWriter,
    include_usage: bool,
    /// Per candidate index: tool calls so far (the role chunk went out on first sight).
    candidates: Vec<(u64, u64)>,
    next_call: u64,
    saw_finish: bool,
    usage: TokenUsage,
    saw_usage: bool,
    finished: bool,
}

impl GeminiStream {
    /// A converter answering as `model`; `include_usage` adds the final usage chunk.
    pub fn new(model: &str, include_usage: bool) -> Self {
        GeminiStream {
            input: SseInput::default(),
            writer: ChunkWriter::new(model),
            include_usage,
            candidates: Vec::new(),
            next_call: 0,
            saw_finish: false,
            usage: TokenUsage::default(),
            saw_usage: false,
            finished: false,
        }
    }

    /// The last `usageMetadata` seen.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.saw_usage.then_some(self.usage)
    }

    /// True once the stream ended (an error event, or [`Self::finish`]).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feed the next piece of the upstream body; returns the OpenAI SSE bytes it produced.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        sse::feed(self, input)
    }

    /// The upstream body ended: the usage chunk and `[DONE]` when a finish reason was seen,
    /// an error event when the stream was cut before one.
    pub fn finish(&mut self) -> Vec<u8> {
        sse::finish(self)
    }

    fn fail(&mut self, out: &mut Vec<u8>, message: &str) {
        chat::write_error_event(out, message, "api_error", Some("upstream_stream_error"));
        self.finished = true;
    }

    fn event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            self.fail(out, "upstream sent an event that is not JSON");
            return;
        };
        if let Some(err) = error_object(&v) {
            let (_, otype, code, message) = read_error(err, 0);
            chat::write_error_event(out, &message, otype, Some(&code));
            self.finished = true;
            return;
        }
        if let Some(meta) = v.get("usageMetadata") {
            self.usage = usage_from(meta);
            self.saw_usage = true;
        }
        if let Some(id) = v.get("responseId").and_then(Value::as_str) {
            self.writer.id = id.to_string();
        }
        let candidates = v.get("candidates").and_then(Value::as_array);
        if candidates.is_none_or(Vec::is_empty) {
            if v.pointer("/promptFeedback/blockReason").is_some() {
                self.saw_finish = true;
                self.writer.delta(
                    out,
                    0,
                    json!({"role": "assistant", "content": null}),
                    Some("content_filter"),
                );
            }
            return;
        }
        for (pos, cand) in candidates.into_iter().flatten().enumerate() {
            let index = cand
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let (slot, first) = match self.candidates.iter().position(|(i, _)| *i == index) {
                Some(s) => (s, false),
                None => {
                    self.candidates.push((index, 0));
                    (self.candidates.len() - 1, true)
                }
            };
            let (text, calls) = read_parts(
                cand.get("content").unwrap_or(&Value::Null),
                &mut self.next_call,
            );
            let mut delta = Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if !text.is_empty() || (first && calls.is_empty()) {
                delta.insert("content".into(), Value::String(text));
            }
            if !calls.is_empty() {
                let base = self.candidates[slot].1;
                let list: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(k, (id, name, args))| {
                        json!({"index": base + k as u64, "id": id, "type": "function",
                               "function": {"name": name, "arguments": args}})
                    })
                    .collect();
                self.candidates[slot].1 += calls.len() as u64;
                delta.insert("tool_calls".into(), Value::Array(list));
            }
            let finish = cand.get("finishReason").and_then(Value::as_str).map(|r| {
                self.saw_finish = true;
                finish_reason(r, self.candidates[slot].1 > 0)
            });
            if delta.is_empty() && finish.is_none() {
                continue;
            }
            self.writer.delta(out, index, Value::Object(delta), finish);
        }
    }
}

impl Convert for GeminiStream {
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
        if self.saw_finish {
            if self.include_usage {
                self.writer.usage(out, &self.usage);
            }
            out.extend_from_slice(DONE);
            self.finished = true;
        } else {
            self.fail(out, "upstream stream ended before a finishReason");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(req: Value) -> GeminiRequest {
        chat_to_generate(&req, None).expect("converts")
    }

    #[test]
    fn path_for_stream_and_non_stream_and_model_validation() {
        assert_eq!(
            request_path("gemini-2.0-flash", false).expect("ok"),
            "/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(
            request_path("models/gemini-1.5-pro", true).expect("ok"),
            "/v1beta/models/gemini-1.5-pro:streamGenerateContent?alt=sse"
        );
        for bad in ["", "../admin", "a?b", "a:b", "a/b", ".."] {
            assert_eq!(
                request_path(bad, false).expect_err(bad).field.as_deref(),
                Some("model")
            );
        }
    }

    #[test]
    fn messages_system_images_and_generation_config() {
        let g = convert(json!({
            "model": "gemini-2.0-flash",
            "stream": true,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/cat.webp"}}]},
                {"role": "assistant", "content": "a cat"},
                {"role": "user", "content": "sure?"},
            ],
            "temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": ["END"], "n": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {
                "type": "object", "additionalProperties": false, "$schema": "s",
                "properties": {"a": {"type": ["string", "null"]}, "k": {"const": "v"}}, "required": ["a"]}}},
            "logit_bias": {"1": 2},
        }));
        assert!(g.stream);
        assert_eq!(
            g.path,
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        let b = &g.body;
        assert_eq!(
            b["systemInstruction"],
            json!({"parts": [{"text": "be brief"}]})
        );
        let c = b["contents"].as_array().expect("contents");
        assert_eq!(c.len(), 3);
        assert_eq!(c[0]["role"], "user");
        assert_eq!(
            c[0]["parts"][1],
            json!({"inlineData": {"mimeType": "image/png", "data": "iVBO"}})
        );
        assert_eq!(
            c[0]["parts"][2],
            json!({"fileData": {"mimeType": "image/webp", "fileUri": "https://x.test/cat.webp"}})
        );
        assert_eq!(c[1], json!({"role": "model", "parts": [{"text": "a cat"}]}));
        let gc = &b["generationConfig"];
        assert_eq!(gc["temperature"], 0.2);
        assert_eq!(gc["topP"], 0.9);
        assert_eq!(gc["maxOutputTokens"], 50);
        assert_eq!(gc["stopSequences"], json!(["END"]));
        assert_eq!(gc["candidateCount"], 2);
        assert_eq!(gc["responseMimeType"], "application/json");
        assert_eq!(
            gc["responseSchema"],
            json!({"type": "object", "required": ["a"], "properties": {
                "a": {"type": "string", "nullable": true}, "k": {"enum": ["v"]}}})
        );
        assert!(b.get("logit_bias").is_none());
    }

    #[test]
    fn tools_calls_and_results_resolve_names_by_tool_call_id() {
        let g = convert(json!({
            "model": "gemini-x",
            "messages": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"t\":\"noon\"}"},
                {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "later"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "w",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}},
                {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }));
        let c = g.body["contents"].as_array().expect("contents");
        assert_eq!(
            c[1]["parts"][0],
            json!({"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}})
        );
        assert_eq!(c[2]["role"], "user");
        assert_eq!(
            c[2]["parts"],
            json!([
                {"functionResponse": {"name": "get_time", "response": {"t": "noon"}}},
                {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}])
        );
        // The repeated id resolves to the nearest earlier call.
        assert_eq!(c[4]["parts"][0]["functionResponse"]["name"], "get_time");
        let decls = &g.body["tools"][0]["functionDeclarations"];
        assert_eq!(
            decls[0],
            json!({"name": "get_weather", "description": "w",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}})
        );
        assert_eq!(decls[1], json!({"name": "get_time"}));
        assert_eq!(
            g.body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        for (tc, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let g = convert(
                json!({"model": "g", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": tc}),
            );
            assert_eq!(g.body["toolConfig"]["functionCallingConfig"]["mode"], mode);
        }
    }

    #[test]
    fn unknown_tool_call_id_and_refs_are_400s_naming_the_field() {
        let e = chat_to_generate(
            &json!({"model": "g", "messages": [{"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "nope", "content": "r"}]}),
            None,
        )
        .expect_err("unknown id");
        assert_eq!(e.field.as_deref(), Some("messages[1].tool_call_id"));
        let e = chat_to_generate(
            &json!({"model": "g", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters":
                    {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}}}]}),
            None,
        )
        .expect_err("ref");
        assert_eq!(
            e.field.as_deref(),
            Some("tools[0].function.parameters.properties.a.$ref")
        );
        let e = chat_to_generate(
            &json!({"model": "g", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "javascript:alert(1)"}}]}]}),
            None,
        )
        .expect_err("bad image");
        assert_eq!(
            e.field.as_deref(),
            Some("messages[0].content[0].image_url.url")
        );
    }

    #[test]
    fn response_text_function_calls_finish_reasons_and_usage() {
        let resp = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true},
                {"text": "Checking. "},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}}]},
                "finishReason": "STOP", "index": 0, "safetyRatings": []}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 6, "totalTokenCount": 20,
                              "cachedContentTokenCount": 4, "thoughtsTokenCount": 4},
            "modelVersion": "gemini-2.5-flash", "responseId": "abc"});
        let c = generate_to_chat_response(&resp, "").expect("converts");
        assert_eq!(c["model"], "gemini-2.5-flash");
        assert_eq!(c["id"], "abc");
        let m = &c["choices"][0]["message"];
        assert_eq!(m["content"], "Checking. ");
        assert_eq!(m["tool_calls"][0]["id"], "call_0");
        assert_eq!(m["tool_calls"][1]["id"], "call_1");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["usage"]["prompt_tokens"], 10);
        assert_eq!(c["usage"]["completion_tokens"], 10);
        assert_eq!(c["usage"]["total_tokens"], 20);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(
            c["usage"]["completion_tokens_details"]["reasoning_tokens"],
            4
        );
        for (r, want) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("OTHER", "stop"),
        ] {
            let resp =
                json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": r}]});
            assert_eq!(
                generate_to_chat_response(&resp, "m").expect("ok")["choices"][0]["finish_reason"],
                want
            );
        }
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}});
        let c = generate_to_chat_response(&blocked, "m").expect("ok");
        assert_eq!(c["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(
            generate_to_chat_response(&json!(7), "m")
                .expect_err("502")
                .status,
            502
        );
    }

    #[test]
    fn errors_map_to_openai_shape_and_status() {
        let cases = [
            (400, "INVALID_ARGUMENT", 400, "invalid_request_error"),
            (403, "PERMISSION_DENIED", 403, "permission_error"),
            (404, "NOT_FOUND", 404, "invalid_request_error"),
            (429, "RESOURCE_EXHAUSTED", 429, "rate_limit_error"),
            (500, "INTERNAL", 500, "api_error"),
            (503, "UNAVAILABLE", 503, "api_error"),
            (504, "DEADLINE_EXCEEDED", 504, "api_error"),
        ];
        for (code, status, want, otype) in cases {
            let body =
                json!({"error": {"code": code, "message": "m", "status": status}}).to_string();
            let m = error_to_openai(code, body.as_bytes());
            let v: Value = serde_json::from_slice(&m.body).expect("json");
            assert_eq!(
                (m.status, v["error"]["type"].as_str()),
                (want, Some(otype)),
                "{status}"
            );
            assert_eq!(v["error"]["code"], status.to_ascii_lowercase());
        }
        let bad_key = json!({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}});
        assert_eq!(
            error_to_openai(400, bad_key.to_string().as_bytes()).status,
            401
        );
        let arr =
            json!([{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}]);
        assert_eq!(error_to_openai(429, arr.to_string().as_bytes()).status, 429);
        assert_eq!(error_to_openai(502, b"not json").status, 502);
    }

    const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}}}],\"role\": \"model\"},\"index\": 0}],\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 5,\"totalTokenCount\": 13,\"cachedContentTokenCount\": 2},\"responseId\": \"r1\"}\r\n\r\n",
    );

    use crate::translate::sse::data_payloads as datas;

    #[test]
    fn stream_converts_text_function_call_finish_and_usage_at_every_split() {
        for step in [1, 5, 13, 100, STREAM.len()] {
            let mut s = GeminiStream::new("my-gemini", true);
            let mut out = Vec::new();
            for piece in STREAM.as_bytes().chunks(step) {
                out.extend(s.feed(piece));
            }
            assert!(!s.is_finished(), "Gemini streams end at EOF");
            out.extend(s.finish());
            let d = datas(&out);
            assert_eq!(d.len(), 6, "step {step}: {d:?}");
            assert_eq!(d[5], "[DONE]");
            let c: Vec<Value> = d[..5]
                .iter()
                .map(|x| serde_json::from_str(x).expect("json"))
                .collect();
            assert_eq!(c[0]["id"], "r1");
            assert_eq!(c[0]["model"], "my-gemini");
            assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(c[0]["choices"][0]["delta"]["content"], "Hel");
            assert!(c[1]["choices"][0]["delta"].get("role").is_none());
            assert_eq!(c[1]["choices"][0]["delta"]["content"], "lo");
            let tc = &c[2]["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(
                (tc["index"].as_u64(), tc["id"].as_str()),
                (Some(0), Some("call_0"))
            );
            assert_eq!(tc["function"]["name"], "get_weather");
            assert_eq!(tc["function"]["arguments"], "{\"city\":\"Paris\"}");
            assert_eq!(c[3]["choices"][0]["finish_reason"], "tool_calls");
            assert_eq!(c[4]["choices"], json!([]));
            assert_eq!(c[4]["usage"]["total_tokens"], 13);
            assert_eq!(c[4]["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
            assert_eq!(s.usage().map(|u| u.total_tokens), Some(13));
        }
    }

    #[test]
    fn stream_error_object_mid_stream_becomes_openai_error_event() {
        let mut s = GeminiStream::new("m", true);
        let first = STREAM.split("\r\n\r\n").next().expect("first");
        let mut out = s.feed(format!("{first}\r\n\r\n").as_bytes());
        out.extend(s.feed(b"data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\r\n\r\n"));
        assert!(s.is_finished());
        out.extend(s.finish());
        let d = datas(&out);
        assert_eq!(d.len(), 2);
        let e: Value = serde_json::from_str(&d[1]).expect("json");
        assert_eq!(e["error"]["message"], "The model is overloaded.");
        assert_eq!(e["error"]["code"], "unavailable");
        assert_eq!(s.usage().map(|u| u.prompt_tokens), Some(8));
    }

    #[test]
    fn stream_cut_without_finish_reason_ends_with_error_event() {
        let mut s = GeminiStream::new("m", false);
        let mut out = s.feed(&STREAM.as_bytes()[..STREAM.len() / 2]);
        out.extend(s.finish());
        let d = datas(&out);
        let e: Value = serde_json::from_str(d.last().expect("events")).expect("json");
        assert_eq!(e["error"]["code"], "upstream_stream_error");
    }

    #[test]
    fn stream_garbage_never_panics() {
        for input in [
            &b"data: {\"candidates\": 5}\n\n"[..],
            b"data: {\"candidates\": [{\"content\": {\"parts\": 3}, \"index\": \"z\"}]}\n\n",
            b"data: [1,2]\n\n",
            b"data: nope\n\n",
            b"data: {\"promptFeedback\": {\"blockReason\": \"SAFETY\"}}\n\n",
        ] {
            let mut s = GeminiStream::new("m", true);
            let _ = s.feed(input);
            let _ = s.finish();
        }
    }
}
