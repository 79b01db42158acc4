//! Per-core keep-alive pools, one stack of idle connections per backend.
//!
//! Newest first: the most recently used connection is the least likely to have been closed by
//! the server and the most likely to have warm TCP state. Each checkout drops what is past the
//! backend's idle TTL or fails the liveness peek; a connection that saw an error, a timeout or a
//! cancel is never checked in (the caller simply drops it). No lock: the pool belongs to one core.

use std::cell::RefCell;
use std::time::Instant;

use super::{Backend, UpConn};

/// Idle connections kept per backend per core; past this the oldest are closed.
pub const MAX_IDLE_PER_BACKEND: usize = 256;

/// One core's idle upstream connections.
pub struct Pool {
    idle: RefCell<Vec<Vec<UpConn>>>,
}

impl Pool {
    pub fn new(backends: usize) -> Pool {
        Pool {
            idle: RefCell::new((0..backends).map(|_| Vec::new()).collect()),
        }
    }

    /// The newest usable idle connection to `backend`, marked as reused.
    pub fn checkout(&self, backend: &Backend) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        let stack = idle.get_mut(backend.index)?;
        let now = Instant::now();
        while let Some(mut conn) = stack.pop() {
            // Always peek, even on a connection used a moment ago: bytes the upstream sent after
            // the end of its last response (a body on a HEAD or 204, a late second response)
            // would otherwise be read as the next request's response, maybe another tenant's.
            // The peek is the one syscall per request left on io_uring; correctness first.
            if now.duration_since(conn.idle_since) < backend.idle_ttl && conn.is_idle_and_open() {
                conn.reused = true;
                crate::metrics::probe::pool_reused(backend.index, stack.len());
                return Some(conn);
            }
            // Too old or closed by the server: dropping closes it.
        }
        crate::metrics::probe::pool_idle(backend.index, 0);
        None
    }

    /// Return a connection whose last exchange ended cleanly.
    pub fn checkin(&self, backend: &Backend, mut conn: UpConn) {
        if backend.idle_ttl.is_zero() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let Some(stack) = idle.get_mut(backend.index) else {
            return;
        };
        let now = Instant::now();
        // The oldest sit at the bottom; trim the expired ones so an idle backend's pool shrinks.
        let expired = stack
            .iter()
            .take_while(|c| now.duration_since(c.idle_since) >= backend.idle_ttl)
            .count();
        let over = (stack.len() - expired + 1).saturating_sub(MAX_IDLE_PER_BACKEND);
        stack.drain(..expired + over);
        conn.idle_since = now;
        stack.push(conn);
        crate::metrics::probe::pool_idle(backend.index, stack.len());
    }
}
