//! The default store: state lives in the control plane's memory and is gone at exit.
//!
//! It still keeps the rows it is given, so that `load` after `write` answers like a real
//! store does (the tests of the store interface run against it too).

use super::{CostRow, LedgerRow, Persisted, ReservationRow, Store, StoreError, Write};
use crate::control::keys::KeyRecord;

#[derive(Debug, Default)]
pub struct MemoryStore {
    keys: Vec<KeyRecord>,
    ledgers: Vec<LedgerRow>,
    costs: Vec<CostRow>,
    reservations: Vec<ReservationRow>,
    audit: Vec<super::AuditEntry>,
    router: Option<String>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

/// Apply one write to in-memory rows: shared by this store and the tests of other stores.
fn apply(s: &mut MemoryStore, w: &Write) {
    match w {
        Write::PutKey(k) => match s.keys.iter_mut().find(|x| x.id == k.id) {
            Some(x) => *x = k.clone(),
            None => s.keys.push(k.clone()),
        },
        Write::DeleteKey(id) => s.keys.retain(|k| &k.id != id),
        Write::Ledger(l) => {
            match s
                .ledgers
                .iter_mut()
                .find(|x| x.scope == l.scope && x.unit == l.unit && x.period == l.period)
            {
                Some(x) => x.spent = l.spent,
                None => s.ledgers.push(l.clone()),
            }
        }
        Write::Cost(c) => {
            match s
                .costs
                .iter_mut()
                .find(|x| x.key_id == c.key_id && x.model == c.model)
            {
                Some(x) => *x = c.clone(),
                None => s.costs.push(c.clone()),
            }
        }
        Write::Reservations { owner, rows } => {
            s.reservations.retain(|r| &r.owner != owner);
            s.reservations.extend(rows.iter().cloned());
        }
        Write::ReapReservations { keep_owner, before } => s
            .reservations
            .retain(|r| &r.owner == keep_owner || r.updated_at >= *before),
        Write::Audit(a) => s.audit.push(a.clone()),
        Write::PruneAudit { before_ts_ms } => s.audit.retain(|a| a.ts_ms >= *before_ts_ms),
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn load(&mut self, audit_tail: usize) -> Result<Persisted, StoreError> {
        let skip = self.audit.len().saturating_sub(audit_tail);
        Ok(Persisted {
            keys: self.keys.clone(),
            ledgers: self.ledgers.clone(),
            costs: self.costs.clone(),
            reservations: self.reservations.clone(),
            audit: self.audit[skip..].to_vec(),
        })
    }

    fn write(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        for w in batch {
            apply(self, w);
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn put_router(&mut self, json: &str) -> Result<(), StoreError> {
        self.router = Some(json.to_string());
        Ok(())
    }

    fn get_router(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self.router.clone())
    }
}
