//! Request bodies from the client: read whole (bounded) when we need to look inside, or pumped
//! to the upstream as they arrive when we do not (uploads, audio).

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::TcpStream;

use crate::http::chunked::{write_chunk_header, LAST_CHUNK};
use crate::http::io::{read_append_timeout, write_all_timeout};
use crate::http::limits::{body_idle_timeout, CLIENT_WRITE_TIMEOUT};
use crate::http::{BodyFraming, ChunkedDecoder, RequestHead};
use crate::upstream::UpConn;

/// Largest read from a client in one go while streaming a body.
const BODY_READ_CHUNK: usize = 64 * 1024;

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over `--proxy-max-body-bytes`: 413.
    TooLarge,
    /// The client stopped sending mid-body: 408.
    Timeout,
    /// The client closed the connection or the socket failed: nobody to answer.
    Closed,
    /// Bad chunked framing: 400.
    Malformed(&'static str),
}

/// Whether to read the body whole. We buffer everything that may be JSON (the model decides the
/// route) and stream the media types that are large and never JSON.
pub fn should_buffer(head: &RequestHead) -> bool {
    let ct = head.fields.get("content-type").unwrap_or(b"");
    const STREAMED: [&[u8]; 5] = [
        b"multipart/",
        b"application/octet-stream",
        b"audio/",
        b"video/",
        b"image/",
    ];
    !STREAMED
        .iter()
        .any(|p| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p))
}

/// Tell a client that sent `Expect: 100-continue` to go ahead.
pub async fn send_continue(client: &mut TcpStream, head: &RequestHead) -> Result<(), BodyError> {
    if head.expect_continue {
        write_all_timeout(
            client,
            Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
            CLIENT_WRITE_TIMEOUT,
        )
        .await
        .map_err(|_| BodyError::Closed)?;
    }
    Ok(())
}

async fn read_more(
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    want: usize,
) -> Result<(), BodyError> {
    match read_append_timeout(client, cbuf, want, body_idle_timeout()).await {
        Ok(0) => Err(BodyError::Closed),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(BodyError::Timeout),
        Err(_) => Err(BodyError::Closed),
    }
}

/// Read the whole body (at most `max` bytes). Bytes after it stay in `cbuf` (pipelining).
pub async fn read_whole(
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    head: &RequestHead,
    max: usize,
) -> Result<Bytes, BodyError> {
    match head.framing {
        BodyFraming::Empty | BodyFraming::UntilClose => Ok(Bytes::new()),
        BodyFraming::Length(n) => {
            if n > max as u64 {
                return Err(BodyError::TooLarge);
            }
            let n = n as usize;
            send_continue(client, head).await?;
            while cbuf.len() < n {
                let want = n - cbuf.len();
                // Grow as bytes arrive, not by what the client declared.
                read_more(client, cbuf, want.min(BODY_READ_CHUNK)).await?;
            }
            Ok(cbuf.split_to(n).freeze())
        }
        BodyFraming::Chunked => {
            send_continue(client, head).await?;
            let mut decoder = ChunkedDecoder::new();
            let mut body = BytesMut::new();
            loop {
                let p = decoder
                    .decode(cbuf, |r| body.extend_from_slice(&cbuf[r]))
                    .map_err(|_| BodyError::Malformed("invalid chunked body"))?;
                cbuf.advance(p.consumed);
                if body.len() > max {
                    return Err(BodyError::TooLarge);
                }
                if p.done {
                    return Ok(body.freeze());
                }
                read_more(client, cbuf, BODY_READ_CHUNK).await?;
            }
        }
    }
}

/// Slowest average rate a streamed upload may keep once its grace period is over. A streamed
/// body holds its in-flight permits while it arrives; without a floor, clients trickling a byte
/// per idle-timeout could hold every permit of the gateway for ever.
const MIN_UPLOAD_BYTES_PER_SEC: f64 = 1024.0;

/// Tracks a streamed upload's average rate over the time spent waiting for the client (time
/// blocked writing to a slow upstream is not the client's fault). Grace: one body idle timeout.
struct Pace {
    waited: std::time::Duration,
    grace: std::time::Duration,
}

impl Pace {
    fn start() -> Pace {
        Pace {
            waited: std::time::Duration::ZERO,
            grace: body_idle_timeout(),
        }
    }

    /// Read more of the body, then check the rate: `received` counts the bytes so far
    /// (including what this read brought, returned by `received`).
    async fn read(
        &mut self,
        client: &mut TcpStream,
        cbuf: &mut BytesMut,
        want: usize,
        received: impl FnOnce(&BytesMut) -> usize,
    ) -> Result<(), PumpError> {
        let t = std::time::Instant::now();
        read_more(client, cbuf, want)
            .await
            .map_err(PumpError::Client)?;
        self.waited += t.elapsed();
        let got = received(cbuf) as f64;
        if self.waited > self.grace && got < self.waited.as_secs_f64() * MIN_UPLOAD_BYTES_PER_SEC {
            return Err(PumpError::Client(BodyError::Timeout));
        }
        Ok(())
    }
}

/// Why pumping a body to the upstream stopped.
#[derive(Debug)]
pub enum PumpError {
    Client(BodyError),
    Upstream(io::Error),
}

/// Forward the body to `up` as it arrives: verbatim for Content-Length, re-chunked (extensions
/// and trailers dropped) for chunked, so the upstream sees only framing we have validated.
pub async fn pump(
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    head: &RequestHead,
    max: usize,
    up: &mut UpConn,
    write_limit: std::time::Duration,
) -> Result<(), PumpError> {
    let mut pace = Pace::start();
    match head.framing {
        BodyFraming::Empty | BodyFraming::UntilClose => Ok(()),
        BodyFraming::Length(n) => {
            if n > max as u64 {
                return Err(PumpError::Client(BodyError::TooLarge));
            }
            let mut left = n as usize;
            loop {
                let take = left.min(cbuf.len());
                if take > 0 {
                    let piece = cbuf.split_to(take).freeze();
                    write_all_timeout(&mut up.stream, piece, write_limit)
                        .await
                        .map_err(PumpError::Upstream)?;
                    left -= take;
                }
                if left == 0 {
                    return Ok(());
                }
                let sent = n as usize - left;
                pace.read(client, cbuf, left.min(BODY_READ_CHUNK), |b| sent + b.len())
                    .await?;
            }
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let mut out = BytesMut::new();
                let p = decoder
                    .decode(cbuf, |r| {
                        write_chunk_header(&mut out, r.len());
                        out.extend_from_slice(&cbuf[r]);
                        out.extend_from_slice(b"\r\n");
                    })
                    .map_err(|_| PumpError::Client(BodyError::Malformed("invalid chunked body")))?;
                cbuf.advance(p.consumed);
                if decoder.payload_len() > max as u64 {
                    return Err(PumpError::Client(BodyError::TooLarge));
                }
                if p.done {
                    out.extend_from_slice(LAST_CHUNK);
                }
                write_all_timeout(&mut up.stream, out.freeze(), write_limit)
                    .await
                    .map_err(PumpError::Upstream)?;
                if p.done {
                    return Ok(());
                }
                let sent = decoder.payload_len() as usize;
                pace.read(client, cbuf, BODY_READ_CHUNK, |b| sent + b.len())
                    .await?;
            }
        }
    }
}
