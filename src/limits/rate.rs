//! Requests-per-minute limits on the data plane: each core spends quota leased from the
//! control plane ([`crate::control`]) and asks for more only when its lease runs out, so the
//! common case is a counter decrement with no message and no lock.

use std::cell::RefCell;

use crate::control::{current_window, seconds_to_reset, ControlHandle, ScopeId};
use crate::error::{ErrorType, GatewayError};

/// Largest lease a core asks for: bounds how much quota a quiet core can sit on.
const MAX_LEASE: u32 = 64;

#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    window: u64,
    left: u32,
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

    /// Take one request from every scope in `scopes`, or refuse naming the first scope that
    /// is out of quota (what was taken from the others is put back).
    pub async fn acquire(&self, scopes: &[ScopeId]) -> Result<(), GatewayError> {
        let window = current_window();
        for (i, &scope) in scopes.iter().enumerate() {
            if self.take_local(scope, window) {
                continue;
            }
            let want = self.lease_size.get(scope as usize).copied().unwrap_or(1);
            let grant = self.plane.lease(scope, want).await;
            match grant {
                Some(g) if g.granted > 0 => {
                    // Another task on this core may have stored a lease meanwhile: add, do
                    // not overwrite, or its quota would be lost.
                    let mut leases = self.leases.borrow_mut();
                    if let Some(l) = leases.get_mut(scope as usize) {
                        if l.window != g.window {
                            *l = Lease {
                                window: g.window,
                                left: 0,
                            };
                        }
                        l.left += g.granted - 1;
                    }
                }
                // The plane is gone: fail open (a limit never takes the gateway down).
                None => {}
                Some(_) => {
                    for &taken in &scopes[..i] {
                        self.put_back(taken, window);
                    }
                    return Err(self.denied(scope));
                }
            }
        }
        Ok(())
    }

    /// Give back one request of each scope, for a request that was admitted but then not
    /// forwarded. Returned to this core's lease (if still the same window).
    pub fn release(&self, scopes: &[ScopeId]) {
        let window = current_window();
        for &s in scopes {
            self.put_back(s, window);
        }
    }

    fn take_local(&self, scope: ScopeId, window: u64) -> bool {
        let mut leases = self.leases.borrow_mut();
        match leases.get_mut(scope as usize) {
            Some(l) if l.window == window && l.left > 0 => {
                l.left -= 1;
                true
            }
            _ => false,
        }
    }

    fn put_back(&self, scope: ScopeId, window: u64) {
        if let Some(l) = self.leases.borrow_mut().get_mut(scope as usize) {
            if l.window == window {
                l.left += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Scope;

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
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let window = current_window();
            let mut ok = 0;
            let mut last_err = None;
            for _ in 0..6 {
                match limiter.acquire(&[0, 1]).await {
                    Ok(()) => ok += 1,
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
            let key_only = [
                limiter.acquire(&[0]).await.is_ok(),
                limiter.acquire(&[0]).await.is_ok(),
                limiter.acquire(&[0]).await.is_ok(),
            ];
            if window == current_window() {
                assert_eq!(key_only, [true, true, false]);
            }
        });
    }
}
