//! One mock connection: read a request (head and whole body), route it, answer it the way the
//! request's `x-mock-*` headers ask, including breaking the connection on purpose.
//!
//! Wire behaviour worth knowing when writing a test against the mock:
//! - A Content-Length answer goes out in one write (head and body together). A chunked or
//!   close-delimited answer writes the head alone, then the body in two halves, so a client's
//!   incremental parsing is exercised; `*-mid-stream` faults strike between the halves.
//! - SSE: the head alone, then each event in its own write (chunk header, event and CRLF in one
//!   buffer), the first at once and the rest `delay` apart; the usage chunk, if any, right after
//!   the last content event; then `data: [DONE]` and the last chunk in one write. Anthropic and
//!   Gemini streams are written the same way, event by event (their last event and the last
//!   chunk in one write).
//! - `error-event-mid-stream`: half the events, then the dialect's error event (OpenAI
//!   `data: {"error":..}`, Anthropic `event: error`, Gemini `data: {"error":..}`), then a
//!   proper end of the body; no `[DONE]`.
//! - Closing is graceful (FIN, then a short drain of whatever the client still sends, so unread
//!   request bytes cannot turn our close into a RST that destroys the answer in flight), except
//!   for the `reset-*` faults, which close with SO_LINGER 0 to send a RST on purpose.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use serde_json::Value;

use super::api::{self, ChunkStream, DONE_EVENT};
use super::{anthropic, gemini, Shared};
use crate::http::chunked::{write_chunk_header, LAST_CHUNK};
use crate::http::io::{read_append_timeout, write_all_timeout};
use crate::http::limits::{
    BODY_IDLE_TIMEOUT, CLIENT_WRITE_TIMEOUT, HEADER_READ_TIMEOUT, READ_BUF_BYTES,
};
use crate::http::{BodyFraming, ChunkedDecoder, Method, RequestHead, Version};

/// Largest request body the mock reads (and largest `x-mock-size` it pads to).
pub const MAX_BODY_BYTES: u64 = 256 << 20;

/// A client has this long to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `stall` and `stall-mid-stream` hold a connection open without answering.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Gap between the bytes of a head under `slow-headers`.
const SLOW_HEADER_GAP: Duration = Duration::from_millis(50);

/// How long a graceful close keeps reading (and discarding) what the client still sends.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// A way to break an exchange on purpose, from `x-mock-fault` or a `mock-fault-*` model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, close cleanly without answering.
    CloseBeforeHeaders,
    /// Read the request, close with a RST.
    ResetBeforeHeaders,
    /// Write the head one byte every 50 ms, then answer normally.
    SlowHeaders,
    /// Read the request and never answer (until the client leaves, or 60 s).
    Stall,
    /// Send the head and half the body (or events), then a RST.
    ResetMidStream,
    /// Send the head and half the body (or events), then stall.
    StallMidStream,
    /// Send the head and half the body (or events), then a clean FIN.
    CloseMidStream,
    /// Streams: half the events, then an error event in the API's own dialect, then the end
    /// of the body (the connection stays usable). Whole answers are unaffected.
    ErrorEventMidStream,
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        Ok(match s.trim() {
            "close-before-headers" => Fault::CloseBeforeHeaders,
            "reset-before-headers" => Fault::ResetBeforeHeaders,
            "slow-headers" => Fault::SlowHeaders,
            "stall" => Fault::Stall,
            "reset-mid-stream" => Fault::ResetMidStream,
            "stall-mid-stream" => Fault::StallMidStream,
            "close-mid-stream" => Fault::CloseMidStream,
            "error-event-mid-stream" => Fault::ErrorEventMidStream,
            other => return Err(format!("unknown mock fault {other:?}")),
        })
    }
}

impl Fault {
    fn is_mid_stream(self) -> bool {
        matches!(
            self,
            Fault::ResetMidStream | Fault::StallMidStream | Fault::CloseMidStream
        )
    }
}

/// How the connection ends once the exchange loop stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Ready for the next request.
    KeepAlive,
    /// FIN, then drain briefly.
    Close,
    /// RST (SO_LINGER 0).
    Reset,
    /// The client left or went idle: just close the socket.
    Drop,
}

/// Serve one accepted connection to its end (TLS handshake first when configured).
pub async fn handle(stream: TcpStream, shared: &Shared) {
    // Kept for the reset faults: the TLS stream gives no way back to its socket.
    let fd = stream.as_raw_fd();
    match &shared.tls {
        None => serve(stream, fd, shared).await,
        Some(acceptor) => {
            // monoio-rustls in its default safe mode owns its buffers, so dropping the
            // handshake on timeout is sound.
            if let Ok(Ok(tls)) =
                monoio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                serve(tls, fd, shared).await;
            }
        }
    }
}

async fn serve<S: AsyncReadRent + AsyncWriteRent>(mut io: S, fd: RawFd, shared: &Shared) {
    let mut buf = BytesMut::with_capacity(READ_BUF_BYTES);
    let end = loop {
        let head = match read_head(&mut io, &mut buf, shared.opts.keepalive_timeout).await {
            Ok(Some(head)) => head,
            Ok(None) => break End::Drop,
            Err((status, reason)) => {
                let reply = Reply::error(status, reason, None);
                let _ = send_simple(&mut io, &reply, Version::Http11, false).await;
                break End::Close;
            }
        };
        match exchange(&mut io, &mut buf, head, shared).await {
            End::KeepAlive => {}
            end => break end,
        }
    };
    match end {
        End::KeepAlive | End::Drop => {}
        End::Close => close_gracefully(&mut io).await,
        End::Reset => set_linger_zero(fd),
    }
    // Dropping `io` closes the socket: FIN, or RST after `set_linger_zero`.
}

/// Read until a whole request head is parsed. `Ok(None)`: the client closed, or stayed idle
/// past `idle`, or stalled mid-head. `Err`: a refused head, as (status, reason).
async fn read_head<S: AsyncReadRent>(
    io: &mut S,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<Option<RequestHead>, (u16, String)> {
    loop {
        if !buf.is_empty() {
            match RequestHead::parse(buf) {
                Ok(Some((head, len))) => {
                    buf.advance(len);
                    return Ok(Some(head));
                }
                Ok(None) => {}
                Err(e) => return Err((e.status(), e.reason().to_string())),
            }
        }
        // Idle between requests: the keep-alive timeout; once a head has begun, the codec's
        // head timeout. A timed-out read may lose bytes, which is fine: we close.
        let limit = if buf.is_empty() {
            idle
        } else {
            HEADER_READ_TIMEOUT
        };
        match read_append_timeout(io, buf, READ_BUF_BYTES / 2, limit).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Why a request body could not be read.
enum BodyError {
    TooLarge,
    Malformed(String),
    /// The client closed or went silent.
    Gone,
}

/// Read the whole request body (Content-Length or chunked) out of `buf` and the socket,
/// leaving any pipelined bytes after it in `buf`.
async fn read_body<S: AsyncReadRent>(
    io: &mut S,
    buf: &mut BytesMut,
    framing: BodyFraming,
) -> Result<Bytes, BodyError> {
    match framing {
        BodyFraming::Empty | BodyFraming::UntilClose => Ok(Bytes::new()),
        BodyFraming::Length(n) => {
            if n > MAX_BODY_BYTES {
                return Err(BodyError::TooLarge);
            }
            let n = n as usize;
            while buf.len() < n {
                let want = (n - buf.len()).clamp(READ_BUF_BYTES, 1 << 20);
                match read_append_timeout(io, buf, want, BODY_IDLE_TIMEOUT).await {
                    Ok(0) | Err(_) => return Err(BodyError::Gone),
                    Ok(_) => {}
                }
            }
            Ok(buf.split_to(n).freeze())
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = BytesMut::new();
            loop {
                let progress = decoder
                    .decode(buf, |r| body.extend_from_slice(&buf[r]))
                    .map_err(|e| BodyError::Malformed(e.to_string()))?;
                buf.advance(progress.consumed);
                if body.len() as u64 > MAX_BODY_BYTES {
                    return Err(BodyError::TooLarge);
                }
                if progress.done {
                    return Ok(body.freeze());
                }
                match read_append_timeout(io, buf, READ_BUF_BYTES, BODY_IDLE_TIMEOUT).await {
                    Ok(0) | Err(_) => return Err(BodyError::Gone),
                    Ok(_) => {}
                }
            }
        }
    }
}

/// The per-request knobs: CLI defaults overridden by `x-mock-*` headers.
#[derive(Debug, Clone)]
struct Knobs {
    status: Option<u16>,
    retry_after: Option<String>,
    events: u32,
    /// SSE gap; for non-stream answers, a delay before the head.
    delay: Duration,
    size: usize,
    header_delay: Duration,
    chunked: bool,
    close_delimited: bool,
    fault: Option<Fault>,
}

impl Knobs {
    fn from_head(head: &RequestHead, opts: &super::MockOptions) -> Result<Knobs, String> {
        let status: Option<u16> = header_parse(head, "x-mock-status")?;
        if let Some(s) = status {
            if !(200..=599).contains(&s) {
                return Err(format!("x-mock-status {s} is not a final status (200-599)"));
            }
        }
        let size: usize = header_parse(head, "x-mock-size")?.unwrap_or(opts.size);
        if size as u64 > MAX_BODY_BYTES {
            return Err(format!("x-mock-size {size} exceeds {MAX_BODY_BYTES}"));
        }
        let fault = match head.fields.get_str("x-mock-fault") {
            Some(f) => Some(f.parse()?),
            None if head.fields.get("x-mock-fault").is_some() => {
                return Err("x-mock-fault is not UTF-8".to_string())
            }
            None => None,
        };
        Ok(Knobs {
            status,
            retry_after: header_parse::<String>(head, "x-mock-retry-after")?,
            events: header_parse(head, "x-mock-events")?.unwrap_or(opts.events),
            delay: Duration::from_millis(
                header_parse(head, "x-mock-delay-ms")?.unwrap_or(opts.delay_ms),
            ),
            size,
            header_delay: Duration::from_millis(
                header_parse(head, "x-mock-header-delay-ms")?.unwrap_or(0),
            ),
            chunked: header_flag(head, "x-mock-chunked")?,
            close_delimited: header_flag(head, "x-mock-close-delimited")?,
            fault,
        })
    }
}

/// A header's value parsed as `T`; a present but unparsable value is an error, so a typo in
/// a test shows up as a 400 instead of silently using the default.
fn header_parse<T: FromStr>(head: &RequestHead, name: &str) -> Result<Option<T>, String> {
    match head.fields.get(name) {
        None => Ok(None),
        Some(raw) => std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| format!("invalid {name} header")),
    }
}

fn header_flag(head: &RequestHead, name: &str) -> Result<bool, String> {
    match head.fields.get(name).map(<[u8]>::trim_ascii) {
        None => Ok(false),
        Some(b"1" | b"true" | b"yes") => Ok(true),
        Some(b"0" | b"false" | b"no") => Ok(false),
        Some(_) => Err(format!("invalid {name} header (use 1 or 0)")),
    }
}

/// A routed answer, before framing.
struct Reply {
    status: u16,
    body: Payload,
    /// Extra header fields (name, value).
    extra: Vec<(&'static str, String)>,
}

enum Payload {
    Json(Bytes),
    Sse(SseBody),
    /// 204 and 304 carry no body.
    None,
}

/// A streamed answer.
enum SseBody {
    /// OpenAI chat chunks (built lazily: load tests ask for many).
    Chat(ChunkStream),
    /// Pre-built events (Anthropic, Gemini) and the error event of `error-event-mid-stream`.
    Events {
        events: Vec<Vec<u8>>,
        error: Vec<u8>,
    },
}

impl SseBody {
    /// Number of content events (the ones mid-stream faults cut in half).
    fn content_len(&self) -> u32 {
        match self {
            SseBody::Chat(s) => s.events,
            SseBody::Events { events, .. } => u32::try_from(events.len()).unwrap_or(u32::MAX),
        }
    }

    fn content(&self, i: u32) -> Vec<u8> {
        match self {
            SseBody::Chat(s) => s.event(i),
            SseBody::Events { events, .. } => events.get(i as usize).cloned().unwrap_or_default(),
        }
    }

    /// The events after the content: the usage chunk and `[DONE]` for chat.
    fn tail(&self) -> Vec<Vec<u8>> {
        match self {
            SseBody::Chat(s) => s
                .usage_event()
                .into_iter()
                .chain([DONE_EVENT.to_vec()])
                .collect(),
            SseBody::Events { .. } => Vec::new(),
        }
    }

    fn error_event(&self) -> Vec<u8> {
        match self {
            SseBody::Chat(_) => api::stream_error_event(),
            SseBody::Events { error, .. } => error.clone(),
        }
    }
}

/// Which API's error shape an answer uses (for `x-mock-status` and route errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Dialect {
    fn of_path(path: &str) -> Dialect {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Dialect::Anthropic
        } else if path.starts_with("/v1beta/") {
            Dialect::Gemini
        } else {
            Dialect::OpenAi
        }
    }

    fn error(self, status: u16, message: &str) -> Reply {
        match self {
            Dialect::OpenAi => Reply::error(status, message, None),
            Dialect::Anthropic => Reply::json(status, anthropic::error_body(status, message)),
            Dialect::Gemini => Reply::json(status, gemini::error_body(status, message)),
        }
    }
}

impl Reply {
    fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            body: Payload::Json(body.into()),
            extra: Vec::new(),
        }
    }

    fn error(status: u16, message: impl AsRef<str>, code: Option<&str>) -> Reply {
        Reply::json(status, api::error_body(status, message.as_ref(), code))
    }
}

/// One request after its head: read the body, answer, and say how the connection goes on.
async fn exchange<S: AsyncReadRent + AsyncWriteRent>(
    io: &mut S,
    buf: &mut BytesMut,
    head: RequestHead,
    shared: &Shared,
) -> End {
    let version = head.version;
    if matches!(head.framing, BodyFraming::Length(n) if n > MAX_BODY_BYTES) {
        // Refuse before asking for (or reading) the body; close since it stays unread.
        let reply = Reply::error(413, "request body too large", None);
        let _ = send_simple(io, &reply, version, false).await;
        return End::Close;
    }
    if head.expect_continue && head.framing.has_body() {
        let cont = Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n");
        if write_all_timeout(io, cont, CLIENT_WRITE_TIMEOUT)
            .await
            .is_err()
        {
            return End::Drop;
        }
    }
    let body = match read_body(io, buf, head.framing).await {
        Ok(body) => body,
        Err(BodyError::Gone) => return End::Drop,
        Err(BodyError::TooLarge) => {
            let reply = Reply::error(413, "request body too large", None);
            let _ = send_simple(io, &reply, version, false).await;
            return End::Close;
        }
        Err(BodyError::Malformed(why)) => {
            let reply = Reply::error(400, why, None);
            let _ = send_simple(io, &reply, version, false).await;
            return End::Close;
        }
    };

    let stats = &shared.stats;
    if head.path() == "/mock/stats" {
        // A control endpoint: no knobs, not counted, so tests can read it freely.
        let reply = Reply::json(
            200,
            serde_json::json!({
                "requests": stats.requests.load(Ordering::Relaxed),
                "connections": stats.connections.load(Ordering::Relaxed),
                "open_connections": stats.open_connections.load(Ordering::Relaxed),
            })
            .to_string(),
        );
        return match send_simple(io, &reply, version, head.keep_alive).await {
            Ok(()) if head.keep_alive => End::KeepAlive,
            Ok(()) => End::Close,
            Err(_) => End::Drop,
        };
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let id = stats.next_id.fetch_add(1, Ordering::Relaxed) + 1;

    let knobs = match Knobs::from_head(&head, &shared.opts) {
        Ok(k) => k,
        Err(why) => {
            let reply = Reply::error(400, why, Some("invalid_mock_header"));
            return match send_simple(io, &reply, version, head.keep_alive).await {
                Ok(()) if head.keep_alive => End::KeepAlive,
                Ok(()) => End::Close,
                Err(_) => End::Drop,
            };
        }
    };
    let (mut reply, model_fault) = route(&head, &body, &knobs, shared, id);
    let fault = knobs.fault.or(model_fault);
    if let Some(status) = knobs.status {
        reply = if status == 204 || status == 304 {
            Reply {
                status,
                body: Payload::None,
                extra: Vec::new(),
            }
        } else {
            Dialect::of_path(head.path()).error(status, &format!("mock status {status}"))
        };
    }
    if let Some(s) = &knobs.retry_after {
        reply.extra.push(("retry-after", s.clone()));
    }
    reply.extra.push(("x-request-id", format!("req_mock_{id}")));

    let mut delay = knobs.header_delay;
    if !matches!(reply.body, Payload::Sse(_)) {
        delay += knobs.delay;
    }
    if !delay.is_zero() {
        monoio::time::sleep(delay).await;
    }
    match fault {
        Some(Fault::CloseBeforeHeaders) => return End::Close,
        Some(Fault::ResetBeforeHeaders) => return End::Reset,
        Some(Fault::Stall) => return stall(io, buf).await,
        _ => {}
    }

    // HTTP/1.0 clients cannot take chunked: they get the body delimited by our close.
    let close_delimited = knobs.close_delimited
        || (version == Version::Http10 && (knobs.chunked || matches!(reply.body, Payload::Sse(_))));
    let framing = match &reply.body {
        Payload::None => Out::NoBody,
        _ if close_delimited => Out::Close,
        Payload::Sse(_) => Out::Chunked,
        Payload::Json(_) if knobs.chunked => Out::Chunked,
        Payload::Json(b) => Out::Length(b.len()),
    };
    let mid_fault = fault.filter(|f| f.is_mid_stream());
    let error_mid = fault == Some(Fault::ErrorEventMidStream);
    let keep_alive = head.keep_alive && framing != Out::Close && mid_fault.is_none();
    let with_body = head.method != Method::Head;
    let ctx = WriteCtx {
        framing,
        slow: fault == Some(Fault::SlowHeaders),
        mid_fault,
        error_mid,
        with_body,
        gap: knobs.delay,
    };
    let head_bytes = response_head(&reply, framing, keep_alive, version);
    let outcome = match &reply.body {
        Payload::Sse(stream) => write_sse(io, head_bytes, stream, &ctx).await,
        Payload::Json(body) => write_json(io, head_bytes, body.clone(), &ctx).await,
        Payload::None => write_head(io, head_bytes, ctx.slow).await,
    };
    if outcome.is_err() {
        return End::Drop;
    }
    match mid_fault {
        Some(Fault::ResetMidStream) => End::Reset,
        Some(Fault::CloseMidStream) => End::Close,
        Some(_) => stall(io, buf).await,
        None if keep_alive => End::KeepAlive,
        None => End::Close,
    }
}

/// Pick the answer for a request; the second value is a fault named by a `mock-fault-*`
/// model.
fn route(
    head: &RequestHead,
    body: &[u8],
    knobs: &Knobs,
    shared: &Shared,
    id: u64,
) -> (Reply, Option<Fault>) {
    let path = head.path();
    let under = |base: &str| {
        path.strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    let default_model = shared.opts.models.first().map_or("mock", String::as_str);
    let get = matches!(head.method, Method::Get | Method::Head);
    if under("/echo") || under("/v1/echo") {
        return (Reply::json(200, api::echo(head, body, head.framing)), None);
    }
    match path {
        "/v1/models" if get => (Reply::json(200, shared.model_list.clone()), None),
        "/v1/chat/completions" if head.method == Method::Post => {
            let json = match parse_json(body) {
                Ok(v) => v,
                Err(reply) => return (reply, None),
            };
            let fault = match model_fault(&json) {
                Ok(f) => f,
                Err(why) => return (Reply::error(400, why, None), None),
            };
            let req = api::chat_request(&json, default_model);
            let cid = format!("chatcmpl-mock-{id}");
            let created = api::now_secs();
            let reply = if req.stream {
                Reply {
                    status: 200,
                    body: Payload::Sse(SseBody::Chat(ChunkStream::new(
                        &cid,
                        created,
                        &req,
                        knobs.events,
                        knobs.size,
                    ))),
                    extra: Vec::new(),
                }
            } else {
                Reply::json(
                    200,
                    api::completion(&cid, created, &req, knobs.events, knobs.size),
                )
            };
            (reply, fault)
        }
        "/v1/embeddings" if head.method == Method::Post => {
            let json = match parse_json(body) {
                Ok(v) => v,
                Err(reply) => return (reply, None),
            };
            let fault = match model_fault(&json) {
                Ok(f) => f,
                Err(why) => return (Reply::error(400, why, None), None),
            };
            (
                Reply::json(200, api::embeddings(&json, default_model)),
                fault,
            )
        }
        "/v1/messages" if head.method == Method::Post => anthropic_route(head, body, knobs, id),
        _ if path.starts_with("/v1beta/models/") && head.method == Method::Post => {
            gemini_route(head, body, knobs, id)
        }
        "/v1/responses" => (
            Reply::error(
                404,
                "the mock upstream does not implement /v1/responses",
                Some("unknown_url"),
            ),
            None,
        ),
        _ => match path.strip_prefix("/v1/models/") {
            Some(model) if get => {
                if shared.opts.models.iter().any(|m| m == model) {
                    (Reply::json(200, api::model(model)), None)
                } else {
                    let msg = format!("The model '{model}' does not exist");
                    (Reply::error(404, msg, Some("model_not_found")), None)
                }
            }
            _ => {
                let msg = format!(
                    "Unknown request URL: {} {}",
                    head.method.as_str(),
                    head.path()
                );
                (Reply::error(404, msg, Some("unknown_url")), None)
            }
        },
    }
}

/// `POST /v1/messages`: the Anthropic Messages API. Like the real one it wants `x-api-key`
/// and `anthropic-version`, and answers errors in its own shape.
fn anthropic_route(
    head: &RequestHead,
    body: &[u8],
    knobs: &Knobs,
    id: u64,
) -> (Reply, Option<Fault>) {
    let err = |status: u16, msg: &str| (Dialect::Anthropic.error(status, msg), None);
    if head.fields.get("x-api-key").is_none_or(<[u8]>::is_empty) {
        return err(401, "x-api-key header is required");
    }
    if head.fields.get("anthropic-version").is_none() {
        return err(400, "anthropic-version: header is required");
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return err(400, &format!("invalid JSON body: {e}")),
    };
    let fault = match model_fault(&json) {
        Ok(f) => f,
        Err(why) => return err(400, &why),
    };
    let req = match anthropic::messages_request(&json) {
        Ok(r) => r,
        Err(why) => return err(400, &why),
    };
    let mid = format!("msg_mock_{id}");
    let reply = if req.stream {
        Reply {
            status: 200,
            body: Payload::Sse(SseBody::Events {
                events: anthropic::stream_events(&mid, &req, knobs.events),
                error: anthropic::error_event(),
            }),
            extra: Vec::new(),
        }
    } else {
        Reply::json(200, anthropic::message(&mid, &req, knobs.events))
    };
    (reply, fault)
}

/// `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (SSE with
/// `?alt=sse`, else a JSON array of chunks). The key comes in `x-goog-api-key` or `?key=`.
fn gemini_route(head: &RequestHead, body: &[u8], knobs: &Knobs, id: u64) -> (Reply, Option<Fault>) {
    let err = |status: u16, msg: &str| (Dialect::Gemini.error(status, msg), None);
    let Some((model, method)) = gemini::parse_path(head.path()) else {
        return err(404, "Requested entity was not found.");
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return err(404, &format!("Method {method} is not found.")),
    };
    let query = head.query().unwrap_or("");
    let alt_sse = query.split('&').any(|p| p == "alt=sse");
    let key_in_query = query
        .split('&')
        .any(|p| p.strip_prefix("key=").is_some_and(|k| !k.is_empty()));
    let key_in_header = head
        .fields
        .get("x-goog-api-key")
        .is_some_and(|k| !k.is_empty());
    if !key_in_query && !key_in_header {
        return err(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        );
    }
    let fault = match model.strip_prefix("mock-fault-").map(str::parse::<Fault>) {
        Some(Ok(f)) => Some(f),
        Some(Err(why)) => return err(400, &why),
        None => None,
    };
    let json: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return err(400, &format!("Invalid JSON payload received. {e}")),
    };
    let req = match gemini::generate_request(model, &json) {
        Ok(r) => r,
        Err(why) => return err(400, &why),
    };
    let rid = format!("mock-resp-{id}");
    let reply = if stream && alt_sse {
        Reply {
            status: 200,
            body: Payload::Sse(SseBody::Events {
                events: gemini::stream_chunks(&rid, &req, knobs.events)
                    .iter()
                    .map(gemini::sse_event)
                    .collect(),
                error: gemini::error_event(),
            }),
            extra: Vec::new(),
        }
    } else if stream {
        let chunks = Value::Array(gemini::stream_chunks(&rid, &req, knobs.events));
        Reply::json(200, chunks.to_string())
    } else {
        Reply::json(200, gemini::response(&rid, &req, knobs.events))
    };
    (reply, fault)
}

fn parse_json(body: &[u8]) -> Result<Value, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, format!("invalid JSON body: {e}"), None))
}

/// A fault named by the model (`mock-fault-<fault>`), for clients that cannot set headers.
fn model_fault(json: &Value) -> Result<Option<Fault>, String> {
    match json
        .get("model")
        .and_then(Value::as_str)
        .and_then(|m| m.strip_prefix("mock-fault-"))
    {
        Some(name) => name.parse().map(Some),
        None => Ok(None),
    }
}

/// How the answer's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Length(usize),
    Chunked,
    Close,
    NoBody,
}

fn response_head(reply: &Reply, framing: Out, keep_alive: bool, version: Version) -> BytesMut {
    use std::fmt::Write as _;
    let mut h = BytesMut::with_capacity(256);
    let reason = match crate::error::reason_phrase(reply.status) {
        "" => "Mock",
        r => r,
    };
    let _ = write!(h, "HTTP/1.1 {} {reason}\r\n", reply.status);
    match reply.body {
        Payload::Json(_) => h.put_slice(b"content-type: application/json\r\n"),
        Payload::Sse(_) => {
            h.put_slice(b"content-type: text/event-stream\r\ncache-control: no-cache\r\n")
        }
        Payload::None => {}
    }
    match framing {
        Out::Length(n) => {
            let _ = write!(h, "content-length: {n}\r\n");
        }
        Out::Chunked => h.put_slice(b"transfer-encoding: chunked\r\n"),
        Out::Close | Out::NoBody => {}
    }
    if !keep_alive {
        h.put_slice(b"connection: close\r\n");
    } else if version == Version::Http10 {
        h.put_slice(b"connection: keep-alive\r\n");
    }
    for (name, value) in &reply.extra {
        let _ = write!(h, "{name}: {value}\r\n");
    }
    h.put_slice(b"\r\n");
    h
}

/// How to write one answer.
struct WriteCtx {
    framing: Out,
    /// `slow-headers`: the head one byte at a time.
    slow: bool,
    /// Stop after half the body and leave the rest to this fault.
    mid_fault: Option<Fault>,
    /// Streams: half the events, the error event, the end of the body.
    error_mid: bool,
    /// False for HEAD requests.
    with_body: bool,
    /// Gap between SSE events.
    gap: Duration,
}

async fn put<S: AsyncWriteRent>(io: &mut S, data: impl Into<Bytes>) -> io::Result<()> {
    write_all_timeout(io, data.into(), CLIENT_WRITE_TIMEOUT).await
}

async fn write_head<S: AsyncWriteRent>(io: &mut S, head: BytesMut, slow: bool) -> io::Result<()> {
    if !slow {
        return put(io, head).await;
    }
    let head = head.freeze();
    for i in 0..head.len() {
        if i > 0 {
            monoio::time::sleep(SLOW_HEADER_GAP).await;
        }
        put(io, head.slice(i..i + 1)).await?;
    }
    Ok(())
}

/// `data` framed as one chunk (nothing for an empty piece: a zero-size chunk would end the
/// body).
fn chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_chunk_header(out, data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

async fn write_json<S: AsyncWriteRent>(
    io: &mut S,
    mut head: BytesMut,
    body: Bytes,
    ctx: &WriteCtx,
) -> io::Result<()> {
    if !ctx.with_body {
        return write_head(io, head, ctx.slow).await;
    }
    if matches!(ctx.framing, Out::Length(_)) && !ctx.slow && ctx.mid_fault.is_none() {
        // The common case: one write for the whole answer.
        head.put_slice(&body);
        return put(io, head).await;
    }
    write_head(io, head, ctx.slow).await?;
    let half = body.len() / 2;
    match ctx.framing {
        Out::Chunked => {
            let mut first = BytesMut::new();
            chunk(&mut first, &body[..half]);
            put(io, first).await?;
            if ctx.mid_fault.is_some() {
                return Ok(());
            }
            let mut rest = BytesMut::new();
            chunk(&mut rest, &body[half..]);
            rest.put_slice(LAST_CHUNK);
            put(io, rest).await
        }
        Out::Length(_) | Out::Close => {
            put(io, body.slice(..half)).await?;
            if ctx.mid_fault.is_some() {
                return Ok(());
            }
            put(io, body.slice(half..)).await
        }
        Out::NoBody => Ok(()),
    }
}

async fn write_sse<S: AsyncWriteRent>(
    io: &mut S,
    head: BytesMut,
    stream: &SseBody,
    ctx: &WriteCtx,
) -> io::Result<()> {
    write_head(io, head, ctx.slow).await?;
    if !ctx.with_body {
        return Ok(());
    }
    let chunked = ctx.framing == Out::Chunked;
    let frame = |event: &[u8]| {
        let mut out = BytesMut::with_capacity(event.len() + 16);
        if chunked {
            chunk(&mut out, event);
        } else {
            out.put_slice(event);
        }
        out
    };
    let cut = ctx.mid_fault.is_some() || ctx.error_mid;
    let content_events = if cut {
        stream.content_len() / 2
    } else {
        stream.content_len()
    };
    for i in 0..content_events {
        if i > 0 && !ctx.gap.is_zero() {
            monoio::time::sleep(ctx.gap).await;
        }
        put(io, frame(&stream.content(i))).await?;
    }
    if ctx.mid_fault.is_some() {
        return Ok(());
    }
    let tail = if ctx.error_mid {
        vec![stream.error_event()]
    } else {
        stream.tail()
    };
    let last = tail.len().checked_sub(1);
    for (k, event) in tail.iter().enumerate() {
        let mut out = frame(event);
        if chunked && Some(k) == last {
            out.put_slice(LAST_CHUNK);
        }
        put(io, out).await?;
    }
    if chunked && last.is_none() {
        put(io, Bytes::from_static(LAST_CHUNK)).await?;
    }
    Ok(())
}

/// Answer without knobs (errors, stats): Content-Length, one write.
async fn send_simple<S: AsyncWriteRent>(
    io: &mut S,
    reply: &Reply,
    version: Version,
    keep_alive: bool,
) -> io::Result<()> {
    let Payload::Json(body) = &reply.body else {
        return Ok(());
    };
    let mut out = response_head(reply, Out::Length(body.len()), keep_alive, version);
    out.put_slice(body);
    put(io, out).await
}

/// Hold the connection without answering until the client goes away or [`STALL_LIMIT`]
/// passes; whatever the client sends meanwhile is discarded.
async fn stall<S: AsyncReadRent>(io: &mut S, buf: &mut BytesMut) -> End {
    let deadline = Instant::now() + STALL_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return End::Close;
        }
        buf.clear();
        match read_append_timeout(io, buf, READ_BUF_BYTES, left).await {
            Ok(0) => return End::Drop,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return End::Close,
            Err(_) => return End::Drop,
        }
    }
}

/// FIN first, so the client sees the end of the answer at once, then read and discard for a
/// short while: closing a socket with unread bytes in it sends a RST, which can destroy the
/// answer still in flight to the client.
async fn close_gracefully<S: AsyncReadRent + AsyncWriteRent>(io: &mut S) {
    if io.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + CLOSE_DRAIN;
    let mut scratch = BytesMut::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        scratch.clear();
        match read_append_timeout(io, &mut scratch, READ_BUF_BYTES, left).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Make the coming close send a RST instead of a FIN.
fn set_linger_zero(fd: RawFd) {
    // SAFETY: `fd` is the socket of the stream `serve` still owns (it is dropped only after
    // this returns), so it is open for the whole borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!("stall".parse::<Fault>(), Ok(Fault::Stall));
        assert_eq!(
            " close-mid-stream ".parse::<Fault>(),
            Ok(Fault::CloseMidStream)
        );
        assert!("explode".parse::<Fault>().is_err());
        assert!(Fault::ResetMidStream.is_mid_stream());
        assert_eq!(
            "error-event-mid-stream".parse::<Fault>(),
            Ok(Fault::ErrorEventMidStream)
        );
        assert!(!Fault::ErrorEventMidStream.is_mid_stream());
        assert!(!Fault::SlowHeaders.is_mid_stream());
    }

    #[test]
    fn model_names_carry_faults() {
        let f = model_fault(&serde_json::json!({"model": "mock-fault-reset-before-headers"}));
        assert_eq!(f, Ok(Some(Fault::ResetBeforeHeaders)));
        assert_eq!(
            model_fault(&serde_json::json!({"model": "gpt-4o"})),
            Ok(None)
        );
        assert!(model_fault(&serde_json::json!({"model": "mock-fault-nope"})).is_err());
    }

    #[test]
    fn empty_pieces_are_not_framed_as_the_last_chunk() {
        let mut out = BytesMut::new();
        chunk(&mut out, b"");
        assert!(out.is_empty());
        chunk(&mut out, b"abc");
        assert_eq!(&out[..], b"3\r\nabc\r\n");
    }
}
