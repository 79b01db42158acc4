//! Listening sockets: one per core on the same address with SO_REUSEPORT, so the kernel
//! spreads new connections over the cores and no accept lock is shared.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending-connection queue per listener; bursts of new connections (a load test's ramp-up, a
/// reconnect storm) must not be refused by a short queue.
const BACKLOG: i32 = 4096;

/// Bind `n` listeners on `addr`. With port 0, the first bind picks the port and the others
/// join it, so every core serves the same address.
pub fn bind_all(addr: &str, n: usize) -> std::io::Result<Vec<TcpListener>> {
    let mut resolved: SocketAddr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr}: no address"),
        )
    })?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let l = bind_one(resolved)?;
        resolved = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_one_shared_port() {
        let ls = bind_all("127.0.0.1:0", 3).expect("bind");
        let ports: Vec<u16> = ls
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        assert!(ports[0] != 0);
        assert!(ports.iter().all(|p| *p == ports[0]));
    }

    #[test]
    fn bad_address_is_an_error() {
        assert!(bind_all("not-an-address", 1).is_err());
    }
}
