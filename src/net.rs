//! Socket checks the runtime does not offer: a non-blocking peek to learn whether an idle peer
//! has closed (or sent something unexpected) without consuming any byte.

use std::os::fd::{BorrowedFd, RawFd};

/// What a non-blocking peek saw on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing to read: the peer is idle and the connection open.
    Idle,
    /// Bytes are waiting to be read.
    HasData,
    /// The peer closed its side, or the socket is in error.
    Closed,
}

/// Peek one byte without blocking and without consuming it.
pub fn peek(fd: RawFd) -> PeerState {
    // SAFETY: callers pass the fd of a socket they own and keep open for the duration of this
    // call (a `TcpStream` they hold a reference to); the borrow does not outlive the call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut byte = [0u8; 1];
    match rustix::net::recv(
        fd,
        &mut byte,
        rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
    ) {
        Ok((0, _)) => PeerState::Closed,
        Ok(_) => PeerState::HasData,
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => PeerState::Idle,
        Err(_) => PeerState::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn peek_sees_idle_data_and_close_without_consuming() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert_eq!(peek(server.as_raw_fd()), PeerState::Idle);
        client.write_all(b"x").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(peek(server.as_raw_fd()), PeerState::HasData);
        // Still there: peek did not consume it.
        assert_eq!(peek(server.as_raw_fd()), PeerState::HasData);
        let mut buf = [0u8; 1];
        std::io::Read::read(&mut &server, &mut buf).expect("read");
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(peek(server.as_raw_fd()), PeerState::Closed);
    }
}
