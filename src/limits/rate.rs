//! Requests-per-minute limits on the data plane: each core spends quota leased from the
//! control plane ([`crate::control`]) and asks for more only when its lease runs out, so the
//! common case is a counter decrement with no message and no lock.

use std::cell::RefCell;

use crate::control::{current_window, seconds_to_reset, ControlHandle, ScopeId};
use crate::error::{ErrorType, GatewayError};

/// Largest lease a core asks for: bounds how much quota a quiet core can sit on.
const MAX_LEASE: u32 = 64;

/// Most scopes one request is charged to: its key, tenant, project and user.
pub const MAX_SCOPES: usize = 4;

#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    window: u64,
    left: u32,
    /// A lease request is in flight: other tasks of this core ask for one unit only, so a
    /// burst on one core cannot pull a whole minute's quota away from the other cores.
    pending: bool,
    /// The plane said "out of quota" for this window: refuse locally until it ends.
    denied: u64,
}

/// What one request was charged: (scope, window) pairs, to give back exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Charged {
    items: [(ScopeId, u64); MAX_SCOPES],
    len: usize,
}

impl Charged {
    fn push(&mut self, scope: ScopeId, window: u64) {
        if self.len < MAX_SCOPES {
            self.items[self.len] = (scope, window);
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (ScopeId, u64)> + '_ {
        self.items[..self.len].iter().copied()
    }
}

/// One core's leases, one per scope.
pub struct RateLimiter {
    plane: ControlHandle,
    leases: RefCell<Vec<Lease>>,
    lease_size: Vec<u32>,
}

impl RateLimiter {
    /// `cores` sizes the leases: a scope's limit split into `16 x cores` parts (at least 1,
    /// at most [`MAX_LEASE`]), so small limits are exact and large ones rarely need a message.
    pub fn new(plane: ControlHandle, cores: usize) -> RateLimiter {
        let n = plane.scope_count();
        let lease_size = (0..n as ScopeId)
            .map(|id| {
                let rpm = plane.scope(id).map_or(0, |s| s.rpm);
                (rpm / (16 * cores.max(1) as u32)).clamp(1, MAX_LEASE)
            })
            .collect();
        RateLimiter {
            plane,
            leases: RefCell::new(vec![Lease::default(); n]),
            lease_size,
        }
    }

    /// Take one request from every scope in `scopes` (at most [`MAX_SCOPES`]), or refuse
    /// naming the first scope that is out of quota (what was taken is put back).
    pub async fn acquire(&self, scopes: &[ScopeId]) -> Result<Charged, GatewayError> {
        let mut charged = Charged::default();
        for &scope in scopes.iter().take(MAX_SCOPES) {
            // The window is read per scope: an await below may cross a minute boundary.
            let window = current_window();
            match self.take_local(scope, window) {
                Local::Taken => {
                    charged.push(scope, window);
                    continue;
                }
                Local::Denied => {
                    self.release(charged);
                    return Err(self.denied(scope));
                }
                Local::Empty => {}
            }
            let first = self.mark_pending(scope);
            let want = if first {
                self.lease_size.get(scope as usize).copied().unwrap_or(1)
            } else {
                1
            };
            let grant = self.plane.lease(scope, want).await;
            if first {
                self.clear_pending(scope);
            }
            match grant {
                Some(g) if g.granted > 0 => {
                    self.store(scope, g.window, g.granted - 1);
                    charged.push(scope, g.window);
                }
                // The plane is gone: fail open (a limit never takes the gateway down).
                None => {}
                Some(g) => {
                    if let Some(l) = self.leases.borrow_mut().get_mut(scope as usize) {
                        l.denied = l.denied.max(g.window);
                    }
                    self.release(charged);
                    return Err(self.denied(scope));
                }
            }
        }
        Ok(charged)
    }

    /// Give back what [`RateLimiter::acquire`] charged, for a request that was not forwarded
    /// after all. A unit goes back only into the window it was charged in.
    pub fn release(&self, charged: Charged) {
        let mut leases = self.leases.borrow_mut();
        for (scope, window) in charged.iter() {
            if let Some(l) = leases.get_mut(scope as usize) {
                if l.window == window {
                    l.left += 1;
                }
            }
        }
    }

    fn take_local(&self, scope: ScopeId, window: u64) -> Local {
        let mut leases = self.leases.borrow_mut();
        match leases.get_mut(scope as usize) {
            Some(l) if l.window == window && l.left > 0 => {
                l.left -= 1;
                Local::Taken
            }
            Some(l) if l.denied == window => Local::Denied,
            _ => Local::Empty,
        }
    }

    /// Mark a lease request in flight; false when another task already has one.
    fn mark_pending(&self, scope: ScopeId) -> bool {
        let mut leases = self.leases.borrow_mut();
        match leases.get_mut(scope as usize) {
            Some(l) if !l.pending => {
                l.pending = true;
                true
            }
            _ => false,
        }
    }

    fn clear_pending(&self, scope: ScopeId) {
        if let Some(l) = self.leases.borrow_mut().get_mut(scope as usize) {
            l.pending = false;
        }
    }

    /// Keep `extra` granted units of `window`. A grant for a window older than the lease's is
    /// dropped (those units simply go unused); a newer one replaces the lease.
    fn store(&self, scope: ScopeId, window: u64, extra: u32) {
        if let Some(l) = self.leases.borrow_mut().get_mut(scope as usize) {
            if window > l.window {
                l.window = window;
                l.left = 0;
            }
            if window == l.window {
                l.left += extra;
            }
        }
    }

    fn denied(&self, scope: ScopeId) -> GatewayError {
        let (name, rpm) = self
            .plane
            .scope(scope)
            .map_or(("?", 0), |s| (s.name.as_str(), s.rpm));
        let reset = seconds_to_reset();
        GatewayError::new(
            429,
            ErrorType::RateLimit,
            "rate_limit_exceeded",
            format!("rate limit reached for {name}: {rpm} requests per minute; retry in {reset}s"),
        )
        .with_header("retry-after", reset.to_string())
        .with_header("x-ratelimit-limit-requests", rpm.to_string())
        .with_header("x-ratelimit-remaining-requests", "0".to_string())
        .with_header("x-ratelimit-reset-requests", format!("{reset}s"))
    }
}

enum Local {
    Taken,
    Denied,
    Empty,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Scope;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_core_admits_exactly_the_limit_and_names_the_scope() {
        let plane = ControlHandle::start(vec![
            Scope {
                name: "key \"a\"".into(),
                rpm: 5,
            },
            Scope {
                name: "tenant \"t\"".into(),
                rpm: 3,
            },
        ])
        .expect("plane");
        let limiter = RateLimiter::new(plane, 2);
        rt().block_on(async {
            let window = current_window();
            let mut ok = 0;
            let mut last_err = None;
            for _ in 0..6 {
                match limiter.acquire(&[0, 1]).await {
                    Ok(_) => ok += 1,
                    Err(e) => last_err = Some(e),
                }
            }
            if window != current_window() {
                return;
            }
            assert_eq!(ok, 3, "the tenant's 3 rpm binds before the key's 5");
            let e = last_err.expect("refused");
            assert_eq!(e.status, 429);
            assert!(e.message.contains("tenant \"t\""), "{}", e.message);
            assert!(e
                .headers
                .iter()
                .any(|(k, v)| *k == "x-ratelimit-limit-requests" && v == "3"));
            // The key's quota taken by refused requests was put back: 2 of its 5 remain.
            let mut key_only = [false; 3];
            for k in &mut key_only {
                *k = limiter.acquire(&[0]).await.is_ok();
            }
            if window == current_window() {
                assert_eq!(key_only, [true, true, false]);
            }
        });
    }

    #[test]
    fn a_burst_on_one_core_leaves_quota_for_the_others() {
        let plane = ControlHandle::start(vec![Scope {
            name: "s".into(),
            rpm: 2000,
        }])
        .expect("plane");
        let core_a = std::rc::Rc::new(RateLimiter::new(plane.clone(), 2));
        let core_b = RateLimiter::new(plane, 2);
        let mut rt = rt();
        let window = current_window();
        let admitted_a = rt.block_on(async {
            // 33 requests arrive in the same tick on core A.
            let tasks: Vec<_> = (0..33)
                .map(|_| {
                    let a = core_a.clone();
                    monoio::spawn(async move { a.acquire(&[0]).await.is_ok() })
                })
                .collect();
            let mut n = 0;
            for t in tasks {
                n += usize::from(t.await);
            }
            n
        });
        let admitted_b = rt.block_on(async {
            let mut n = 0;
            for _ in 0..10 {
                n += usize::from(core_b.acquire(&[0]).await.is_ok());
            }
            n
        });
        if window == current_window() {
            assert_eq!(admitted_a, 33);
            assert_eq!(admitted_b, 10, "core A leased only what its burst needed");
        }
    }

    #[test]
    fn a_release_goes_back_only_into_its_own_window() {
        let plane = ControlHandle::start(vec![Scope {
            name: "s".into(),
            rpm: 1,
        }])
        .expect("plane");
        let limiter = RateLimiter::new(plane, 1);
        rt().block_on(async {
            let window = current_window();
            let mut charged = limiter.acquire(&[0]).await.expect("first");
            // Pretend it was charged in the previous minute: giving it back must not add a
            // unit to the current minute's lease.
            charged.items[0].1 = window - 1;
            limiter.release(charged);
            let second = limiter.acquire(&[0]).await;
            if window == current_window() {
                assert!(
                    second.is_err(),
                    "rpm 1: no second request in the same minute"
                );
            }
        });
    }
}
