//! Open a connection to a backend within its connect timeout: TCP (each resolved address in
//! turn), `TCP_NODELAY`, then TLS with SNI when the backend is https.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use monoio::net::TcpStream;
use rustls::ClientConfig;

use super::{Backend, UpConn};

/// Why a connection could not be made; every case is "before any request byte was sent", so
/// the caller may move on to the next candidate.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub timed_out: bool,
    pub message: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Connect to `backend` (TCP, then TLS if needed) within `backend.connect_timeout`.
pub async fn connect(backend: &Backend, tls: &Arc<ClientConfig>) -> Result<UpConn, ConnectError> {
    match monoio::time::timeout(backend.connect_timeout, connect_inner(backend, tls)).await {
        Ok(r) => r.map(|c| c.counted(backend.index)),
        Err(_) => Err(ConnectError {
            timed_out: true,
            message: format!(
                "connect to backend \"{}\" timed out after {:?}",
                backend.name, backend.connect_timeout
            ),
        }),
    }
}

async fn connect_inner(backend: &Backend, tls: &Arc<ClientConfig>) -> Result<UpConn, ConnectError> {
    let addrs = backend.addrs.get();
    let fail = |message: String| ConnectError {
        timed_out: false,
        message,
    };
    if addrs.is_empty() {
        return Err(fail(format!(
            "backend \"{}\": {} has not resolved to any address",
            backend.name, backend.host
        )));
    }
    let mut last = String::new();
    for addr in addrs.iter() {
        match TcpStream::connect_addr(*addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let Some(name) = &backend.server_name else {
                    return Ok(UpConn::plain(tcp));
                };
                let fd = tcp.as_raw_fd();
                let connector = monoio_rustls::TlsConnector::from(tls.clone());
                return match connector.connect(name.clone(), tcp).await {
                    Ok(s) => Ok(UpConn::tls(fd, s)),
                    Err(e) => Err(fail(format!(
                        "TLS handshake with backend \"{}\" ({addr}) failed: {e}",
                        backend.name
                    ))),
                };
            }
            Err(e) => {
                last = format!(
                    "connect to backend \"{}\" ({addr}) failed: {e}",
                    backend.name
                )
            }
        }
    }
    Err(fail(last))
}
