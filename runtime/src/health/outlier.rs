//! Passive health (outlier detection), per worker and per endpoint: what
//! real requests tell about a server, without any probe.
//!
//! [`CONSECUTIVE_FAILURES`] failures in a row (connect errors, timeouts,
//! 5xx answers) eject the endpoint: new requests avoid it for
//! [`BASE_EJECTION`], doubled at each ejection that follows without a
//! success in between, up to [`MAX_EJECTION`]. When the ejection ends the
//! endpoint gets requests again; one success resets everything. While
//! every endpoint of an upstream is ejected they are all tried anyway (the
//! only way to learn that one came back; the answer says more than a 503).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Failures in a row that eject an endpoint.
pub const CONSECUTIVE_FAILURES: u32 = 3;
/// First ejection time.
pub const BASE_EJECTION: Duration = Duration::from_secs(2);
/// Longest ejection time.
pub const MAX_EJECTION: Duration = Duration::from_secs(32);

/// What a recorded failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierVerdict {
    /// Counted, not (yet) ejected.
    Counted,
    /// The endpoint is now ejected for this long.
    Ejected(Duration),
}

/// One endpoint's passive health on one worker.
#[derive(Debug, Default)]
pub struct Outlier {
    failures: Cell<u32>,
    ejections: Cell<u32>,
    until: Cell<Option<Instant>>,
}

impl Outlier {
    /// Whether the endpoint may get new requests at `now`.
    pub fn is_available(&self, now: Instant) -> bool {
        self.until.get().is_none_or(|until| now >= until)
    }

    /// A request to the endpoint failed at `now`.
    pub fn failure(&self, now: Instant) -> OutlierVerdict {
        if !self.is_available(now) {
            // Already out (a request that started before the ejection).
            return OutlierVerdict::Counted;
        }
        let n = self.failures.get() + 1;
        self.failures.set(n);
        if n < CONSECUTIVE_FAILURES {
            return OutlierVerdict::Counted;
        }
        let shift = self.ejections.get().min(4);
        let time = (BASE_EJECTION * (1 << shift)).min(MAX_EJECTION);
        self.ejections.set(self.ejections.get() + 1);
        self.failures.set(0);
        self.until.set(Some(now + time));
        OutlierVerdict::Ejected(time)
    }

    /// A request to the endpoint succeeded.
    pub fn success(&self) {
        self.failures.set(0);
        self.ejections.set(0);
        self.until.set(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_with_backoff() {
        let t0 = Instant::now();
        let o = Outlier::default();
        assert!(o.is_available(t0));
        assert_eq!(o.failure(t0), OutlierVerdict::Counted);
        o.success();
        assert_eq!(o.failure(t0), OutlierVerdict::Counted);
        assert_eq!(o.failure(t0), OutlierVerdict::Counted);
        assert_eq!(o.failure(t0), OutlierVerdict::Ejected(BASE_EJECTION));
        assert!(!o.is_available(t0 + Duration::from_secs(1)));
        let t1 = t0 + BASE_EJECTION;
        assert!(o.is_available(t1));
        for _ in 1..CONSECUTIVE_FAILURES {
            o.failure(t1);
        }
        assert_eq!(o.failure(t1), OutlierVerdict::Ejected(BASE_EJECTION * 2));
        let mut t = t1;
        for _ in 0..10 {
            t += MAX_EJECTION;
            for _ in 1..CONSECUTIVE_FAILURES {
                o.failure(t);
            }
            o.failure(t);
        }
        assert!(!o.is_available(t + MAX_EJECTION - Duration::from_millis(1)));
        assert!(o.is_available(t + MAX_EJECTION), "capped");
        o.success();
        assert!(o.is_available(t));
    }
}
