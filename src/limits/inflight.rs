//! Lock-free in-flight caps: an atomic counter with try-acquire and an RAII permit.
//!
//! The permit is moved along with the response and dropped when its body has ended (or the
//! client went away), so a long SSE stream holds its slot for as long as it really runs. The
//! counter is shared by every core; a failed try costs one atomic read-modify-write and never
//! waits, since a full backend means "try the next candidate", not "queue".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Counter {
    in_flight: AtomicUsize,
    max: usize,
}

/// A cap of `max` concurrent holders, shared across cores.
#[derive(Debug, Clone)]
pub struct InflightLimiter {
    inner: Arc<Counter>,
}

impl InflightLimiter {
    /// A limiter that admits up to `max` holders at once.
    pub fn new(max: usize) -> Self {
        InflightLimiter {
            inner: Arc::new(Counter {
                in_flight: AtomicUsize::new(0),
                max,
            }),
        }
    }

    /// Take a slot if one is free.
    pub fn try_acquire(&self) -> Option<InflightPermit> {
        let c = &self.inner;
        let mut cur = c.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= c.max {
                return None;
            }
            match c.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(InflightPermit {
                        inner: self.inner.clone(),
                    })
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Holders right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.inner.max
    }
}

/// One held slot; released on drop.
#[derive(Debug)]
pub struct InflightPermit {
    inner: Arc<Counter>,
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_max_and_releases_on_drop() {
        let l = InflightLimiter::new(2);
        let a = l.try_acquire().expect("first");
        let b = l.try_acquire().expect("second");
        assert!(l.try_acquire().is_none());
        assert_eq!(l.in_flight(), 2);
        drop(a);
        let c = l.try_acquire().expect("slot freed");
        drop((b, c));
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn never_exceeds_max_across_threads() {
        let l = InflightLimiter::new(3);
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                let peak = peak.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(p) = l.try_acquire() {
                            peak.fetch_max(l.in_flight(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(l.in_flight(), 0);
    }
}
