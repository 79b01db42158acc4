//! Where the control plane keeps what must survive a restart: keys (hashed), budget ledgers,
//! cost totals, reservations and the audit log.
//!
//! One interface, several engines: [`memory::MemoryStore`] (the default: nothing survives),
//! [`sqlite::SqliteStore`] (`--sqlite PATH`, one node), and a Redis store for replicas. A store
//! is used only from the control-plane thread, never from a data-plane core, so it may block.
//!
//! Writes are *absolute*: a ledger row carries the spent total, not an increment. The plane
//! can then coalesce any number of settlements into one row per ledger and flush in batches,
//! and a batch written twice (a retry after an error) is harmless.

pub mod memory;
#[cfg(feature = "gateway-store-redis")]
pub mod redis;
#[cfg(feature = "gateway-store-redis")]
pub mod spill;
#[cfg(feature = "gateway-store-sqlite")]
pub mod sqlite;

use serde::{Deserialize, Serialize};

use super::keys::KeyRecord;
use super::meter::Kind;

/// The spent total of one budget ledger: a scope, a unit and a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// Scope name, e.g. `key:team-a`, `tenant:acme`.
    pub scope: String,
    /// `tokens` or `usd_pico` (1 USD = 1e12 pico).
    pub unit: String,
    /// Period index (0 for lifetime budgets; see [`super::keys::Period::index_at`]).
    pub period: u64,
    pub spent: u64,
}

/// Totals per key and model, for `GET /admin/costs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostRow {
    pub key_id: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost in pico-USD (1e-12 USD), so cheap models never round to zero.
    pub cost_pico: u64,
}

/// Quota one gateway process holds reserved on a ledger (leased to its cores or reserved by
/// requests in flight). Rows left by a process that died are reaped at the next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRow {
    /// The process that holds it (a random id per start).
    pub owner: String,
    pub scope: String,
    pub unit: String,
    pub period: u64,
    pub amount: u64,
    /// Unix seconds of the last update.
    pub updated_at: u64,
}

/// One admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    /// Unix milliseconds.
    pub ts_ms: u64,
    /// Who: `admin`, `read`, `tenant:<id>` (never a token).
    pub actor: String,
    /// What: `key.create`, `key.update`, `key.delete`, `reservations.reap`, ...
    pub action: String,
    /// The object acted on (a key id), if any.
    pub target: Option<String>,
    /// Details (never secrets).
    pub detail: serde_json::Value,
}

/// Everything a store holds, read once at startup.
#[derive(Debug, Default, Clone)]
pub struct Persisted {
    pub keys: Vec<KeyRecord>,
    pub ledgers: Vec<LedgerRow>,
    pub costs: Vec<CostRow>,
    pub reservations: Vec<ReservationRow>,
    /// The most recent audit entries, oldest first (at most the `audit_tail` asked for).
    pub audit: Vec<AuditEntry>,
}

/// One change; a batch of them is applied atomically.
// `PutKey` is much larger than the other variants; writes are few and short-lived (built and
// consumed on the control-plane thread), so boxing would buy nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    PutKey(KeyRecord),
    DeleteKey(String),
    Ledger(LedgerRow),
    Cost(CostRow),
    /// Replace every reservation row of `owner` with `rows`.
    Reservations {
        owner: String,
        rows: Vec<ReservationRow>,
    },
    /// Delete reservation rows of owners other than `keep_owner` last updated before
    /// `before` (unix seconds).
    ReapReservations {
        keep_owner: String,
        before: u64,
    },
    Audit(AuditEntry),
    /// Delete audit entries older than this (unix milliseconds).
    PruneAudit {
        before_ts_ms: u64,
    },
}

/// A store failure, with the context a log line or a 503 needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A storage engine for the control plane.
pub trait Store: Send {
    /// Short name for logs and `/ready`: `memory`, `sqlite`, `redis`.
    fn name(&self) -> &'static str;
    /// Read everything; `audit_tail` bounds the audit entries returned.
    fn load(&mut self, audit_tail: usize) -> Result<Persisted, StoreError>;
    /// Apply `batch` atomically: all of it or none.
    fn write(&mut self, batch: &[Write]) -> Result<(), StoreError>;
    /// Cheap liveness check for `/ready`.
    fn ping(&mut self) -> Result<(), StoreError>;
    /// Keep the router set by `PUT /admin/config/router` (its JSON, as validated), so that it
    /// outlives a restart and reaches every replica of a shared store. The default (a store
    /// with nothing to keep it in) accepts and forgets it.
    fn put_router(&mut self, _json: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// The router last kept by [`Store::put_router`], if any (it wins over the config file's).
    fn get_router(&mut self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// A store shared by several gateway processes (Redis) meters quota globally; `None`
    /// (the default) leaves metering to the plane's own counters.
    fn global(&mut self) -> Option<&mut dyn Global> {
        None
    }
}

/// One meter window in a shared store: a scope's ledger, a kind, a window index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeterKey {
    pub ledger: String,
    pub kind: Kind,
    pub window: u64,
}

/// A shared meter's totals across every process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterTotals {
    pub spent: u64,
    pub outstanding: u64,
}

/// A lease granted by a shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalGrant {
    /// 0 (refused) or at least what was needed.
    pub granted: u64,
    /// What the meter has left after the grant.
    pub remaining: u64,
    /// The meter's totals after the grant.
    pub totals: MeterTotals,
}

/// Quota metering shared by every process of a store (see `redis.rs`): leases are granted
/// atomically from `limit - spent - outstanding` of the global counters, so leases alone never
/// take a meter over its limit whatever the number of replicas.
pub trait Global {
    /// Grant at least `need` units (plus a share for `cores` cores), or nothing.
    fn lease(
        &mut self,
        owner: &str,
        meter: &MeterKey,
        limit: u64,
        need: u64,
        cores: u64,
    ) -> Result<GlobalGrant, StoreError>;
    /// Queue settled usage (`spent` used, `released` of the lease consumed); never fails:
    /// the queue is pushed by [`Global::sync`] and kept (bounded, spilling to disk) while the
    /// store is unreachable.
    fn settle(&mut self, meter: MeterKey, spent: u64, released: u64);
    /// Push queued settlements and a liveness heartbeat for `owner`; returns the totals of the
    /// meters it touched.
    fn sync(&mut self, owner: &str) -> Result<Vec<(MeterKey, MeterTotals)>, StoreError>;
    /// Current totals of some meters.
    fn totals(&mut self, meters: &[MeterKey]) -> Result<Vec<MeterTotals>, StoreError>;
    /// The key records as stored now (live propagation and periodic resync); `None` when the
    /// store has lost its data (a Redis restarted without persistence).
    fn load_keys(&mut self) -> Result<Option<Vec<KeyRecord>>, StoreError>;
    /// Cost totals of every process, as stored now (after this process's last write).
    fn costs(&mut self) -> Result<Vec<CostRow>, StoreError>;
    /// True when a periodic full resync of the key table is due.
    fn resync_due(&mut self) -> bool;
    /// Start watching for changes made by other processes: `notify(true)` on a change (and
    /// after every reconnect), `notify(false)` to ask whether to go on (false: stop).
    fn watch(&mut self, notify: Box<dyn FnMut(bool) -> bool + Send>);
}
