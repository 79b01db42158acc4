//! The plane's side of a store shared by several replicas (Redis, see `store/redis.rs`):
//! global leases, settlements pushed in batches, live key propagation and the periodic resync.
//!
//! With such a store the plane's [`super::meter::Meters`] become a mirror of the global
//! counters (for `/admin/budgets`) and the fallback when the store is unreachable: leases are
//! then granted from the local mirror (fail open; `--budget-fail-closed` refuses budgeted
//! requests instead, in the proxy), settlements queue in the store and replay when it returns.
//! Cores never see the difference: they talk to the plane only.

use std::collections::BTreeMap;

use super::meter::{Grant, Kind, MeterId, MeterState};
use super::plane::Plane;
use super::store::{MeterKey, MeterTotals, Write};
use super::{unix_now, AdminRequest, Msg, ScopeInfo, Settlement};

/// Start the store's change watcher: each change becomes a reload message. The watcher holds
/// only a weak sender, so the plane still stops when the last handle is dropped.
pub(super) fn watch(plane: &mut Plane, tx: &flume::Sender<Msg>) {
    let weak = tx.downgrade();
    if let Some(g) = plane.store.global() {
        g.watch(Box::new(move |fire| match weak.upgrade() {
            Some(tx) => !fire || tx.send(Msg::StoreChanged).is_ok(),
            None => false,
        }));
    }
}

impl Plane {
    fn meter_key(scope: &ScopeInfo, kind: Kind, window: u64) -> MeterKey {
        MeterKey {
            ledger: scope.ledger.clone(),
            kind,
            window,
        }
    }

    fn mirror(&mut self, m: &MeterKey, t: MeterTotals) {
        if let Some(scope) = self.scope_by_ledger(&m.ledger) {
            self.meters.mirror(
                MeterId {
                    scope: scope.id,
                    kind: m.kind,
                },
                MeterState {
                    window: m.window,
                    spent: t.spent,
                    outstanding: t.outstanding,
                },
            );
        }
    }

    /// A lease from the shared store; `None` when there is none or it failed (the caller
    /// then leases from its local meters: fail open).
    pub(super) fn global_lease(
        &mut self,
        scope: &ScopeInfo,
        meter: MeterId,
        limit: u64,
        window: u64,
        need: u64,
        cores: u64,
    ) -> Option<Grant> {
        let owner = self.owner.clone();
        let key = Self::meter_key(scope, meter.kind, window);
        let r = self.store.global()?.lease(&owner, &key, limit, need, cores);
        match r {
            Ok(g) => {
                self.mirror(&key, g.totals);
                if self.store_error.is_some() {
                    self.set_store_ok(None);
                }
                Some(Grant {
                    granted: g.granted,
                    window,
                    remaining: g.remaining,
                })
            }
            Err(e) => {
                self.set_store_ok(Some(e.to_string()));
                None
            }
        }
    }

    /// Queue a settlement (or a give-back: `spent` 0) for the shared store.
    pub(super) fn global_settle(&mut self, s: &Settlement) {
        let Some(Some(scope)) = self.scopes.get(s.meter.scope as usize).cloned() else {
            return;
        };
        if let Some(g) = self.store.global() {
            g.settle(
                Self::meter_key(&scope, s.meter.kind, s.window),
                s.spent,
                s.released,
            );
        }
    }

    /// At every flush: push queued settlements and the heartbeat, mirror the totals, and
    /// resync keys and the router when the periodic resync is due.
    pub(super) fn global_sync(&mut self) {
        let owner = self.owner.clone();
        let Some(g) = self.store.global() else {
            return;
        };
        let due = g.resync_due();
        match g.sync(&owner) {
            Ok(totals) => {
                for (m, t) in totals {
                    self.mirror(&m, t);
                }
                if self.store_error.is_some() {
                    self.set_store_ok(None);
                }
                if due {
                    self.reload_keys();
                    self.reload_router(false);
                }
            }
            Err(e) => self.set_store_ok(Some(e.to_string())),
        }
    }

    /// Another replica changed keys (or the resync is due): reload them from the store and
    /// publish a new snapshot when they differ.
    pub(super) fn reload_keys(&mut self) {
        let Some(g) = self.store.global() else {
            return;
        };
        let keys = match g.load_keys() {
            Ok(Some(k)) => k,
            Ok(None) => return self.reseed(),
            Err(e) => {
                self.set_store_ok(Some(e.to_string()));
                return;
            }
        };
        let fresh: BTreeMap<String, _> = keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        if fresh == self.keys {
            return;
        }
        let old = std::mem::replace(&mut self.keys, fresh);
        match self.rebuild() {
            Ok(()) => self.recall_leases(),
            Err(e) => {
                crate::error!("keys changed in the store are invalid, keeping the old ones: {e}");
                self.keys = old;
            }
        }
    }

    /// Before `GET /admin/costs`: write this replica's totals, then read everyone's.
    fn refresh_costs(&mut self) {
        self.flush();
        if self.store_error.is_some() {
            return;
        }
        let Some(g) = self.store.global() else {
            return;
        };
        match g.costs() {
            Ok(rows) => {
                for c in rows {
                    self.costs.insert((c.key_id.clone(), c.model.clone()), c);
                }
            }
            Err(e) => self.set_store_ok(Some(e.to_string())),
        }
    }

    /// The store came back empty (Redis restarted without persistence): write this replica's
    /// key table back rather than deleting every key. Ledgers that were lost stay lost; run
    /// Redis with persistence (AOF) for durable budgets.
    fn reseed(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let batch: Vec<Write> = self.keys.values().cloned().map(Write::PutKey).collect();
        match self.store.write(&batch) {
            Ok(()) => crate::warn!(
                "{} store came back empty: wrote this replica's {} key(s) back",
                self.store.name(),
                batch.len()
            ),
            Err(e) => self.set_store_ok(Some(e.to_string())),
        }
    }

    /// Before an admin read of budgets: push this replica's queued usage and mirror every
    /// budget meter's global totals, so any replica answers with the global figures.
    pub(super) fn before_admin(&mut self, req: &AdminRequest) {
        let path = req.path.trim_end_matches('/');
        if req.method != "GET" || self.store.global().is_none() {
            return;
        }
        if path == "/admin/costs" {
            return self.refresh_costs();
        }
        if path != "/admin/budgets" {
            return;
        }
        self.global_sync();
        let now = unix_now();
        let keys: Vec<MeterKey> = self
            .scopes
            .iter()
            .flatten()
            .flat_map(|s| {
                [Kind::Tokens, Kind::Usd]
                    .into_iter()
                    .filter(|k| s.limit(*k).is_some())
                    .map(|k| Self::meter_key(s, k, s.window(k, now)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let Some(g) = self.store.global() else {
            return;
        };
        match g.totals(&keys) {
            Ok(t) => {
                for (m, t) in keys.iter().zip(t) {
                    self.mirror(m, t);
                }
            }
            Err(e) => self.set_store_ok(Some(e.to_string())),
        }
    }
}
