//! The per-request pipeline: the gateway's own endpoints, then passthrough to a backend.
//!
//! ```text
//! request head -> own endpoint? (/health, /ready, /v1/models) -> read body (bounded) ->
//! learn model/stream -> router candidates -> permits -> upstream exchange -> relay body -> done
//! ```
//!
//! [`Gateway`] is the immutable, shared part (config compiled once); [`Core`] is one core's
//! part (its connection pool, request-id counter and shutdown signal), never shared.

pub mod admin;
pub mod attempts;
pub mod body;
pub mod endpoints;
pub mod forward;
pub mod headers;
pub mod json;
pub mod models;
pub mod observe;
pub mod relay;
pub mod request_id;
pub mod translate;

use std::sync::Arc;

use bytes::BytesMut;
use monoio::net::TcpStream;

use crate::config::Config;
use crate::control::store::Store;
use crate::control::{ControlHandle, PlaneOptions, Snapshot};
use crate::error::{ErrorType, GatewayError};
use crate::http::io::write_all_timeout;
use crate::http::limits::CLIENT_WRITE_TIMEOUT;
use crate::http::{Method, RequestHead};
use crate::limits::quota::Quota;
use crate::limits::InflightLimiter;
use crate::pricing::Pricing;
use crate::server::shutdown::Shutdown;
use crate::upstream::{Backend, Pool};

/// Options from the command line that shape the data path.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `--proxy-max-in-flight`: requests in flight across all cores.
    pub max_in_flight: usize,
    /// `--proxy-max-body-bytes`: largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// `--upstream-ca-file`: extra trusted roots for HTTPS backends.
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Data-plane cores (`--workers`): sizes the rate-limit leases.
    pub workers: usize,
    /// Admin API tokens; the API is mounted only when one is set.
    pub admin: admin::AdminTokens,
    /// `--pricing-litellm`: model prices for cost budgets and totals.
    pub pricing: Pricing,
    /// How often settled usage is written to the store.
    pub flush_interval: std::time::Duration,
    /// `--audit-retention-secs`.
    pub audit_retention: Option<std::time::Duration>,
    /// `--proxy-usage-max-body-bytes`: largest JSON response read for its `usage`.
    pub usage_max_body_bytes: usize,
    /// `--budget-fail-closed`: refuse budgeted requests (503) while the store fails.
    pub budget_fail_closed: bool,
    /// `--proxy-retry*`, `--proxy-cb-*`, `--proxy-health-check*`.
    pub resilience: crate::router::live::ResilienceOptions,
    /// Metrics, access log and trace settings and sinks.
    pub obs: crate::metrics::ObsOptions,
    /// `--proxy-cache` and its settings.
    pub cache: Option<crate::cache::CacheOptions>,
}

impl ProxyOptions {
    /// Defaults for everything but the data-path sizes.
    pub fn new(max_in_flight: usize, max_body_bytes: usize, workers: usize) -> ProxyOptions {
        ProxyOptions {
            max_in_flight,
            max_body_bytes,
            upstream_ca_file: None,
            workers,
            admin: admin::AdminTokens::default(),
            pricing: Pricing::default(),
            flush_interval: std::time::Duration::from_millis(500),
            audit_retention: None,
            usage_max_body_bytes: 1024 * 1024,
            budget_fail_closed: false,
            resilience: Default::default(),
            obs: Default::default(),
            cache: None,
        }
    }
}

/// Everything every core shares, read-only.
pub struct Gateway {
    pub backends: Vec<Backend>,
    /// The control plane: keys, limits, budgets, the store. Cores read its key snapshot.
    pub control: ControlHandle,
    pub admin: admin::AdminTokens,
    pub pricing: Pricing,
    pub usage_max_body_bytes: usize,
    pub budget_fail_closed: bool,
    pub workers: usize,
    pub tls: Arc<rustls::ClientConfig>,
    pub inflight: InflightLimiter,
    pub max_body_bytes: usize,
    /// The live router, breakers, loads and retry policy (see [`attempts`]).
    pub live: Arc<crate::router::live::Live>,
    /// Metrics registry, log and span queues.
    pub obs: crate::metrics::Observability,
    /// The proxy cache (`--proxy-cache`).
    pub cache: Option<Arc<crate::cache::ProxyCache>>,
}

impl Gateway {
    /// Compile a validated config; warnings are returned to the caller.
    pub fn build(
        config: &Config,
        opts: &ProxyOptions,
        store: Box<dyn Store>,
    ) -> Result<(Gateway, Vec<String>), String> {
        let mut warnings = Vec::new();
        let mut backends = Vec::new();
        let mut index_of = ahash::AHashMap::new();
        for c in &config.backends {
            // Provider backends (issue 6) are built like passthrough ones; requests to them
            // are translated by `translate`.
            let b = Backend::from_config(backends.len(), c)?;
            index_of.insert(c.name.clone(), b.index);
            backends.push(b);
        }
        translate::attach_rule_models(&mut backends, &config.router);
        let mut records = Vec::with_capacity(config.virtual_keys.len());
        for (i, k) in config.virtual_keys.iter().enumerate() {
            let mut rec = crate::control::keys::parse_key(&k.raw, false, false, 0)
                .map_err(|e| format!("virtual_keys[{i}].{e}"))?
                .record;
            rec.source = "config".into();
            // Config validation compares tokens as written; a token and its `sha256:` form
            // are the same key too.
            if let Some(j) = records
                .iter()
                .position(|r: &crate::control::keys::KeyRecord| r.token_hash == rec.token_hash)
            {
                return Err(format!(
                    "virtual_keys[{i}].token: duplicate token (same as virtual_keys[{j}])"
                ));
            }
            records.push(rec);
        }
        let (control, notes) = ControlHandle::start(
            PlaneOptions {
                cores: opts.workers.max(1),
                flush_interval: opts.flush_interval,
                audit_retention: opts.audit_retention,
                backends: backends.iter().map(|b| b.name.clone()).collect(),
            },
            store,
            records,
        )?;
        warnings.extend(notes);
        let tls = crate::upstream::tls::client_config(opts.upstream_ca_file.as_deref())?;
        let live = attempts::install(config, &opts.resilience, &backends, &control, &tls)?;
        let obs = crate::metrics::Observability::new(backends.iter().map(|b| &b.name), &opts.obs);
        let cache = crate::cache::ProxyCache::build(opts.cache.as_ref(), opts.workers)?;
        Ok((
            Gateway {
                backends,
                control,
                admin: opts.admin.clone(),
                pricing: opts.pricing.clone(),
                usage_max_body_bytes: opts.usage_max_body_bytes,
                budget_fail_closed: opts.budget_fail_closed,
                workers: opts.workers.max(1),
                tls,
                inflight: InflightLimiter::new(opts.max_in_flight),
                max_body_bytes: opts.max_body_bytes,
                live,
                obs,
                cache,
            },
            warnings,
        ))
    }
}

/// One core's state.
pub struct Core {
    pub gw: Arc<Gateway>,
    pub pool: Pool,
    pub ids: request_id::RequestIds,
    pub shutdown: Shutdown,
    /// Response read buffers and head scratch buffers, reused from request to request.
    pub bufs: BufPool,
    /// This core's leases of rate-limit and budget quota.
    pub quota: Quota,
    /// This core's copy of the key snapshot (reloaded when the plane's version moves).
    snapshot: std::cell::RefCell<Arc<Snapshot>>,
    /// This core's counters and log/span senders.
    pub obs: crate::metrics::CoreObs,
}

impl Core {
    pub fn new(gw: Arc<Gateway>, core_id: usize, shutdown: Shutdown) -> Core {
        Core {
            pool: Pool::new(gw.backends.len()),
            quota: Quota::new(gw.control.clone()),
            snapshot: std::cell::RefCell::new(gw.control.snapshot()),
            obs: gw.obs.for_core(core_id),
            gw,
            ids: request_id::RequestIds::new(core_id),
            shutdown,
            bufs: BufPool::default(),
        }
    }
}

impl Core {
    /// Check a request's key against the current key snapshot: one atomic load per request,
    /// and a snapshot reload only after the control plane published a change. `Ok(None)`
    /// when no keys exist (Mode A / Mode B passthrough).
    pub fn authenticate(
        &self,
        fields: &crate::http::head::Fields,
    ) -> Result<Option<crate::auth::Admitted>, crate::auth::Denial> {
        let version = self.gw.control.version();
        let mut snap = self.snapshot.borrow_mut();
        if snap.version != version {
            *snap = self.gw.control.snapshot();
        }
        if !snap.keys.is_enforced() {
            return Ok(None);
        }
        snap.keys.authenticate(fields).map(Some)
    }
}

/// A per-core stack of spare `BytesMut`s, so a request does not allocate its read and head
/// buffers. A buffer given back may still share its allocation with `Bytes` in flight; by the
/// time it is reused those are normally gone, and `reserve` then reclaims the space in place.
#[derive(Default)]
pub struct BufPool {
    spare: std::cell::RefCell<Vec<BytesMut>>,
}

/// Buffers kept per core; more are simply dropped.
const MAX_SPARE_BUFS: usize = 64;

impl BufPool {
    /// An empty buffer with room for at least `min` bytes.
    pub fn take(&self, min: usize) -> BytesMut {
        let mut b = self.spare.borrow_mut().pop().unwrap_or_default();
        b.reserve(min);
        b
    }

    /// Return a buffer for reuse (its contents are discarded).
    pub fn give(&self, mut b: BytesMut) {
        b.clear();
        let mut spare = self.spare.borrow_mut();
        if spare.len() < MAX_SPARE_BUFS && b.capacity() > 0 {
            spare.push(b);
        }
    }
}

/// What the connection loop should do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    Close,
}

/// The path after alias rewriting (`/chat/completions` -> `/v1/chat/completions`), or `None`
/// when the path is not one we forward.
fn passthrough_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if path == "/v1" || path.starts_with("/v1/") {
        return Some(path.into());
    }
    const ALIASES: [&str; 12] = [
        "/chat/completions",
        "/completions",
        "/embeddings",
        "/models",
        "/responses",
        "/moderations",
        "/images/",
        "/audio/",
        "/files",
        "/batches",
        "/rerank",
        "/uploads",
    ];
    let aliased = ALIASES.iter().any(|a| {
        if a.ends_with('/') {
            path.starts_with(a)
        } else {
            path == *a || path.strip_prefix(a).is_some_and(|r| r.starts_with('/'))
        }
    });
    aliased.then(|| format!("/v1{path}").into())
}

/// True when `path` has a `.` or `..` segment, also spelled with `%2e` or split by an encoded
/// slash (`%2f`) or a backslash, as some servers decode those before resolving dot segments.
fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    if memchr::memchr2(b'.', b'%', bytes).is_none() {
        return false;
    }
    let decoded = path
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    decoded.split('/').any(|seg| seg == "." || seg == "..")
}

/// Serve one request whose head has been read. `cbuf` holds any bytes after the head.
pub async fn handle(
    core: &Core,
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    head: RequestHead,
    request_id: request_id::RequestId,
) -> After {
    let path = head.path();
    if has_dot_segment(path) {
        // An upstream that resolves `..` would serve a path outside the backend's base URL,
        // with the backend's injected credentials (Mode A): refuse rather than forward.
        let e = GatewayError::bad_request("invalid_path", "the path has a . or .. segment");
        return reply_error(client, &head, &request_id, e, head.framing.has_body()).await;
    }

    // The gateway's own open endpoints.
    match (head.method, path) {
        (Method::Get | Method::Head, "/health") => {
            return endpoints::health(core, client, &head, &request_id).await;
        }
        (Method::Get | Method::Head, "/ready") => {
            return endpoints::ready(core, client, &head, &request_id).await;
        }
        (Method::Get | Method::Head, "/metrics" | "/metrics/prometheus") => {
            return observe::metrics(core, client, &head, &request_id).await;
        }
        _ => {}
    }
    // With virtual keys configured, nothing below reaches an upstream without a valid key.
    // The admin API authenticates with its own tokens.
    if admin::is_admin_path(path) {
        return admin::handle(core, client, cbuf, &head, &request_id).await;
    }
    let admitted = {
        match core.authenticate(&head.fields) {
            Ok(a) => a,
            Err(d) => {
                return reply_error(
                    client,
                    &head,
                    &request_id,
                    d.to_error(),
                    head.framing.has_body(),
                )
                .await
            }
        }
    };
    if head.method == Method::Get && matches!(path, "/v1/models" | "/models") {
        if head.framing.has_body() {
            let e = GatewayError::bad_request("invalid_request", "GET /v1/models takes no body");
            return reply_error(client, &head, &request_id, e, true).await;
        }
        // The fan-out is a request like any other: in-flight cap and rate limits apply.
        let Some(_permit) = core.gw.inflight.try_acquire() else {
            return reply_error(client, &head, &request_id, inflight_error(&core.gw), false).await;
        };
        if let Some(a) = &admitted {
            // A listing costs a request of rpm and nothing else.
            let est = crate::limits::quota::Estimate {
                requests_only: true,
                ..Default::default()
            };
            match core.quota.reserve(&a.key.scopes, est).await {
                Ok(r) => core.quota.settle(r, crate::limits::quota::Actual::NOTHING),
                Err(e) => return reply_error(client, &head, &request_id, e, false).await,
            }
        }
        return models::list(core, client, &head, &request_id, admitted.as_ref()).await;
    }
    let Some(upstream_path) = passthrough_path(path) else {
        let e = GatewayError::not_found(format!("no route for {} {}", head.method.as_str(), path));
        return reply_error(client, &head, &request_id, e, head.framing.has_body()).await;
    };
    forward::passthrough(
        core,
        client,
        cbuf,
        &head,
        &upstream_path,
        request_id,
        admitted,
    )
    .await
}

/// Write a gateway-made error to the client that sent `head`. `close` when the connection
/// cannot be reused (e.g. an unread request body is still on the wire); the client's own
/// `Connection: close` (or an HTTP/1.0 request without keep-alive) closes it too, as it does
/// for every other response.
pub async fn reply_error(
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
    e: GatewayError,
    close: bool,
) -> After {
    let close = close || !head.keep_alive;
    let e = head.probe.on_error(e);
    let mut resp = if translate::is_messages_path(head.method, head.path()) {
        // Anthropic clients read Anthropic-shaped errors (issue 6).
        translate::anthropic_error_response(&e, request_id, head.version.connection_field(close))
    } else {
        e.to_response_with(request_id, head.version.connection_field(close))
    };
    if head.method == Method::Head {
        // A HEAD response has no body; its length stays as it would be for GET.
        let body_len = e.body().len();
        resp.truncate(resp.len() - body_len);
    }
    let ok = write_all_timeout(client, resp, CLIENT_WRITE_TIMEOUT)
        .await
        .is_ok();
    if ok && !close {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// Write a complete JSON response of the gateway's own.
pub async fn reply_json(
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
    status: u16,
    body: &[u8],
    close: bool,
) -> After {
    use std::fmt::Write;
    let mut out = BytesMut::with_capacity(200 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nx-ditto-request-id: {request_id}\r\n",
        crate::error::reason_phrase(status),
        body.len()
    );
    // A request body we never read would be parsed as the next request: close instead.
    let close = close || !head.keep_alive || head.framing.has_body();
    out.extend_from_slice(head.version.connection_field(close).as_bytes());
    let sent = if head.method == Method::Head {
        0
    } else {
        body.len()
    };
    head.probe.on_reply(status, sent, &mut out);
    out.extend_from_slice(b"\r\n");
    if head.method != Method::Head {
        out.extend_from_slice(body);
    }
    match write_all_timeout(client, out.freeze(), CLIENT_WRITE_TIMEOUT).await {
        Ok(()) if !close => After::KeepAlive,
        _ => After::Close,
    }
}

/// The 429 for a gateway at its `--proxy-max-in-flight`.
pub fn inflight_error(gw: &Gateway) -> GatewayError {
    GatewayError::new(
        429,
        ErrorType::RateLimit,
        "inflight_limit",
        format!(
            "the gateway is at its limit of {} requests in flight",
            gw.inflight.max()
        ),
    )
}

/// The error for a request body over `--proxy-max-body-bytes`.
pub fn body_too_large(limit: usize) -> GatewayError {
    GatewayError::new(
        413,
        ErrorType::InvalidRequest,
        "request_too_large",
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::passthrough_path;

    #[test]
    fn dot_segments_are_found_in_every_spelling() {
        use super::has_dot_segment;
        for bad in [
            "/v1/../x",
            "/v1/./x",
            "/v1/..",
            "/v1/%2E%2e/x",
            "/v1/..%2Fx",
            "/v1/..\\x",
            "/..",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in [
            "/v1/models/gpt-4.1",
            "/v1/a..b",
            "/v1/...",
            "/v1/x%20y",
            "/v1/chat/completions",
        ] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }

    #[test]
    fn aliases_are_rewritten_under_v1() {
        assert_eq!(
            passthrough_path("/v1/chat/completions").as_deref(),
            Some("/v1/chat/completions")
        );
        assert_eq!(
            passthrough_path("/chat/completions").as_deref(),
            Some("/v1/chat/completions")
        );
        assert_eq!(
            passthrough_path("/audio/speech").as_deref(),
            Some("/v1/audio/speech")
        );
        assert_eq!(
            passthrough_path("/files/abc").as_deref(),
            Some("/v1/files/abc")
        );
        assert_eq!(
            passthrough_path("/models/gpt-4o").as_deref(),
            Some("/v1/models/gpt-4o")
        );
        assert_eq!(passthrough_path("/v2/x"), None);
        assert_eq!(passthrough_path("/completionsX"), None);
        assert_eq!(passthrough_path("/"), None);
    }
}
