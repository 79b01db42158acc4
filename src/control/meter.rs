//! Quota accounting on the control plane: one *meter* per scope and unit (requests per minute,
//! tokens per minute, budget tokens, budget pico-USD).
//!
//! A meter counts what was `spent` (settled) and what is `outstanding` (leased to cores, whether
//! still free there or reserved by a request in flight). A lease is granted only from
//! `limit - spent - outstanding`, so leases alone never take a meter over its limit; what can
//! is a request that turns out to use more than it reserved (a response longer than its
//! estimate), and that excess is what the accuracy bound in the README is about.
//!
//! Each meter lives in a window: the unix minute for rpm/tpm, the budget period for budgets
//! (0 for lifetime). A newer window starts from zero; messages about an older one are dropped.

use ahash::AHashMap;

use super::ScopeId;

/// What a meter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Rpm,
    Tpm,
    /// Budget in tokens.
    Tokens,
    /// Budget in pico-USD.
    Usd,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Rpm, Kind::Tpm, Kind::Tokens, Kind::Usd];

    /// Budgets persist and must get unused leases back; rate windows simply expire.
    pub fn is_budget(self) -> bool {
        matches!(self, Kind::Tokens | Kind::Usd)
    }

    /// The unit name used in ledgers.
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Rpm => "requests",
            Kind::Tpm | Kind::Tokens => "tokens",
            Kind::Usd => "usd_pico",
        }
    }
}

/// A scope's meter of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterId {
    pub scope: ScopeId,
    pub kind: Kind,
}

/// The plane's answer to a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Units granted: 0 (refused) or at least what was needed.
    pub granted: u64,
    /// The window the grant belongs to.
    pub window: u64,
    /// What the meter has left after this grant.
    pub remaining: u64,
}

/// One meter's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterState {
    pub window: u64,
    pub spent: u64,
    pub outstanding: u64,
}

/// Every meter the plane has seen.
#[derive(Debug, Default)]
pub struct Meters {
    map: AHashMap<MeterId, MeterState>,
}

/// Extra units granted beyond the need: a share of what is left, so a core need not ask
/// again for every request, small enough that quota parked on a quiet core is a small
/// fraction of the remainder (and zero when little is left: small limits are exact).
pub fn lease_extra(kind: Kind, remaining_after_need: u64, cores: u64) -> u64 {
    let share = remaining_after_need / cores.max(1).saturating_mul(16);
    match kind {
        Kind::Rpm => share.min(63),
        _ => share,
    }
}

impl Meters {
    /// The state in `window`, moving to it first if it is newer.
    fn at(&mut self, id: MeterId, window: u64) -> &mut MeterState {
        let s = self.map.entry(id).or_default();
        if window > s.window {
            *s = MeterState {
                window,
                spent: 0,
                outstanding: 0,
            };
        }
        s
    }

    /// Seed a ledger's spent total (at startup, from the store).
    pub fn seed(&mut self, id: MeterId, window: u64, spent: u64) {
        let s = self.at(id, window);
        if s.window == window {
            s.spent = spent;
        }
    }

    /// Grant at least `need` units (plus a lease share), or nothing.
    pub fn lease(&mut self, id: MeterId, limit: u64, window: u64, need: u64, cores: u64) -> Grant {
        let s = self.at(id, window);
        if s.window != window {
            // A request for a window the meter has left (clock skew between threads).
            return Grant {
                granted: 0,
                window: s.window,
                remaining: 0,
            };
        }
        let remaining = limit.saturating_sub(s.spent.saturating_add(s.outstanding));
        // `need` is at least 1 (callers round up), so a grant of 0 always means refused.
        let need = need.max(1);
        if remaining < need {
            return Grant {
                granted: 0,
                window,
                remaining,
            };
        }
        let granted = need + lease_extra(id.kind, remaining - need, cores);
        s.outstanding += granted;
        Grant {
            granted,
            window,
            remaining: remaining - granted,
        }
    }

    /// A core reports `spent` units used and `released` units of its lease consumed by that
    /// use. Returns true when the meter changed (a budget ledger to persist).
    pub fn settle(&mut self, id: MeterId, window: u64, spent: u64, released: u64) -> bool {
        let Some(s) = self.map.get_mut(&id) else {
            return false;
        };
        if s.window != window {
            return false;
        }
        s.spent = s.spent.saturating_add(spent);
        s.outstanding = s.outstanding.saturating_sub(released);
        spent > 0
    }

    /// A core gives back unused leased units.
    pub fn give_back(&mut self, id: MeterId, window: u64, units: u64) {
        if let Some(s) = self.map.get_mut(&id) {
            if s.window == window {
                s.outstanding = s.outstanding.saturating_sub(units);
            }
        }
    }

    /// Take a shared store's totals for a window (Redis: the plane's meters mirror the
    /// global counters). An older window than the one held is ignored.
    pub fn mirror(&mut self, id: MeterId, state: MeterState) {
        let s = self.at(id, state.window);
        if s.window == state.window {
            *s = state;
        }
    }

    pub fn get(&self, id: MeterId) -> Option<MeterState> {
        self.map.get(&id).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MeterId, &MeterState)> {
        self.map.iter()
    }

    /// Forget one meter (its window definition changed).
    pub fn remove_meter(&mut self, id: MeterId) {
        self.map.remove(&id);
    }

    /// Forget a scope's meters (its last key is gone).
    pub fn remove_scope(&mut self, scope: ScopeId) {
        self.map.retain(|id, _| id.scope != scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: MeterId = MeterId {
        scope: 0,
        kind: Kind::Tokens,
    };

    #[test]
    fn leases_never_exceed_the_limit_and_small_limits_are_exact() {
        let mut m = Meters::default();
        let g = m.lease(M, 100, 0, 30, 2);
        assert_eq!(g.granted, 30 + 70 / 32);
        let mut total = g.granted;
        loop {
            let g = m.lease(M, 100, 0, 10, 2);
            if g.granted == 0 {
                break;
            }
            total += g.granted;
        }
        assert!(total <= 100);
        assert!(total > 90, "refused only when under 10 units were left");
        let rpm = MeterId {
            scope: 1,
            kind: Kind::Rpm,
        };
        assert_eq!(m.lease(rpm, 3, 5, 1, 8).granted, 1, "tiny limit: no extra");
        assert_eq!(m.lease(rpm, 0, 5, 1, 8).granted, 0, "0 blocks all");
    }

    #[test]
    fn settle_and_give_back_free_quota_and_windows_reset() {
        let mut m = Meters::default();
        let g = m.lease(M, 100, 7, 50, 1);
        assert_eq!(g.granted, 53);
        // The request used 20 of its 50: 20 spent, 20 released from the lease.
        assert!(m.settle(M, 7, 20, 20));
        m.give_back(M, 7, 33);
        assert_eq!(
            m.get(M),
            Some(MeterState {
                window: 7,
                spent: 20,
                outstanding: 0
            })
        );
        assert!(!m.settle(M, 6, 5, 5), "an old window is ignored");
        let g = m.lease(M, 100, 8, 100, 1);
        assert_eq!(g.granted, 100, "a new period starts from zero");
    }
}
