//! The control plane's thread: its state, its loop, and how it turns key records into the
//! snapshot the cores read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};

use super::keys::{Budget, KeyRecord, Limits};
use super::meter::{Kind, MeterId, Meters};
use super::store::{AuditEntry, CostRow, LedgerRow, ReservationRow, Store, Write};
use super::{
    unix_now, unix_now_ms, Msg, PlaneOptions, ScopeId, ScopeInfo, Settlement, Shared, Snapshot,
    UsageDelta,
};
use crate::auth::{KeyTable, VirtualKey};

/// Audit entries kept in memory for `GET /admin/audit` (the store keeps them all).
pub(super) const AUDIT_TAIL: usize = 10_000;

pub(super) struct Plane {
    pub(super) opts: PlaneOptions,
    pub(super) store: Box<dyn Store>,
    /// The last store error, while writes fail.
    pub(super) store_error: Option<String>,
    pub(super) keys: BTreeMap<String, KeyRecord>,
    scope_ids: AHashMap<String, ScopeId>,
    pub(super) scopes: Vec<Option<Arc<ScopeInfo>>>,
    pub(super) meters: Meters,
    pub(super) costs: BTreeMap<(String, String), CostRow>,
    dirty_costs: AHashSet<(String, String)>,
    dirty_ledgers: AHashSet<MeterId>,
    pub(super) audit: VecDeque<AuditEntry>,
    audit_next: u64,
    /// This process's id in the reservations table.
    pub(super) owner: String,
    last_reservations: Vec<ReservationRow>,
    pub(super) shared: Arc<Shared>,
    version: u64,
    pub(super) backends: super::backends::Backends,
}

/// A random hex id (process owner ids, generated tokens).
pub(super) fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // The OS generator failed: never hand out a predictable token.
        panic!("the operating system's random generator failed");
    }
    hex::encode(b)
}

impl Plane {
    /// Read the store, merge config keys (a key id already in the store keeps its stored
    /// version: admin changes survive restarts), reap reservations of dead processes, and
    /// publish the first snapshot.
    pub(super) fn load(
        opts: PlaneOptions,
        mut store: Box<dyn Store>,
        config_keys: Vec<KeyRecord>,
        shared: Arc<Shared>,
    ) -> Result<(Plane, Vec<String>), String> {
        let name = store.name();
        let persisted = store
            .load(AUDIT_TAIL)
            .map_err(|e| format!("cannot read the {name} store: {e}"))?;
        let mut notes = Vec::new();
        let mut plane = Plane {
            opts,
            store,
            store_error: None,
            keys: BTreeMap::new(),
            scope_ids: AHashMap::new(),
            scopes: Vec::new(),
            meters: Meters::default(),
            costs: BTreeMap::new(),
            dirty_costs: AHashSet::new(),
            dirty_ledgers: AHashSet::new(),
            audit_next: persisted.audit.last().map_or(1, |a| a.id + 1),
            audit: persisted.audit.into_iter().collect(),
            owner: random_hex(8),
            last_reservations: Vec::new(),
            shared,
            version: 0,
            backends: Default::default(),
        };
        let mut writes = Vec::new();
        for k in persisted.keys {
            plane.keys.insert(k.id.clone(), k);
        }
        for k in config_keys {
            match plane.keys.get(&k.id) {
                Some(stored) if stored.source == "admin" || stored.updated_at > k.updated_at => {}
                _ => {
                    writes.push(Write::PutKey(k.clone()));
                    plane.keys.insert(k.id.clone(), k);
                }
            }
        }
        plane.rebuild()?;
        for c in persisted.costs {
            plane.costs.insert((c.key_id.clone(), c.model.clone()), c);
        }
        let now = unix_now();
        for row in persisted.ledgers {
            let kind = match row.unit.as_str() {
                "tokens" => Kind::Tokens,
                "usd_pico" => Kind::Usd,
                _ => continue,
            };
            let Some(scope) = plane.scope_by_ledger(&row.scope) else {
                continue;
            };
            if scope.window(kind, now) == row.period {
                plane.meters.seed(
                    MeterId {
                        scope: scope.id,
                        kind,
                    },
                    row.period,
                    row.spent,
                );
            }
        }
        let stale: Vec<_> = persisted
            .reservations
            .iter()
            .filter(|r| r.owner != plane.owner)
            .collect();
        if !stale.is_empty() {
            let total: u64 = stale.iter().map(|r| r.amount).sum();
            notes.push(format!(
                "reaped {} reservation(s) left by a previous run ({total} units released)",
                stale.len()
            ));
            writes.push(Write::ReapReservations {
                keep_owner: plane.owner.clone(),
                before: u64::MAX,
            });
            let entry = plane.audit_entry(
                "startup",
                "reservations.reap",
                None,
                serde_json::json!({"rows": stale.len(), "units": total}),
            );
            writes.push(Write::Audit(entry));
        }
        if !writes.is_empty() {
            plane
                .store
                .write(&writes)
                .map_err(|e| format!("cannot write the {name} store: {e}"))?;
        }
        Ok((plane, notes))
    }

    /// Serve messages until every handle is gone; flush on a timer and at the end.
    pub(super) fn run(&mut self, rx: flume::Receiver<Msg>) {
        let mut next_flush = Instant::now() + self.opts.flush_interval;
        loop {
            let mut wait = next_flush.saturating_duration_since(Instant::now());
            if let Some(w) = self.backends.wait() {
                wait = wait.min(w);
            }
            match rx.recv_timeout(wait) {
                Ok(msg) => self.handle(msg),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
            self.backends_tick();
            if Instant::now() >= next_flush {
                self.flush();
                next_flush = Instant::now() + self.flush_delay();
            }
        }
    }

    /// While the store fails, retry less often (up to 10 s), so a dead disk is not hammered.
    fn flush_delay(&self) -> Duration {
        if self.store_error.is_some() {
            (self.opts.flush_interval * 4).min(Duration::from_secs(10))
        } else {
            self.opts.flush_interval
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Lease {
                meter,
                need,
                extra,
                reply,
            } => {
                let _ = reply.send(self.lease(meter, need, extra));
            }
            Msg::Settle(settlements, usage) => {
                for s in settlements {
                    self.settle(s);
                }
                for u in usage {
                    self.add_usage(u);
                }
            }
            Msg::GiveBack(units) => {
                for (meter, window, n) in units {
                    self.global_settle(&Settlement::give_back(meter, window, n));
                    self.meters.give_back(meter, window, n);
                }
            }
            Msg::Admin(req, reply) => {
                self.before_admin(&req);
                let _ = reply.send(self.admin(*req));
            }
            Msg::Flush(reply) => {
                self.flush();
                let _ = reply.send(());
            }
            Msg::Backends(m) => self.backends_msg(m),
            Msg::StoreChanged => {
                self.reload_keys();
                self.reload_router(false);
            }
        }
    }

    fn scope(&self, id: ScopeId) -> Option<&Arc<ScopeInfo>> {
        self.scopes.get(id as usize).and_then(Option::as_ref)
    }

    pub(super) fn scope_by_ledger(&self, ledger: &str) -> Option<Arc<ScopeInfo>> {
        self.scope_ids
            .get(ledger)
            .and_then(|&id| self.scope(id))
            .cloned()
    }

    fn lease(&mut self, meter: MeterId, need: u64, extra: bool) -> super::Grant {
        let now = unix_now();
        let Some(scope) = self.scope(meter.scope).cloned() else {
            // The scope is gone (its key was deleted while a request was on its way): the
            // request is admitted on its old snapshot's word.
            return super::Grant {
                granted: need.max(1),
                window: 0,
                remaining: u64::MAX,
            };
        };
        let Some(limit) = scope.limit(meter.kind) else {
            return super::Grant {
                granted: need.max(1),
                window: scope.window(meter.kind, now),
                remaining: u64::MAX,
            };
        };
        let window = scope.window(meter.kind, now);
        // Without a share (another task of the core is already asking), cores = infinity.
        let cores = if extra {
            self.opts.cores as u64
        } else {
            u64::MAX / 32
        };
        if let Some(g) = self.global_lease(&scope, meter, limit, window, need, cores) {
            return g;
        }
        self.meters.lease(meter, limit, window, need, cores)
    }

    fn settle(&mut self, s: Settlement) {
        self.global_settle(&s);
        if self.meters.settle(s.meter, s.window, s.spent, s.released) && s.meter.kind.is_budget() {
            self.dirty_ledgers.insert(s.meter);
        }
    }

    fn add_usage(&mut self, u: UsageDelta) {
        let k = (u.key_id, u.model);
        let row = self.costs.entry(k.clone()).or_insert_with(|| CostRow {
            key_id: k.0.clone(),
            model: k.1.clone(),
            ..CostRow::default()
        });
        row.requests += u.requests;
        row.prompt_tokens += u.prompt_tokens;
        row.completion_tokens += u.completion_tokens;
        row.cost_pico = row.cost_pico.saturating_add(u.cost_pico);
        self.dirty_costs.insert(k);
    }

    /// Write dirty ledgers, cost rows and this process's reservations in one batch. On
    /// failure everything stays dirty and is retried at the next flush (rows are absolute, so
    /// nothing is lost or counted twice).
    pub(super) fn flush(&mut self) {
        self.global_sync();
        let mut batch = Vec::new();
        for id in &self.dirty_ledgers {
            let (Some(scope), Some(state)) = (self.scope(id.scope), self.meters.get(*id)) else {
                continue;
            };
            batch.push(Write::Ledger(LedgerRow {
                scope: scope.ledger.clone(),
                unit: id.kind.unit().to_string(),
                period: state.window,
                spent: state.spent,
            }));
        }
        for k in &self.dirty_costs {
            if let Some(c) = self.costs.get(k) {
                batch.push(Write::Cost(c.clone()));
            }
        }
        let now = unix_now();
        let mut rows: Vec<ReservationRow> = self
            .meters
            .iter()
            .filter(|(id, s)| id.kind.is_budget() && s.outstanding > 0)
            .filter_map(|(id, s)| {
                Some(ReservationRow {
                    owner: self.owner.clone(),
                    scope: self.scope(id.scope)?.ledger.clone(),
                    unit: id.kind.unit().to_string(),
                    period: s.window,
                    amount: s.outstanding,
                    updated_at: now,
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.scope, &a.unit).cmp(&(&b.scope, &b.unit)));
        let same = rows.len() == self.last_reservations.len()
            && rows
                .iter()
                .zip(&self.last_reservations)
                .all(|(a, b)| (&a.scope, &a.unit, a.amount) == (&b.scope, &b.unit, b.amount));
        if !same {
            batch.push(Write::Reservations {
                owner: self.owner.clone(),
                rows: rows.clone(),
            });
        }
        if let Some(keep) = self.opts.audit_retention {
            let before = unix_now_ms().saturating_sub(keep.as_millis() as u64);
            if self.audit.front().is_some_and(|a| a.ts_ms < before) {
                batch.push(Write::PruneAudit {
                    before_ts_ms: before,
                });
                self.audit.retain(|a| a.ts_ms >= before);
            }
        }
        if batch.is_empty() {
            if self.store_error.is_some() {
                self.ping();
            }
            return;
        }
        match self.store.write(&batch) {
            Ok(()) => {
                self.dirty_ledgers.clear();
                self.dirty_costs.clear();
                self.last_reservations = rows;
                self.set_store_ok(None);
            }
            Err(e) => self.set_store_ok(Some(e.to_string())),
        }
    }

    fn ping(&mut self) {
        let r = self.store.ping().err().map(|e| e.to_string());
        self.set_store_ok(r);
    }

    pub(super) fn set_store_ok(&mut self, error: Option<String>) {
        match (&self.store_error, &error) {
            (None, Some(e)) => {
                crate::error!(
                    "{} store: writes failing, keeping usage in memory and retrying: {e}",
                    self.store.name()
                )
            }
            (Some(_), None) => crate::info!("{} store: writes succeed again", self.store.name()),
            _ => {}
        }
        self.shared
            .store_ok
            .store(error.is_none(), Ordering::Release);
        self.store_error = error;
    }

    pub(super) fn audit_entry(
        &mut self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        detail: serde_json::Value,
    ) -> AuditEntry {
        let e = AuditEntry {
            id: self.audit_next,
            ts_ms: unix_now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.map(str::to_string),
            detail,
        };
        self.audit_next += 1;
        e
    }

    pub(super) fn remember_audit(&mut self, e: AuditEntry) {
        self.audit.push_back(e);
        while self.audit.len() > AUDIT_TAIL {
            self.audit.pop_front();
        }
    }

    /// Ask every core to give back its unused leases (they do at their next tick).
    pub(super) fn recall_leases(&self) {
        self.shared.recall.fetch_add(1, Ordering::AcqRel);
    }

    /// Rebuild scopes and the key table from `self.keys` and publish a new snapshot.
    ///
    /// A key's own `limits`/`budget` make its scope; `tenant_*`, `project_*` and `user_*`
    /// are shared by every key with the same id there. When keys disagree on a shared
    /// scope's policy, the strictest value of each field wins.
    pub(super) fn rebuild(&mut self) -> Result<(), String> {
        let mut policies: BTreeMap<String, (String, Limits, Budget)> = BTreeMap::new();
        let merge = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let parts = |k: &KeyRecord| {
            [
                (Some(("key", k.id.clone())), k.limits, k.budget),
                (
                    k.tenant_id.clone().map(|t| ("tenant", t)),
                    k.tenant_limits,
                    k.tenant_budget,
                ),
                (
                    k.project_id.clone().map(|p| ("project", p)),
                    k.project_limits,
                    k.project_budget,
                ),
                (
                    k.user_id.clone().map(|u| ("user", u)),
                    k.user_limits,
                    k.user_budget,
                ),
            ]
        };
        for k in self.keys.values() {
            for (who, limits, budget) in parts(k) {
                let Some((kind, id)) = who else { continue };
                if limits.is_empty() && budget.is_empty() {
                    continue;
                }
                let ledger = format!("{kind}:{id}");
                let e = policies
                    .entry(ledger)
                    .or_insert_with(|| (format!("{kind} \"{id}\""), limits, budget));
                e.1.rpm = merge(e.1.rpm, limits.rpm);
                e.1.tpm = merge(e.1.tpm, limits.tpm);
                e.2.total_tokens = merge(e.2.total_tokens, budget.total_tokens);
                e.2.total_usd_micros = merge(e.2.total_usd_micros, budget.total_usd_micros);
                if e.2.period == super::keys::Period::Lifetime {
                    e.2.period = budget.period;
                }
            }
        }
        let mut scopes: Vec<Option<Arc<ScopeInfo>>> = vec![None; self.scopes.len()];
        let mut by_ledger: AHashMap<&str, Arc<ScopeInfo>> = AHashMap::new();
        for (ledger, (name, limits, budget)) in &policies {
            let next = self.scope_ids.len() as ScopeId;
            let id = *self.scope_ids.entry(ledger.clone()).or_insert(next);
            let info = Arc::new(ScopeInfo {
                id,
                name: name.clone(),
                ledger: ledger.clone(),
                limits: *limits,
                budget: *budget,
            });
            if scopes.len() <= id as usize {
                scopes.resize(id as usize + 1, None);
            }
            // A changed period starts a new window: forget the old counters.
            if let Some(Some(old)) = self.scopes.get(id as usize) {
                if old.budget.period != budget.period {
                    for kind in [Kind::Tokens, Kind::Usd] {
                        self.meters.remove_meter(MeterId { scope: id, kind });
                    }
                }
            }
            scopes[id as usize] = Some(info.clone());
            by_ledger.insert(ledger.as_str(), info);
        }
        let backends = &self.opts.backends;
        let mut vkeys = Vec::with_capacity(self.keys.len());
        for k in self.keys.values() {
            let digest = super::keys::hash_bytes(&k.token_hash)
                .ok_or_else(|| format!("key \"{}\": invalid token hash", k.id))?;
            let route = match &k.route {
                Some(r) => Some(backends.iter().position(|b| b == r).ok_or_else(|| {
                    format!(
                        "key \"{}\": route \"{r}\" is not a passthrough backend",
                        k.id
                    )
                })?),
                None => None,
            };
            let scopes = parts(k)
                .into_iter()
                .filter_map(|(who, _, _)| {
                    let (kind, id) = who?;
                    by_ledger.get(format!("{kind}:{id}").as_str()).cloned()
                })
                .collect();
            let guardrails = match k.extra.get("guardrails") {
                Some(g) => {
                    let g = super::keys::parse_guardrails(g)
                        .map_err(|e| format!("key \"{}\": {e}", k.id))?;
                    (!g.is_empty()).then(|| Arc::new(g))
                }
                None => None,
            };
            vkeys.push(Arc::new(VirtualKey {
                guardrails,
                id: k.id.clone(),
                enabled: k.enabled,
                tenant_id: k.tenant_id.clone(),
                project_id: k.project_id.clone(),
                user_id: k.user_id.clone(),
                route,
                scopes,
                extra: k.extra.clone(),
                digest,
            }));
        }
        let table = KeyTable::from_keys(vkeys)?;
        self.scopes = scopes;
        self.version += 1;
        self.shared.snapshot.store(Arc::new(Snapshot {
            version: self.version,
            keys: table,
        }));
        self.shared.version.store(self.version, Ordering::Release);
        Ok(())
    }
}
