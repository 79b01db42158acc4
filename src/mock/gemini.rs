//! The Gemini bodies the mock answers `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` with: a whole `GenerateContentResponse`, the chunks of a streamed
//! one (SSE with `alt=sse`, else one JSON array, as the real API does), and Google-shaped
//! errors.
//!
//! Content is deterministic: the text is `tok0 tok1 ...` (one chunk per word when streamed);
//! when the request declares functions, a `functionCall` part calls the first one with
//! [`super::anthropic::TOOL_INPUT`]'s arguments; the last chunk carries `finishReason` and the
//! full `usageMetadata`.

#![warn(missing_docs)]

use serde_json::{json, Value};

/// What the mock takes from a `generateContent` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateRequest {
    /// The model from the path.
    pub model: String,
    /// `generationConfig.maxOutputTokens`, if set.
    pub max_output_tokens: Option<u64>,
    /// The first declared function, unless `functionCallingConfig.mode` is NONE.
    pub function: Option<String>,
    /// Whitespace-separated words of `systemInstruction` and every text part, at least 1.
    pub prompt_tokens: u64,
}

/// The model and method of a Gemini path: `/v1beta/models/{model}:{method}`.
pub fn parse_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    let (model, method) = rest.rsplit_once(':')?;
    (!model.is_empty() && !model.contains('/')).then_some((model, method))
}

fn text_words(parts: Option<&Value>) -> u64 {
    parts
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .map(|t| t.split_whitespace().count() as u64)
        .sum()
}

/// Validate and read a request: `contents` must be a non-empty list of `{role, parts}`.
/// `Err` is the INVALID_ARGUMENT message.
pub fn generate_request(model: &str, body: &Value) -> Result<GenerateRequest, String> {
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
    let mut words = text_words(body.pointer("/systemInstruction/parts"));
    for c in contents {
        match c.get("role").and_then(Value::as_str) {
            None | Some("user" | "model" | "function") => {}
            Some(other) => {
                return Err(format!("Please use a valid role: user, model. Got {other}"))
            }
        }
        if !c.get("parts").is_some_and(Value::is_array) {
            return Err(
                "* GenerateContentRequest.contents[].parts: contents.parts must not be empty"
                    .into(),
            );
        }
        words += text_words(c.get("parts"));
    }
    let none = body
        .pointer("/toolConfig/functionCallingConfig/mode")
        .and_then(Value::as_str)
        == Some("NONE");
    let function = body
        .pointer("/tools/0/functionDeclarations/0/name")
        .and_then(Value::as_str)
        .filter(|_| !none)
        .map(str::to_string);
    Ok(GenerateRequest {
        model: model.to_string(),
        max_output_tokens: body
            .pointer("/generationConfig/maxOutputTokens")
            .and_then(Value::as_u64),
        function,
        prompt_tokens: words.max(1),
    })
}

/// (text tokens, cut by maxOutputTokens).
fn text_tokens(req: &GenerateRequest, events: u32) -> (u64, bool) {
    let n = u64::from(events);
    match req.max_output_tokens {
        Some(max) if max < n => (max, true),
        _ => (n, false),
    }
}

fn token(i: u64) -> String {
    format!("tok{i} ")
}

fn function_part(name: &str) -> Value {
    let args: Value = serde_json::from_str(super::anthropic::TOOL_INPUT).unwrap_or(Value::Null);
    json!({"functionCall": {"name": name, "args": args}})
}

fn usage(req: &GenerateRequest, output: u64) -> Value {
    json!({"promptTokenCount": req.prompt_tokens, "candidatesTokenCount": output,
           "totalTokenCount": req.prompt_tokens + output})
}

fn output_tokens(req: &GenerateRequest, events: u32) -> (u64, &'static str, bool) {
    let (n, cut) = text_tokens(req, events);
    let call = req.function.is_some() && !cut;
    let output = n + if call {
        super::anthropic::TOOL_OUTPUT_TOKENS
    } else {
        0
    };
    (output, if cut { "MAX_TOKENS" } else { "STOP" }, call)
}

/// A whole `GenerateContentResponse`.
pub fn response(id: &str, req: &GenerateRequest, events: u32) -> Vec<u8> {
    let (n, _) = text_tokens(req, events);
    let (output, finish, call) = output_tokens(req, events);
    let text: String = (0..n).map(token).collect();
    let mut parts = vec![json!({"text": text})];
    if let (true, Some(f)) = (call, &req.function) {
        parts.push(function_part(f));
    }
    json!({
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage(req, output),
        "modelVersion": req.model,
        "responseId": id,
    })
    .to_string()
    .into_bytes()
}

/// The chunks of a streamed answer as JSON objects: one per word, a `functionCall` chunk when
/// the request declares functions, and a last chunk with `finishReason` and full usage
/// (earlier chunks carry only the prompt count, as the real API does).
pub fn stream_chunks(id: &str, req: &GenerateRequest, events: u32) -> Vec<Value> {
    let (n, _) = text_tokens(req, events);
    let (output, finish, call) = output_tokens(req, events);
    let partial_usage =
        json!({"promptTokenCount": req.prompt_tokens, "totalTokenCount": req.prompt_tokens});
    let chunk = |parts: Value, finish: Option<&str>, usage: Value| {
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        json!({"candidates": [cand], "usageMetadata": usage, "modelVersion": req.model, "responseId": id})
    };
    let mut out: Vec<Value> = (0..n)
        .map(|i| chunk(json!([{"text": token(i)}]), None, partial_usage.clone()))
        .collect();
    if let (true, Some(f)) = (call, &req.function) {
        out.push(chunk(
            json!([function_part(f)]),
            None,
            partial_usage.clone(),
        ));
    }
    out.push(chunk(
        json!([{"text": ""}]),
        Some(finish),
        usage(req, output),
    ));
    out
}

/// One chunk as an SSE event (Gemini ends its events with CRLF CRLF).
pub fn sse_event(chunk: &Value) -> Vec<u8> {
    format!("data: {chunk}\r\n\r\n").into_bytes()
}

/// The error chunk the `error-event-mid-stream` fault sends.
pub fn error_event() -> Vec<u8> {
    sse_event(&json!({"error": {"code": 503,
        "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}))
}

/// The Google RPC status name for an HTTP status.
pub fn rpc_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if (400..500).contains(&status) => "FAILED_PRECONDITION",
        _ => "UNKNOWN",
    }
}

/// A Google error body: `{"error":{"code","message","status"}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    json!({"error": {"code": status, "message": message, "status": rpc_status(status)}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(functions: bool, max: Option<u64>) -> GenerateRequest {
        let mut body = json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
            "systemInstruction": {"parts": [{"text": "be brief"}]}});
        if functions {
            body["tools"] = json!([{"functionDeclarations": [{"name": "get_weather"}]}]);
        }
        if let Some(m) = max {
            body["generationConfig"] = json!({"maxOutputTokens": m});
        }
        generate_request("gemini-mock", &body).expect("valid")
    }

    #[test]
    fn paths_and_validation() {
        assert_eq!(
            parse_path("/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
            Some(("gemini-2.0-flash", "streamGenerateContent"))
        );
        assert_eq!(parse_path("/v1beta/models/:x"), None);
        assert_eq!(parse_path("/v1/models/a:b"), None);
        assert_eq!(req(false, None).prompt_tokens, 4);
        assert!(generate_request("m", &json!({"contents": []})).is_err());
        assert!(
            generate_request("m", &json!({"contents": [{"role": "bot", "parts": []}]})).is_err()
        );
    }

    #[test]
    fn whole_response_and_stream_chunks_agree() {
        let v: Value = serde_json::from_slice(&response("r1", &req(true, None), 3)).expect("json");
        let parts = &v["candidates"][0]["content"]["parts"];
        assert_eq!(parts[0]["text"], "tok0 tok1 tok2 ");
        assert_eq!(parts[1]["functionCall"]["name"], "get_weather");
        assert_eq!(v["usageMetadata"]["totalTokenCount"], 4 + 3 + 5);
        let chunks = stream_chunks("r1", &req(true, None), 3);
        assert_eq!(chunks.len(), 5);
        assert_eq!(chunks[4]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(chunks[4]["usageMetadata"], v["usageMetadata"]);
        let cut = stream_chunks("r1", &req(true, Some(1)), 3);
        assert_eq!(cut.len(), 2);
        assert_eq!(cut[1]["candidates"][0]["finishReason"], "MAX_TOKENS");
        let e: Value = serde_json::from_slice(&error_body(429, "quota")).expect("json");
        assert_eq!(e["error"]["status"], "RESOURCE_EXHAUSTED");
    }
}
