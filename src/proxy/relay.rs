//! Stream the upstream's response body to the client as it arrives.
//!
//! Every read from the upstream is written to the client before the next read: no buffering,
//! so each SSE event leaves as soon as it came in. Bytes move as `Bytes` split off the read
//! buffer (no copy) except when we must re-frame (a close-delimited upstream body sent to an
//! HTTP/1.1 client as chunks, or a chunked one decoded for an HTTP/1.0 client).
//!
//! While waiting on the upstream we also watch the client socket: if the client goes away, the
//! upstream request is cancelled at once (its connection is dropped, never pooled) instead of
//! running on until the next write fails. An upstream that fails mid-body leaves the client's
//! response unterminated (no last chunk, short length) so the client sees an error, never a
//! clean end.

use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{select, Either};
use monoio::net::TcpStream;

use super::forward::Exchange;
use super::headers::{self, OutFraming};
use super::{After, Core};
use crate::http::chunked::{write_chunk_header, LAST_CHUNK};
use crate::http::io::{read_append, write_all_timeout};
use crate::http::limits::CLIENT_WRITE_TIMEOUT;
use crate::http::{BodyFraming, ChunkedDecoder, RequestHead, Version};
use crate::limits::InflightPermit;
use crate::net::{peek, PeerState};
use crate::upstream::Backend;

/// Room reserved for each upstream body read.
const BODY_READ_BYTES: usize = 16 * 1024;
/// Responses at most this large are sent in the same write as their head.
const COALESCE_BYTES: usize = 16 * 1024;

/// Permits held for as long as the response body runs; dropped with it.
pub struct Permits {
    pub _global: InflightPermit,
    pub _backend: Option<InflightPermit>,
}

/// Reads token usage out of a response as it passes (for budgets, limits and cost totals),
/// and optionally hides the usage chunk the gateway asked for on the client's behalf.
#[derive(Debug, Default)]
pub struct Tap {
    /// Set by the caller: drop the usage-only SSE chunk (the client did not ask for it).
    pub hide_usage: bool,
    /// Largest JSON body kept to read `usage` from (`--proxy-usage-max-body-bytes`).
    pub json_limit: usize,
    /// Filled in: the upstream status, and whether the body went through whole.
    pub status: u16,
    pub complete: bool,
    sse: bool,
    json: Vec<u8>,
    json_overflow: bool,
    scanner: crate::usage::SseUsageScanner,
    /// The proxy cache's copy of the body (`None`: not capturing, or over `capture_limit`).
    pub capture: Option<Vec<u8>>,
    pub capture_limit: usize,
    /// The upstream's content type (for the proxy cache).
    pub content_type: Option<bytes::Bytes>,
}

impl Tap {
    pub fn new(hide_usage: bool, json_limit: usize) -> Tap {
        Tap {
            hide_usage,
            json_limit,
            ..Tap::default()
        }
    }

    fn feed(&mut self, payload: &[u8]) {
        crate::cache::serve::capture(self, payload);
        if self.sse {
            self.scanner.feed(payload);
        } else if !self.json_overflow {
            if self.json.len() + payload.len() > self.json_limit {
                self.json_overflow = true;
                self.json = Vec::new();
            } else {
                self.json.extend_from_slice(payload);
            }
        }
    }

    /// Whether the body is an event stream.
    pub fn is_sse(&self) -> bool {
        self.sse
    }

    /// The usage the response reported, if any.
    pub fn usage(&self) -> Option<crate::usage::Usage> {
        if self.sse {
            self.scanner.usage()
        } else if self.json_overflow || self.json.is_empty() {
            None
        } else {
            crate::usage::from_json(&self.json)
        }
    }
}

/// How the body travels from upstream framing to client framing.
enum Mode {
    Empty,
    /// Content-Length on both sides; bytes left.
    Length(u64),
    /// Chunked on both sides: forwarded verbatim, decoded only to find the end.
    ChunkedVerbatim(ChunkedDecoder),
    /// Chunked upstream, HTTP/1.0 client: payload only, end marked by closing.
    ChunkedToClose(ChunkedDecoder),
    /// Close-delimited upstream, HTTP/1.1 client: each read becomes a chunk.
    CloseToChunked,
    /// Close-delimited on both sides.
    CloseToClose,
    /// An SSE body whose usage chunk is hidden: `inner` yields payload (one of the payload
    /// modes above), the filter drops the chunk, and the rest goes out as chunks (or raw to an
    /// HTTP/1.0 client).
    Filtered {
        inner: Box<Mode>,
        filter: crate::usage::SseUsageFilter,
        chunked_out: bool,
    },
}

/// How relaying ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The whole body went through; the upstream connection is reusable if `reusable`.
    Complete { reusable: bool },
    /// The upstream failed or timed out mid-body; the client's response was cut.
    UpstreamFailed,
    /// The client went away (or stopped reading).
    ClientGone,
}

/// Write the response head and relay the body; returns what the client connection should do.
#[allow(clippy::too_many_arguments)]
pub async fn respond(
    core: &Core,
    client: &mut TcpStream,
    req: &RequestHead,
    backend: &Backend,
    ex: Exchange,
    request_id: &str,
    permits: Permits,
    mut tap: Option<&mut Tap>,
) -> After {
    let Exchange {
        mut conn,
        resp,
        mut leftover,
        attempts,
    } = ex;
    let http10 = req.version == Version::Http10;
    let sse = resp
        .fields
        .get("content-type")
        .is_some_and(|ct| ct.len() >= 17 && ct[..17].eq_ignore_ascii_case(b"text/event-stream"));
    let hide = match tap.as_deref_mut() {
        Some(t) => {
            t.status = resp.status;
            t.sse = sse;
            t.content_type = resp
                .fields
                .get("content-type")
                .map(bytes::Bytes::copy_from_slice);
            t.hide_usage && sse && (200..300).contains(&resp.status)
        }
        None => false,
    };
    let (mut mode, out_framing, keep_length) = match resp.framing {
        _ if hide => {
            let inner = match resp.framing {
                BodyFraming::Length(n) => Mode::Length(n),
                BodyFraming::Chunked => Mode::ChunkedToClose(ChunkedDecoder::new()),
                _ => Mode::CloseToClose,
            };
            let mode = Mode::Filtered {
                inner: Box::new(inner),
                filter: crate::usage::SseUsageFilter::new(),
                chunked_out: !http10,
            };
            let framing = if http10 {
                OutFraming::None
            } else {
                OutFraming::Chunked
            };
            (mode, framing, false)
        }
        BodyFraming::Empty => (Mode::Empty, OutFraming::None, resp.status != 204),
        BodyFraming::Length(n) => (Mode::Length(n), OutFraming::Length(n), false),
        BodyFraming::Chunked if http10 => (
            Mode::ChunkedToClose(ChunkedDecoder::new()),
            OutFraming::None,
            false,
        ),
        BodyFraming::Chunked => (
            Mode::ChunkedVerbatim(ChunkedDecoder::new()),
            OutFraming::Chunked,
            false,
        ),
        BodyFraming::UntilClose if http10 => (Mode::CloseToClose, OutFraming::None, false),
        BodyFraming::UntilClose => (Mode::CloseToChunked, OutFraming::Chunked, false),
    };
    let client_close_delimited = match &mode {
        Mode::ChunkedToClose(_) | Mode::CloseToClose => true,
        Mode::Filtered { chunked_out, .. } => !chunked_out,
        _ => false,
    };
    let close = !req.keep_alive || client_close_delimited || core.shutdown.is_fired();

    let mut scratch = core.bufs.take(512 + leftover.len().min(COALESCE_BYTES));
    headers::client_response(
        &mut scratch,
        &resp,
        request_id,
        &backend.name,
        out_framing,
        keep_length,
        req.version.connection_field(close),
    );
    // Before the head's final CRLF: how many attempts this answer took.
    if scratch.ends_with(b"\r\n\r\n") {
        scratch.truncate(scratch.len() - 2);
        super::attempts::write_attempts_header(&mut scratch, attempts);
    }
    req.probe
        .on_upstream_head(resp.status, &backend.name, &mut scratch);

    // Fast path: a small Content-Length body that arrived with its head goes out in one write.
    if let Mode::Length(n) = mode {
        if leftover.len() as u64 >= n && n as usize <= COALESCE_BYTES {
            if let Some(t) = tap.as_deref_mut() {
                t.feed(&leftover[..n as usize]);
            }
            req.probe.body_sent(n as usize);
            scratch.extend_from_slice(&leftover[..n as usize]);
            leftover.advance(n as usize);
            mode = Mode::Length(0);
        }
    }
    // `split` leaves `scratch` owning the rest of the allocation, to be reused once the write
    // has released its part.
    if write_all_timeout(client, scratch.split().freeze(), CLIENT_WRITE_TIMEOUT)
        .await
        .is_err()
    {
        return After::Close;
    }
    // The head shares the read buffer's allocation; letting it go now lets the relay reuse
    // that buffer in place instead of allocating a second one per stream.
    let upstream_keep_alive = resp.keep_alive;
    drop(resp);

    let ending = relay_body(
        client,
        &mut conn.stream,
        &mut leftover,
        &mut mode,
        backend.timeout,
        tap.as_deref_mut(),
        &req.probe,
    )
    .await;
    req.probe.relay_ended(sse, ending.outcome());
    drop(permits);
    if let Some(t) = tap {
        t.complete = matches!(ending, Ending::Complete { .. });
    }
    match ending {
        Ending::Complete { reusable } => {
            if reusable && upstream_keep_alive && leftover.is_empty() {
                core.pool.checkin(backend, conn);
            }
            core.bufs.give(leftover);
            core.bufs.give(scratch);
            if close {
                After::Close
            } else {
                After::KeepAlive
            }
        }
        Ending::UpstreamFailed | Ending::ClientGone => After::Close,
    }
}

/// Move body bytes until the framing says the body ended.
async fn relay_body(
    client: &mut TcpStream,
    up: &mut crate::upstream::UpStream,
    buf: &mut BytesMut,
    mode: &mut Mode,
    gap: Duration,
    mut tap: Option<&mut Tap>,
    probe: &crate::metrics::Probe,
) -> Ending {
    loop {
        // 1. Forward what is buffered.
        let (out, done) = match take_ready(mode, buf, tap.as_deref_mut()) {
            Ok(x) => x,
            Err(()) => return Ending::UpstreamFailed,
        };
        if let Some(piece) = out {
            probe.body_sent(piece.len());
            if write_all_timeout(client, piece, CLIENT_WRITE_TIMEOUT)
                .await
                .is_err()
            {
                return Ending::ClientGone;
            }
        }
        if done {
            return Ending::Complete {
                reusable: mode.reusable(),
            };
        }
        // 2. Read more from the upstream, watching for the client leaving.
        probe.upstream_wait(true);
        let read = read_watching(up, buf, client, gap).await;
        probe.upstream_wait(false);
        match read {
            Read::Data => {}
            Read::Eof => {
                return match mode {
                    Mode::CloseToChunked => {
                        let fin = Bytes::from_static(LAST_CHUNK);
                        if write_all_timeout(client, fin, CLIENT_WRITE_TIMEOUT)
                            .await
                            .is_err()
                        {
                            return Ending::ClientGone;
                        }
                        Ending::Complete { reusable: false }
                    }
                    Mode::CloseToClose => Ending::Complete { reusable: false },
                    Mode::Filtered {
                        inner,
                        filter,
                        chunked_out,
                    } if matches!(**inner, Mode::CloseToClose) => {
                        let mut out = Vec::new();
                        filter.finish(&mut out);
                        let mut last = BytesMut::new();
                        frame(&mut last, &out, *chunked_out);
                        if *chunked_out {
                            last.extend_from_slice(LAST_CHUNK);
                        }
                        if !last.is_empty()
                            && write_all_timeout(client, last.freeze(), CLIENT_WRITE_TIMEOUT)
                                .await
                                .is_err()
                        {
                            return Ending::ClientGone;
                        }
                        Ending::Complete { reusable: false }
                    }
                    _ => Ending::UpstreamFailed,
                };
            }
            Read::Failed => return Ending::UpstreamFailed,
            Read::ClientGone => return Ending::ClientGone,
        }
    }
}

impl Ending {
    /// The outcome label of a relayed body.
    fn outcome(&self) -> crate::metrics::StreamEnd {
        use crate::metrics::StreamEnd;
        match self {
            Ending::Complete { .. } => StreamEnd::Completed,
            Ending::UpstreamFailed => StreamEnd::UpstreamFailed,
            Ending::ClientGone => StreamEnd::ClientGone,
        }
    }
}

impl Mode {
    /// Whether the upstream connection can be reused once this body is complete.
    fn reusable(&self) -> bool {
        match self {
            Mode::CloseToChunked | Mode::CloseToClose => false,
            Mode::Filtered { inner, .. } => inner.reusable(),
            _ => true,
        }
    }
}

/// Append `data` framed for the client: one chunk, or raw for a close-delimited body.
pub(super) fn frame(out: &mut BytesMut, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        write_chunk_header(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Split off what can be sent now (one `Bytes`, no allocation on the common paths) and
/// whether the body is complete. The payload is shown to `tap` on the way.
fn take_ready(
    mode: &mut Mode,
    buf: &mut BytesMut,
    mut tap: Option<&mut Tap>,
) -> Result<(Option<Bytes>, bool), ()> {
    let nonempty = |b: Bytes| (!b.is_empty()).then_some(b);
    Ok(match mode {
        Mode::Empty => (None, true),
        Mode::Length(left) => {
            let take = (*left).min(buf.len() as u64) as usize;
            *left -= take as u64;
            let piece = buf.split_to(take).freeze();
            if let Some(t) = tap {
                t.feed(&piece);
            }
            (nonempty(piece), *left == 0)
        }
        Mode::ChunkedVerbatim(dec) => {
            let p = match tap.as_deref_mut() {
                Some(t) => dec.decode(buf, |r| t.feed(&buf[r])),
                None => dec.decode(buf, |_| {}),
            }
            .map_err(|_| ())?;
            (nonempty(buf.split_to(p.consumed).freeze()), p.done)
        }
        Mode::ChunkedToClose(dec) => {
            // HTTP/1.0 clients only: the payload pieces are copied together.
            let mut payload = BytesMut::new();
            let p = dec
                .decode(buf, |r| payload.extend_from_slice(&buf[r]))
                .map_err(|_| ())?;
            buf.advance(p.consumed);
            if let Some(t) = tap {
                t.feed(&payload);
            }
            (nonempty(payload.freeze()), p.done)
        }
        Mode::CloseToChunked => {
            let mut framed = None;
            if !buf.is_empty() {
                let data = buf.split();
                if let Some(t) = tap {
                    t.feed(&data);
                }
                let mut f = BytesMut::with_capacity(data.len() + 16);
                frame(&mut f, &data, true);
                framed = Some(f.freeze());
            }
            (framed, false)
        }
        Mode::CloseToClose => {
            let piece = buf.split().freeze();
            if let Some(t) = tap {
                t.feed(&piece);
            }
            (nonempty(piece), false)
        }
        Mode::Filtered {
            inner,
            filter,
            chunked_out,
        } => {
            let (payload, done) = take_ready(inner, buf, tap)?;
            let mut kept = Vec::new();
            if let Some(p) = payload {
                filter.feed(&p, &mut kept);
            }
            if done {
                filter.finish(&mut kept);
            }
            let mut out = BytesMut::with_capacity(kept.len() + 24);
            frame(&mut out, &kept, *chunked_out);
            if done && *chunked_out {
                out.extend_from_slice(LAST_CHUNK);
            }
            (nonempty(out.freeze()), done)
        }
    })
}

enum Read {
    Data,
    Eof,
    Failed,
    ClientGone,
}

/// Read from the upstream within `gap`, while noticing a client that closed its connection.
///
/// The watch arms only after [`WATCH_CLIENT_AFTER`] without upstream bytes: a stream whose
/// events keep coming finds a vanished client at its next write anyway, so the common case
/// pays for a timer, not for a readiness operation per read.
async fn read_watching(
    up: &mut crate::upstream::UpStream,
    buf: &mut BytesMut,
    client: &TcpStream,
    gap: Duration,
) -> Read {
    let read = std::pin::pin!(monoio::time::timeout(
        gap,
        read_append(up, buf, BODY_READ_BYTES)
    ));
    let gone = std::pin::pin!(client_closed_after(client, WATCH_CLIENT_AFTER));
    match select(read, gone).await {
        Either::Left((r, _)) => classify(r),
        Either::Right(_) => Read::ClientGone,
    }
}

/// How long an upstream read may wait before we also watch the client for a disconnect.
pub const WATCH_CLIENT_AFTER: Duration = Duration::from_millis(100);

/// [`client_closed`], armed only after `delay`.
pub async fn client_closed_after(client: &TcpStream, delay: Duration) {
    monoio::time::sleep(delay).await;
    client_closed(client).await
}

/// Resolves once `client` has closed its connection (EOF or a socket error). Never resolves
/// while the client is merely idle, nor once it has sent bytes (a pipelined request, left in
/// the socket for the connection loop), nor after repeated spurious readiness.
pub async fn client_closed(client: &TcpStream) {
    let fd = client.as_raw_fd();
    let mut spurious = 0;
    loop {
        let res = client.readable(false).await;
        match peek(fd) {
            PeerState::Closed => return,
            PeerState::HasData => break,
            PeerState::Idle => {
                spurious += 1;
                if res.is_err() || spurious > 3 {
                    break;
                }
            }
        }
    }
    std::future::pending::<()>().await
}

fn classify(r: Result<std::io::Result<usize>, monoio::time::error::Elapsed>) -> Read {
    match r {
        Ok(Ok(0)) => Read::Eof,
        Ok(Ok(_)) => Read::Data,
        Ok(Err(_)) | Err(_) => Read::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbatim_chunked_stops_at_the_end_of_the_body() {
        let mut mode = Mode::ChunkedVerbatim(ChunkedDecoder::new());
        let mut buf = BytesMut::from(&b"5\r\nhello\r\n0\r\n\r\nEXTRA"[..]);
        let (out, done) = take_ready(&mut mode, &mut buf, None).expect("valid");
        assert!(done);
        assert_eq!(
            out.map(|b| b.to_vec()).unwrap_or_default(),
            b"5\r\nhello\r\n0\r\n\r\n"
        );
        assert_eq!(&buf[..], b"EXTRA");
    }

    #[test]
    fn chunked_to_http10_sends_payload_only() {
        let mut mode = Mode::ChunkedToClose(ChunkedDecoder::new());
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n2\r\nde\r\n"[..]);
        let (out, done) = take_ready(&mut mode, &mut buf, None).expect("valid");
        assert!(!done);
        assert_eq!(out.map(|b| b.to_vec()).unwrap_or_default(), b"abcde");
    }

    #[test]
    fn close_delimited_is_rechunked_for_http11() {
        let mut mode = Mode::CloseToChunked;
        let mut buf = BytesMut::from(&b"hello"[..]);
        let (out, done) = take_ready(&mut mode, &mut buf, None).expect("valid");
        assert!(!done);
        assert_eq!(
            out.map(|b| b.to_vec()).unwrap_or_default(),
            b"5\r\nhello\r\n"
        );
    }

    #[test]
    fn bad_upstream_chunking_is_an_error() {
        let mut mode = Mode::ChunkedVerbatim(ChunkedDecoder::new());
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(take_ready(&mut mode, &mut buf, None).is_err());
    }
}
