//! One core's shutdown signal: fired once, remembered, awaited by the accept loop and by every
//! idle keep-alive connection (so they close at once instead of waiting out their timeout).
//!
//! Per core and `!Send` on purpose: the cross-thread part is a single message per core from the
//! signal thread; from there on, wake-ups stay on the core.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    /// Slots for waiting futures; a future keeps its slot index so re-polls do not grow this.
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

/// A cheap handle; clones share the signal.
#[derive(Clone, Default)]
pub struct Shutdown(Rc<Inner>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Fire the signal and wake every waiter.
    pub fn fire(&self) {
        self.0.fired.set(true);
        for w in self.0.wakers.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.get()
    }

    /// Resolves once the signal has fired.
    pub fn wait(&self) -> Wait {
        Wait {
            inner: self.0.clone(),
            slot: None,
        }
    }
}

/// Future returned by [`Shutdown::wait`].
pub struct Wait {
    inner: Rc<Inner>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.get() {
            return Poll::Ready(());
        }
        let slot = match self.slot {
            Some(s) => s,
            None => {
                let s = match self.inner.free.borrow_mut().pop() {
                    Some(s) => s,
                    None => {
                        let mut w = self.inner.wakers.borrow_mut();
                        w.push(None);
                        w.len() - 1
                    }
                };
                self.slot = Some(s);
                s
            }
        };
        self.inner.wakers.borrow_mut()[slot] = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            if let Some(w) = self.inner.wakers.borrow_mut().get_mut(s) {
                *w = None;
            }
            self.inner.free.borrow_mut().push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_wake_on_fire_and_slots_are_reused() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let s = Shutdown::new();
            for _ in 0..3 {
                // A waiter that is dropped before firing gives its slot back.
                let w = s.wait();
                let r = monoio::time::timeout(std::time::Duration::from_millis(5), w).await;
                assert!(r.is_err());
            }
            assert!(s.0.wakers.borrow().len() <= 1);
            let s2 = s.clone();
            let h = monoio::spawn(async move { s2.wait().await });
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
            s.fire();
            h.await;
            assert!(s.is_fired());
            s.wait().await;
        });
    }
}
