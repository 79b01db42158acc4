//! Rate limits and budgets on the data plane: each core spends quota leased from the control
//! plane ([`crate::control`]) and asks for more only when its lease runs out, so the common
//! case is a subtraction with no message and no lock.
//!
//! A request *reserves* on every meter of its key's scopes (1 request of rpm; its estimated
//! tokens of tpm and token budgets; its estimated cost of USD budgets), then *settles* to what
//! it really used once the response is over: unused units go back to the core's lease, the
//! used ones are reported to the plane in batches ([`Quota::tick`]). A request refused or not
//! forwarded reserves nothing in the end ([`Quota::cancel`]).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::control::meter::{Kind, MeterId};
use crate::control::{unix_now, ControlHandle, ScopeInfo, Settlement, UsageDelta};
use crate::error::{ErrorType, GatewayError};

/// (key, model) rows a core keeps between ticks before it starts over.
const MAX_USAGE_ROWS: usize = 4096;
/// Settlements a core batches before it sends them without waiting for the tick.
const FLUSH_AT: usize = 256;
/// An unused budget lease older than this goes back to the plane, so a quiet core does not
/// sit on budget another core needs.
const IDLE_LEASE: Duration = Duration::from_secs(1);
/// How long a budget refusal is remembered locally before the plane is asked again (a
/// raised budget or a settled refund then shows within this time).
const BUDGET_DENIAL_TTL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Lease {
    window: u64,
    free: u64,
    /// A lease request is in flight: other tasks ask for exactly what they need.
    pending: bool,
    /// The plane refused: (window, until, what it had left). Refuse locally what does not
    /// fit until then.
    denied: Option<(u64, Instant, u64)>,
    last_used: Instant,
}

impl Lease {
    fn new() -> Lease {
        Lease {
            window: 0,
            free: 0,
            pending: false,
            denied: None,
            last_used: Instant::now(),
        }
    }
}

/// What a request is estimated to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub tokens: u64,
    pub cost_pico: u64,
    /// Charge rpm only (a `/v1/models` listing uses no tokens).
    pub requests_only: bool,
}

/// What a finished request used; `None` where unknown (then the reservation is kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actual {
    pub tokens: Option<u64>,
    pub cost_pico: Option<u64>,
}

impl Actual {
    /// Nothing used (an error response): everything but the request itself is refunded.
    pub const NOTHING: Actual = Actual {
        tokens: Some(0),
        cost_pico: Some(0),
    };
}

#[derive(Debug, Clone, Copy)]
struct Item {
    meter: MeterId,
    window: u64,
    reserved: u64,
}

/// What one request holds, to settle or cancel exactly once.
#[derive(Debug, Default)]
pub struct Reservation {
    items: Vec<Item>,
}

impl Reservation {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One core's leases and pending reports.
pub struct Quota {
    plane: ControlHandle,
    leases: RefCell<AHashMap<MeterId, Lease>>,
    settlements: RefCell<Vec<Settlement>>,
    /// Usage totals by key id, then model: looked up by `&str`, so a request whose key and
    /// model were seen before allocates nothing here.
    usage: RefCell<AHashMap<String, AHashMap<String, UsageDelta>>>,
    recall_seen: Cell<u64>,
}

fn amount(kind: Kind, est: Estimate) -> u64 {
    match kind {
        Kind::Rpm => 1,
        Kind::Tpm | Kind::Tokens => est.tokens.max(1),
        Kind::Usd => est.cost_pico.max(1),
    }
}

impl Quota {
    pub fn new(plane: ControlHandle) -> Quota {
        Quota {
            recall_seen: Cell::new(plane.recall_epoch()),
            plane,
            leases: RefCell::new(AHashMap::new()),
            settlements: RefCell::new(Vec::new()),
            usage: RefCell::new(AHashMap::new()),
        }
    }

    /// Reserve `est` on every meter of `scopes`, or refuse naming the first limit or budget
    /// that cannot take it (what was already reserved is given back).
    pub async fn reserve(
        &self,
        scopes: &[Arc<ScopeInfo>],
        est: Estimate,
    ) -> Result<Reservation, GatewayError> {
        let mut r = Reservation::default();
        for scope in scopes {
            for kind in Kind::ALL {
                let Some(limit) = scope.limit(kind) else {
                    continue;
                };
                if est.requests_only && kind != Kind::Rpm {
                    continue;
                }
                let meter = MeterId {
                    scope: scope.id,
                    kind,
                };
                let need = amount(kind, est);
                // The window is read per meter: an await below may cross a boundary.
                let now = unix_now();
                let window = scope.window(kind, now);
                match self.take_local(meter, window, need) {
                    Local::Taken => {
                        r.items.push(Item {
                            meter,
                            window,
                            reserved: need,
                        });
                        continue;
                    }
                    Local::Denied => {
                        self.cancel(r);
                        return Err(refusal(scope, kind, limit, need, now));
                    }
                    Local::Empty => {}
                }
                let first = self.mark_pending(meter);
                let grant = self.plane.lease(meter, need, first).await;
                if first {
                    self.clear_pending(meter);
                }
                match grant {
                    Some(g) if g.granted >= need => {
                        self.store(meter, g.window, g.granted - need);
                        r.items.push(Item {
                            meter,
                            window: g.window,
                            reserved: need,
                        });
                    }
                    // The plane is gone: fail open (a limit never takes the gateway down).
                    None => {}
                    Some(g) => {
                        let ttl = if kind.is_budget() {
                            BUDGET_DENIAL_TTL
                        } else {
                            Duration::from_secs(scope.reset_in(kind, now).unwrap_or(1))
                        };
                        if let Some(l) = self.leases.borrow_mut().get_mut(&meter) {
                            l.denied = Some((g.window, Instant::now() + ttl, g.remaining));
                        }
                        self.cancel(r);
                        return Err(refusal(scope, kind, limit, need, now));
                    }
                }
            }
        }
        Ok(r)
    }

    /// Give back everything a request reserved: it was not forwarded after all.
    pub fn cancel(&self, r: Reservation) {
        let mut leases = self.leases.borrow_mut();
        for it in r.items {
            if let Some(l) = leases.get_mut(&it.meter) {
                if l.window == it.window {
                    l.free += it.reserved;
                }
            }
        }
    }

    /// Settle a forwarded request to what it used. rpm stays charged whatever the outcome;
    /// tokens and cost move to `actual` (unknown keeps the reservation).
    pub fn settle(&self, r: Reservation, actual: Actual) {
        let mut leases = self.leases.borrow_mut();
        let mut out = self.settlements.borrow_mut();
        for it in r.items {
            let used = match it.meter.kind {
                Kind::Rpm => 1,
                Kind::Tpm | Kind::Tokens => actual.tokens.unwrap_or(it.reserved),
                Kind::Usd => actual.cost_pico.unwrap_or(it.reserved),
            };
            let lease = leases.get_mut(&it.meter).filter(|l| l.window == it.window);
            // Units of this core's lease the use consumed (the rest of the reservation goes
            // back to the lease; an excess is taken from the lease's free units if it can).
            let released = match lease {
                Some(l) if used <= it.reserved => {
                    l.free += it.reserved - used;
                    used
                }
                Some(l) => {
                    let covered = (used - it.reserved).min(l.free);
                    l.free -= covered;
                    it.reserved + covered
                }
                None => used.min(it.reserved),
            };
            if it.meter.kind.is_budget() {
                out.push(Settlement {
                    meter: it.meter,
                    window: it.window,
                    spent: used,
                    released,
                });
            } else if used > released {
                // A rate window counts leased units as used already; only an excess beyond
                // what this core held must be added.
                out.push(Settlement {
                    meter: it.meter,
                    window: it.window,
                    spent: used - released,
                    released: 0,
                });
            }
        }
        if out.len() >= FLUSH_AT {
            let batch = std::mem::take(&mut *out);
            self.plane.settle(batch, Vec::new());
        }
    }

    /// Add a finished request's usage to the per key and model totals.
    pub fn record_usage(
        &self,
        key_id: &str,
        model: &str,
        prompt_tokens: u64,
        completion_tokens: u64,
        cost_pico: u64,
    ) {
        let mut usage = self.usage.borrow_mut();
        if !usage.contains_key(key_id) {
            usage.insert(key_id.to_string(), AHashMap::new());
        }
        let Some(models) = usage.get_mut(key_id) else {
            return;
        };
        if !models.contains_key(model) {
            models.insert(
                model.to_string(),
                UsageDelta {
                    key_id: key_id.to_string(),
                    model: model.to_string(),
                    ..UsageDelta::default()
                },
            );
        }
        let Some(e) = models.get_mut(model) else {
            return;
        };
        e.requests += 1;
        e.prompt_tokens += prompt_tokens;
        e.completion_tokens += completion_tokens;
        e.cost_pico = e.cost_pico.saturating_add(cost_pico);
    }

    /// Periodic work (every few ms, and once more at shutdown with `all`): send pending
    /// reports, give back idle budget leases, and every lease when the plane recalls them.
    pub fn tick(&self, all: bool) {
        let settlements = std::mem::take(&mut *self.settlements.borrow_mut());
        // Keep the maps (and their key strings) between ticks: only the counts are sent.
        let usage: Vec<UsageDelta> = self
            .usage
            .borrow_mut()
            .values_mut()
            .flat_map(|models| models.values_mut())
            .filter(|d| d.requests > 0)
            .map(|d| {
                let sent = d.clone();
                d.requests = 0;
                d.prompt_tokens = 0;
                d.completion_tokens = 0;
                d.cost_pico = 0;
                sent
            })
            .collect();
        {
            // Model names come from clients: do not keep an unbounded set of them.
            let mut u = self.usage.borrow_mut();
            if u.values().map(|m| m.len()).sum::<usize>() > MAX_USAGE_ROWS {
                u.clear();
            }
        }
        if !settlements.is_empty() || !usage.is_empty() {
            self.plane.settle(settlements, usage);
        }
        let epoch = self.plane.recall_epoch();
        let recall = all || epoch != self.recall_seen.get();
        self.recall_seen.set(epoch);
        let now = Instant::now();
        let mut back = Vec::new();
        for (meter, l) in self.leases.borrow_mut().iter_mut() {
            if recall {
                l.denied = None;
            }
            let idle = meter.kind.is_budget() && now.duration_since(l.last_used) > IDLE_LEASE;
            if l.free > 0 && (recall || idle) {
                back.push((*meter, l.window, l.free));
                l.free = 0;
            }
        }
        self.plane.give_back(back);
    }

    fn take_local(&self, meter: MeterId, window: u64, need: u64) -> Local {
        let mut leases = self.leases.borrow_mut();
        let l = leases.entry(meter).or_insert_with(Lease::new);
        if l.window == window && l.free >= need {
            l.free -= need;
            l.last_used = Instant::now();
            return Local::Taken;
        }
        match l.denied {
            Some((w, until, left)) if w == window && need > left => {
                if Instant::now() < until {
                    Local::Denied
                } else {
                    l.denied = None;
                    Local::Empty
                }
            }
            _ => Local::Empty,
        }
    }

    fn mark_pending(&self, meter: MeterId) -> bool {
        let mut leases = self.leases.borrow_mut();
        let l = leases.entry(meter).or_insert_with(Lease::new);
        !std::mem::replace(&mut l.pending, true)
    }

    fn clear_pending(&self, meter: MeterId) {
        if let Some(l) = self.leases.borrow_mut().get_mut(&meter) {
            l.pending = false;
        }
    }

    /// Keep `extra` granted units of `window`. A grant for an older window than the lease's
    /// is dropped (those units go unused); a newer one replaces the lease.
    fn store(&self, meter: MeterId, window: u64, extra: u64) {
        let mut leases = self.leases.borrow_mut();
        let l = leases.entry(meter).or_insert_with(Lease::new);
        if window > l.window {
            l.window = window;
            l.free = 0;
            l.denied = None;
        }
        if window == l.window {
            l.free += extra;
            l.last_used = Instant::now();
        }
    }
}

enum Local {
    Taken,
    Denied,
    Empty,
}

/// The 429 (rate) or 402 (budget) for a meter that cannot take a request.
fn refusal(scope: &ScopeInfo, kind: Kind, limit: u64, need: u64, now: u64) -> GatewayError {
    let name = &scope.name;
    let reset = scope.reset_in(kind, now);
    match kind {
        Kind::Rpm | Kind::Tpm => {
            let reset = reset.unwrap_or(60);
            let (unit, suffix) = if kind == Kind::Rpm {
                ("requests", "requests")
            } else {
                ("tokens", "tokens")
            };
            let message = if kind == Kind::Tpm && need > limit {
                format!(
                    "rate limit for {name}: this request needs about {need} tokens, more than the limit of {limit} tokens per minute"
                )
            } else {
                format!(
                    "rate limit reached for {name}: {limit} {unit} per minute; retry in {reset}s"
                )
            };
            let code = if kind == Kind::Rpm {
                "rate_limit_exceeded"
            } else {
                "tokens_rate_limit_exceeded"
            };
            GatewayError::new(429, ErrorType::RateLimit, code, message)
                .with_header("retry-after", reset.to_string())
                .with_header(limit_header(suffix), limit.to_string())
                .with_header(remaining_header(suffix), "0".to_string())
                .with_header(reset_header(suffix), format!("{reset}s"))
        }
        Kind::Tokens | Kind::Usd => {
            let (code, what) = if kind == Kind::Tokens {
                ("budget_exceeded", format!("{limit} tokens"))
            } else {
                (
                    "cost_budget_exceeded",
                    format!("{} USD", crate::pricing::pico_to_usd_string(limit)),
                )
            };
            let period = match scope.budget.period {
                crate::control::keys::Period::Lifetime => String::new(),
                p => format!(
                    " ({} budget, resets in {}s)",
                    p.as_str(),
                    reset.unwrap_or(0)
                ),
            };
            GatewayError::new(
                402,
                ErrorType::InsufficientQuota,
                code,
                format!("budget exhausted for {name}: {what}{period}"),
            )
        }
    }
}

fn limit_header(s: &str) -> &'static str {
    if s == "requests" {
        "x-ratelimit-limit-requests"
    } else {
        "x-ratelimit-limit-tokens"
    }
}

fn remaining_header(s: &str) -> &'static str {
    if s == "requests" {
        "x-ratelimit-remaining-requests"
    } else {
        "x-ratelimit-remaining-tokens"
    }
}

fn reset_header(s: &str) -> &'static str {
    if s == "requests" {
        "x-ratelimit-reset-requests"
    } else {
        "x-ratelimit-reset-tokens"
    }
}
