//! Backend state owned by the control plane: circuit breakers, active health checks, latency
//! estimates, and the live router (REFERENCE section 9).
//!
//! - Cores report every attempt's [`Outcome`] by message; the plane feeds the
//!   [`BreakerBoard`], whose one-byte-per-backend table every core reads (so a backend that
//!   trips is skipped by all cores at once), and publishes latency estimates for the
//!   `latency` strategy.
//! - Health checks run on their own thread (`ditto-health`): a blocking `GET` of the health
//!   path on every backend, with a timeout, every interval. Results come back as messages; a
//!   failing backend is marked down in the same table, and `/ready` reports it.
//! - `PUT /admin/config/router` validates a router like the config file's, writes it to the
//!   store (refused with 503 when the store refuses it), then swaps the route table every core
//!   reads (one `ArcSwap`), so it is live everywhere at once. A stored router wins over the
//!   config file's at startup, and a shared store's (Redis) is reloaded on every change
//!   notice and resync, so a PUT on one replica reaches them all.

use std::io::{Read, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::admin::{fail, reply};
use super::plane::Plane;
use super::{unix_now_ms, AdminReply, AdminRequest, ControlHandle, Msg};
use crate::config::{BackendConfig, Config, RouterConfig};
use crate::router::balance::LatencyEwma;
use crate::router::breaker::{Attempt, BreakerBoard, BreakerState, Outcome};
use crate::router::live::{HealthOptions, Live, RouteTable};

/// Where the health thread sends its GET.
#[derive(Debug, Clone)]
pub struct HealthTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// The `Host` header.
    pub authority: String,
    /// Request target (base path joined with the health path, query included).
    pub target: String,
    /// Injected headers (credentials) of the backend.
    pub headers: Vec<(String, String)>,
}

/// What the plane needs to own the backends' state.
pub struct BackendsSetup {
    pub live: Arc<Live>,
    pub board: BreakerBoard,
    /// Passthrough backends in index order (router changes are validated against them).
    pub configs: Vec<BackendConfig>,
    pub router: RouterConfig,
    pub targets: Vec<HealthTarget>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Messages about backends.
pub enum BackendMsg {
    /// Install the backends' state (and any stored router), then answer.
    Setup(Box<BackendsSetup>, flume::Sender<()>),
    /// Attempt outcomes of one core with the time each ended, oldest first.
    Outcomes(Vec<(Outcome, Instant)>),
    Health {
        backend: usize,
        ok: bool,
        detail: String,
    },
}

/// The plane's backend state (empty until [`BackendMsg::Setup`]).
#[derive(Default)]
pub(super) struct Backends {
    live: Option<Arc<Live>>,
    board: Option<BreakerBoard>,
    configs: Vec<BackendConfig>,
    router: RouterConfig,
    /// The router JSON last written to or applied from the store (a change notice for the
    /// same text is a no-op).
    stored: Option<String>,
    latency: Vec<LatencyEwma>,
    /// When each backend's latest failure ended (see [`record_outcome`]).
    last_failure: Vec<Option<Instant>>,
    health: Vec<Option<(bool, String, u64)>>,
    last_tick: Option<Instant>,
}

/// How often latency estimates are republished (they decay while a backend is idle).
const LATENCY_REPUBLISH: Duration = Duration::from_millis(500);

impl Backends {
    /// How long the plane may sleep before [`Plane::backends_tick`] is due.
    pub(super) fn wait(&self) -> Option<Duration> {
        let board = self.board.as_ref()?;
        let now = unix_now_ms();
        let breaker = board
            .next_deadline()
            .map(|d| Duration::from_millis(d.saturating_sub(now)));
        Some(breaker.map_or(LATENCY_REPUBLISH, |b| b.min(LATENCY_REPUBLISH)))
    }

    fn half_life_ms(&self) -> u64 {
        self.live
            .as_ref()
            .map_or(10_000, |l| l.routes().latency_half_life.as_millis() as u64)
    }

    fn publish_latency(&self, b: usize, now_ms: u64) {
        if let (Some(live), Some(e)) = (&self.live, self.latency.get(b)) {
            live.set_latency(b, e.estimate(now_ms, self.half_life_ms()));
        }
    }

    fn name(&self, b: usize) -> &str {
        self.configs.get(b).map_or("?", |c| c.name.as_str())
    }
}

impl Plane {
    pub(super) fn backends_msg(&mut self, m: BackendMsg) {
        let bk = &mut self.backends;
        match m {
            BackendMsg::Setup(s, done) => {
                let n = s.configs.len();
                bk.latency = vec![LatencyEwma::default(); n];
                bk.health = vec![None; n];
                bk.live = Some(s.live);
                bk.board = Some(s.board);
                bk.configs = s.configs;
                bk.router = s.router;
                self.reload_router(true);
                let _ = done.send(());
            }
            BackendMsg::Outcomes(list) => {
                for (o, at) in list {
                    record_outcome(bk, o, at);
                }
            }
            BackendMsg::Health {
                backend,
                ok,
                detail,
            } => {
                let before = bk.health.get(backend).cloned().flatten().map(|h| h.0);
                if let Some(slot) = bk.health.get_mut(backend) {
                    *slot = Some((ok, detail.clone(), unix_now_ms()));
                }
                if let Some(b) = bk.board.as_mut() {
                    b.set_healthy(backend, ok);
                }
                if before != Some(ok) && !(before.is_none() && ok) {
                    let name = bk.name(backend).to_string();
                    if ok {
                        crate::info!("backend \"{name}\": health check passes again");
                    } else {
                        crate::warn!("backend \"{name}\": health check failed: {detail}");
                    }
                }
            }
        }
    }

    /// Breaker cooldowns and latency decay; called by the plane's loop.
    pub(super) fn backends_tick(&mut self) {
        let bk = &mut self.backends;
        let now = unix_now_ms();
        if let Some(board) = bk.board.as_mut() {
            for t in board.tick(now) {
                let name = bk.configs.get(t.backend).map_or("?", |c| c.name.as_str());
                crate::info!(
                    "backend \"{name}\": circuit breaker {} -> {} (cooldown over, probing)",
                    t.from.as_str(),
                    t.to.as_str()
                );
            }
        }
        if bk
            .last_tick
            .is_none_or(|t| t.elapsed() >= LATENCY_REPUBLISH)
        {
            bk.last_tick = Some(Instant::now());
            for b in 0..bk.latency.len() {
                bk.publish_latency(b, now);
            }
        }
    }

    /// Admin endpoints about backends and the router; `None` when the path is not one.
    pub(super) fn backends_admin(&mut self, req: &AdminRequest) -> Option<AdminReply> {
        let path = req.path.trim_end_matches('/');
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let m = req.method.as_str();
        let known = matches!(
            segs.as_slice(),
            ["admin", "backends"]
                | ["admin", "backends", _, "reset"]
                | ["admin", "config", "router"]
        );
        if !known {
            return None;
        }
        if req.role.tenant().is_some() {
            return Some(fail(
                403,
                "permission_denied",
                "tenant tokens cannot see or change backends",
            ));
        }
        Some(match (m, segs.as_slice()) {
            ("GET", ["admin", "backends"]) => self.backends_report(),
            ("POST", ["admin", "backends", name, "reset"]) => self.backend_reset(name, req),
            ("GET", ["admin", "config", "router"]) => {
                reply(200, router_json(&self.backends.router))
            }
            ("PUT", ["admin", "config", "router"]) => self.put_router(req),
            _ => fail(
                405,
                "method_not_allowed",
                format!("{m} is not allowed on {path}"),
            ),
        })
    }

    fn backends_report(&self) -> AdminReply {
        let bk = &self.backends;
        let now = unix_now_ms();
        let routes = bk.live.as_ref().map(|l| l.routes());
        let mut out = Vec::new();
        for (i, c) in bk.configs.iter().enumerate() {
            let snap = bk.board.as_ref().and_then(|b| b.snapshot(i, now));
            let in_flight = bk.live.as_ref().map_or(0, |l| l.in_flight_of(i));
            let health = match bk.health.get(i).cloned().flatten() {
                Some((ok, detail, at)) => json!({
                    "status": if ok { "up" } else { "down" },
                    "detail": detail,
                    "checked_ms_ago": now.saturating_sub(at),
                }),
                None => json!({"status": "unknown"}),
            };
            let latency = bk
                .latency
                .get(i)
                .and_then(|e| e.estimate(now, bk.half_life_ms()));
            out.push(json!({
                "name": c.name,
                "breaker": snap.map_or("closed", |s| s.state.as_str()),
                "consecutive_failures": snap.map_or(0, |s| s.consecutive_failures),
                "trips": snap.map_or(0, |s| s.trips),
                "last_failure": snap.and_then(|s| s.last_failure).map(attempt_str),
                "open_since_ms_ago": snap
                    .filter(|s| s.state != BreakerState::Closed)
                    .and_then(|s| s.opened_at_ms)
                    .map(|at| now.saturating_sub(at)),
                "health": health,
                "available": bk.live.as_ref().is_none_or(|l| l.breakers.is_available(i)),
                "in_flight": in_flight,
                "latency_ms": latency.map(|us| (us / 10.0).round() / 100.0),
            }));
        }
        let opts = bk.live.as_ref().map(|l| &l.options);
        reply(
            200,
            json!({
                "backends": out,
                "strategy": routes.map_or("weighted", |r| r.strategy.as_str()),
                "retry": opts.is_some_and(|o| o.retry.enabled),
                "circuit_breaker": opts.is_some_and(|o| o.breaker.enabled),
                "health_checks": opts.is_some_and(|o| o.health.is_some()),
            }),
        )
    }

    fn backend_reset(&mut self, name: &str, req: &AdminRequest) -> AdminReply {
        let name = super::admin::decode(name);
        let bk = &mut self.backends;
        let Some(i) = bk.configs.iter().position(|c| c.name == name) else {
            return fail(404, "not_found", format!("no backend \"{name}\""));
        };
        if let Some(b) = bk.board.as_mut() {
            b.reset(i);
        }
        if let Some(e) = bk.latency.get_mut(i) {
            *e = LatencyEwma::default();
        }
        bk.publish_latency(i, unix_now_ms());
        let entry = self.audit_entry(&req.role.actor(), "backend.reset", Some(&name), Value::Null);
        self.remember_audit(entry);
        reply(200, json!({"reset": name}))
    }

    fn put_router(&mut self, req: &AdminRequest) -> AdminReply {
        let Some(body) = &req.body else {
            return fail(400, "invalid_request", "the body must be a router object");
        };
        let dry_run = matches!(
            query_flag(&req.query, "dry_run").as_deref(),
            Some("" | "1" | "true")
        ) || body.get("dry_run").and_then(Value::as_bool) == Some(true);
        // `{"router": {...}, "dry_run": true}` or the router object itself.
        let router = body.get("router").unwrap_or(body);
        let mut router = router.clone();
        if let Value::Object(m) = &mut router {
            m.remove("dry_run");
        }
        let (cfg, warnings, table) = match self.compile_router(&router) {
            Ok(x) => x,
            Err((message, param)) => {
                let mut r = fail(400, "invalid_router", message);
                if let (Some(p), Some(err)) = (
                    param,
                    r.body.get_mut("error").and_then(Value::as_object_mut),
                ) {
                    err.insert("param".into(), Value::String(p));
                }
                return r;
            }
        };
        if dry_run {
            return reply(
                200,
                json!({"dry_run": true, "valid": true, "warnings": warnings, "router": router_json(&cfg)}),
            );
        }
        // Persisted before it is live or answered: a router the store refused is not applied.
        let text = router.to_string();
        if let Err(e) = self.store.put_router(&text) {
            self.set_store_ok(Some(e.to_string()));
            return fail(
                503,
                "store_unavailable",
                format!("the router was not applied: the store refused it: {e}"),
            );
        }
        if self.store_error.is_some() {
            self.set_store_ok(None);
        }
        self.backends.stored = Some(text);
        self.apply_router(cfg, table);
        let entry = self.audit_entry(
            &req.role.actor(),
            "router.update",
            None,
            json!({"router": router}),
        );
        let _ = self
            .store
            .write(&[super::store::Write::Audit(entry.clone())]);
        self.remember_audit(entry);
        reply(
            200,
            json!({"applied": true, "warnings": warnings, "router": router_json(&self.backends.router)}),
        )
    }
}

impl Plane {
    /// Validate a router object as the config file's is and compile its route table; the
    /// error's message and the parameter it names.
    #[allow(clippy::type_complexity)]
    fn compile_router(
        &self,
        router: &Value,
    ) -> Result<(RouterConfig, Vec<String>, RouteTable), (String, Option<String>)> {
        let bk = &self.backends;
        let (cfg, warnings) = Config::parse_router(router, &bk.configs)
            .map_err(|e| (e.to_string(), Some(e.path().to_string())))?;
        let names: Vec<String> = bk.configs.iter().map(|c| c.name.clone()).collect();
        let table = RouteTable::build(&cfg, &names).map_err(|e| (e, None))?;
        Ok((cfg, warnings, table))
    }

    /// Swap the route table every core reads.
    fn apply_router(&mut self, cfg: RouterConfig, table: RouteTable) {
        if let Some(live) = &self.backends.live {
            live.set_routes(table);
        }
        self.backends.router = cfg;
    }

    /// Apply the store's router when it differs from the one last seen: at startup (it wins
    /// over the config file's) and, with a shared store, on every change notice and resync
    /// (a PUT on another replica). An invalid stored router is logged and the current one
    /// kept.
    pub(super) fn reload_router(&mut self, startup: bool) {
        if self.backends.live.is_none() {
            return;
        }
        let name = self.store.name();
        let text = match self.store.get_router() {
            Ok(Some(t)) => t,
            Ok(None) => {
                // Gone from a store that had it (a Redis restarted without persistence):
                // write this replica's back rather than letting replicas drift apart.
                if let Some(t) = self.backends.stored.clone() {
                    match self.store.put_router(&t) {
                        Ok(()) => crate::warn!(
                            "{name} store came back without the router: wrote this replica's back"
                        ),
                        Err(e) => self.set_store_ok(Some(e.to_string())),
                    }
                }
                return;
            }
            Err(e) if startup => {
                crate::warn!(
                    "{name} store: cannot read the stored router, using the config file's: {e}"
                );
                return;
            }
            Err(e) => return self.set_store_ok(Some(e.to_string())),
        };
        if self.backends.stored.as_deref() == Some(text.as_str()) {
            return;
        }
        let compiled = serde_json::from_str::<Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|v| self.compile_router(&v).map_err(|(m, _)| m));
        self.backends.stored = Some(text);
        let keeping = if startup {
            "the config file's"
        } else {
            "the current one"
        };
        match compiled {
            Ok((cfg, warnings, table)) => {
                self.apply_router(cfg, table);
                if startup {
                    crate::info!(
                        "router: using the router stored in the {name} store by an earlier PUT /admin/config/router, not the config file's"
                    );
                } else {
                    crate::info!("router: changed in the {name} store (another replica), applied");
                }
                for w in warnings {
                    crate::warn!("stored router: {w}");
                }
            }
            Err(e) => crate::error!(
                "router stored in the {name} store is invalid, keeping {keeping}: {e}"
            ),
        }
    }
}

fn attempt_str(a: Attempt) -> String {
    match a {
        Attempt::Status(s) => format!("status {s}"),
        Attempt::Network => "network".into(),
        Attempt::Timeout => "timeout".into(),
    }
}

fn query_flag(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_ascii_lowercase())
    })
}

/// A router config as JSON (the admin API's view).
fn router_json(r: &RouterConfig) -> Value {
    let list = |l: &[crate::config::WeightedBackend]| {
        l.iter()
            .map(|w| json!({"backend": w.backend, "weight": w.weight}))
            .collect::<Vec<_>>()
    };
    json!({
        "default_backends": list(&r.default_backends),
        "rules": r.rules.iter().map(|x| {
            let mut v = json!({"model_prefix": x.model_prefix, "exact": x.exact, "backends": list(&x.backends)});
            if let (Some(g), Value::Object(m)) = (&x.guardrails, &mut v) {
                m.insert("guardrails".into(), g.clone());
            }
            v
        }).collect::<Vec<_>>(),
        "strategy": r.strategy.as_deref().unwrap_or("weighted"),
        "latency_half_life_secs": r.latency_half_life_secs,
    })
}

impl ControlHandle {
    /// Hand the backends' state to the plane (which applies a stored router) and start
    /// health checks when configured.
    pub fn install_backends(&self, setup: BackendsSetup, health: Option<HealthOptions>) {
        let targets = setup.targets.clone();
        let tls = Arc::clone(&setup.tls);
        let (done, installed) = flume::bounded(1);
        if self
            .tx
            .send(Msg::Backends(BackendMsg::Setup(Box::new(setup), done)))
            .is_ok()
        {
            // Wait for it, so that a stored router is live before the first request.
            let _ = installed.recv();
        }
        if let Some(h) = health {
            let weak = self.tx.downgrade();
            let _ = std::thread::Builder::new()
                .name("ditto-health".into())
                .spawn(move || health_loop(weak, targets, tls, h));
        }
    }

    /// Report one attempt's outcome (never waits; batched per core, see `PENDING`).
    pub fn outcome(&self, o: Outcome) {
        let urgent = o.probe.is_some() || !matches!(o.attempt, Attempt::Status(s) if s < 400);
        let batch = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            p.push((o, Instant::now()));
            (urgent || p.len() >= OUTCOME_BATCH).then(|| std::mem::take(&mut *p))
        });
        if let Some(b) = batch {
            let _ = self.tx.send(Msg::Backends(BackendMsg::Outcomes(b)));
        }
    }

    /// Send this core's pending outcomes (its periodic tick, and at exit).
    pub fn flush_outcomes(&self) {
        let batch = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if !batch.is_empty() {
            let _ = self.tx.send(Msg::Backends(BackendMsg::Outcomes(batch)));
        }
    }
}

/// One attempt's outcome: the backend's latency estimate and its breaker.
///
/// Outcomes arrive in per-core batches, so a success can reach the plane after a failure on
/// another core that happened later; such a stale success must not reset the breaker's count
/// of consecutive failures.
fn record_outcome(bk: &mut Backends, o: Outcome, at: Instant) {
    let now = unix_now_ms();
    let half_life = bk.half_life_ms();
    let failed = bk.board.as_ref().is_some_and(|b| b.is_failure(o.attempt));
    if bk.last_failure.len() <= o.backend {
        bk.last_failure.resize(o.backend + 1, None);
    }
    let stale_success =
        !failed && o.probe.is_none() && bk.last_failure[o.backend].is_some_and(|f| at < f);
    if failed {
        let f = &mut bk.last_failure[o.backend];
        *f = Some(f.map_or(at, |f| f.max(at)));
    }
    if let Some(e) = bk.latency.get_mut(o.backend) {
        let us = o.latency.as_micros() as f64;
        if failed {
            e.observe_failure(us, now, half_life);
        } else {
            e.observe(us, now, half_life);
        }
    }
    bk.publish_latency(o.backend, now);
    if stale_success {
        return;
    }
    let t = bk.board.as_mut().and_then(|b| b.record(&o, now));
    if let Some(t) = t {
        let name = bk.name(t.backend).to_string();
        crate::warn!(
            "backend \"{name}\": circuit breaker {} -> {} after {:?}",
            t.from.as_str(),
            t.to.as_str(),
            o.attempt
        );
    }
}

thread_local! {
    /// This core's attempt outcomes not yet sent. One message per request would wake the
    /// plane's thread (a syscall and a context switch) for every request; batches go at the
    /// core's tick (20 ms), at 64 outcomes, or at once with any failure or probe result, so
    /// breakers still react within one request.
    static PENDING: std::cell::RefCell<Vec<(Outcome, Instant)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pending outcomes that make a batch worth a message on their own.
const OUTCOME_BATCH: usize = 64;

/// Probe every backend each interval until the plane is gone.
fn health_loop(
    tx: flume::WeakSender<Msg>,
    targets: Vec<HealthTarget>,
    tls: Arc<rustls::ClientConfig>,
    h: HealthOptions,
) {
    loop {
        let started = Instant::now();
        for (i, t) in targets.iter().enumerate() {
            let (ok, detail) = match probe(t, &tls, h.timeout) {
                Ok(status) if status < 500 => (true, format!("HTTP {status}")),
                Ok(status) => (false, format!("HTTP {status}")),
                Err(e) => (false, e),
            };
            let Some(tx) = tx.upgrade() else { return };
            if tx
                .send(Msg::Backends(BackendMsg::Health {
                    backend: i,
                    ok,
                    detail,
                }))
                .is_err()
            {
                return;
            }
        }
        std::thread::sleep(h.interval.saturating_sub(started.elapsed()));
        if tx.upgrade().is_none() {
            return;
        }
    }
}

/// One blocking health GET; the response status, or why there is none.
pub fn probe(
    t: &HealthTarget,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let addr = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", t.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", t.host))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let _ = tcp.set_read_timeout(Some(left));
    let _ = tcp.set_write_timeout(Some(left));
    let _ = tcp.set_nodelay(true);
    let mut req = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: ditto-gateway-health\r\naccept: */*\r\nconnection: close\r\n",
        t.target, t.authority
    );
    for (k, v) in &t.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut head = Vec::with_capacity(512);
    if t.tls {
        let name = t
            .server_name
            .clone()
            .ok_or_else(|| "no TLS server name".to_string())?;
        let conn = rustls::ClientConnection::new(Arc::clone(tls), name)
            .map_err(|e| format!("tls: {e}"))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(req.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        read_status(&mut s, &mut head, deadline)
    } else {
        let mut s = tcp;
        s.write_all(req.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        read_status(&mut s, &mut head, deadline)
    }
}

fn read_status(s: &mut impl Read, buf: &mut Vec<u8>, deadline: Instant) -> Result<u16, String> {
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]);
            let mut parts = line.split_whitespace();
            let version = parts.next().unwrap_or("");
            let code = parts.next().and_then(|c| c.parse::<u16>().ok());
            return match code {
                Some(c) if version.starts_with("HTTP/") => Ok(c),
                _ => Err(format!("invalid status line {line:?}")),
            };
        }
        if Instant::now() >= deadline || buf.len() > 8192 {
            return Err("no status line in time".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("connection closed before a response".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err("timed out waiting for the response".into());
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
