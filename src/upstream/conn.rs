//! An upstream connection: plain TCP or TLS behind one type, plus what the pool needs to know.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::net::{peek, PeerState};

/// The byte stream to a backend.
pub enum UpStream {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl AsyncReadRent for UpStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.read(buf).await,
            UpStream::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.readv(buf).await,
            UpStream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.write(buf).await,
            UpStream::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.writev(buf).await,
            UpStream::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpStream::Plain(s) => s.flush().await,
            UpStream::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpStream::Plain(s) => s.shutdown().await,
            UpStream::Tls(s) => s.shutdown().await,
        }
    }
}

/// A connection to one backend, with its pool bookkeeping.
pub struct UpConn {
    pub stream: UpStream,
    /// The socket's fd, kept for the liveness peek (the TLS wrapper hides its TcpStream).
    fd: RawFd,
    /// Taken from the pool rather than freshly connected: a failure before any response byte
    /// may then be the server having closed it while idle, and is worth one retry.
    pub reused: bool,
    /// When it was last returned to the pool.
    pub idle_since: Instant,
    /// Counts the connection in its backend's open-connection metrics until dropped.
    pub counted: Option<crate::metrics::probe::ConnCount>,
}

impl UpConn {
    /// A fresh plain-TCP connection.
    pub fn plain(tcp: TcpStream) -> UpConn {
        let fd = tcp.as_raw_fd();
        Self::with(fd, UpStream::Plain(tcp))
    }

    /// A fresh TLS connection; `fd` is the underlying socket's.
    pub fn tls(fd: RawFd, stream: monoio_rustls::ClientTlsStream<TcpStream>) -> UpConn {
        Self::with(fd, UpStream::Tls(Box::new(stream)))
    }

    fn with(fd: RawFd, stream: UpStream) -> UpConn {
        UpConn {
            fd,
            stream,
            reused: false,
            idle_since: Instant::now(),
            counted: None,
        }
    }

    /// Count this new connection in `backend`'s connection metrics until it is dropped.
    pub fn counted(mut self, backend: usize) -> UpConn {
        self.counted = Some(crate::metrics::probe::ConnCount::opened(backend));
        self
    }

    /// An idle connection is usable only if the server has neither closed it nor sent bytes
    /// nobody asked for (a late error, a TLS close_notify).
    pub fn is_idle_and_open(&self) -> bool {
        peek(self.fd) == PeerState::Idle
    }
}
