//! The translated data path (issue 6): requests whose client dialect and backend dialect
//! differ go through the pure converters of [`crate::translate`] instead of byte passthrough.
//!
//! ```text
//! client dialect            chat request             backend dialect
//! chat completions  ──┐                          ┌──> OpenAI chat  (passthrough backend)
//! responses         ──┼──> OpenAI chat JSON ─────┼──> Anthropic Messages
//! anthropic messages──┘   (model_map applied)    └──> Gemini generateContent
//! ```
//!
//! Answers go back the same way: the backend's answer (whole, error, or SSE) becomes OpenAI
//! chat, then the client's dialect. Streams are converted piece by piece: every upstream read
//! is fed to the converters and whatever they return is written to the client at once as one
//! chunk; nothing is held back but an unfinished SSE line inside the converters.
//!
//! The caller ([`super::forward::passthrough`]) owns body reading, permits, quota and routing;
//! this module sends one request to one backend and reports the status and usage so the
//! reservation settles through the same accounting as passthrough.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{select, Either};
use monoio::net::TcpStream;
use serde_json::{json, Value};

use super::forward::{send_buffered, Exchange, ExchangeError, RequestBody};
use super::relay::frame;
use super::{After, Core};
use crate::error::GatewayError;
use crate::http::chunked::LAST_CHUNK;
use crate::http::io::{read_append, write_all_timeout};
use crate::http::limits::CLIENT_WRITE_TIMEOUT;
use crate::http::{BodyFraming, ChunkedDecoder, Method, RequestHead, Version};
use crate::translate::{
    anthropic, anthropic_inbound, gemini, responses, MappedError, TokenUsage, TranslateError,
};
use crate::upstream::provider::Kind;
use crate::upstream::Backend;
use crate::usage::Usage;

/// `x-ditto-shim` value of a Responses request served through chat completions.
pub const SHIM_RESPONSES: &str = "responses_via_chat_completions";
/// `x-ditto-shim` value of an Anthropic Messages request served through chat completions.
pub const SHIM_MESSAGES: &str = "messages_via_chat_completions";

/// Room reserved for each upstream body read.
const READ_BYTES: usize = 16 * 1024;
/// Largest whole (non-stream or error) upstream answer read for conversion.
const MAX_WHOLE_BODY: usize = 32 * 1024 * 1024;

/// The API shape the client speaks, from the method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (Anthropic Messages inbound).
    Messages,
    /// `POST /v1/messages/count_tokens`: answered by the gateway.
    CountTokens,
    /// Anything else: plain passthrough (refused by translation backends).
    Other,
}

impl Dialect {
    /// The dialect of a request to `path` (already under `/v1`).
    pub fn of(method: Method, path: &str) -> Dialect {
        if method != Method::Post {
            return Dialect::Other;
        }
        match path {
            "/v1/chat/completions" => Dialect::Chat,
            "/v1/responses" => Dialect::Responses,
            "/v1/messages" => Dialect::Messages,
            "/v1/messages/count_tokens" => Dialect::CountTokens,
            _ => Dialect::Other,
        }
    }
}

/// How the forwarder serves a request on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Byte passthrough.
    Pass,
    /// Passthrough first; a 404/405/501 answer is retried through [`serve`] (Responses shim).
    PassThenShim,
    /// Through [`serve`] at once.
    Translate,
}

/// How `dialect` is served by `backend`.
pub fn mode(backend: &Backend, dialect: Dialect) -> Mode {
    match (backend.native.kind, dialect) {
        (Some(_), _) => Mode::Translate,
        (None, Dialect::Messages) => Mode::Translate,
        (None, Dialect::Responses) if backend.native.responses_shim_always => Mode::Translate,
        (None, Dialect::Responses) => Mode::PassThenShim,
        _ => Mode::Pass,
    }
}

/// Statuses that mean "this upstream has no Responses API" (REFERENCE 6).
pub fn shim_on(status: u16) -> bool {
    matches!(status, 404 | 405 | 501)
}

/// True for the Anthropic inbound endpoints, whose errors (gateway-made ones included) are
/// Anthropic-shaped so Anthropic SDKs can read them.
pub fn is_messages_path(method: Method, path: &str) -> bool {
    method == Method::Post
        && matches!(
            path.strip_prefix("/v1").unwrap_or(path),
            "/messages" | "/messages/count_tokens"
        )
}

/// A gateway-made error as a whole Anthropic-shaped response (for [`is_messages_path`]).
pub fn anthropic_error_response(e: &GatewayError, request_id: &str, connection: &str) -> Bytes {
    let body = anthropic_inbound::error_body(
        anthropic_inbound::error_type_for_status(e.status),
        &e.message,
    );
    let mut extra: Vec<(&str, String)> = e.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
    if let Some(b) = &e.backend {
        extra.push(("x-ditto-backend", b.clone()));
    }
    let mut out = BytesMut::new();
    json_head(
        &mut out,
        e.status,
        body.len(),
        request_id,
        &extra,
        connection,
    );
    out.extend_from_slice(&body);
    out.freeze()
}

/// Add the exact router-rule model names that point at each translation backend to its
/// `/v1/models` list (after `provider_config.models`): the models a client can reach there.
pub fn attach_rule_models(backends: &mut [Backend], router: &crate::config::RouterConfig) {
    for b in backends.iter_mut().filter(|b| b.native.kind.is_some()) {
        for rule in router.rules.iter().filter(|r| r.exact) {
            let targets = rule.backends.iter().any(|w| w.backend == b.name);
            let name = rule.model_prefix.trim_end_matches('*');
            if targets && !name.is_empty() && !b.native.models.iter().any(|m| m == name) {
                b.native.models.push(name.to_string());
            }
        }
    }
}

/// The `/v1/models` entries of a translation backend (it has no models endpoint to ask);
/// `None` for passthrough backends.
pub fn static_models(backend: &Backend) -> Option<Vec<Value>> {
    let kind = backend.native.kind?;
    Some(
        backend
            .native
            .models
            .iter()
            .map(|m| model_object(m, kind))
            .collect(),
    )
}

fn model_object(id: &str, kind: Kind) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": kind.as_str()})
}

/// What [`serve`] did.
pub enum Outcome {
    /// Nothing reached the backend (connect failed): the next candidate may be tried.
    NotSent(GatewayError),
    /// An answer went out (or the client left).
    Done(Done),
}

/// The end of a served request, for the caller's accounting.
pub struct Done {
    pub after: After,
    /// The status the upstream (or the gateway, for a refused request) answered.
    pub status: u16,
    /// Usage the converters read from the answer.
    pub usage: Option<Usage>,
    /// False when the request was refused before anything reached the upstream: the
    /// reservation is cancelled, not settled.
    pub sent: bool,
}

/// Answer `POST /v1/messages/count_tokens` locally: `{"input_tokens": n}`, an estimate (about
/// four bytes a token; see [`anthropic_inbound::count_tokens`]), whatever the backend.
pub async fn count_tokens(
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
    body: &RequestBody,
) -> After {
    let parsed = match body {
        RequestBody::Buffered(b) => serde_json::from_slice::<Value>(b)
            .map_err(|e| TranslateError::field("body", format!("invalid JSON: {e}"))),
        RequestBody::Streaming => Err(TranslateError::field(
            "body",
            "count_tokens takes a JSON body (content-type: application/json)",
        )),
    };
    let (status, body) = match parsed.and_then(|v| anthropic_inbound::count_tokens(&v)) {
        Ok(n) => (
            200,
            serde_json::to_vec(&json!({"input_tokens": n})).unwrap_or_default(),
        ),
        Err(e) => (e.status, e.anthropic_body()),
    };
    reply(client, head, request_id, status, &body, &[]).await
}

/// The converters of one stream: backend dialect -> chat, then chat -> client dialect.
enum Up {
    Openai,
    Anthropic(anthropic::AnthropicStream),
    Gemini(gemini::GeminiStream),
}

impl Up {
    fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        match self {
            Up::Openai => input.to_vec(),
            Up::Anthropic(s) => s.feed(input),
            Up::Gemini(s) => s.feed(input),
        }
    }
    fn finish(&mut self) -> Vec<u8> {
        match self {
            Up::Openai => Vec::new(),
            Up::Anthropic(s) => s.finish(),
            Up::Gemini(s) => s.finish(),
        }
    }
    fn usage(&self) -> Option<TokenUsage> {
        match self {
            Up::Openai => None,
            Up::Anthropic(s) => s.usage(),
            Up::Gemini(s) => s.usage(),
        }
    }
}

enum Down {
    Chat,
    Responses(Box<responses::ResponsesStream>),
    Messages(Box<anthropic_inbound::ChatToAnthropicStream>),
}

impl Down {
    fn feed(&mut self, input: Vec<u8>) -> Vec<u8> {
        if input.is_empty() {
            return input;
        }
        match self {
            Down::Chat => input,
            Down::Responses(s) => s.feed(&input),
            Down::Messages(s) => s.feed(&input),
        }
    }
    /// The upstream ended: cleanly (`broken` false) or not.
    fn finish(&mut self, broken: bool) -> Vec<u8> {
        match self {
            Down::Chat => Vec::new(),
            Down::Responses(s) if broken => s.finish_abnormally(),
            Down::Responses(s) => s.finish(),
            Down::Messages(s) => s.finish(),
        }
    }
    fn usage(&self) -> Option<TokenUsage> {
        match self {
            Down::Chat => None,
            Down::Responses(s) => s.usage(),
            Down::Messages(s) => s.usage(),
        }
    }
}

/// The request as sent upstream, and how to read the answer.
struct Prepared {
    /// Client dialect and request, for converting the answer back.
    dialect: Dialect,
    original: Value,
    /// The model the client asked for (answers name it, not the mapped one).
    client_model: String,
    stream: bool,
    /// A chat client that asked for the usage chunk.
    include_usage: bool,
    /// Upstream target and body.
    path: String,
    query: Option<String>,
    body: Vec<u8>,
    /// Provider auth and version headers.
    provider_headers: Vec<(&'static str, String)>,
}

/// Convert the client's request for `backend`; errors are the client's (400 naming the field).
fn prepare(backend: &Backend, dialect: Dialect, body: &[u8]) -> Result<Prepared, TranslateError> {
    let original: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::field("body", format!("invalid JSON: {e}")))?;
    let client_model = original
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let stream = original.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = original
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let mut chat = match dialect {
        Dialect::Chat => original.clone(),
        Dialect::Responses => responses::responses_to_chat(&original)?,
        Dialect::Messages => anthropic_inbound::messages_to_chat(&original, None)?,
        Dialect::CountTokens | Dialect::Other => {
            return Err(TranslateError::field("path", "not a translatable endpoint"))
        }
    };
    let mapped = backend.native.map_model(&client_model).to_string();
    let key = backend.native.api_key.clone();
    let (path, query, body, provider_headers) = match backend.native.kind {
        None => {
            if let Some(o) = chat.as_object_mut() {
                o.insert("model".into(), Value::String(mapped));
                if stream {
                    // The client converter needs the usage chunk to report usage.
                    o.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            ("/v1/chat/completions".to_string(), None, chat, Vec::new())
        }
        Some(Kind::Anthropic) => {
            let b = anthropic::chat_to_messages(&chat, Some(&mapped))?;
            let mut h = vec![(
                "anthropic-version",
                anthropic::ANTHROPIC_VERSION.to_string(),
            )];
            if let Some(k) = key {
                h.push(("x-api-key", k));
            }
            (anthropic::MESSAGES_PATH.to_string(), None, b, h)
        }
        Some(Kind::Gemini) => {
            let g = gemini::chat_to_generate(&chat, Some(&mapped))?;
            let (path, query) = match g.path.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (g.path.clone(), None),
            };
            let h = key.map(|k| vec![("x-goog-api-key", k)]).unwrap_or_default();
            (path, query, g.body, h)
        }
    };
    Ok(Prepared {
        dialect,
        original,
        client_model,
        stream,
        include_usage,
        path,
        query,
        body: serde_json::to_vec(&body).unwrap_or_default(),
        provider_headers,
    })
}

/// Serve one request on `backend` through the converters. Every reply (errors included) is
/// written here; the caller settles the quota from the returned [`Done`].
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    core: &Core,
    client: &mut TcpStream,
    head: &RequestHead,
    backend: &Backend,
    request_id: &str,
    strip: Option<&[u8]>,
    body: &RequestBody,
    dialect: Dialect,
) -> Outcome {
    let tags = tags(backend, dialect);
    let refuse = |e: TranslateError| (e.status, client_error_body(dialect, &e));
    let refused = match (backend.native.kind, dialect, body) {
        (Some(kind), Dialect::Other, _) => Some(other_endpoint(head, kind, backend)),
        (_, _, RequestBody::Streaming) => Some(refuse(TranslateError::field(
            "body",
            "a translated request needs a JSON body (content-type: application/json)",
        ))),
        _ => None,
    };
    if let Some((status, body)) = refused {
        let after = reply(client, head, request_id, status, &body, &tags).await;
        return done(after, status, None, false);
    }
    let RequestBody::Buffered(raw) = body else {
        return done(After::Close, 400, None, false);
    };
    let prep = match prepare(backend, dialect, raw) {
        Ok(p) => p,
        Err(e) => {
            let (status, body) = refuse(e);
            let after = reply(client, head, request_id, status, &body, &tags).await;
            return done(after, status, None, false);
        }
    };

    let mut req = BytesMut::with_capacity(1024 + head.fields.raw_len());
    upstream_head(&mut req, head, backend, &prep, request_id, strip);
    let ex = match send_buffered(
        core,
        backend,
        req.freeze(),
        Bytes::from(prep.body.clone()),
        false,
        Some(&*client),
    )
    .await
    {
        Ok(ex) => ex,
        Err(ExchangeError::NotSent(e)) => return Outcome::NotSent(e),
        Err(ExchangeError::Failed(e)) => {
            let e = e.with_backend(&backend.name);
            let status = e.status;
            let body = gateway_error_body(dialect, &e);
            let after = reply(client, head, request_id, status, &body, &tags).await;
            return done(after, status, None, true);
        }
        // The client left while we waited: nobody to answer (passthrough cancels too).
        Err(ExchangeError::Client(_)) => return done(After::Close, 499, None, false),
    };
    let status = ex.resp.status;
    let is_sse =
        ex.resp.fields.get("content-type").is_some_and(|ct| {
            ct.len() >= 17 && ct[..17].eq_ignore_ascii_case(b"text/event-stream")
        });
    let mut up = UpBody::new(ex);

    if !(200..300).contains(&status) {
        let whole = up.whole(backend, client).await;
        let body = match whole {
            Ok(b) => {
                up.release(core, backend);
                b
            }
            Err(_) => Bytes::new(),
        };
        let mapped = map_error(backend.native.kind, dialect, status, &body);
        let after = reply(client, head, request_id, mapped.status, &mapped.body, &tags).await;
        return done(after, status, None, true);
    }

    if prep.stream && is_sse {
        return stream(core, client, head, backend, request_id, &prep, up, &tags).await;
    }
    // A whole answer (also a stream request whose upstream answered JSON anyway).
    let whole = match up.whole(backend, client).await {
        Ok(b) => {
            up.release(core, backend);
            b
        }
        Err(Piece::ClientGone) => return done(After::Close, status, None, true),
        Err(_) => {
            let e = GatewayError::bad_gateway(format!(
                "backend \"{}\" failed while sending its answer",
                backend.name
            ));
            let body = gateway_error_body(dialect, &e);
            let after = reply(client, head, request_id, 502, &body, &tags).await;
            return done(after, 502, None, true);
        }
    };
    match convert_whole(backend.native.kind, &prep, &whole) {
        Ok((body, usage)) => {
            let after = reply(client, head, request_id, 200, &body, &tags).await;
            done(after, status, usage.map(|u| u.usage()), true)
        }
        Err(e) => {
            let body = client_error_body(dialect, &e);
            let after = reply(client, head, request_id, e.status, &body, &tags).await;
            done(after, e.status, None, true)
        }
    }
}

fn done(after: After, status: u16, usage: Option<Usage>, sent: bool) -> Outcome {
    Outcome::Done(Done {
        after,
        status,
        usage,
        sent,
    })
}

/// Headers telling the client what was translated.
fn tags(backend: &Backend, dialect: Dialect) -> Vec<(&'static str, String)> {
    let mut t = vec![("x-ditto-backend", backend.name.clone())];
    if backend.native.kind.is_some() {
        t.push(("x-ditto-translation", backend.name.clone()));
    }
    match dialect {
        Dialect::Responses => t.push(("x-ditto-shim", SHIM_RESPONSES.to_string())),
        Dialect::Messages => t.push(("x-ditto-shim", SHIM_MESSAGES.to_string())),
        _ => {}
    }
    t
}

/// The answer of a translation backend to an endpoint it has no equivalent for.
fn other_endpoint(head: &RequestHead, kind: Kind, backend: &Backend) -> (u16, Vec<u8>) {
    let path = head.path();
    let id = path
        .strip_prefix("/v1/models/")
        .or_else(|| path.strip_prefix("/models/"));
    if let (Method::Get, Some(id)) = (head.method, id) {
        if backend.native.models.iter().any(|m| m == id) {
            let body = serde_json::to_vec(&model_object(id, kind)).unwrap_or_default();
            return (200, body);
        }
        let e = GatewayError::not_found(format!("the model {id:?} does not exist"));
        return (404, e.body().to_vec());
    }
    let e = GatewayError::not_found(format!(
        "backend \"{}\" translates to the {} API, which serves only POST /v1/chat/completions, \
         /v1/responses and /v1/messages through the gateway; {} {} has no equivalent there",
        backend.name,
        kind.as_str(),
        head.method.as_str(),
        path
    ));
    (404, e.body().to_vec())
}

/// A converter error in the client's dialect.
fn client_error_body(dialect: Dialect, e: &TranslateError) -> Vec<u8> {
    match dialect {
        Dialect::Messages | Dialect::CountTokens => e.anthropic_body(),
        _ => e.openai_body(),
    }
}

/// A gateway-made error in the client's dialect.
fn gateway_error_body(dialect: Dialect, e: &GatewayError) -> Vec<u8> {
    match dialect {
        Dialect::Messages | Dialect::CountTokens => anthropic_inbound::error_body(
            anthropic_inbound::error_type_for_status(e.status),
            &e.message,
        ),
        _ => e.body().to_vec(),
    }
}

/// An upstream error answer: provider shape -> OpenAI -> the client's dialect.
fn map_error(kind: Option<Kind>, dialect: Dialect, status: u16, body: &[u8]) -> MappedError {
    let openai = match kind {
        Some(Kind::Anthropic) => anthropic::error_to_openai(status, body),
        Some(Kind::Gemini) => gemini::error_to_openai(status, body),
        // OpenAI-shaped already; the status is kept (a non-JSON body is wrapped).
        None if serde_json::from_slice::<Value>(body).is_ok_and(|v| v.get("error").is_some()) => {
            MappedError {
                status,
                body: body.to_vec(),
            }
        }
        None => crate::translate::chat::openai_error(
            status,
            crate::translate::chat::openai_type_for_status(status),
            None,
            &anthropic::truncated_text(body),
        ),
    };
    match dialect {
        Dialect::Messages | Dialect::CountTokens => {
            anthropic_inbound::openai_error_to_anthropic(openai.status, &openai.body)
        }
        _ => openai,
    }
}

/// A whole upstream answer -> chat completion -> the client's dialect; with its usage.
fn convert_whole(
    kind: Option<Kind>,
    prep: &Prepared,
    body: &[u8],
) -> Result<(Vec<u8>, Option<TokenUsage>), TranslateError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::upstream(format!("upstream answer is not JSON: {e}")))?;
    let (chat, usage) = match kind {
        Some(Kind::Anthropic) => {
            let usage = v.get("usage").map(anthropic::usage_from);
            (
                anthropic::messages_to_chat_response(&v, &prep.client_model)?,
                usage,
            )
        }
        Some(Kind::Gemini) => {
            let usage = v.get("usageMetadata").map(gemini::usage_from);
            (
                gemini::generate_to_chat_response(&v, &prep.client_model)?,
                usage,
            )
        }
        None => {
            let usage = v.get("usage").map(TokenUsage::from_openai);
            (v, usage)
        }
    };
    let out = match prep.dialect {
        Dialect::Responses => responses::chat_to_response(&chat, &prep.original)?,
        Dialect::Messages => {
            anthropic_inbound::chat_to_messages_response(&chat, &prep.client_model)?
        }
        _ => chat,
    };
    Ok((serde_json::to_vec(&out).unwrap_or_default(), usage))
}

/// Relay a converted stream: each upstream read is converted and written at once.
#[allow(clippy::too_many_arguments)]
async fn stream(
    core: &Core,
    client: &mut TcpStream,
    head: &RequestHead,
    backend: &Backend,
    request_id: &str,
    prep: &Prepared,
    mut up_body: UpBody,
    tags: &[(&'static str, String)],
) -> Outcome {
    // A client converter after the backend one needs the chat usage chunk to report usage;
    // a chat client sees it only if it asked.
    let layered = prep.dialect != Dialect::Chat;
    let mut up = match backend.native.kind {
        None => Up::Openai,
        Some(Kind::Anthropic) => Up::Anthropic(anthropic::AnthropicStream::new(
            &prep.client_model,
            layered || prep.include_usage,
        )),
        Some(Kind::Gemini) => Up::Gemini(gemini::GeminiStream::new(
            &prep.client_model,
            layered || prep.include_usage,
        )),
    };
    let mut down = match prep.dialect {
        Dialect::Responses => {
            Down::Responses(Box::new(responses::ResponsesStream::new(&prep.original)))
        }
        Dialect::Messages => {
            Down::Messages(Box::new(anthropic_inbound::ChatToAnthropicStream::new(
                &prep.client_model,
                crate::translate::estimate_tokens(&String::from_utf8_lossy(&prep.body)),
            )))
        }
        _ => Down::Chat,
    };
    let usage = |up: &Up, down: &Down| up.usage().or_else(|| down.usage()).map(|u| u.usage());

    let chunked = head.version != Version::Http10;
    let close = !head.keep_alive || !chunked || core.shutdown.is_fired();
    let mut out = BytesMut::with_capacity(512);
    {
        use std::fmt::Write;
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-request-id: {request_id}\r\nx-ditto-request-id: {request_id}\r\n"
        );
        for (k, v) in tags {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        out.extend_from_slice(head.version.connection_field(close).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    head.probe.on_upstream_head(200, &backend.name, &mut out);
    if write_all_timeout(client, out.split().freeze(), CLIENT_WRITE_TIMEOUT)
        .await
        .is_err()
    {
        return done(After::Close, 200, usage(&up, &down), true);
    }
    loop {
        let piece = up_body.next(client, backend.timeout).await;
        let (converted, end) = match piece {
            Piece::Data(d) => (down.feed(up.feed(&d)), None),
            Piece::End => {
                let mut c = down.feed(up.finish());
                c.extend(down.finish(false));
                (c, Some(true))
            }
            Piece::Failed => {
                // The upstream broke mid-stream: the converters end with an error event, so
                // the client sees a failure, never a clean end.
                let mut c = down.feed(up.finish());
                c.extend(down.finish(true));
                (c, Some(false))
            }
            Piece::ClientGone => return done(After::Close, 200, usage(&up, &down), true),
        };
        frame(&mut out, &converted, chunked);
        if end.is_some() && chunked {
            out.extend_from_slice(LAST_CHUNK);
        }
        if !out.is_empty()
            && write_all_timeout(client, out.split().freeze(), CLIENT_WRITE_TIMEOUT)
                .await
                .is_err()
        {
            return done(After::Close, 200, usage(&up, &down), true);
        }
        if let Some(clean) = end {
            if clean {
                up_body.release(core, backend);
                return done(
                    if close {
                        After::Close
                    } else {
                        After::KeepAlive
                    },
                    200,
                    usage(&up, &down),
                    true,
                );
            }
            let after = if close {
                After::Close
            } else {
                After::KeepAlive
            };
            return done(after, 200, usage(&up, &down), true);
        }
    }
}

/// Write the upstream request head: the client's end-to-end headers as passthrough forwards
/// them, minus the ones the translated body or the provider's auth replaces.
fn upstream_head(
    out: &mut BytesMut,
    head: &RequestHead,
    backend: &Backend,
    prep: &Prepared,
    request_id: &str,
    strip: Option<&[u8]>,
) {
    use std::fmt::Write;
    /// Replaced by the gateway: framing and content negotiation of a body it rewrote (the
    /// answer must arrive uncompressed to be converted), and routing/identity headers.
    const OURS: [&str; 9] = [
        "host",
        "expect",
        "proxy-authorization",
        "x-request-id",
        "content-type",
        "content-encoding",
        "accept-encoding",
        "accept",
        "anthropic-version",
    ];
    out.extend_from_slice(b"POST ");
    backend.write_target(&mut ByteWriter(out), &prep.path, prep.query.as_deref());
    let _ = write!(out, " HTTP/1.1\r\nhost: {}\r\n", backend.authority);
    let connection = head.fields.get("connection");
    for (name, value) in head.fields.iter() {
        let named_by_connection = connection.is_some_and(|v| {
            v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        });
        if super::headers::HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
            || OURS.iter().any(|h| name.eq_ignore_ascii_case(h))
            || name
                .as_bytes()
                .get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"x-ditto-"))
            || named_by_connection
            || strip.is_some_and(|token| crate::auth::carries_token(name, value, token))
            || prep
                .provider_headers
                .iter()
                .any(|(k, _)| name.eq_ignore_ascii_case(k))
            || backend
                .headers
                .iter()
                .any(|(k, _)| name.eq_ignore_ascii_case(k))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in &prep.provider_headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    for (k, v) in &backend.headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    let accept = if prep.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let _ = write!(
        out,
        "x-request-id: {request_id}\r\ncontent-type: application/json\r\naccept: {accept}\r\ncontent-length: {}\r\n\r\n",
        prep.body.len()
    );
}

/// `fmt::Write` into a `BytesMut`.
struct ByteWriter<'a>(&'a mut BytesMut);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn json_head(
    out: &mut BytesMut,
    status: u16,
    len: usize,
    request_id: &str,
    extra: &[(&str, String)],
    connection: &str,
) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nx-request-id: {request_id}\r\nx-ditto-request-id: {request_id}\r\n",
        crate::error::reason_phrase(status),
    );
    for (k, v) in extra {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    out.extend_from_slice(connection.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Write a whole JSON answer. The request body has been read whole, so the connection stays
/// usable unless the client asked to close.
async fn reply(
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
    status: u16,
    body: &[u8],
    extra: &[(&'static str, String)],
) -> After {
    let close = !head.keep_alive;
    let mut out = BytesMut::with_capacity(300 + body.len());
    json_head(
        &mut out,
        status,
        body.len(),
        request_id,
        extra,
        head.version.connection_field(close),
    );
    // Metrics and `x-ditto-overhead-us`, as on every other answer.
    let backend = extra
        .iter()
        .find(|(k, _)| *k == "x-ditto-backend")
        .map_or("", |(_, v)| v.as_str());
    head.probe.on_upstream_head(status, backend, &mut out);
    out.extend_from_slice(body);
    match write_all_timeout(client, out.freeze(), CLIENT_WRITE_TIMEOUT).await {
        Ok(()) if !close => After::KeepAlive,
        _ => After::Close,
    }
}

/// One step of reading an upstream body.
enum Piece {
    Data(Bytes),
    End,
    Failed,
    ClientGone,
}

/// An upstream response body, decoded from its framing piece by piece.
struct UpBody {
    ex: Exchange,
    left: u64,
    dec: ChunkedDecoder,
    done: bool,
}

impl UpBody {
    fn new(ex: Exchange) -> UpBody {
        let left = match ex.resp.framing {
            BodyFraming::Length(n) => n,
            _ => 0,
        };
        UpBody {
            ex,
            left,
            dec: ChunkedDecoder::new(),
            done: false,
        }
    }

    /// Payload buffered now, if any, and whether the body ended.
    fn take(&mut self) -> Result<Option<Bytes>, ()> {
        let buf = &mut self.ex.leftover;
        match self.ex.resp.framing {
            BodyFraming::Empty => {
                self.done = true;
                Ok(None)
            }
            BodyFraming::Length(_) => {
                let n = self.left.min(buf.len() as u64) as usize;
                self.left -= n as u64;
                self.done = self.left == 0;
                Ok((n > 0).then(|| buf.split_to(n).freeze()))
            }
            BodyFraming::Chunked => {
                let mut payload = BytesMut::new();
                let p = self
                    .dec
                    .decode(buf, |r| payload.extend_from_slice(&buf[r]))
                    .map_err(|_| ())?;
                buf.advance(p.consumed);
                self.done = p.done;
                Ok((!payload.is_empty()).then(|| payload.freeze()))
            }
            BodyFraming::UntilClose => Ok((!buf.is_empty()).then(|| buf.split().freeze())),
        }
    }

    /// The next piece of payload. While the upstream is quiet the client is watched, so a
    /// client that left cancels the upstream request at once.
    async fn next(&mut self, client: &TcpStream, gap: Duration) -> Piece {
        loop {
            if self.done {
                return Piece::End;
            }
            match self.take() {
                Ok(Some(d)) => return Piece::Data(d),
                Ok(None) if self.done => return Piece::End,
                Ok(None) => {}
                Err(()) => return Piece::Failed,
            }
            let read = std::pin::pin!(monoio::time::timeout(
                gap,
                read_append(&mut self.ex.conn.stream, &mut self.ex.leftover, READ_BYTES)
            ));
            let gone = std::pin::pin!(super::relay::client_closed_after(
                client,
                super::relay::WATCH_CLIENT_AFTER
            ));
            match select(read, gone).await {
                Either::Left((Ok(Ok(0)), _)) => {
                    if self.ex.resp.framing == BodyFraming::UntilClose {
                        self.done = true;
                        return Piece::End;
                    }
                    return Piece::Failed;
                }
                Either::Left((Ok(Ok(_)), _)) => {}
                Either::Left(_) => return Piece::Failed,
                Either::Right(_) => return Piece::ClientGone,
            }
        }
    }

    /// The whole (bounded) body.
    async fn whole(&mut self, backend: &Backend, client: &TcpStream) -> Result<Bytes, Piece> {
        let mut body = BytesMut::new();
        loop {
            match self.next(client, backend.timeout).await {
                Piece::Data(d) => {
                    if body.len() + d.len() > MAX_WHOLE_BODY {
                        return Err(Piece::Failed);
                    }
                    body.extend_from_slice(&d);
                }
                Piece::End => return Ok(body.freeze()),
                other => return Err(other),
            }
        }
    }

    /// Give a cleanly finished connection back to the pool.
    fn release(self, core: &Core, backend: &Backend) {
        let reusable = self.done
            && self.ex.resp.keep_alive
            && self.ex.resp.framing != BodyFraming::UntilClose
            && self.ex.leftover.is_empty();
        if reusable {
            core.pool.checkin(backend, self.ex.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_come_from_method_and_path() {
        assert_eq!(
            Dialect::of(Method::Post, "/v1/chat/completions"),
            Dialect::Chat
        );
        assert_eq!(
            Dialect::of(Method::Post, "/v1/responses"),
            Dialect::Responses
        );
        assert_eq!(Dialect::of(Method::Post, "/v1/messages"), Dialect::Messages);
        assert_eq!(
            Dialect::of(Method::Post, "/v1/messages/count_tokens"),
            Dialect::CountTokens
        );
        assert_eq!(Dialect::of(Method::Get, "/v1/responses"), Dialect::Other);
        assert_eq!(Dialect::of(Method::Post, "/v1/embeddings"), Dialect::Other);
        assert!(is_messages_path(Method::Post, "/v1/messages"));
        assert!(is_messages_path(Method::Post, "/messages/count_tokens"));
        assert!(!is_messages_path(Method::Get, "/v1/messages"));
        assert!(shim_on(404) && shim_on(405) && shim_on(501) && !shim_on(400));
    }

    #[test]
    fn provider_errors_reach_each_client_dialect() {
        let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#;
        let m = map_error(Some(Kind::Anthropic), Dialect::Chat, 529, body);
        assert_eq!(m.status, 503);
        let v: Value = serde_json::from_slice(&m.body).expect("json");
        assert_eq!(v["error"]["message"], "busy");
        let m = map_error(Some(Kind::Anthropic), Dialect::Messages, 529, body);
        let v: Value = serde_json::from_slice(&m.body).expect("json");
        assert_eq!((m.status, v["type"].as_str()), (503, Some("error")));
        // An OpenAI upstream's own error passes unchanged; a non-JSON one is wrapped.
        let m = map_error(
            None,
            Dialect::Responses,
            400,
            br#"{"error":{"message":"x"}}"#,
        );
        assert_eq!(m.body, br#"{"error":{"message":"x"}}"#);
        let m = map_error(None, Dialect::Responses, 502, b"<html>bad gateway</html>");
        let v: Value = serde_json::from_slice(&m.body).expect("json");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|t| t.contains("bad gateway")));
    }
}
