//! Shards: one pinned monoio runtime per core, each with its own SO_REUSEPORT listener.
//!
//! [`start`] binds every listener up front (so a bad address fails before any thread starts,
//! and port 0 resolves to one concrete port shared by all cores), starts the shard threads and
//! returns a [`ServerHandle`]. [`ServerHandle::shutdown`] asks every core to stop accepting,
//! drain its connections up to the drain timeout, and exit.

pub mod conn;
pub mod listener;
pub mod shard;
pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::proxy::Gateway;

/// Running shards.
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
    stops: Vec<flume::Sender<()>>,
}

/// Bind `workers` listeners on `listen` and start one shard thread per listener.
pub fn start(
    gw: Arc<Gateway>,
    listen: &str,
    workers: usize,
    drain: Duration,
) -> std::io::Result<ServerHandle> {
    let listeners = listener::bind_all(listen, workers)?;
    let local_addr = listeners[0].local_addr()?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::new();
    let mut stops = Vec::new();
    for (id, l) in listeners.into_iter().enumerate() {
        let (tx, rx) = flume::bounded(1);
        let gw = gw.clone();
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let t = std::thread::Builder::new()
            .name(format!("ditto-core-{id}"))
            .spawn(move || shard::run(id, core, l, gw, rx, drain))?;
        threads.push(t);
        stops.push(tx);
    }
    Ok(ServerHandle {
        local_addr,
        threads,
        stops,
    })
}

impl ServerHandle {
    /// Stop accepting, drain, and wait for every shard to finish.
    pub fn shutdown(self) {
        for s in &self.stops {
            let _ = s.send(());
        }
        self.join();
    }

    /// Wait for every shard thread to exit.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// A sender per shard, to trigger shutdown from another thread (signal handling).
    pub fn stop_senders(&self) -> Vec<flume::Sender<()>> {
        self.stops.clone()
    }
}

/// The number of CPUs this process may run on (the default for `--workers`).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
