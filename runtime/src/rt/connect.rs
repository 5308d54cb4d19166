//! Outgoing TCP connections for the request path.
//!
//! compio's `TcpStream::connect` makes its socket with io_uring's socket
//! operation, awaited like any other: a connect future dropped while that
//! operation is in flight (a client resetting its HTTP/2 stream, or a
//! connection ending with its streams, right after the connect began)
//! leaves the descriptor the operation completes with to nobody, and the
//! worker leaks it (compio-net 0.11, `Socket::new`). The socket is made
//! here with a plain syscall instead, owned before anything is awaited;
//! only the connect itself goes through the ring (compio's `Connect`), so
//! a dropped connect cancels that operation and closes the socket.
//!
//! The polling driver makes its syscalls on the worker thread and waits
//! for readiness only on `EINPROGRESS`/`EAGAIN`: on a blocking socket its
//! `connect` (and each later `recv`) would block the whole worker, a
//! blackholed upstream for minutes. There the socket is non-blocking, as
//! the polling driver's own sockets and accepted ones (`rt::adopt`) are.

use std::io;
use std::net::SocketAddr;

use compio::BufResult;
use compio::driver::SharedFd;
use compio::driver::op::Connect;
use compio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Connects to `addr`; cancel-safe (dropping the future closes the socket).
pub async fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    // Under io_uring blocking mode, as compio's own sockets: the ring does
    // the waiting. socket2 sets CLOEXEC.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if compio::runtime::Runtime::with_current(|r| r.driver_type().is_polling()) {
        socket.set_nonblocking(true)?;
    }
    let fd = SharedFd::new(socket);
    let BufResult(res, op) = compio::runtime::submit(Connect::new(fd.clone(), addr.into())).await;
    drop(op);
    res?;
    let socket = fd
        .try_unwrap()
        .map_err(|_| io::Error::other("connected socket still shared"))?;
    TcpStream::from_std(socket.into())
}
