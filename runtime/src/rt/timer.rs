//! The request path's timers: one coarse timer wheel per worker thread.
//!
//! A proxied request arms about four deadlines (the client's read and
//! write, the upstream's write and read), and nearly every one is cancelled
//! long before it could fire. compio's timers keep each in one `BTreeMap`
//! keyed by `(Instant, id)`: arming reads the clock (a TSC read, slow in a
//! VM), every poll looks the entry up and may clone the waker, every drop
//! removes it. Under load that was 5-7 % of a worker's CPU (TLS HTTP/1.1,
//! bench/RESULTS.md). Here:
//!
//! - a deadline is rounded *up* to a [`TICK`], and the timers of one tick
//!   share a bucket: an intrusive list through a slab, so arming and
//!   cancelling are O(1) once the bucket is found;
//! - [`sleep`] reads the kernel's coarse monotonic clock (the vDSO's copy of
//!   the last scheduler tick, no TSC read) plus its resolution, so a
//!   timeout never ends early;
//! - one compio timer per thread, held by a small driver task, wakes the
//!   wheel at its earliest bucket.
//!
//! A timer fires at its deadline or up to one tick (plus the coarse clock's
//! resolution, for [`sleep`]) after it, never before. Timeouts here are
//! seconds (the spec's durations); a few milliseconds late is nothing.

use std::cell::RefCell;
use std::collections::{BTreeMap, btree_map};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// The wheel's granularity.
const TICK: Duration = Duration::from_millis(4);
const TICK_NS: u64 = TICK.as_nanos() as u64;

/// No entry (the end of a bucket's list).
const NIL: usize = usize::MAX;

/// One armed timer: a link in its bucket's list until it fires.
struct Entry {
    tick: u64,
    prev: usize,
    next: usize,
    fired: bool,
    waker: Option<Waker>,
}

struct Wheel {
    entries: Slab<Entry>,
    /// Tick -> the first entry of that tick's list (unfired timers only).
    buckets: BTreeMap<u64, usize>,
    /// Whether this thread's runtime runs a driver task.
    driver_running: bool,
    /// The tick the driver's compio timer is set for.
    driver_tick: Option<u64>,
    driver: Option<Waker>,
}

thread_local! {
    static WHEEL: RefCell<Wheel> = const {
        RefCell::new(Wheel {
            entries: Slab::new(),
            buckets: BTreeMap::new(),
            driver_running: false,
            driver_tick: None,
            driver: None,
        })
    };
}

/// Nanoseconds on the monotonic clock for an `Instant` (which is that
/// clock on Linux): one reading of both, taken once per process, relates
/// them.
fn clock_base() -> (Instant, u64) {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    *BASE.get_or_init(|| {
        let instant = Instant::now();
        let ns = timespec_ns(rustix::time::clock_gettime(
            rustix::time::ClockId::Monotonic,
        ));
        (instant, ns)
    })
}

fn timespec_ns(t: rustix::time::Timespec) -> u64 {
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

fn ns_of(at: Instant) -> u64 {
    let (base, base_ns) = clock_base();
    match at.checked_duration_since(base) {
        Some(after) => base_ns.saturating_add(nanos(after)),
        None => base_ns.saturating_sub(nanos(base.duration_since(at))),
    }
}

/// A duration in nanoseconds, saturating: a timeout of centuries is
/// "never", not a wrapped-around small number.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn instant_of(ns: u64) -> Instant {
    let (base, base_ns) = clock_base();
    let after = Duration::from_nanos(ns.saturating_sub(base_ns));
    // Past what an `Instant` can hold: far enough to be never.
    base.checked_add(after)
        .unwrap_or(base + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The first tick at or after `ns`: a deadline is never rounded earlier.
fn tick_at_or_after(ns: u64) -> u64 {
    ns.div_ceil(TICK_NS)
}

/// Now, on the coarse clock, pushed up by its resolution: at or after the
/// precise now. A vDSO read of a kernel variable.
fn coarse_now_ns() -> u64 {
    static RESOLUTION: OnceLock<u64> = OnceLock::new();
    let resolution = *RESOLUTION.get_or_init(|| {
        timespec_ns(rustix::time::clock_getres(
            rustix::time::ClockId::MonotonicCoarse,
        ))
    });
    timespec_ns(rustix::time::clock_gettime(
        rustix::time::ClockId::MonotonicCoarse,
    ))
    .saturating_add(resolution)
}

/// The clock for deadlines on the request path: the coarse clock (see
/// [`coarse_now_ns`]), never before the precise now and at most the coarse
/// clock's resolution (a scheduler tick) after it. A deadline taken from it
/// is never early, and reading it costs no TSC read.
pub fn coarse_now() -> Instant {
    instant_of(coarse_now_ns())
}

impl Wheel {
    /// Links a new timer at the head of its tick's bucket.
    fn arm(&mut self, tick: u64) -> usize {
        let key = self.entries.vacant_key();
        let head = match self.buckets.entry(tick) {
            btree_map::Entry::Occupied(mut bucket) => bucket.insert(key),
            btree_map::Entry::Vacant(bucket) => {
                bucket.insert(key);
                NIL
            }
        };
        self.entries.insert(Entry {
            tick,
            prev: NIL,
            next: head,
            fired: false,
            waker: None,
        });
        if head != NIL {
            self.entries[head].prev = key;
        }
        key
    }

    /// Takes an unfired entry out of its bucket's list.
    fn unlink(&mut self, key: usize) {
        let (tick, prev, next) = {
            let e = &self.entries[key];
            (e.tick, e.prev, e.next)
        };
        if next != NIL {
            self.entries[next].prev = prev;
        }
        if prev != NIL {
            self.entries[prev].next = next;
        } else if next != NIL {
            self.buckets.insert(tick, next);
        } else {
            self.buckets.remove(&tick);
        }
    }

    /// Takes the entry out; its waker is returned to be dropped by the
    /// caller once the wheel is no longer borrowed (dropping a waker may
    /// free a task, and what that drops may cancel timers).
    fn cancel(&mut self, key: usize) -> Option<Waker> {
        if !self.entries[key].fired {
            self.unlink(key);
        }
        self.entries.remove(key).waker
    }

    /// Marks every timer of the buckets up to `now_tick` fired and returns
    /// their wakers (woken by the caller, outside the borrow).
    fn expire(&mut self, now_tick: u64, woken: &mut Vec<Waker>) {
        while let Some((&tick, &head)) = self.buckets.first_key_value() {
            if tick > now_tick {
                break;
            }
            self.buckets.remove(&tick);
            let mut key = head;
            while key != NIL {
                let e = &mut self.entries[key];
                e.fired = true;
                key = e.next;
                if let Some(w) = e.waker.take() {
                    woken.push(w);
                }
            }
        }
    }

    /// Whether the driver must be told of a timer armed at `tick` (it
    /// sleeps past it, or not at all).
    fn wakes_driver_for(&self, tick: u64) -> bool {
        self.driver_tick.is_none_or(|t| tick < t)
    }
}

/// A timer on this thread's wheel: ready once its deadline passed.
/// Armed on the first poll; cancelled when dropped. Not `Send`: its key
/// means something only in the wheel of the thread that armed it.
#[must_use = "futures do nothing unless awaited"]
pub struct Timer {
    deadline: Deadline,
    key: Option<usize>,
    _thread: PhantomData<*const ()>,
}

#[derive(Clone, Copy)]
enum Deadline {
    At(Instant),
    /// From the first poll (see [`sleep`]).
    After(Duration),
}

/// A timer that fires at `deadline` (or within a tick after it).
pub fn sleep_until(deadline: Instant) -> Timer {
    Timer {
        deadline: Deadline::At(deadline),
        key: None,
        _thread: PhantomData,
    }
}

/// A timer that fires `duration` after its first poll, not before.
pub fn sleep(duration: Duration) -> Timer {
    Timer {
        deadline: Deadline::After(duration),
        key: None,
        _thread: PhantomData,
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut spawn_driver = false;
        let mut wake_driver = None;
        // A replaced waker is dropped after the borrow (see `cancel`).
        let mut replaced = None;
        let ready = WHEEL.with_borrow_mut(|wheel| {
            let key = match this.key {
                Some(key) => key,
                None => {
                    let ns = match this.deadline {
                        Deadline::At(at) => ns_of(at),
                        Deadline::After(d) => coarse_now_ns().saturating_add(nanos(d)),
                    };
                    let tick = tick_at_or_after(ns);
                    let key = wheel.arm(tick);
                    this.key = Some(key);
                    if !wheel.driver_running {
                        wheel.driver_running = true;
                        spawn_driver = true;
                    } else if wheel.wakes_driver_for(tick) {
                        wake_driver = wheel.driver.take();
                    }
                    key
                }
            };
            let entry = &mut wheel.entries[key];
            if entry.fired {
                return true;
            }
            match &entry.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => replaced = entry.waker.replace(cx.waker().clone()),
            }
            false
        });
        drop(replaced);
        if spawn_driver {
            compio::runtime::spawn(Driver::default()).detach();
        }
        if let Some(w) = wake_driver {
            w.wake();
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Timer {
    fn cancel(&mut self) {
        if let Some(key) = self.key.take() {
            // During thread teardown the wheel may be gone already.
            let waker = WHEEL.try_with(|w| w.borrow_mut().cancel(key));
            drop(waker);
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The task that wakes the wheel: it sleeps on one compio timer until the
/// earliest bucket, fires what is due, and sleeps again. A timer armed
/// earlier than its sleep wakes it to move the sleep. Dropped with the
/// runtime (which drops every task), it marks the thread as driverless, so
/// a later runtime on this thread starts its own.
#[derive(Default)]
struct Driver {
    sleep: Option<Pin<Box<dyn Future<Output = ()>>>>,
    armed_for: Option<u64>,
    woken: Vec<Waker>,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            let now_tick = ns_of(Instant::now()) / TICK_NS;
            let mut replaced = None;
            let next = WHEEL.with_borrow_mut(|wheel| {
                wheel.expire(now_tick, &mut this.woken);
                match &wheel.driver {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => replaced = wheel.driver.replace(cx.waker().clone()),
                }
                let next = wheel.buckets.first_key_value().map(|(&t, _)| t);
                wheel.driver_tick = next;
                next
            });
            drop(replaced);
            for w in this.woken.drain(..) {
                w.wake();
            }
            let Some(tick) = next else {
                this.sleep = None;
                this.armed_for = None;
                return Poll::Pending;
            };
            if this.armed_for != Some(tick) {
                // Saturating: the tick of a timeout too long for u64
                // nanoseconds (`sleep(Duration::MAX)`, a spec's
                // `header-timeout "10000000h"`) is past u64::MAX / TICK_NS,
                // and a product that wrapped around would be a deadline
                // long past, so this loop would spin on it forever.
                let at = instant_of(tick.saturating_mul(TICK_NS));
                this.sleep = Some(Box::pin(compio::time::sleep_until(at)));
                this.armed_for = Some(tick);
            }
            let Some(sleep) = this.sleep.as_mut() else {
                return Poll::Pending;
            };
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.armed_for = None;
                    this.sleep = None;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let waker = WHEEL.try_with(|w| {
            let mut w = w.borrow_mut();
            w.driver_running = false;
            w.driver_tick = None;
            w.driver.take()
        });
        drop(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::time::tests::run;

    /// Polls once, as the runtime would (arming the timer).
    fn poll_once(t: Pin<&mut Timer>) -> Poll<()> {
        t.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn never_fires_early() {
        for ms in [0u64, 1, 5, 13, 40] {
            let start = Instant::now();
            run(sleep(Duration::from_millis(ms)));
            assert!(start.elapsed() >= Duration::from_millis(ms), "{ms} ms");
            let start = Instant::now();
            run(sleep_until(start + Duration::from_millis(ms)));
            assert!(start.elapsed() >= Duration::from_millis(ms), "{ms} ms");
        }
    }

    #[test]
    fn a_timeout_too_long_for_u64_nanoseconds_never_fires() {
        // 2^64 ns is about 584 years: one second more, cut to 64 bits,
        // would be 0.29 s.
        let fired = run(async {
            let mut never = std::pin::pin!(sleep(Duration::from_secs(18_446_744_074)));
            assert!(poll_once(never.as_mut()).is_pending());
            sleep(Duration::from_millis(400)).await;
            poll_once(never.as_mut()).is_ready()
        });
        assert!(!fired);
    }

    #[test]
    fn a_later_runtime_on_the_same_thread_gets_its_own_driver() {
        // The first runtime's driver is dropped with it; were the thread
        // still marked as driven, this second sleep would never end.
        run(sleep(Duration::from_millis(5)));
        run(sleep(Duration::from_millis(5)));
    }

    #[test]
    fn an_earlier_timer_armed_after_a_later_one_fires_first() {
        let order = run(async {
            let long = std::pin::pin!(sleep(Duration::from_secs(30)));
            // Arm the long one first: the driver sleeps for it.
            let mut long = long;
            assert!(poll_once(long.as_mut()).is_pending());
            sleep(Duration::from_millis(10)).await;
            poll_once(long.as_mut()).is_pending()
        });
        assert!(order, "the 30 s timer is still pending");
    }

    #[test]
    fn cancelled_timers_leave_no_buckets_behind() {
        run(async {
            for i in 0..1000u64 {
                let mut t = std::pin::pin!(sleep(Duration::from_millis(100 + i)));
                assert!(poll_once(t.as_mut()).is_pending());
            }
        });
        WHEEL.with_borrow(|w| {
            assert!(w.buckets.is_empty());
            assert!(w.entries.is_empty());
        });
    }

    #[test]
    fn many_timers_of_one_tick_all_fire() {
        let fired = run(async {
            let deadline = Instant::now() + Duration::from_millis(8);
            let timers = (0..50).map(|_| sleep_until(deadline));
            futures_util::future::join_all(timers).await.len()
        });
        assert_eq!(fired, 50);
        WHEEL.with_borrow(|w| assert!(w.buckets.is_empty()));
    }
}
