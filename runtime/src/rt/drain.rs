//! Per-worker drain signal: one flag and the wakers of every connection
//! waiting idle for its next request. Registration slots are reused, so
//! the list is bounded by the number of idle connections.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Set once when the worker starts draining; wakes idle connections.
#[derive(Debug, Default)]
pub struct DrainState {
    draining: Cell<bool>,
    waiters: RefCell<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl DrainState {
    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts draining and wakes every waiter.
    pub fn start(&self) {
        self.draining.set(true);
        let mut w = self.waiters.borrow_mut();
        for slot in &mut w.slots {
            if let Some(waker) = slot.take() {
                waker.wake();
            }
        }
    }

    /// Resolves when draining starts.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            state: self,
            slot: None,
        }
    }
}

/// Future of [`DrainState::wait`].
#[derive(Debug)]
pub struct DrainWait<'a> {
    state: &'a DrainState,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.draining.get() {
            return Poll::Ready(());
        }
        let mut w = self.state.waiters.borrow_mut();
        let slot = match self.slot {
            Some(i) => i,
            None => {
                let i = match w.free.pop() {
                    Some(i) => i,
                    None => {
                        w.slots.push(None);
                        w.slots.len() - 1
                    }
                };
                drop(w);
                self.slot = Some(i);
                w = self.state.waiters.borrow_mut();
                i
            }
        };
        w.slots[slot] = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut w = self.state.waiters.borrow_mut();
            w.slots[i] = None;
            w.free.push(i);
        }
    }
}
