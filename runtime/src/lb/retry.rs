//! The retry budget: retries may add at most a fifth to an upstream's
//! load, plus a small floor, per worker (after Envoy's and Linkerd's
//! budgets). During an outage every request fails; without a budget each
//! would be sent `1 + attempts` times and the retries would multiply the
//! load on servers that are already struggling.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Tokens one request deposits; a retry costs [`RETRY_COST`]: retries are
/// at most `DEPOSIT / RETRY_COST` = 20% of requests.
const DEPOSIT: u32 = 1;
/// Tokens one retry takes.
const RETRY_COST: u32 = 5;
/// At most this many retries are banked (bounds a burst after quiet time).
const CAP: u32 = 100 * RETRY_COST;
/// Retries allowed per second per worker even without deposits, so a
/// low-traffic upstream can still retry at all.
pub const FLOOR_PER_SECOND: u32 = 3;

/// One upstream's retry budget on one worker.
#[derive(Debug, Default)]
pub struct RetryBudget {
    tokens: Cell<u32>,
    floor_used: Cell<u32>,
    floor_since: Cell<Option<Instant>>,
}

impl RetryBudget {
    /// A request was sent (first tries only).
    pub fn deposit(&self) {
        self.tokens.set((self.tokens.get() + DEPOSIT).min(CAP));
    }

    /// Whether a retry would be allowed at `now` (takes nothing).
    pub fn has_room(&self, now: Instant) -> bool {
        self.tokens.get() >= RETRY_COST || self.floor_left(now) > 0
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        if self.tokens.get() >= RETRY_COST {
            self.tokens.set(self.tokens.get() - RETRY_COST);
            return true;
        }
        if self.floor_left(now) > 0 {
            self.floor_used.set(self.floor_used.get() + 1);
            return true;
        }
        false
    }

    fn floor_left(&self, now: Instant) -> u32 {
        let fresh = self
            .floor_since
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if fresh {
            self.floor_since.set(Some(now));
            self.floor_used.set(0);
        }
        FLOOR_PER_SECOND.saturating_sub(self.floor_used.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fifth_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.deposit();
        }
        let mut granted = 0;
        while b.withdraw(t0) {
            granted += 1;
        }
        assert_eq!(granted, 20 + FLOOR_PER_SECOND);
        assert!(!b.has_room(t0));
        // The floor comes back each second.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.has_room(t1));
        assert_eq!((0..10).filter(|_| b.withdraw(t1)).count(), 3);
    }

    #[test]
    fn banked_retries_are_capped() {
        let t0 = Instant::now();
        let b = RetryBudget::default();
        for _ in 0..100_000 {
            b.deposit();
        }
        let granted = (0..1000).filter(|_| b.withdraw(t0)).count();
        assert_eq!(granted, 100 + FLOOR_PER_SECOND as usize);
    }
}
