//! The mock upstream: an OpenAI-compatible server for integration tests and load tests (a test
//! tool, not a part of the gateway).
//!
//! It speaks HTTP/1.1 with keep-alive through the crate's own codec ([`crate::http`]), so what
//! it accepts is exactly what the gateway accepts, and it is built the same way as the gateway:
//! one pinned monoio runtime per worker thread, each accepting on its own SO_REUSEPORT listener.
//! Behaviour is steered per request by `x-mock-*` headers (or a `mock-fault-*` model name), so
//! one mock process can play a healthy backend, a slow one, a rate-limited one and a broken
//! one; see [`USAGE`] for the full list and [`conn`] for the wire behaviour.
//!
//! - [`api`]: the OpenAI-shaped bodies.
//! - [`anthropic`]: the Anthropic Messages bodies and events (`POST /v1/messages`).
//! - [`gemini`]: the Gemini `generateContent` bodies and chunks.
//! - [`conn`]: one connection: read requests, route, answer, inject faults.
//! - [`tls`]: the rustls server config for `--tls-cert/--tls-key`.
//! - [`redis_server`]: a real `redis-server` on a loopback port for the Redis store's tests.

pub mod anthropic;
pub mod api;
pub mod conn;
pub mod gemini;
pub mod redis_server;
pub mod tls;

use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;

/// The command line, printed on `--help` and on a usage error.
pub const USAGE: &str = "\
usage: mock-upstream [options]
  --listen HOST:PORT            address to bind (default 127.0.0.1:0: a free port)
  --workers N                   worker threads, one pinned runtime each (default 1)
  --tls-cert PEM --tls-key PEM  serve HTTPS (certificate chain; PKCS#8, RSA or SEC1 key)
  --models ID,ID,...            models listed by /v1/models (default gpt-4o-mini,gpt-4o)
  --events N                    content events per streamed completion (default 5)
  --delay-ms N                  gap between SSE events; delay before non-stream heads (default 0)
  --size N                      pad completion bodies / each SSE event to about N bytes
  --keepalive-timeout-secs N    close idle keep-alive connections after N s (default 75)
Prints `mock-upstream listening on http(s)://IP:PORT` on stdout once it accepts.

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions (stream or not),
POST /v1/embeddings, /v1/responses (404), ANY /echo and /v1/echo (what was received, as JSON),
GET /mock/stats ({\"requests\",\"connections\",\"open_connections\"}).
Anthropic: POST /v1/messages (needs x-api-key and anthropic-version; stream or not; a
tool_use block when the request has tools; errors Anthropic-shaped).
Gemini: POST /v1beta/models/{model}:generateContent and :streamGenerateContent (?alt=sse for
SSE, else a JSON array; needs x-goog-api-key or ?key=; a functionCall part when the request
declares functions; errors Google-shaped).
Content is deterministic: `tok0 tok1 ...`, one word per streamed event.
Per-request headers: x-mock-status, x-mock-retry-after, x-mock-events, x-mock-delay-ms,
x-mock-size, x-mock-header-delay-ms, x-mock-chunked: 1, x-mock-close-delimited: 1,
x-mock-fault: close-before-headers|reset-before-headers|slow-headers|stall|
reset-mid-stream|stall-mid-stream|close-mid-stream|error-event-mid-stream
(or model `mock-fault-<fault>`; error-event-mid-stream: half the events, then the API's own
error event, then a proper end of the body).";

/// Everything the command line sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockOptions {
    /// Where to listen; port 0 picks a free port (shared by every worker).
    pub listen: SocketAddr,
    /// Worker threads, each with its own runtime and listener.
    pub workers: usize,
    /// PEM certificate chain and key; both set means HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Ids listed by `/v1/models`; the first is the model of requests that name none.
    pub models: Vec<String>,
    /// Content events per streamed completion (and tokens per whole one).
    pub events: u32,
    /// Gap between SSE events; delay before the head of a non-stream answer.
    pub delay_ms: u64,
    /// Pad completion bodies, or each SSE event, to about this many bytes (0: no padding).
    pub size: usize,
    /// Idle keep-alive connections are closed after this long.
    pub keepalive_timeout: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            workers: 1,
            tls: None,
            models: vec!["gpt-4o-mini".to_string(), "gpt-4o".to_string()],
            events: 5,
            delay_ms: 0,
            size: 0,
            keepalive_timeout: Duration::from_secs(75),
        }
    }
}

/// Parse the command line (without the program name). `--flag value` and `--flag=value` both
/// work. `Err` carries a one-line reason; the caller prints it with [`USAGE`].
pub fn parse_args<I, S>(args: I) -> Result<MockOptions, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut opts = MockOptions::default();
    let mut cert = None;
    let mut key = None;
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            return Err("help requested".to_string());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                opts.listen = v
                    .to_socket_addrs()
                    .map_err(|e| format!("--listen {v}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--listen {v}: no address"))?;
            }
            "--workers" => {
                opts.workers = number(&flag, &value()?)?;
                if opts.workers == 0 {
                    return Err("--workers must be at least 1".to_string());
                }
            }
            "--tls-cert" => cert = Some(PathBuf::from(value()?)),
            "--tls-key" => key = Some(PathBuf::from(value()?)),
            "--models" => {
                opts.models = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect();
                if opts.models.is_empty() {
                    return Err("--models needs at least one id".to_string());
                }
            }
            "--events" => opts.events = number(&flag, &value()?)?,
            "--delay-ms" => opts.delay_ms = number(&flag, &value()?)?,
            "--size" => opts.size = number(&flag, &value()?)?,
            "--keepalive-timeout-secs" => {
                let secs: u64 = number(&flag, &value()?)?;
                if secs == 0 {
                    // Zero would close every connection before its first request.
                    return Err("--keepalive-timeout-secs must be at least 1".to_string());
                }
                opts.keepalive_timeout = Duration::from_secs(secs);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    opts.tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".to_string()),
    };
    Ok(opts)
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}

/// Process-wide counters behind `GET /mock/stats`. Atomics shared by all workers: a test tool
/// can afford the cache-line traffic, and tests need one total to check connection reuse.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered, `/mock/stats` itself excluded.
    pub requests: AtomicU64,
    /// Connections accepted (all of them, the ones asking for stats included).
    pub connections: AtomicU64,
    /// Connections open right now.
    pub open_connections: AtomicU64,
    /// Source of `chatcmpl-mock-N` ids.
    pub next_id: AtomicU64,
}

/// What every connection on every worker reads: options, TLS, counters, the model list body.
pub struct Shared {
    pub opts: MockOptions,
    pub tls: Option<monoio_rustls::TlsAcceptor>,
    pub stats: Stats,
    /// `GET /v1/models` never changes: built once.
    pub model_list: bytes::Bytes,
}

/// A bound mock: the listeners exist (connections queue up) but nothing is served until
/// [`MockServer::serve`]. Lets an in-process test learn the address before serving.
pub struct MockServer {
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    addr: SocketAddr,
}

impl MockServer {
    /// Load TLS (if asked) and bind one SO_REUSEPORT listener per worker, all on the same
    /// concrete port (the one the first bind picked when the port is 0).
    pub fn bind(opts: MockOptions) -> io::Result<MockServer> {
        let tls = match &opts.tls {
            Some((cert, key)) => Some(monoio_rustls::TlsAcceptor::from(tls::server_config(
                cert, key,
            )?)),
            None => None,
        };
        let first = bind_reuseport(opts.listen)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..opts.workers {
            listeners.push(bind_reuseport(addr)?);
        }
        let model_list = bytes::Bytes::from(api::model_list(&opts.models));
        Ok(MockServer {
            shared: Arc::new(Shared {
                opts,
                tls,
                stats: Stats::default(),
                model_list,
            }),
            listeners,
            addr,
        })
    }

    /// The bound address (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` or `https://IP:PORT`, with an unspecified bind address (0.0.0.0, ::)
    /// replaced by loopback so a client can connect to it as printed.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let ip = match self.addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("{scheme}://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Serve forever: one thread per worker, each pinned to a core (round robin over the cores
    /// this process may use) and running its own monoio runtime. Returns only if a worker fails
    /// to start or its listener fails.
    pub fn serve(self) -> io::Result<()> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut handles = Vec::new();
        for (i, listener) in self.listeners.into_iter().enumerate() {
            let shared = self.shared.clone();
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("mock-worker-{i}"))
                .spawn(move || {
                    let res = worker(i, core, listener, shared);
                    if let Err(e) = &res {
                        // Said at once: `serve` only reports it when joining this thread.
                        eprintln!("mock-upstream: worker {i} failed: {e}");
                    }
                    res
                })?;
            handles.push(handle);
        }
        for h in handles {
            match h.join() {
                Ok(res) => res?,
                Err(_) => return Err(io::Error::other("a mock worker thread panicked")),
            }
        }
        Ok(())
    }
}

/// A non-blocking listener with SO_REUSEPORT (so every worker can bind the same port) and
/// SO_REUSEADDR (so a restarted mock can rebind while old connections sit in TIME_WAIT).
fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One worker thread: pin, build the runtime, accept forever.
fn worker(
    index: usize,
    core: Option<core_affinity::CoreId>,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
) -> io::Result<()> {
    if let Some(core) = core {
        // Pinning is an optimisation; an unpinned worker still serves correctly.
        let _ = core_affinity::set_for_current(core);
    }
    // FusionDriver picks io_uring when the kernel allows it and falls back to epoll silently
    // (or on MONOIO_FORCE_LEGACY_DRIVER=1), so say which one this worker got.
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    let driver = match &rt {
        monoio::FusionRuntime::Uring(_) => "io_uring",
        monoio::FusionRuntime::Legacy(_) => "legacy (epoll)",
    };
    eprintln!("mock-upstream: worker {index} using the {driver} driver");
    rt.block_on(accept_loop(listener, shared))
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    let listener = monoio::net::TcpListener::from_std(listener)?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and friends are transient under load; back off instead of spinning.
                eprintln!("mock-upstream: accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        // SSE events are small writes that must leave at once.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        monoio::spawn(async move {
            shared
                .stats
                .open_connections
                .fetch_add(1, Ordering::Relaxed);
            // monoio does not catch panics: an uncaught one would take the whole worker (and
            // every connection on it) down.
            let res = AssertUnwindSafe(conn::handle(stream, &shared))
                .catch_unwind()
                .await;
            shared
                .stats
                .open_connections
                .fetch_sub(1, Ordering::Relaxed);
            if res.is_err() {
                eprintln!("mock-upstream: a connection task panicked; connection dropped");
            }
        });
    }
}

/// Bind, print `mock-upstream listening on URL` (one line, flushed: tests and scripts wait
/// for it), then serve forever.
pub fn run(opts: MockOptions) -> io::Result<()> {
    let server = MockServer::bind(opts)?;
    let mut out = io::stdout().lock();
    writeln!(out, "mock-upstream listening on {}", server.url())?;
    out.flush()?;
    drop(out);
    server.serve()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let o = parse_args(Vec::<String>::new()).expect("empty is fine");
        assert_eq!(o, MockOptions::default());
        let o = parse_args([
            "--listen",
            "127.0.0.1:8080",
            "--workers=3",
            "--models",
            "a, b,,",
            "--events",
            "7",
            "--delay-ms",
            "20",
            "--size=100",
            "--keepalive-timeout-secs",
            "5",
        ])
        .expect("valid");
        assert_eq!(o.listen.port(), 8080);
        assert_eq!(o.workers, 3);
        assert_eq!(o.models, vec!["a", "b"]);
        assert_eq!((o.events, o.delay_ms, o.size), (7, 20, 100));
        assert_eq!(o.keepalive_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--workers", "0"][..],
            &["--workers"],
            &["--events", "x"],
            &["--tls-cert", "c.pem"],
            &["--models", ","],
            &["--bogus"],
            &["--listen", "nohost"],
            &["--keepalive-timeout-secs", "0"],
        ] {
            assert!(parse_args(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }
}
