//! Every cap the HTTP/1.1 codec enforces, in one place, with the reason for each value.

use std::sync::OnceLock;
use std::time::Duration;

/// Largest request or response head we accept (request line + headers + CRLFCRLF).
/// Matches common servers' 32 KiB; a longer head is almost always an attack -> 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Most header fields in one head. httparse needs a fixed slot array; 100 is nginx/pingora's order
/// of magnitude and far above any SDK's real use -> 431 past it.
pub const MAX_HEADERS: usize = 100;

/// Longest chunk-size line including extensions. Extensions are ignored but must not be used to
/// make us buffer unboundedly.
pub const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;

/// Total trailer bytes accepted at the end of a chunked body (trailers are dropped).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Time a client has to send a complete request head once its first byte arrived (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle keep-alive client connection is kept waiting for its next request.
pub const KEEPALIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest gap allowed between two reads of a request body from the client.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a single write to the client may take before we give up on a stalled reader.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Initial read buffer per connection; grows only when a head or body needs it.
pub const READ_BUF_BYTES: usize = 8 * 1024;

/// The head timeout the server applies: [`HEADER_READ_TIMEOUT`], unless the hidden test hook
/// `DITTO_TEST_HEADER_TIMEOUT_MS` is set. The integration tests use it to check the slowloris
/// defence in half a second instead of ten; it is read once, at first use.
pub fn header_read_timeout() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| test_override("DITTO_TEST_HEADER_TIMEOUT_MS").unwrap_or(HEADER_READ_TIMEOUT))
}

/// The body-gap timeout the server applies: [`BODY_IDLE_TIMEOUT`], unless the hidden test hook
/// `DITTO_TEST_BODY_TIMEOUT_MS` is set (same reason as [`header_read_timeout`]).
pub fn body_idle_timeout() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| test_override("DITTO_TEST_BODY_TIMEOUT_MS").unwrap_or(BODY_IDLE_TIMEOUT))
}

/// A positive millisecond count from the environment variable `name`, if set and valid.
fn test_override(name: &str) -> Option<Duration> {
    let ms: u64 = std::env::var(name).ok()?.trim().parse().ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}
