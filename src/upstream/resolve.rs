//! Backend addresses, resolved off the hot path.
//!
//! `ToSocketAddrs` blocks the calling thread, which on a data-plane core would stall every
//! connection it serves. So names are resolved once at startup and then refreshed by one
//! background thread; cores only load the current list (an `ArcSwap`, no lock).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

/// How often names are resolved again (DNS answers for API hosts change; we follow).
const REFRESH: Duration = Duration::from_secs(30);
/// Retry interval while a name does not resolve.
const RETRY: Duration = Duration::from_secs(2);

/// The current addresses of one backend host.
#[derive(Debug)]
pub struct Addrs {
    host: String,
    port: u16,
    /// True for IP literals: nothing to resolve, ever.
    fixed: bool,
    current: ArcSwap<Vec<SocketAddr>>,
}

impl Addrs {
    pub fn new(host: &str, port: u16) -> Addrs {
        let ip = host.parse::<IpAddr>().ok();
        Addrs {
            host: host.to_string(),
            port,
            fixed: ip.is_some(),
            current: ArcSwap::from_pointee(
                ip.map(|ip| vec![SocketAddr::new(ip, port)])
                    .unwrap_or_default(),
            ),
        }
    }

    /// The addresses known now (may be empty if the name never resolved).
    pub fn get(&self) -> Arc<Vec<SocketAddr>> {
        self.current.load_full()
    }

    /// Resolve now (blocking). Keeps the previous list on failure.
    pub fn refresh(&self) -> Result<(), String> {
        if self.fixed {
            return Ok(());
        }
        match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(it) => {
                let list: Vec<SocketAddr> = it.collect();
                if list.is_empty() {
                    return Err(format!("{} resolved to no address", self.host));
                }
                self.current.store(Arc::new(list));
                Ok(())
            }
            Err(e) => Err(format!("cannot resolve {}: {e}", self.host)),
        }
    }

    pub fn is_fixed(&self) -> bool {
        self.fixed
    }
}

/// Resolve every name once now, then keep them fresh from a background thread.
/// Returns the startup failures (as warnings: a backend may come up later).
pub fn start(all: Vec<Arc<Addrs>>) -> Vec<String> {
    let names: Vec<Arc<Addrs>> = all.into_iter().filter(|a| !a.is_fixed()).collect();
    let warnings: Vec<String> = names.iter().filter_map(|a| a.refresh().err()).collect();
    if !names.is_empty() {
        let spawned = std::thread::Builder::new()
            .name("ditto-resolver".into())
            .spawn(move || loop {
                let failed = names.iter().filter(|a| a.refresh().is_err()).count();
                std::thread::sleep(if failed > 0 { RETRY } else { REFRESH });
            });
        if let Err(e) = spawned {
            return vec![format!("cannot start the DNS refresh thread: {e}")];
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_need_no_resolution() {
        let a = Addrs::new("127.0.0.1", 80);
        assert!(a.is_fixed());
        assert_eq!(a.get().as_slice(), &["127.0.0.1:80".parse().expect("addr")]);
        let a = Addrs::new("::1", 443);
        assert_eq!(a.get()[0].port(), 443);
    }

    #[test]
    fn localhost_resolves_and_failures_keep_the_old_list() {
        let a = Addrs::new("localhost", 8080);
        assert!(a.refresh().is_ok());
        assert!(!a.get().is_empty());
        let b = Addrs::new("no-such-host.invalid", 1);
        assert!(b.refresh().is_err());
        assert!(b.get().is_empty());
    }
}
