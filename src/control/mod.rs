//! The control plane: one thread that owns the gateway's shared, mutable state (keys, limit
//! windows, budget ledgers, cost totals, the audit log and the store), reached from the
//! data-plane cores only by message (DESIGN.md point 6). No core ever takes a lock.
//!
//! - Cores read the key table as an immutable [`Snapshot`]; a change (admin API) builds a new
//!   one, persists it, publishes it, and only then answers, so every core sees it on its next
//!   request.
//! - Quota is spent from per-core *leases* ([`crate::limits::quota`]): a core asks the plane for
//!   what one request needs plus a share of what is left, spends it with no message, and
//!   reports settled usage in batches. See [`meter`] for the accounting and its bounds.
//! - The plane writes to the store in batches every flush interval (and synchronously for
//!   admin changes); see [`store`].
//!
//! Windows are fixed wall-clock minutes for rpm/tpm (`unix_seconds / 60`), the unit OpenAI's
//! rate-limit headers describe, and budget periods (lifetime, UTC day, UTC month) for budgets.

pub mod admin;
pub mod backends;
pub mod keys;
pub mod meter;
mod plane;
pub mod store;
mod sync;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use self::keys::{Budget, KeyRecord, Limits};
use self::meter::{Grant, Kind, MeterId};
use self::store::Store;
use crate::auth::KeyTable;

/// Index of a limit/budget scope (a key, tenant, project or user). Stable for the life of the
/// process: a scope removed and added again gets its old id back.
pub type ScopeId = u32;

/// One scope and its policy, as the data plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeInfo {
    pub id: ScopeId,
    /// For errors: `key "team-a"`, `tenant "acme"`.
    pub name: String,
    /// For ledgers and the admin API: `key:team-a`, `tenant:acme`.
    pub ledger: String,
    pub limits: Limits,
    pub budget: Budget,
}

impl ScopeInfo {
    /// The limit of a meter kind, in its unit (`None`: no such limit).
    pub fn limit(&self, kind: Kind) -> Option<u64> {
        match kind {
            Kind::Rpm => self.limits.rpm,
            Kind::Tpm => self.limits.tpm,
            Kind::Tokens => self.budget.total_tokens,
            Kind::Usd => self
                .budget
                .total_usd_micros
                .map(|m| m.saturating_mul(1_000_000)),
        }
    }

    /// The window a meter kind is in at `unix_secs`.
    pub fn window(&self, kind: Kind, unix_secs: u64) -> u64 {
        match kind {
            Kind::Rpm | Kind::Tpm => unix_secs / 60,
            Kind::Tokens | Kind::Usd => self.budget.period.index_at(unix_secs),
        }
    }

    /// Seconds until the window of `kind` ends (`None`: never, a lifetime budget).
    pub fn reset_in(&self, kind: Kind, unix_secs: u64) -> Option<u64> {
        match kind {
            Kind::Rpm | Kind::Tpm => Some(60 - unix_secs % 60),
            Kind::Tokens | Kind::Usd => {
                let p = self.budget.period;
                p.end_of(p.index_at(unix_secs))
                    .map(|end| end.saturating_sub(unix_secs).max(1))
            }
        }
    }
}

/// What the data plane reads: the key table at one version.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub keys: KeyTable,
}

/// Settled usage of one request on one meter, reported by a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub meter: MeterId,
    pub window: u64,
    /// Units actually used.
    pub spent: u64,
    /// Units of the core's lease that use consumed.
    pub released: u64,
}

impl Settlement {
    /// Unused leased units given back: nothing spent, `units` released.
    pub fn give_back(meter: MeterId, window: u64, units: u64) -> Settlement {
        Settlement {
            meter,
            window,
            spent: 0,
            released: units,
        }
    }
}

/// Per key and model usage totals reported by a core (increments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_pico: u64,
}

/// Who is calling the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// Read-only admin token.
    Read,
    /// A tenant token: only keys of that tenant; `write` unless a read-only tenant token.
    Tenant {
        tenant: String,
        write: bool,
    },
}

impl Role {
    pub fn can_write(&self) -> bool {
        matches!(self, Role::Admin | Role::Tenant { write: true, .. })
    }

    pub fn tenant(&self) -> Option<&str> {
        match self {
            Role::Tenant { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// For the audit log (never a token).
    pub fn actor(&self) -> String {
        match self {
            Role::Admin => "admin".into(),
            Role::Read => "read".into(),
            Role::Tenant { tenant, .. } => format!("tenant:{tenant}"),
        }
    }
}

/// An admin API call, already authenticated; the plane routes it.
#[derive(Debug, Clone)]
pub struct AdminRequest {
    pub method: String,
    /// `/admin/keys/x` or `/key/generate`.
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    pub body: Option<serde_json::Value>,
    pub role: Role,
}

/// The plane's answer: a status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminReply {
    pub status: u16,
    pub body: serde_json::Value,
}

enum Msg {
    Lease {
        meter: MeterId,
        need: u64,
        extra: bool,
        reply: flume::Sender<Grant>,
    },
    Settle(Vec<Settlement>, Vec<UsageDelta>),
    GiveBack(Vec<(MeterId, u64, u64)>),
    Admin(Box<AdminRequest>, flume::Sender<AdminReply>),
    /// Write everything pending now, then answer (shutdown).
    Flush(flume::Sender<()>),
    /// Breakers, health checks, router changes ([`backends`]).
    Backends(backends::BackendMsg),
    /// Another replica changed the shared store's keys or router: reload them.
    StoreChanged,
}

/// State the plane publishes for the cores to read without a message.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    version: AtomicU64,
    /// Bumped to ask every core to give back its unused leases (reaping, key changes).
    recall: AtomicU64,
    store_ok: AtomicBool,
    store_name: &'static str,
}

/// Settings of the plane.
#[derive(Debug, Clone)]
pub struct PlaneOptions {
    /// Data-plane cores (sizes leases).
    pub cores: usize,
    /// How often settled usage is written to the store (the most a `kill -9` can lose).
    pub flush_interval: Duration,
    /// Audit entries older than this are pruned (`--audit-retention-secs`); `None` keeps all.
    pub audit_retention: Option<Duration>,
    /// Backend names a key's `route` may name (passthrough backends).
    pub backends: Vec<String>,
}

/// A cheap, `Send` handle to the control plane.
#[derive(Clone)]
pub struct ControlHandle {
    tx: flume::Sender<Msg>,
    shared: Arc<Shared>,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ControlHandle {
    /// Load the store, merge the config's keys, publish the first snapshot and start the
    /// plane's thread. Fails (naming the cause) when the store cannot be read or a stored
    /// key is invalid.
    pub fn start(
        opts: PlaneOptions,
        store: Box<dyn Store>,
        config_keys: Vec<KeyRecord>,
    ) -> Result<(ControlHandle, Vec<String>), String> {
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            version: AtomicU64::new(0),
            recall: AtomicU64::new(0),
            store_ok: AtomicBool::new(true),
            store_name: store.name(),
        });
        let (mut plane, notes) = plane::Plane::load(opts, store, config_keys, shared.clone())?;
        let (tx, rx) = flume::unbounded::<Msg>();
        sync::watch(&mut plane, &tx);
        // The thread ends by itself when the last handle is dropped.
        std::thread::Builder::new()
            .name("ditto-control".into())
            .spawn(move || plane.run(rx))
            .map_err(|e| format!("cannot start the control plane: {e}"))?;
        Ok((ControlHandle { tx, shared }, notes))
    }

    /// The current snapshot (an `Arc` clone: keep it per core, see [`Self::version`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// The version of the current snapshot: a core compares it with its own copy's and
    /// reloads only when it moved.
    pub fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    /// Bumped when cores should give back their unused leases.
    pub fn recall_epoch(&self) -> u64 {
        self.shared.recall.load(Ordering::Acquire)
    }

    /// False while the store refuses writes.
    pub fn store_ok(&self) -> bool {
        self.shared.store_ok.load(Ordering::Acquire)
    }

    pub fn store_name(&self) -> &'static str {
        self.shared.store_name
    }

    /// Ask for at least `need` units of a meter, plus a lease share when `extra`. `None` when
    /// the plane is gone (the caller decides whether that fails open or closed).
    pub async fn lease(&self, meter: MeterId, need: u64, extra: bool) -> Option<Grant> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send(Msg::Lease {
                meter,
                need,
                extra,
                reply,
            })
            .ok()?;
        rx.recv_async().await.ok()
    }

    /// Report settled usage (never waits).
    pub fn settle(&self, settlements: Vec<Settlement>, usage: Vec<UsageDelta>) {
        let _ = self.tx.send(Msg::Settle(settlements, usage));
    }

    /// Give back unused leased units: (meter, window, units).
    pub fn give_back(&self, units: Vec<(MeterId, u64, u64)>) {
        if !units.is_empty() {
            let _ = self.tx.send(Msg::GiveBack(units));
        }
    }

    /// Run an admin call on the plane.
    pub async fn admin(&self, req: AdminRequest) -> AdminReply {
        let (reply, rx) = flume::bounded(1);
        let gone = AdminReply {
            status: 503,
            body: admin::error_body(
                "api_error",
                "control_plane_down",
                "the control plane is not running",
            ),
        };
        if self.tx.send(Msg::Admin(Box::new(req), reply)).is_err() {
            return gone;
        }
        rx.recv_async().await.unwrap_or(gone)
    }

    /// Blocking admin call, for threads outside a runtime (tests, tools).
    pub fn admin_blocking(&self, req: AdminRequest) -> Option<AdminReply> {
        let (reply, rx) = flume::bounded(1);
        self.tx.send(Msg::Admin(Box::new(req), reply)).ok()?;
        rx.recv().ok()
    }

    /// Write everything pending to the store now and wait for it.
    pub fn flush(&self) {
        let (reply, rx) = flume::bounded(1);
        if self.tx.send(Msg::Flush(reply)).is_ok() {
            let _ = rx.recv();
        }
    }
}

#[cfg(test)]
mod tests;
