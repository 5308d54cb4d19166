//! The `Date` field the gateway writes (RFC 9110 §6.6.1): on its own
//! answers, as an origin server with a clock must, and on a forwarded
//! response that came without one, as a recipient with a clock must.
//! Formatted at most once a second per thread (as nginx caches its time
//! strings); each call reads the coarse real-time clock (vDSO, no TSC).

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use super::ResponseHead;

/// An IMF-fixdate is always this long: `Sun, 06 Nov 1994 08:49:37 GMT`.
const LEN: usize = 29;

thread_local! {
    /// The second last formatted, and its IMF-fixdate.
    static CACHED: Cell<(i64, [u8; LEN])> = const { Cell::new((i64::MIN, [0; LEN])) };
}

/// Now, as an IMF-fixdate.
pub fn http_date() -> [u8; LEN] {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse).tv_sec;
    CACHED.with(|cached| {
        let (second, date) = cached.get();
        if second == now {
            return date;
        }
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap_or(0));
        let text = httpdate::fmt_http_date(when);
        // Four-digit years only: a clock outside them gets the epoch, a
        // date still well-formed.
        let mut date = *b"Thu, 01 Jan 1970 00:00:00 GMT";
        if text.len() == LEN {
            date.copy_from_slice(text.as_bytes());
        }
        cached.set((now, date));
        date
    })
}

/// Adds `date: <now>` to a forwarded response that has none (a `Date`
/// its `Connection` names is not forwarded, so it does not count).
pub(crate) fn add_missing_date(resp: &mut ResponseHead) {
    if resp.headers().get_all_end_to_end("date").next().is_none() {
        resp.headers_mut().append("date", &http_date());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_imf_fixdate_of_now() {
        let date = http_date();
        let text = std::str::from_utf8(&date).unwrap_or_default();
        let parsed = httpdate::parse_http_date(text).unwrap_or(SystemTime::UNIX_EPOCH);
        let off = SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(5), "{text}");
        assert!(
            text.ends_with(" GMT") && text.as_bytes()[3] == b',',
            "{text}"
        );
    }
}
