//! Deadlines for operations on the request path.
//!
//! compio's `timeout_at(deadline, f)` is two nested `async fn`s around a
//! `select!`: each level stores its own copy of `f`, so the future grows
//! to about three times `f` (an upstream read: 432 bytes inside, 1,488
//! with the timeout), it reads the clock twice more to turn the deadline
//! into a duration and back, and `select!` shuffles its branches on every
//! poll. Every upstream exchange awaits several of these, and an HTTP/2
//! stream's whole future is moved into its task when the
//! stream starts, so the size is copied per request. [`within`] is the
//! same contract as one small struct: the operation, then a timer of the
//! worker's wheel ([`super::timer`]: cheaper to arm and cancel than
//! compio's, which nearly every deadline here is).
//!
//! Writes are bounded by their pauses, not their length ([`write_paced`]):
//! a peer that keeps taking bytes, however slowly, is served; one that
//! stops taking them for the timeout is given up on (nginx's
//! `send_timeout`, "between two successive write operations").

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use super::timer::{Timer, coarse_now, sleep, sleep_until};

/// The deadline passed before the operation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// `future`, unless `deadline` comes first; see [`within`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct Within<F, T> {
        #[pin]
        future: F,
        #[pin]
        timer: T,
    }
}

impl<F: Future, T: Future<Output = ()>> Future for Within<F, T> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The operation first: a result that is ready wins over a timer
        // that expired meanwhile.
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match this.timer.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `future` until `deadline`; dropped (cancelled) when it passes. The
/// timer is armed on the first poll, not here.
pub fn within<F: Future>(deadline: Instant, future: F) -> Within<F, Timer> {
    Within {
        future,
        timer: sleep_until(deadline),
    }
}

/// [`within`] `timeout` from when the operation first has to wait. The
/// clock is read only then ([`sleep`] reads it on its first poll, which
/// comes after a poll of the operation that returned pending): a write or
/// read that completes at once arms no timer.
pub fn within_for<F: Future>(timeout: Duration, future: F) -> Within<F, Timer> {
    Within {
        future,
        timer: sleep(timeout),
    }
}

/// Writes all of `buf` to `tcp`, failing with `TimedOut` once one partial
/// write makes no progress within `pause`. The whole write may take far
/// longer than `pause` for a slow reader; only a stall ends it. On a
/// timeout the buffer stays with the cancelled operation and an empty one
/// comes back (the caller closes the connection).
pub async fn write_paced(
    tcp: &compio::net::TcpStream,
    mut buf: Vec<u8>,
    pause: Duration,
) -> compio::BufResult<(), Vec<u8>> {
    use compio::BufResult;
    use compio::buf::{IntoInner as _, IoBuf as _};
    use compio::io::AsyncWrite as _;
    let mut sent = 0;
    while sent < buf.len() {
        let mut sink = tcp;
        match within_for(pause, sink.write(buf.slice(sent..))).await {
            Err(Elapsed) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped reading");
                return BufResult(Err(e), Vec::new());
            }
            Ok(BufResult(res, slice)) => {
                buf = slice.into_inner();
                match res {
                    Ok(0) => return BufResult(Err(std::io::ErrorKind::WriteZero.into()), buf),
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return BufResult(Err(e), buf),
                }
            }
        }
    }
    BufResult(Ok(()), buf)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Runs `f` to its end on a fresh runtime (also used by `timer`'s tests).
    pub(in crate::rt) fn run<F: Future>(f: F) -> F::Output {
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn finishes_before_the_deadline() {
        let out = run(within_for(Duration::from_secs(5), async { 7 }));
        assert_eq!(out, Ok(7));
    }

    #[test]
    fn a_pending_operation_times_out() {
        let out = run(within_for(
            Duration::from_millis(20),
            std::future::pending::<()>(),
        ));
        assert_eq!(out, Err(Elapsed));
    }

    #[test]
    fn a_ready_result_wins_over_a_passed_deadline() {
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(run(within(past, async { 1 })), Ok(1));
    }

    #[test]
    fn is_not_much_bigger_than_the_operation() {
        let op = async {
            let buf = [0u8; 400];
            std::future::ready(()).await;
            buf.len()
        };
        let op_size = std::mem::size_of_val(&op);
        let bounded = within(Instant::now(), op);
        assert!(std::mem::size_of_val(&bounded) < op_size + 128);
    }
}
