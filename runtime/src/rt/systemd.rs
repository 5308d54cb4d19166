//! systemd integration without libsystemd: socket activation
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on)
//! and readiness notification (`NOTIFY_SOCKET`: `READY=1`, `MAINPID=`).
//!
//! Activated descriptors come pre-bound; they are matched to the spec's
//! listeners by their local address (`getsockname`), never by position,
//! so the `.socket` unit's order does not matter.

#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// First descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The descriptors systemd passed this process, with their local
/// addresses; empty when the process was not socket-activated.
pub fn listen_fds() -> io::Result<Vec<(SocketAddr, OwnedFd)>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !for_us {
        return Ok(Vec::new());
    }
    let count = match std::env::var("LISTEN_FDS").map(|n| n.parse::<RawFd>()) {
        Ok(Ok(n)) if (0..=4096).contains(&n) => n,
        _ => {
            return Err(io::Error::other(
                "LISTEN_PID names this process but LISTEN_FDS is not a count",
            ));
        }
    };
    let mut fds = Vec::with_capacity(count as usize);
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        // SAFETY: with LISTEN_PID naming this process, systemd (or a
        // launcher following its protocol) passed descriptors 3..3+N open
        // and owned by nobody else in this process: nothing here opened or
        // claimed them before (this runs before any thread starts).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = socket2::SockRef::from(&owned);
        let addr = sock.local_addr().ok().and_then(|a| a.as_socket());
        let Some(addr) = addr else {
            return Err(io::Error::other(format!(
                "LISTEN_FDS: descriptor {fd} is not an IP socket"
            )));
        };
        if !sock.is_listener().unwrap_or(false) {
            return Err(io::Error::other(format!(
                "LISTEN_FDS: descriptor {fd} ({addr}) is not a listening TCP socket"
            )));
        }
        sock.set_cloexec(true)?;
        sock.set_nonblocking(true)?;
        fds.push((addr, owned));
    }
    Ok(fds)
}

/// Sends `state` (e.g. `READY=1\nMAINPID=123`) to systemd when the
/// process runs under a unit with `NOTIFY_SOCKET`; otherwise does nothing.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> io::Result<()> {
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                UnixAddr::from_abstract_name(name)?
            }
            None => UnixAddr::from_pathname(&path)?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        log_line!("blitz: cannot notify systemd: {e}");
    }
}
