//! One core: a pinned monoio runtime running the accept loop, its connections, and the drain.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use monoio::net::TcpListener;

use super::shutdown::Shutdown;
use crate::proxy::{Core, Gateway};

/// Entries in each io_uring submission queue; enough for thousands of concurrent streams.
const URING_ENTRIES: u32 = 4096;

/// Thread body of shard `id`. Returns when drained.
pub fn run(
    id: usize,
    pin: Option<core_affinity::CoreId>,
    listener: std::net::TcpListener,
    gw: Arc<Gateway>,
    stop: flume::Receiver<()>,
    drain: Duration,
) {
    if let Some(c) = pin {
        core_affinity::set_for_current(c);
    }
    // FusionDriver picks io_uring when the kernel allows it and silently falls back to epoll
    // (also when MONOIO_FORCE_LEGACY_DRIVER=1), so we say which one this core got.
    let uring = monoio::utils::detect_uring();
    // DITTO_URING_PLAIN=1 turns the ring tuning off, to measure what it buys.
    let tuned = uring && std::env::var_os("DITTO_URING_PLAIN").is_none();
    let (rt, driver) = match tuned.then(tuned_runtime) {
        Some(Ok(rt)) => (Ok(rt), "io_uring (coop + deferred task run)"),
        _ => (
            plain_runtime(),
            if uring { "io_uring" } else { "legacy (epoll)" },
        ),
    };
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            crate::error!("core {id}: cannot start the runtime: {e}");
            return;
        }
    };
    crate::info!(
        "core {id}: I/O driver {driver}{}",
        pin.map(|c| format!(", pinned to CPU {}", c.id))
            .unwrap_or_default()
    );
    rt.block_on(serve(id, listener, gw, stop, drain));
}

/// The runtime type FusionDriver builds: io_uring or legacy, each with a timer.
type CoreRuntime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// An io_uring runtime with COOP_TASKRUN + SINGLE_ISSUER + DEFER_TASKRUN: completions are
/// processed when this core enters the ring instead of interrupting it (measured: about 10%
/// more proxied requests per core than a plain ring here). One ring per thread makes
/// SINGLE_ISSUER safe. Kernels before 6.1 refuse the setup; the caller then builds a plain one.
fn tuned_runtime() -> std::io::Result<CoreRuntime> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
        .enable_timer()
        .build()
}

fn plain_runtime() -> std::io::Result<CoreRuntime> {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build()
}

async fn serve(
    id: usize,
    listener: std::net::TcpListener,
    gw: Arc<Gateway>,
    stop: flume::Receiver<()>,
    drain: Duration,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            crate::error!("core {id}: cannot register the listener: {e}");
            return;
        }
    };
    let shutdown = Shutdown::new();
    let core = Rc::new(Core::new(gw, id, shutdown.clone()));
    {
        let shutdown = shutdown.clone();
        monoio::spawn(async move {
            let _ = stop.recv_async().await;
            shutdown.fire();
        });
    }
    {
        // Housekeeping: send settled usage to the control plane, give back idle leases, hand
        // buffered access-log lines to the writer. Its period bounds how much usage a crash
        // can lose on the way, and how late a log line appears.
        let core = core.clone();
        let shutdown = shutdown.clone();
        monoio::spawn(async move {
            while !shutdown.is_fired() {
                monoio::time::sleep(QUOTA_TICK).await;
                core.quota.tick(false);
                core.gw.control.flush_outcomes();
                core.obs.flush_log();
            }
        });
    }
    let active = Rc::new(Cell::new(0usize));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = monoio::select! {
            _ = shutdown.wait() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                let core = core.clone();
                let guard = ActiveGuard::new(active.clone());
                monoio::spawn(async move {
                    let _guard = guard;
                    if contained(super::conn::serve(core, stream)).await.is_err() {
                        crate::error!("core {id}: a connection task panicked; connection closed");
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on a full fd table.
                crate::warn!("core {id}: accept failed: {e}; retrying in {backoff:?}");
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + drain;
    while active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if active.get() > 0 {
        crate::warn!(
            "core {id}: drain timeout; closing {} connection(s)",
            active.get()
        );
    }
    // Everything settled so far goes to the control plane before the core exits.
    core.quota.tick(true);
    core.gw.control.flush_outcomes();
    core.obs.flush_log();
}

/// How often a core reports settled usage and returns idle leases.
const QUOTA_TICK: Duration = Duration::from_millis(20);

/// Run a connection's future so that a panic inside it ends only that future: monoio does not
/// catch panics in tasks, and an uncaught one would take the whole core (every connection on
/// it) down. `Err` carries the panic payload.
pub async fn contained<F: std::future::Future<Output = ()>>(fut: F) -> std::thread::Result<()> {
    std::panic::AssertUnwindSafe(fut).catch_unwind().await
}

/// Counts a live connection for the drain; decrements on drop, panics included.
struct ActiveGuard(Rc<Cell<usize>>);

impl ActiveGuard {
    fn new(c: Rc<Cell<usize>>) -> Self {
        c.set(c.get() + 1);
        ActiveGuard(c)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_connection_costs_only_itself() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        let survived = rt.block_on(async {
            let crashed = monoio::spawn(contained(async {
                monoio::time::sleep(Duration::from_millis(1)).await;
                panic!("boom in a connection");
            }));
            let healthy = monoio::spawn(async {
                monoio::time::sleep(Duration::from_millis(5)).await;
                42
            });
            assert!(
                crashed.await.is_err(),
                "the panic is reported, not propagated"
            );
            healthy.await
        });
        assert_eq!(survived, 42, "other tasks on the core keep running");
    }
}
