//! Process-wide OS settings, done by the main thread before workers start.
//!
//! Signals, the classic threaded way: SIGTERM, SIGINT (drain) and SIGHUP
//! (reload certificates) are blocked in the main thread before any worker
//! starts (threads inherit the mask), then the main thread waits for them
//! with `sigwait`. No
//! handler runs asynchronously, so nothing here needs to be async-safe.

#![allow(unsafe_code)]

use std::io;

fn term_set() -> libc::sigset_t {
    // SAFETY: sigset_t is a plain C bit set; sigemptyset initializes it
    // fully before use, and sigaddset only takes valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and threads it spawns).
pub fn block_termination() -> io::Result<()> {
    let set = term_set();
    // SAFETY: `set` is initialized; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits until SIGTERM, SIGINT or SIGHUP arrives; returns its number.
pub fn wait_termination() -> io::Result<i32> {
    let set = term_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialized and `sig` is a valid out pointer.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc == 0 {
        Ok(sig)
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// A SIGTERM or SIGINT that arrived and waits, blocked (see
/// [`block_termination`]), if any; it stays pending.
pub fn stop_pending() -> Option<i32> {
    // SAFETY: `set` is a plain C bit set, fully written by sigpending
    // before sigismember reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut set) != 0 {
            return None;
        }
        [libc::SIGTERM, libc::SIGINT]
            .into_iter()
            .find(|&sig| libc::sigismember(&set, sig) == 1)
    }
}

/// Sets SO_LINGER to zero on socket `fd`: its close sends a reset. For
/// connections cut when the grace period ends. Best effort: on a number
/// no longer open the call fails with EBADF, harmlessly.
pub fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a valid
    // `linger`; a bad descriptor is an error return, not undefined.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Raises the soft open-file limit to the hard limit: a gateway holds two
/// descriptors per proxied connection, and the common soft default (1024)
/// would refuse connections long before memory runs out. Best effort.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out pointer for getrlimit and a valid in
    // pointer for setrlimit; both only read or write that struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
