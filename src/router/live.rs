//! The routing state every core reads and the control plane writes: the live route table
//! (swapped whole by `PUT /admin/config/router`), the breaker/health table, per-backend
//! in-flight counters and latency estimates, and the retry policy.
//!
//! Cores never take a lock here: the route table is an `ArcSwap` (one lock-free load per
//! request), the breaker table one byte per backend (see [`super::breaker`]), loads plain
//! atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::balance::{Loads, Strategy};
use super::breaker::{BreakerConfig, BreakerView};
use super::retry::RetryPolicy;
use super::{Group, Router, Weighted};
use crate::config::RouterConfig;
use crate::guardrails::Guardrails;

/// Default half-life of the latency estimate used by the `latency` strategy.
pub const DEFAULT_LATENCY_HALF_LIFE: Duration = Duration::from_secs(10);

/// Active health check settings (`--proxy-health-checks` and friends).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthOptions {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            path: "/v1/models".to_string(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Retry, breaker and health settings from the command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResilienceOptions {
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// `Some` with `--proxy-health-checks`.
    pub health: Option<HealthOptions>,
}

/// The compiled router plus the options that shape the candidate order.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub router: Router,
    pub strategy: Strategy,
    pub latency_half_life: Duration,
}

impl RouteTable {
    /// Compile a validated router config against the passthrough backends (`names`, in index
    /// order). Rule guardrails are compiled here; an invalid one is an error naming its rule.
    pub fn build(cfg: &RouterConfig, names: &[String]) -> Result<RouteTable, String> {
        let index_of = |n: &str| names.iter().position(|b| b == n);
        let group = |list: &[crate::config::WeightedBackend]| {
            Group::new(list.iter().filter_map(|w| {
                index_of(&w.backend).map(|backend| Weighted {
                    backend,
                    weight: w.weight,
                })
            }))
        };
        let mut default = group(&cfg.default_backends);
        if cfg.default_backends.is_empty() {
            default = Group::new((0..names.len()).map(|backend| Weighted {
                backend,
                weight: 1.0,
            }));
        } else if default.is_empty() {
            return Err("router.default_backends: no backend with a weight > 0".to_string());
        }
        let mut rules = Vec::with_capacity(cfg.rules.len());
        let mut guards = Vec::with_capacity(cfg.rules.len());
        for (i, r) in cfg.rules.iter().enumerate() {
            rules.push((r.model_prefix.clone(), r.exact, group(&r.backends)));
            guards.push(match &r.guardrails {
                Some(v) => {
                    let g = Guardrails::from_json(v)
                        .map_err(|e| format!("router.rules[{i}].guardrails.{e}"))?;
                    Some(Arc::new(g))
                }
                None => None,
            });
        }
        let strategy = match cfg.strategy.as_deref() {
            Some(s) => Strategy::parse(s).map_err(|e| format!("router.strategy: {e}"))?,
            None => Strategy::Weighted,
        };
        Ok(RouteTable {
            router: Router::new(rules, default).with_rule_guardrails(guards),
            strategy,
            latency_half_life: cfg
                .latency_half_life_secs
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map_or(DEFAULT_LATENCY_HALF_LIFE, Duration::from_secs_f64),
        })
    }
}

/// One backend's live load, shared by every core.
#[derive(Debug, Default)]
struct LoadCell {
    in_flight: AtomicU32,
    /// Latency estimate in microseconds as `f64` bits; `u64::MAX` = no measurement yet.
    latency_us: AtomicU64,
}

/// Routing state shared by the cores and the control plane.
pub struct Live {
    routes: ArcSwap<RouteTable>,
    pub breakers: BreakerView,
    loads: Arc<[LoadCell]>,
    pub options: ResilienceOptions,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("breakers", &self.breakers)
            .field("options", &self.options)
            .finish()
    }
}

impl Live {
    pub fn new(routes: RouteTable, breakers: BreakerView, options: ResilienceOptions) -> Live {
        let loads: Arc<[LoadCell]> = (0..breakers.len())
            .map(|_| LoadCell {
                in_flight: AtomicU32::new(0),
                latency_us: AtomicU64::new(u64::MAX),
            })
            .collect();
        Live {
            routes: ArcSwap::from_pointee(routes),
            breakers,
            loads,
            options,
        }
    }

    /// The current route table (one lock-free load).
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Publish a new route table: every core uses it from its next request.
    pub fn set_routes(&self, t: RouteTable) {
        self.routes.store(Arc::new(t));
    }

    /// Count a request in flight on `backend` until the guard drops.
    pub fn enter(self: &Arc<Self>, backend: usize) -> InFlight {
        if let Some(c) = self.loads.get(backend) {
            c.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        InFlight {
            live: Arc::clone(self),
            backend,
        }
    }

    /// Requests in flight on `backend`, all cores together.
    pub fn in_flight_of(&self, backend: usize) -> u32 {
        self.loads
            .get(backend)
            .map_or(0, |c| c.in_flight.load(Ordering::Acquire))
    }

    /// Publish a latency estimate (the control plane does, after outcomes and on its ticks).
    pub fn set_latency(&self, backend: usize, us: Option<f64>) {
        if let Some(c) = self.loads.get(backend) {
            c.latency_us
                .store(us.map_or(u64::MAX, f64::to_bits), Ordering::Release);
        }
    }
}

impl Loads for Live {
    fn is_available(&self, backend: usize) -> bool {
        self.breakers.is_available(backend)
    }

    fn in_flight(&self, backend: usize) -> u32 {
        self.in_flight_of(backend)
    }

    fn latency_us(&self, backend: usize) -> Option<f64> {
        let bits = self.loads.get(backend)?.latency_us.load(Ordering::Acquire);
        (bits != u64::MAX).then(|| f64::from_bits(bits))
    }
}

/// A request counted in flight on one backend.
pub struct InFlight {
    live: Arc<Live>,
    backend: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = self.live.loads.get(self.backend) {
            c.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteRule, WeightedBackend};
    use crate::router::breaker::BreakerBoard;

    fn wb(b: &str) -> WeightedBackend {
        WeightedBackend {
            backend: b.to_string(),
            weight: 1.0,
        }
    }

    #[test]
    fn route_table_compiles_rule_guardrails_and_strategy() {
        let names = vec!["a".to_string(), "b".to_string()];
        let cfg = RouterConfig {
            default_backends: vec![wb("a")],
            rules: vec![RouteRule {
                model_prefix: "gpt-".into(),
                exact: false,
                backends: vec![wb("b")],
                guardrails: Some(serde_json::json!({"deny_models": ["gpt-x"]})),
            }],
            strategy: Some("least_in_flight".into()),
            latency_half_life_secs: None,
        };
        let t = RouteTable::build(&cfg, &names).expect("builds");
        assert_eq!(t.strategy, Strategy::LeastInFlight);
        let (g, guard) = t.router.route(Some("gpt-4"));
        assert_eq!(g.candidates(1).next(), Some(1));
        assert!(guard.is_some());
        let (_, guard) = t.router.route(Some("llama"));
        assert!(guard.is_none());

        let mut bad = cfg.clone();
        bad.rules[0].guardrails = Some(serde_json::json!({"banned_regexes": ["("]}));
        let e = RouteTable::build(&bad, &names).expect_err("invalid regex");
        assert!(
            e.starts_with("router.rules[0].guardrails.banned_regexes[0]"),
            "{e}"
        );
    }

    #[test]
    fn in_flight_guards_count_and_release() {
        let board = BreakerBoard::new(2, BreakerConfig::default());
        let live = Arc::new(Live::new(
            RouteTable::default(),
            board.view(),
            ResilienceOptions::default(),
        ));
        let a = live.enter(1);
        let b = live.enter(1);
        assert_eq!(live.in_flight_of(1), 2);
        drop(a);
        assert_eq!(live.in_flight_of(1), 1);
        drop(b);
        assert_eq!(live.in_flight_of(1), 0);
        assert_eq!(live.latency_us(0), None);
        live.set_latency(0, Some(12.5));
        assert_eq!(live.latency_us(0), Some(12.5));
    }
}
