//! One client connection: read a request head, hand it to the proxy, repeat while keep-alive
//! holds. The loop ends on close, error, timeout, or shutdown (between requests).

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::BytesMut;
use monoio::net::TcpStream;

use crate::error::{ErrorType, GatewayError};
use crate::http::io::{read_append, read_append_timeout, write_all_timeout};
use crate::http::limits::{
    header_read_timeout, CLIENT_WRITE_TIMEOUT, KEEPALIVE_IDLE_TIMEOUT, READ_BUF_BYTES,
};
use crate::http::{HeadError, RequestHead};
use crate::proxy::{self, After, Core};

/// Serve a connection until it cannot be reused.
pub async fn serve(core: Rc<Core>, mut client: TcpStream) {
    let mut buf = BytesMut::with_capacity(READ_BUF_BYTES);
    loop {
        let head = match read_head(&core, &mut client, &mut buf).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                let _ = write_all_timeout(
                    &mut client,
                    proxy::observe::head_error(&core, e),
                    CLIENT_WRITE_TIMEOUT,
                )
                .await;
                return linger(&mut client, &mut buf).await;
            }
        };
        match proxy::observe::serve_request(&core, &mut client, &mut buf, head).await {
            After::KeepAlive if !core.shutdown.is_fired() => {}
            // Draining and nothing unread: close at once rather than wait out the linger.
            _ if core.shutdown.is_fired()
                && buf.is_empty()
                && crate::net::peek(client.as_raw_fd()) == crate::net::PeerState::Idle =>
            {
                return
            }
            _ => return linger(&mut client, &mut buf).await,
        }
        // A large request body grew this buffer; do not keep that memory for the life of a
        // keep-alive connection (pipelined bytes are carried over).
        if buf.capacity() > MAX_RETAINED_BUF {
            let mut fresh = BytesMut::with_capacity(READ_BUF_BYTES.max(buf.len()));
            fresh.extend_from_slice(&buf);
            buf = fresh;
        }
    }
}

/// Largest read buffer a connection keeps between requests.
const MAX_RETAINED_BUF: usize = 64 * 1024;

/// Longest we keep reading from a client after deciding to close its connection.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// Most bytes we read and discard while lingering (a body already on its way).
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Close after a response: send FIN, then read and discard what the client still sends, for a
/// bounded time. Closing a socket with unread input makes the kernel send a reset, which can
/// destroy the response still in flight (RFC 9112 section 9.6): an error answered before the
/// request body was read, a pipelined request after `Connection: close`. A well-behaved
/// client closes on our FIN, so this usually ends at once.
async fn linger(client: &mut TcpStream, buf: &mut BytesMut) {
    use monoio::io::AsyncWriteRent;
    if client.shutdown().await.is_err() {
        return;
    }
    let deadline = monoio::time::Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        buf.clear();
        let left = deadline.saturating_duration_since(monoio::time::Instant::now());
        match read_append_timeout(client, buf, READ_BUF_BYTES, left).await {
            Ok(n) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

/// Read one request head. `Ok(None)`: the client closed (or idled out, or we are shutting
/// down) between requests, which needs no answer.
async fn read_head(
    core: &Core,
    client: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<RequestHead>, GatewayError> {
    // Between requests: wait for the first byte, or the idle timeout, or shutdown.
    if buf.is_empty() {
        let first = monoio::select! {
            _ = core.shutdown.wait() => return Ok(None),
            r = monoio::time::timeout(KEEPALIVE_IDLE_TIMEOUT, read_append(client, buf, READ_BUF_BYTES)) => r,
        };
        match first {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Ok(None),
        }
    }
    // From the first byte on, the whole head must arrive within the head timeout (slowloris).
    let deadline = monoio::time::Instant::now() + header_read_timeout();
    loop {
        match RequestHead::parse_from(buf) {
            Ok(Some(head)) => return Ok(Some(head)),
            Ok(None) => {}
            Err(e) => return Err(head_error(&e)),
        }
        let left = deadline.saturating_duration_since(monoio::time::Instant::now());
        match read_append_timeout(client, buf, READ_BUF_BYTES, left).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(GatewayError::new(
                    408,
                    ErrorType::InvalidRequest,
                    "request_timeout",
                    "timed out reading the request head",
                ))
            }
            Err(_) => return Ok(None),
        }
    }
}

fn head_error(e: &HeadError) -> GatewayError {
    let code = match e.status() {
        431 => "request_header_fields_too_large",
        501 => "not_implemented",
        417 => "expectation_failed",
        _ => "invalid_request",
    };
    GatewayError::new(e.status(), ErrorType::InvalidRequest, code, e.reason())
}
