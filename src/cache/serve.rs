//! The proxy cache on the request path: look up before quota is reserved (a hit costs no
//! quota and never reaches an upstream), capture the body while it is relayed, store 2xx
//! answers that went through whole, and `POST /admin/proxy_cache/purge`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use super::{key_hex, Claim, Entry, Fetch, Key, KeyBuilder, Lead, Polled, ProxyCache};
use crate::auth::Admitted;
use crate::control::Role;
use crate::http::io::write_all_timeout;
use crate::http::{Method, RequestHead, Version};
use crate::metrics::CacheSource;
use crate::proxy::forward::RequestBody;
use crate::proxy::relay::Tap;
use crate::proxy::{reply_error, reply_json, After, Core};

/// How long a request waits for another task (of its core or another) fetching the same key.
const STAMPEDE_WAIT: Duration = Duration::from_secs(30);
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a replica waiting on another's fetch looks in Redis.
#[cfg(feature = "gateway-store-redis")]
const L2_POLL: Duration = Duration::from_millis(20);

/// Names one fetch in the fill lock, unique across replicas (random per process, then a
/// counter), so a replica only ever releases its own lock.
#[cfg(feature = "gateway-store-redis")]
fn fill_owner() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PROCESS: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let process = PROCESS.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        format!("{}-{}", hex::encode(b), std::process::id())
    });
    format!("{process}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Request headers that change what the upstream answers (the virtual key itself is part of
/// the key by id; a forwarded client credential by value, so callers never share answers).
const VARY: &[&str] = &[
    "authorization",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
    "accept",
    "accept-encoding",
];

/// A miss this task fetches from upstream; other tasks of the core, and other cores, wait for it.
pub struct Miss {
    lead: Lead,
    fetch: Fetch,
    /// Released when the miss is done with: after its entry's write was queued, if any.
    #[cfg(feature = "gateway-store-redis")]
    fill_lock: Option<super::l2::FillLock>,
    #[cfg_attr(not(feature = "gateway-store-redis"), allow(dead_code))]
    hex: String,
    sse_allowed: bool,
    /// The entry's lifetime and largest body: the flags', or the key's `cache` section.
    ttl: Duration,
    max_body_bytes: usize,
}

/// A virtual key's `cache` section: `{"enabled": false}` keeps its answers out of the cache;
/// `ttl_seconds` and `max_body_bytes` tighten (or set) the flags' values for its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCache {
    pub enabled: bool,
    pub ttl: Option<Duration>,
    pub max_body_bytes: Option<usize>,
}

impl KeyCache {
    /// Read a key's `cache` section (absent: enabled, the flags' values).
    pub fn of(extra: &serde_json::Map<String, serde_json::Value>) -> KeyCache {
        let c = extra.get("cache");
        let get = |f: &str| c.and_then(|c| c.get(f));
        KeyCache {
            enabled: get("enabled").and_then(serde_json::Value::as_bool) != Some(false),
            ttl: get("ttl_seconds")
                .and_then(serde_json::Value::as_u64)
                .map(Duration::from_secs),
            max_body_bytes: get("max_body_bytes")
                .and_then(serde_json::Value::as_u64)
                .map(|n| n as usize),
        }
    }
}

fn bypass(head: &RequestHead) -> bool {
    let flag = |name: &str| {
        head.fields.get(name).is_some_and(|v| {
            let v = v.trim_ascii();
            !(v.eq_ignore_ascii_case(b"0") || v.eq_ignore_ascii_case(b"false") || v.is_empty())
        })
    };
    let no_store = head.fields.get("cache-control").is_some_and(|v| {
        let v = String::from_utf8_lossy(v).to_ascii_lowercase();
        v.contains("no-store") || v.contains("no-cache")
    });
    flag("x-ditto-cache-bypass") || flag("x-ditto-bypass-cache") || no_store
}

/// The key of a cacheable request, or `None`.
#[allow(clippy::too_many_arguments)]
fn key_of(
    core: &Core,
    cache: &ProxyCache,
    head: &RequestHead,
    upstream_path: &str,
    body: &RequestBody,
    admitted: Option<&Admitted>,
    model: Option<&str>,
    stream: bool,
) -> Option<Key> {
    let body = match (head.method, body) {
        (Method::Get, _) if !head.framing.has_body() => Bytes::new(),
        (Method::Post, RequestBody::Buffered(b))
            if serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok() =>
        {
            b.clone()
        }
        _ => return None,
    };
    if (stream && !cache.opts.streaming) || bypass(head) {
        return None;
    }
    let mut k = KeyBuilder::new();
    k.part(head.method.as_str().as_bytes());
    k.part(upstream_path.as_bytes());
    k.part(
        head.target()
            .split_once('?')
            .map_or("", |(_, q)| q)
            .as_bytes(),
    );
    k.part(admitted.map_or("", |a| a.key.id.as_str()).as_bytes());
    let mut candidates: Vec<usize> = match admitted.and_then(|a| a.key.route) {
        Some(r) => vec![r],
        // The live route table: a router changed through the admin API changes the key.
        None => core.gw.live.routes().router.candidates(model, "").collect(),
    };
    candidates.sort_unstable();
    for c in candidates {
        k.part(
            core.gw
                .backends
                .get(c)
                .map_or("", |b| b.name.as_str())
                .as_bytes(),
        );
    }
    for name in VARY {
        // A virtual key's own credential is never part of the key (its id is).
        let presented = admitted.is_some() && matches!(*name, "authorization" | "x-api-key");
        k.part(name.as_bytes());
        match head.fields.get(name) {
            Some(v) if !presented => k.part(v),
            _ => k.part(b"-"),
        };
    }
    k.part(&body);
    Some(k.finish())
}

/// Look the request up. `Err(after)`: answered from the cache. `Ok(Some(miss))`: fetch it
/// and call [`store`]. `Ok(None)`: not cacheable (or the cache is off).
#[allow(clippy::too_many_arguments)]
pub async fn lookup(
    core: &Core,
    client: &mut TcpStream,
    head: &RequestHead,
    upstream_path: &str,
    body: &RequestBody,
    admitted: Option<&Admitted>,
    model: Option<&str>,
    stream: bool,
    request_id: &str,
) -> Result<Option<Miss>, After> {
    let Some(cache) = core.gw.cache.as_deref() else {
        return Ok(None);
    };
    let policy = admitted.map(|a| KeyCache::of(&a.key.extra));
    if policy.is_some_and(|p| !p.enabled) {
        return Ok(None);
    }
    let ttl = policy.and_then(|p| p.ttl).unwrap_or(cache.opts.ttl);
    let Some(key) = key_of(
        core,
        cache,
        head,
        upstream_path,
        body,
        admitted,
        model,
        stream,
    ) else {
        return Ok(None);
    };
    let hex = key_hex(&key);
    // A waiter whose fetcher ends without an answer to share (an error, an uncacheable or
    // too slow answer) goes upstream uncached at once, with the other waiters, rather than
    // electing the next fetcher and queueing behind it.
    let end = Instant::now() + STAMPEDE_WAIT;
    let mut waiting_for = None;
    let lead = loop {
        if let Some(e) = cache.get_memory(&key) {
            core.obs.metrics.cache_lookup(CacheSource::Memory, true);
            return Err(serve(client, head, request_id, &e, &hex, "memory").await);
        }
        match waiting_for {
            None => match Lead::try_take(key) {
                Ok(l) => break l,
                Err(generation) => waiting_for = Some(generation),
            },
            // The fetch we waited for ended without an entry (a new one may have started).
            Some(g) if Lead::current(&key) != Some(g) => return Ok(None),
            Some(_) if Instant::now() >= end => return Ok(None),
            Some(_) => {}
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    };
    // This task fetches for its core; across cores, one fetches and the others wait for it.
    let fetch = match cache.fills.claim(key) {
        Claim::Fetch(f) => f,
        Claim::Wait(waiting) => loop {
            match waiting.poll() {
                // Whatever its shape: it is what the upstream answered to this very request.
                Polled::Ready(e) => {
                    cache.put_memory(key, e.clone(), ttl);
                    drop((waiting, lead));
                    core.obs.metrics.cache_lookup(CacheSource::Memory, true);
                    return Err(serve(client, head, request_id, &e, &hex, "memory").await);
                }
                Polled::Pending if Instant::now() < end => {
                    monoio::time::sleep(Duration::from_millis(2)).await;
                }
                _ => return Ok(None),
            }
        },
    };
    // Across replicas: the first to miss takes the fill lock, the others poll Redis for its
    // entry (see `l2`).
    #[cfg(feature = "gateway-store-redis")]
    let mut fill_lock = None;
    #[cfg(feature = "gateway-store-redis")]
    if let Some(l2) = &cache.l2 {
        use super::l2::FillState;
        let mut state = l2.claim(&hex, &fill_owner()).await;
        let mut waiting_for: Option<Vec<u8>> = None;
        loop {
            match state {
                FillState::Hit(e) => {
                    cache.put_memory(key, e.clone(), ttl);
                    fetch.fulfil(&e);
                    drop(lead);
                    core.obs.metrics.cache_lookup(CacheSource::Redis, true);
                    return Err(serve(client, head, request_id, &e, &hex, "redis").await);
                }
                FillState::Claimed(lock) => {
                    fill_lock = Some(lock);
                    break;
                }
                // The fetch we wait for (the first lock's owner) still runs.
                FillState::Busy(owner)
                    if Instant::now() < end && waiting_for.as_ref().is_none_or(|w| *w == owner) =>
                {
                    waiting_for = Some(owner);
                    monoio::time::sleep(L2_POLL).await;
                    state = l2.peek(&hex).await;
                }
                // Another replica's fetch ended without an entry (a new one may have started),
                // or takes too long: go upstream uncached, as waiters on this replica do.
                FillState::Busy(_) | FillState::Gone => {
                    core.obs.metrics.cache_lookup(CacheSource::Redis, false);
                    return Ok(None);
                }
                // Redis slow or down: fetch without coordinating.
                FillState::Unavailable => break,
            }
        }
        core.obs.metrics.cache_lookup(CacheSource::Redis, false);
    }
    core.obs.metrics.cache_lookup(CacheSource::Memory, false);
    Ok(Some(Miss {
        lead,
        fetch,
        #[cfg(feature = "gateway-store-redis")]
        fill_lock,
        hex,
        sse_allowed: cache.opts.streaming,
        ttl,
        max_body_bytes: policy
            .and_then(|p| p.max_body_bytes)
            .map_or(cache.opts.max_body_bytes, |m| {
                m.min(cache.opts.max_body_bytes)
            }),
    }))
}

/// Make sure a miss has a tap that captures the body.
pub fn arm(miss: Option<&Miss>, tap: &mut Option<Tap>, core: &Core) {
    let (Some(miss), Some(_)) = (miss, core.gw.cache.as_deref()) else {
        return;
    };
    let t = tap.get_or_insert_with(|| Tap::new(false, core.gw.usage_max_body_bytes));
    t.capture = Some(Vec::new());
    t.capture_limit = miss.max_body_bytes;
}

/// Called by the tap for every piece of body it sees.
pub fn capture(tap: &mut Tap, payload: &[u8]) {
    let limit = tap.capture_limit;
    if let Some(c) = tap.capture.as_mut() {
        if c.len() + payload.len() > limit {
            tap.capture = None;
        } else {
            c.extend_from_slice(payload);
        }
    }
}

/// After the answer was relayed: keep it when it is a whole 2xx within the caps.
pub fn store(core: &Core, miss: Option<Miss>, tap: Option<&Tap>) {
    #[allow(unused_mut)]
    let (Some(mut miss), Some(tap), Some(cache)) = (miss, tap, core.gw.cache.as_deref()) else {
        return;
    };
    let Some(body) = tap.capture.as_ref() else {
        return;
    };
    let sse = tap.is_sse();
    // A stream whose usage chunk was hidden from this client is not what others asked for.
    if !(200..300).contains(&tap.status)
        || !tap.complete
        || (sse && (!miss.sse_allowed || tap.hide_usage))
    {
        return;
    }
    let e = Entry {
        status: tap.status,
        content_type: tap
            .content_type
            .clone()
            .unwrap_or_else(|| Bytes::from_static(b"application/json")),
        body: Bytes::copy_from_slice(body),
        sse,
    };
    #[cfg(feature = "gateway-store-redis")]
    if let Some(l2) = &cache.l2 {
        // The entry and the release of this replica's fill lock in one script.
        l2.put(&miss.hex, &e, miss.ttl, miss.fill_lock.as_mut());
    }
    miss.fetch.fulfil(&e);
    cache.put_memory(miss.lead.0, e, miss.ttl);
}

/// Answer from an entry; an event stream is replayed event by event.
async fn serve(
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
    e: &Entry,
    hex: &str,
    source: &str,
) -> After {
    use std::fmt::Write;
    let close = !head.keep_alive;
    let chunked = e.sse && head.version == Version::Http11;
    let mut out = BytesMut::with_capacity(256 + e.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: ",
        e.status,
        crate::error::reason_phrase(e.status)
    );
    out.extend_from_slice(&e.content_type);
    let _ = write!(
        out,
        "\r\nx-request-id: {request_id}\r\nx-ditto-request-id: {request_id}\r\nx-ditto-cache: hit\r\nx-ditto-cache-key: {hex}\r\nx-ditto-cache-source: {source}\r\n"
    );
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n");
    } else {
        let _ = write!(out, "content-length: {}\r\n", e.body.len());
    }
    out.extend_from_slice(head.version.connection_field(close).as_bytes());
    // Metrics, the access log and `x-ditto-overhead-us`, as on every answer.
    head.probe.on_reply(e.status, e.body.len(), &mut out);
    out.extend_from_slice(b"\r\n");
    if !chunked {
        out.extend_from_slice(&e.body);
        return match write_all_timeout(client, out.freeze(), CLIENT_WRITE_TIMEOUT).await {
            Ok(()) if !close => After::KeepAlive,
            _ => After::Close,
        };
    }
    if write_all_timeout(client, out.freeze(), CLIENT_WRITE_TIMEOUT)
        .await
        .is_err()
    {
        return After::Close;
    }
    // One chunk per event, as the upstream streamed it.
    let mut rest = &e.body[..];
    while !rest.is_empty() {
        let n = memchr::memmem::find(rest, b"\n\n").map_or(rest.len(), |i| i + 2);
        let (event, tail) = rest.split_at(n);
        rest = tail;
        let mut c = BytesMut::with_capacity(event.len() + 16);
        let _ = write!(c, "{:x}\r\n", event.len());
        c.extend_from_slice(event);
        c.extend_from_slice(b"\r\n");
        if write_all_timeout(client, c.freeze(), CLIENT_WRITE_TIMEOUT)
            .await
            .is_err()
        {
            return After::Close;
        }
    }
    match write_all_timeout(
        client,
        Bytes::from_static(b"0\r\n\r\n"),
        CLIENT_WRITE_TIMEOUT,
    )
    .await
    {
        Ok(()) if !close => After::KeepAlive,
        _ => After::Close,
    }
}

/// `POST /admin/proxy_cache/purge` (admin token): empty every core's memory tier and Redis.
pub async fn purge(
    core: &Core,
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
    role: &Role,
) -> After {
    if head.method != Method::Post || role.tenant().is_some() || !role.can_write() {
        let e = crate::error::GatewayError::new(
            if head.method != Method::Post {
                405
            } else {
                403
            },
            crate::error::ErrorType::InvalidRequest,
            "admin_only",
            "POST /admin/proxy_cache/purge needs the admin token",
        );
        return reply_error(client, head, request_id, e, false).await;
    }
    let Some(cache) = core.gw.cache.as_deref() else {
        let body = br#"{"purged":false,"enabled":false}"#;
        return reply_json(client, head, request_id, 200, body, false).await;
    };
    cache.purge_memory();
    #[allow(unused_mut)]
    let mut redis = serde_json::Value::Null;
    #[cfg(feature = "gateway-store-redis")]
    if let Some(l2) = &cache.l2 {
        redis = match l2.purge().await {
            Ok(n) => serde_json::json!({"deleted": n}),
            Err(e) => serde_json::json!({"error": e}),
        };
    }
    let body = serde_json::json!({"purged": true, "enabled": true, "memory": true, "redis": redis});
    let out = serde_json::to_vec(&body).unwrap_or_default();
    reply_json(client, head, request_id, 200, &out, false).await
}
