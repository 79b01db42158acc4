//! Pieces of the OpenAI Chat Completions format that several converters share: reading message
//! content parts and image URLs, stop lists and tool calls, and writing `chat.completion.chunk`
//! frames.

use serde_json::{json, Map, Value};

use super::sse::write_data;
use super::{TokenUsage, TranslateError};

/// An image from an `image_url` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// An `http(s)` URL the provider fetches itself.
    Url(String),
    /// A `data:` URL, split into its media type and base64 payload.
    Base64 {
        /// `image/png`, `image/jpeg`, ...
        media_type: String,
        /// The base64 payload, as sent.
        data: String,
    },
}

/// One content part of a chat message, as the converters need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A text part (or a refusal, read as text).
    Text(String),
    /// An `image_url` part.
    Image(Image),
}

/// Parse an `image_url.url`: `http(s)://...` or `data:image/<type>;base64,<data>`. Anything
/// else (another scheme, a non-image or non-base64 data URL, bad base64) is a 400 naming
/// `field`, so the client learns which image was wrong instead of getting a provider error.
pub fn parse_image_url(url: &str, field: &str) -> Result<Image, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err(TranslateError::field(field, "data URL without a comma"));
        };
        let Some(media_type) = meta.strip_suffix(";base64") else {
            return Err(TranslateError::field(
                field,
                "only base64 data URLs are supported (data:image/<type>;base64,...)",
            ));
        };
        if !media_type.starts_with("image/") || media_type.len() <= "image/".len() {
            return Err(TranslateError::field(
                field,
                format!("data URL media type {media_type:?} is not an image type"),
            ));
        }
        let valid = !data.is_empty()
            && data.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
            });
        if !valid {
            return Err(TranslateError::field(
                field,
                "data URL payload is not valid base64",
            ));
        }
        return Ok(Image::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        });
    }
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(Image::Url(url.to_string()))
        }
        Ok(u) => Err(TranslateError::field(
            field,
            format!(
                "image URL scheme {:?} is not supported (use http, https or data)",
                u.scheme()
            ),
        )),
        Err(e) => Err(TranslateError::field(
            field,
            format!("invalid image URL: {e}"),
        )),
    }
}

/// A media type for an image URL, from its extension (providers that want one for URLs, like
/// Gemini's `fileData`, get `image/jpeg` when we cannot tell).
pub fn guess_image_mime(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => "image/jpeg",
    }
}

/// Read a message `content`: a string, null, or an array of `text`/`image_url` parts
/// (`refusal` parts count as text). Other part types are a 400 naming the part.
pub fn content_parts(content: Option<&Value>, field: &str) -> Result<Vec<Part>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s.clone())]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let pf = format!("{field}[{j}]");
                let obj = super::expect_object(part, &pf)?;
                let ptype = super::opt_str(obj, "type", &format!("{pf}.type"))?;
                match ptype {
                    Some("text") | Some("input_text") | Some("output_text") => {
                        let text = super::opt_str(obj, "text", &format!("{pf}.text"))?.ok_or_else(
                            || TranslateError::field(format!("{pf}.text"), "missing"),
                        )?;
                        out.push(Part::Text(text.to_string()));
                    }
                    Some("refusal") => {
                        let text = super::opt_str(obj, "refusal", &format!("{pf}.refusal"))?
                            .unwrap_or_default();
                        out.push(Part::Text(text.to_string()));
                    }
                    Some("image_url") => {
                        let uf = format!("{pf}.image_url.url");
                        // `image_url` is an object {url, detail}; a bare string is accepted too.
                        let url = match obj.get("image_url") {
                            Some(Value::String(s)) => s.as_str(),
                            Some(Value::Object(o)) => o
                                .get("url")
                                .and_then(Value::as_str)
                                .ok_or_else(|| TranslateError::field(&uf, "missing image URL"))?,
                            _ => return Err(TranslateError::field(&uf, "missing image URL")),
                        };
                        out.push(Part::Image(parse_image_url(url, &uf)?));
                    }
                    Some(other) => {
                        return Err(TranslateError::field(
                            format!("{pf}.type"),
                            format!(
                                "content part type {other:?} is not supported by this provider"
                            ),
                        ))
                    }
                    None => {
                        return Err(TranslateError::field(
                            format!("{pf}.type"),
                            "content part without a type",
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(TranslateError::field(
            field,
            "content must be a string, an array of parts, or null",
        )),
    }
}

/// The text of a content that may not carry images (system and tool messages): parts joined.
pub fn content_text(content: Option<&Value>, field: &str) -> Result<String, TranslateError> {
    let mut text = String::new();
    for (j, part) in content_parts(content, field)?.into_iter().enumerate() {
        match part {
            Part::Text(t) => text.push_str(&t),
            Part::Image(_) => {
                return Err(TranslateError::field(
                    format!("{field}[{j}]"),
                    "images are not allowed in this message",
                ))
            }
        }
    }
    Ok(text)
}

/// `stop`: a string or an array of strings (null: none).
pub fn stop_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, TranslateError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| TranslateError::field(field, "stop must hold strings"))
            })
            .collect(),
        Some(_) => Err(TranslateError::field(
            field,
            "stop must be a string or an array of strings",
        )),
    }
}

/// One tool call of an assistant message.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The call id the tool result refers to.
    pub id: String,
    /// The function called.
    pub name: String,
    /// The arguments parsed as a JSON object (an empty string counts as `{}`).
    pub arguments: Value,
}

/// The `tool_calls` of assistant message `i`, arguments parsed. Invalid JSON, or arguments
/// that are not an object, is a 400 naming `messages[i].tool_calls[j].function.arguments`.
pub fn tool_calls(msg: &Map<String, Value>, i: usize) -> Result<Vec<ToolCall>, TranslateError> {
    let Some(calls) = msg.get("tool_calls").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(calls) = calls.as_array() else {
        return Err(TranslateError::field(
            format!("messages[{i}].tool_calls"),
            "tool_calls must be an array",
        ));
    };
    let mut out = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let f = format!("messages[{i}].tool_calls[{j}]");
        let obj = super::expect_object(call, &f)?;
        let id = super::opt_str(obj, "id", &format!("{f}.id"))?
            .ok_or_else(|| TranslateError::field(format!("{f}.id"), "missing tool call id"))?;
        let func = obj
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| TranslateError::field(format!("{f}.function"), "missing function"))?;
        let name = super::opt_str(func, "name", &format!("{f}.function.name"))?
            .ok_or_else(|| TranslateError::field(format!("{f}.function.name"), "missing"))?;
        let af = format!("{f}.function.arguments");
        let arguments = match func.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
                TranslateError::field(&af, format!("arguments are not valid JSON: {e}"))
            })?,
            Some(Value::Object(o)) => Value::Object(o.clone()),
            Some(_) => {
                return Err(TranslateError::field(
                    &af,
                    "arguments must be a JSON string",
                ))
            }
        };
        if !arguments.is_object() {
            return Err(TranslateError::field(
                &af,
                "arguments must encode a JSON object",
            ));
        }
        out.push(ToolCall {
            id: id.to_string(),
            name: name.to_string(),
            arguments,
        });
    }
    Ok(out)
}

/// A function tool of a chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    /// The function's name.
    pub name: String,
    /// What the function does, for the model.
    pub description: Option<String>,
    /// The JSON Schema of the arguments, if given.
    pub parameters: Option<Value>,
}

/// The chat request's `tools`; anything but `type: function` is a 400 naming the tool.
pub fn function_tools(req: &Map<String, Value>) -> Result<Vec<FunctionTool>, TranslateError> {
    let Some(tools) = req.get("tools").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| TranslateError::field("tools", "tools must be an array"))?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let f = format!("tools[{i}]");
        let obj = super::expect_object(tool, &f)?;
        match super::opt_str(obj, "type", &format!("{f}.type"))? {
            Some("function") | None => {}
            Some(other) => {
                return Err(TranslateError::field(
                    format!("{f}.type"),
                    format!("tool type {other:?} is not supported by this provider"),
                ))
            }
        }
        let func = obj
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| TranslateError::field(format!("{f}.function"), "missing function"))?;
        let name = super::opt_str(func, "name", &format!("{f}.function.name"))?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| TranslateError::field(format!("{f}.function.name"), "missing"))?;
        let description =
            super::opt_str(func, "description", &format!("{f}.function.description"))?;
        let parameters = match func.get("parameters") {
            None | Some(Value::Null) => None,
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(_) => {
                return Err(TranslateError::field(
                    format!("{f}.function.parameters"),
                    "parameters must be a JSON Schema object",
                ))
            }
        };
        out.push(FunctionTool {
            name: name.to_string(),
            description: description.map(str::to_string),
            parameters,
        });
    }
    Ok(out)
}

/// `tool_choice` of a chat request, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This function must be called.
    Function(String),
}

/// Read `tool_choice` (absent: `None` here, meaning the provider's default).
pub fn tool_choice(req: &Map<String, Value>) -> Result<Option<ToolChoice>, TranslateError> {
    let bad = || {
        TranslateError::field(
            "tool_choice",
            "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
        )
    };
    match req.get("tool_choice") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            _ => Err(bad()),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            Ok(Some(ToolChoice::Function(name.to_string())))
        }
        Some(_) => Err(bad()),
    }
}

/// The model to send upstream: `model_override` (a backend's model mapping), else the
/// request's `model`; a missing one is a 400 saying `missing`.
pub(crate) fn request_model(
    req: &Map<String, Value>,
    model_override: Option<&str>,
    missing: &str,
) -> Result<String, TranslateError> {
    Ok(match model_override {
        Some(m) => m.to_string(),
        None => super::opt_str(req, "model", "model")?
            .ok_or_else(|| TranslateError::field("model", missing))?
            .to_string(),
    })
}

/// The chat request's `messages` array.
pub(crate) fn messages(req: &Map<String, Value>) -> Result<&Vec<Value>, TranslateError> {
    req.get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::field("messages", "messages must be an array"))
}

/// One chat message, read far enough to dispatch on its role.
pub(crate) struct Message<'a> {
    /// The message object.
    pub msg: &'a Map<String, Value>,
    /// Its `role`.
    pub role: &'a str,
    /// `messages[i]`, for error paths.
    pub field: String,
    /// `messages[i].content`, for error paths.
    pub content_field: String,
}

/// Read message `i` of `messages`: an object with a `role`.
pub(crate) fn message(m: &Value, i: usize) -> Result<Message<'_>, TranslateError> {
    let field = format!("messages[{i}]");
    let msg = super::expect_object(m, &field)?;
    let role = super::opt_str(msg, "role", &format!("{field}.role"))?
        .ok_or_else(|| TranslateError::field(format!("{field}.role"), "missing role"))?;
    let content_field = format!("{field}.content");
    Ok(Message {
        msg,
        role,
        field,
        content_field,
    })
}

/// The 400 for a message whose role the provider has no place for.
pub(crate) fn unsupported_role(m: &Message<'_>) -> TranslateError {
    TranslateError::field(
        format!("{}.role", m.field),
        format!("role {:?} is not supported", m.role),
    )
}

/// The 400 for a conversation left with no user or assistant turn.
pub(crate) fn no_turns() -> TranslateError {
    TranslateError::field(
        "messages",
        "at least one user or assistant message is required",
    )
}

/// The output limit: `max_completion_tokens`, else the older `max_tokens`.
pub(crate) fn max_tokens(req: &Map<String, Value>) -> Result<Option<u64>, TranslateError> {
    match super::opt_u64(req, "max_completion_tokens")? {
        Some(n) => Ok(Some(n)),
        None => super::opt_u64(req, "max_tokens"),
    }
}

/// What `response_format` asks for when it asks for JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum JsonFormat<'a> {
    /// `json_object`: any JSON object.
    Object,
    /// `json_schema`: JSON matching this schema.
    Schema(&'a Value),
}

/// Read `response_format`: `None` when absent, null or `text`.
pub(crate) fn json_format(
    req: &Map<String, Value>,
) -> Result<Option<JsonFormat<'_>>, TranslateError> {
    let Some(rf) = req.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let rf = super::expect_object(rf, "response_format")?;
    match super::opt_str(rf, "type", "response_format.type")? {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(JsonFormat::Object)),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    TranslateError::field("response_format.json_schema.schema", "missing schema")
                })?;
            Ok(Some(JsonFormat::Schema(schema)))
        }
        _ => Err(TranslateError::field(
            "response_format.type",
            "response_format.type must be text, json_object or json_schema",
        )),
    }
}

/// The chat `tools` for a request with a flat tool list (Responses and Anthropic style: one
/// object per tool, with its `type` beside the function's fields). `function` gets each tool's
/// path, object and `type` and returns the chat `function` object, or the 400 for a tool the
/// chat format cannot carry. Absent or null `tools`: none.
pub(crate) fn flat_tools(
    req: &Map<String, Value>,
    mut function: impl FnMut(&str, &Map<String, Value>, Option<&str>) -> Result<Value, TranslateError>,
) -> Result<Vec<Value>, TranslateError> {
    let Some(tools) = req.get("tools").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| TranslateError::field("tools", "tools must be an array"))?;
    let mut chat_tools = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let f = format!("tools[{i}]");
        let t = super::expect_object(t, &f)?;
        let ttype = super::opt_str(t, "type", &format!("{f}.type"))?;
        chat_tools.push(json!({"type": "function", "function": function(&f, t, ttype)?}));
    }
    Ok(chat_tools)
}

/// A `tool_calls[]` entry of a `chat.completion` message.
pub(crate) fn tool_call_json(id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
}

/// The assistant `message` of a `chat.completion` choice: `content` is null when the answer is
/// only tool calls.
pub(crate) fn assistant_message(text: String, calls: Vec<Value>) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// A whole `chat.completion` object.
pub(crate) fn completion(id: &str, model: &str, choices: Vec<Value>, usage: &TokenUsage) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": super::now_secs(),
        "model": model,
        "choices": choices,
        "usage": usage.openai_json(),
    })
}

/// The model to report: the one the client asked for, else the upstream's.
pub(crate) fn reported_model<'a>(asked: &'a str, upstream: Option<&'a str>) -> &'a str {
    if asked.is_empty() {
        upstream.unwrap_or("")
    } else {
        asked
    }
}

/// The first choice of a whole `chat.completion`; a body without one is a 502.
pub(crate) fn first_choice(chat: &Value) -> Result<&Value, TranslateError> {
    chat.get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| TranslateError::upstream("chat completion without choices"))
}

/// An upstream chat stream event, as the converters serving other dialects read it.
pub(crate) enum StreamEvent {
    /// `[DONE]`.
    Done,
    /// Not JSON: the stream must fail.
    NotJson,
    /// An error event: its `error` object.
    Error(Value),
    /// A chunk.
    Chunk(Value),
}

/// Parse one upstream chat stream event's data.
pub(crate) fn stream_event(data: &str) -> StreamEvent {
    if data.trim() == "[DONE]" {
        return StreamEvent::Done;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(data) else {
        return StreamEvent::NotJson;
    };
    match v.as_object_mut().and_then(|o| o.remove("error")) {
        Some(err) => StreamEvent::Error(err),
        None => StreamEvent::Chunk(v),
    }
}

/// The `message` of a stream error object.
pub(crate) fn error_message(err: &Value) -> String {
    err.get("message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error")
        .to_string()
}

/// The `usage` of a chat completion or chunk, when it carries one.
pub(crate) fn usage_of(chunk: &Value) -> Option<TokenUsage> {
    chunk
        .get("usage")
        .filter(|u| u.is_object())
        .map(TokenUsage::from_openai)
}

/// Choice 0 of a chunk (other choices are not translated).
pub(crate) fn choice_zero(chunk: &Value) -> Option<&Value> {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        })
}

/// A non-empty string field of a delta (`content`, `refusal`).
pub(crate) fn delta_text<'a>(delta: &'a Value, key: &str) -> Option<&'a str> {
    delta
        .get(key)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
}

/// The fields of a tool call, whole or a stream fragment (missing ones read as 0 or empty).
pub(crate) struct CallFields<'a> {
    /// `index` (stream fragments).
    pub index: u64,
    /// `id`.
    pub id: &'a str,
    /// `function.name`.
    pub name: &'a str,
    /// `function.arguments`.
    pub arguments: &'a str,
}

/// Read a tool call's fields.
pub(crate) fn call_fields(call: &Value) -> CallFields<'_> {
    let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or("");
    CallFields {
        index: call.get("index").and_then(Value::as_u64).unwrap_or(0),
        id: s("/id"),
        name: s("/function/name"),
        arguments: s("/function/arguments"),
    }
}

/// The status of a rewritten upstream error: the upstream's if it is an error status, else
/// 502.
pub(crate) fn error_status(status: u16) -> u16 {
    if (400..=599).contains(&status) {
        status
    } else {
        502
    }
}

/// Writes the `chat.completion.chunk` frames of one translated stream.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    /// The `id` of every chunk (the upstream's message id once known).
    pub id: String,
    /// The `created` of every chunk.
    pub created: u64,
    /// The model reported to the client.
    pub model: String,
}

impl ChunkWriter {
    /// A writer for a new stream answering as `model`: a fresh `chatcmpl` id, created now.
    pub fn new(model: &str) -> Self {
        ChunkWriter {
            id: super::fresh_id("chatcmpl"),
            created: super::now_secs(),
            model: model.to_string(),
        }
    }

    /// A chunk for choice `index` with `delta` and, if the choice ended, its finish reason.
    pub fn delta(&self, out: &mut Vec<u8>, index: u64, delta: Value, finish: Option<&str>) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": index,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish,
            }],
        });
        write_data(out, &chunk);
    }

    /// The final usage chunk of `stream_options.include_usage` (`choices: []`).
    pub fn usage(&self, out: &mut Vec<u8>, usage: &TokenUsage) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.openai_json(),
        });
        write_data(out, &chunk);
    }
}

/// An OpenAI-shaped stream error event: `data: {"error":{...}}`.
pub fn write_error_event(out: &mut Vec<u8>, message: &str, etype: &str, code: Option<&str>) {
    write_data(
        out,
        &json!({"error": {"message": message, "type": etype, "param": null, "code": code}}),
    );
}

/// An OpenAI-shaped error body for a status.
pub fn openai_error(
    status: u16,
    etype: &str,
    code: Option<&str>,
    message: &str,
) -> super::MappedError {
    let body = json!({"error": {"message": message, "type": etype, "param": null, "code": code}});
    super::MappedError {
        status,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// The OpenAI error `type` for an HTTP status.
pub fn openai_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ if (400..500).contains(&status) => "invalid_request_error",
        _ => "api_error",
    }
}

/// Test helper: one upstream `chat.completion.chunk` frame with choice 0's `delta` and finish
/// reason.
#[cfg(test)]
pub(crate) fn test_chunk(delta: Value, finish: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "model": "up",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_http_and_base64_data_are_accepted() {
        assert_eq!(
            parse_image_url("https://example.com/cat.png", "f"),
            Ok(Image::Url("https://example.com/cat.png".into()))
        );
        assert_eq!(
            parse_image_url("data:image/png;base64,iVBORw0KGgo=", "f"),
            Ok(Image::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0KGgo=".into()
            })
        );
    }

    #[test]
    fn invalid_image_urls_are_400s_naming_the_field() {
        for bad in [
            "ftp://example.com/a.png",
            "not a url",
            "data:text/plain;base64,aGk=",
            "data:image/png,rawbytes",
            "data:image/png;base64,@@@",
            "data:image/png;base64",
            "file:///etc/passwd",
        ] {
            let e = parse_image_url(bad, "messages[0].content[1].image_url.url").expect_err(bad);
            assert_eq!(e.status, 400);
            assert_eq!(
                e.field.as_deref(),
                Some("messages[0].content[1].image_url.url"),
                "{bad}"
            );
        }
    }

    #[test]
    fn content_parts_reject_unknown_part_types_by_path() {
        let e = content_parts(
            Some(&json!([{"type": "input_audio", "input_audio": {}}])),
            "messages[3].content",
        )
        .expect_err("audio");
        assert_eq!(e.field.as_deref(), Some("messages[3].content[0].type"));
        assert_eq!(
            content_parts(Some(&json!(5)), "messages[0].content")
                .expect_err("number")
                .field
                .as_deref(),
            Some("messages[0].content")
        );
    }

    #[test]
    fn tool_call_arguments_invalid_json_names_the_field() {
        let msg = json!({"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{oops"}}
        ]});
        let e = tool_calls(msg.as_object().expect("obj"), 4).expect_err("bad json");
        assert_eq!(
            e.field.as_deref(),
            Some("messages[4].tool_calls[1].function.arguments")
        );
        let msg =
            json!({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "[1]"}}]});
        assert!(tool_calls(msg.as_object().expect("obj"), 0).is_err());
        let msg = json!({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": ""}}]});
        assert_eq!(
            tool_calls(msg.as_object().expect("obj"), 0).expect("empty is {}")[0].arguments,
            json!({})
        );
    }

    #[test]
    fn tool_choice_forms() {
        let tc = |v: Value| tool_choice(json!({"tool_choice": v}).as_object().expect("obj"));
        assert_eq!(tc(json!("required")), Ok(Some(ToolChoice::Required)));
        assert_eq!(
            tc(json!({"type": "function", "function": {"name": "f"}})),
            Ok(Some(ToolChoice::Function("f".into())))
        );
        assert!(tc(json!("sometimes")).is_err());
        assert!(tc(json!(3)).is_err());
    }

    #[test]
    fn mime_guess_from_extension() {
        assert_eq!(guess_image_mime("https://x/a.PNG?s=1"), "image/png");
        assert_eq!(guess_image_mime("https://x/a"), "image/jpeg");
    }
}
