//! The control plane: one thread that owns the shared, mutable state of the gateway, reached
//! from the data-plane cores only by message (DESIGN.md point 6). No core ever takes a lock.
//!
//! Today it owns the requests-per-minute windows of every rate-limit scope and hands out
//! *leases*: a core asks for a few requests' worth of quota, spends them locally without any
//! message, and asks again when they run out. The plane never grants more than a scope's limit
//! in a window, so a limit is never exceeded, whatever the number of cores; the price is that
//! quota leased to a core that then goes quiet is not usable by the others until the window
//! ends (at most `(cores - 1) x lease` requests under the limit). Leases are sized so that a
//! small limit gets leases of one request, which makes it exact.
//!
//! Windows are fixed wall-clock minutes (`unix_seconds / 60`), the unit OpenAI's rpm headers
//! describe; the reset time reported is the end of the current minute.

pub mod keys;
pub mod store;

use std::time::{SystemTime, UNIX_EPOCH};

/// Index of a rate-limit scope (a key, tenant, project or user) in the table built at startup.
pub type ScopeId = u32;

/// A scope and its limit.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Human name for errors, e.g. `key "team-a"` or `tenant "acme"`.
    pub name: String,
    /// Requests per minute; 0 blocks every request.
    pub rpm: u32,
}

/// The plane's answer to a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Requests granted (0: the scope is out of quota for this window).
    pub granted: u32,
    /// The window (unix minute) the grant is valid for.
    pub window: u64,
    /// What is left for the scope in this window after this grant.
    pub remaining: u32,
}

enum Msg {
    Lease {
        scope: ScopeId,
        want: u32,
        reply: flume::Sender<Grant>,
    },
}

/// A cheap, `Send` handle to the control plane.
#[derive(Clone)]
pub struct ControlHandle {
    tx: flume::Sender<Msg>,
    scopes: std::sync::Arc<Vec<Scope>>,
}

/// The current window: the unix minute.
pub fn current_window() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Seconds until the current window ends (at least 1).
pub fn seconds_to_reset() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    60 - now % 60
}

impl ControlHandle {
    /// Start the control-plane thread for `scopes`.
    pub fn start(scopes: Vec<Scope>) -> std::io::Result<ControlHandle> {
        let (tx, rx) = flume::unbounded::<Msg>();
        let limits: Vec<u32> = scopes.iter().map(|s| s.rpm).collect();
        std::thread::Builder::new()
            .name("ditto-control".into())
            .spawn(move || run(rx, limits))?;
        Ok(ControlHandle {
            tx,
            scopes: std::sync::Arc::new(scopes),
        })
    }

    /// The scope table.
    pub fn scope(&self, id: ScopeId) -> Option<&Scope> {
        self.scopes.get(id as usize)
    }

    /// Number of scopes.
    pub fn scope_count(&self) -> usize {
        self.scopes.len()
    }

    /// Ask for up to `want` requests of `scope`'s quota in the current window. `None` when the
    /// plane is gone (the caller decides whether that fails open or closed).
    pub async fn lease(&self, scope: ScopeId, want: u32) -> Option<Grant> {
        let (reply, rx) = flume::bounded(1);
        self.tx.send(Msg::Lease { scope, want, reply }).ok()?;
        rx.recv_async().await.ok()
    }
}

/// The plane's loop: one window counter per scope.
fn run(rx: flume::Receiver<Msg>, limits: Vec<u32>) {
    let mut used: Vec<(u64, u32)> = vec![(0, 0); limits.len()];
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Lease { scope, want, reply } => {
                let now = current_window();
                let grant = match (limits.get(scope as usize), used.get_mut(scope as usize)) {
                    (Some(&limit), Some(slot)) => {
                        let window = now;
                        // Only forward: a clock stepped back must not hand out a second quota.
                        if window > slot.0 {
                            *slot = (window, 0);
                        }
                        let granted = want.min(limit.saturating_sub(slot.1));
                        slot.1 += granted;
                        Grant {
                            granted,
                            window: slot.0,
                            remaining: limit - slot.1,
                        }
                    }
                    _ => Grant {
                        granted: 0,
                        window: now,
                        remaining: 0,
                    },
                };
                let _ = reply.send(grant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(f)
    }

    #[test]
    fn grants_never_exceed_the_limit_in_a_window() {
        let h = ControlHandle::start(vec![
            Scope {
                name: "key \"a\"".into(),
                rpm: 10,
            },
            Scope {
                name: "key \"zero\"".into(),
                rpm: 0,
            },
        ])
        .expect("start");
        block_on(async {
            let mut total = 0;
            let mut last = None;
            let first = current_window();
            for _ in 0..10 {
                let g = h.lease(0, 4).await.expect("grant");
                if g.window != first {
                    return; // the minute turned mid-test; nothing to conclude
                }
                total += g.granted;
                last = Some(g);
            }
            assert_eq!(total, 10);
            assert_eq!(last.map(|g| (g.granted, g.remaining)), Some((0, 0)));
            assert_eq!(
                h.lease(1, 1).await.map(|g| g.granted),
                Some(0),
                "rpm 0 blocks all"
            );
            assert_eq!(
                h.lease(7, 1).await.map(|g| g.granted),
                Some(0),
                "unknown scope"
            );
        });
    }

    #[test]
    fn concurrent_cores_share_one_limit() {
        let h = ControlHandle::start(vec![Scope {
            name: "s".into(),
            rpm: 1000,
        }])
        .expect("start");
        let window = current_window();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    block_on(async {
                        let mut got = 0;
                        for _ in 0..400 {
                            got += h.lease(0, 3).await.map_or(0, |g| g.granted);
                        }
                        got
                    })
                })
            })
            .collect();
        let total: u32 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        if window == current_window() {
            assert_eq!(
                total, 1000,
                "4 cores asked for 4800 and got exactly the limit"
            );
        }
    }
}
