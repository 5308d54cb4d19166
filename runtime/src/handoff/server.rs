//! The running (old) side: a thread that listens on the control socket and
//! hands the listening sockets to one new process at a time.
//!
//! States: idle → in progress (one new process connected) → handed off
//! (it said `ready`; this process drains). A second `--upgrade` while one
//! is in progress, or after the hand-off, is refused with a message. If
//! the new process goes away or aborts before `ready`, the state is idle
//! again and this process never stopped serving.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::wire::{Control, Kind, Message, is_timeout};
use super::{ControlSocket, PathGuard};

/// Time a new process gets between two protocol steps before hello, and
/// to answer; generous for `ready`, which waits for its workers.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What this process offers a successor.
#[derive(Debug)]
pub struct Offer {
    /// The gateway's name: only a binary of the same gateway takes over.
    pub name: String,
    /// Every listening socket (duplicates of the workers' descriptors).
    pub sockets: Vec<(Kind, SocketAddr, OwnedFd)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    InProgress {
        pid: u32,
    },
    HandedOff {
        pid: u32,
    },
    /// Shutting down on a signal: nothing to hand over.
    Withdrawn,
}

struct Shared {
    name: String,
    /// Emptied by [`ControlServer::withdraw`].
    sockets: Mutex<Vec<(Kind, SocketAddr, OwnedFd)>>,
    state: Mutex<State>,
    on_handed_off: Box<dyn Fn(u32) + Send + Sync>,
}

/// The running control server. Dropping it unlinks the control socket
/// path (if it is still this process's); the thread lives on until exit.
pub struct ControlServer {
    shared: Arc<Shared>,
    _path: PathGuard,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl ControlServer {
    /// No handoff any more (the process stops on a signal): closes the
    /// duplicates of the listening sockets, so that once the workers
    /// closed theirs new connections are refused instead of queued on a
    /// socket nobody will accept on. A session in progress is not
    /// affected (its new process already has the sockets).
    pub fn withdraw(&self) {
        *lock(&self.shared.state) = State::Withdrawn;
        lock(&self.shared.sockets).clear();
    }
}

/// Serves the control socket on a thread of its own until the process
/// exits. `on_handed_off(new_pid)` runs once, when a new process is ready:
/// it must start the drain.
pub fn spawn(
    socket: ControlSocket,
    offer: Offer,
    on_handed_off: impl Fn(u32) + Send + Sync + 'static,
) -> io::Result<ControlServer> {
    let shared = Arc::new(Shared {
        name: offer.name,
        sockets: Mutex::new(offer.sockets),
        state: Mutex::new(State::Idle),
        on_handed_off: Box::new(on_handed_off),
    });
    let for_thread = Arc::clone(&shared);
    let ControlSocket { listener, path } = socket;
    std::thread::Builder::new()
        .name("blitz-control".into())
        .spawn(move || accept_loop(&listener, for_thread))?;
    Ok(ControlServer {
        shared,
        _path: path,
    })
}

fn accept_loop(listener: &UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("blitz: control socket accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        // One thread per connection, so a refusal never waits behind a
        // session in progress.
        let spawned = std::thread::Builder::new()
            .name("blitz-handoff".into())
            .spawn(move || session(stream, &shared));
        if let Err(e) = spawned {
            eprintln!("blitz: cannot start a control session: {e}");
        }
    }
}

fn session(stream: UnixStream, shared: &Shared) {
    let mut conn = match Control::new(stream, STEP_TIMEOUT) {
        Ok(c) => c,
        Err(_) => return,
    };
    let (pid, name) = match conn.recv() {
        Ok((Message::Hello { pid, name }, _)) => (pid, name),
        Ok((other, _)) => {
            let _ = conn.send(
                &Message::Refused(format!("expected hello, got {:?}", other.encode().trim())),
                &[],
            );
            return;
        }
        Err(e) => {
            let _ = conn.send(&Message::Refused(e.to_string()), &[]);
            return;
        }
    };
    if let Err(why) = check_peer(&conn, pid) {
        let _ = conn.send(&Message::Refused(why), &[]);
        return;
    }
    if name != shared.name {
        let why = format!(
            "this control socket belongs to gateway {:?}, not {name:?}",
            shared.name
        );
        let _ = conn.send(&Message::Refused(why), &[]);
        return;
    }
    {
        let mut state = lock(&shared.state);
        let why = match *state {
            State::Idle => None,
            State::InProgress { pid: other } => Some(format!(
                "an upgrade is already in progress (new process pid {other}); try again when it is done"
            )),
            State::HandedOff { pid: other } => Some(format!(
                "this instance (pid {}) already handed off to pid {other} and is draining; upgrade that one",
                std::process::id()
            )),
            State::Withdrawn => Some(format!(
                "this instance (pid {}) is shutting down",
                std::process::id()
            )),
        };
        if let Some(why) = why {
            drop(state);
            eprintln!("blitz: upgrade by pid {pid} refused: {why}");
            let _ = conn.send(&Message::Refused(why), &[]);
            return;
        }
        *state = State::InProgress { pid };
    }
    let outcome = hand_over(&mut conn, shared, pid);
    let mut state = lock(&shared.state);
    match outcome {
        Ok(()) => *state = State::HandedOff { pid },
        Err(why) => {
            if *state != State::Withdrawn {
                *state = State::Idle;
            }
            drop(state);
            eprintln!("blitz: upgrade by pid {pid} did not complete, still serving: {why}");
        }
    }
}

/// Passes the sockets and waits for `ready`; on `ready`, starts the drain.
fn hand_over(conn: &mut Control, shared: &Shared, pid: u32) -> Result<(), String> {
    {
        let sockets = lock(&shared.sockets);
        eprintln!(
            "blitz: upgrade: pid {pid} connected, passing {} sockets",
            sockets.len()
        );
        let addrs = sockets.iter().map(|(k, a, _)| (*k, *a)).collect();
        let fds: Vec<_> = sockets.iter().map(|(_, _, fd)| fd.as_fd()).collect();
        conn.send(&Message::Sockets(addrs), &fds)
            .map_err(|e| format!("cannot pass the sockets: {e}"))?;
    }
    let _ = conn.set_read_timeout(READY_TIMEOUT);
    match conn.recv() {
        Ok((Message::Ready, _)) => {
            (shared.on_handed_off)(pid);
            let _ = conn.send(
                &Message::Draining {
                    pid: std::process::id(),
                },
                &[],
            );
            eprintln!("blitz: upgrade: pid {pid} is serving; draining");
            Ok(())
        }
        Ok((Message::Abort(why), _)) => Err(format!("the new binary refused to take over: {why}")),
        Ok((other, _)) => Err(format!("unexpected {:?}", other.encode().trim())),
        Err(e) if is_timeout(&e) => Err(format!(
            "the new process did not report ready within {READY_TIMEOUT:?}"
        )),
        Err(e) => Err(format!(
            "the new process went away before it was ready ({e})"
        )),
    }
}

/// Only a process of the same user may take the sockets.
fn check_peer(conn: &Control, claimed_pid: u32) -> Result<(), String> {
    let cred = rustix::net::sockopt::socket_peercred(conn.stream())
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = rustix::process::geteuid();
    if cred.uid != me && !cred.uid.is_root() {
        return Err(format!(
            "the upgrading process runs as uid {}, this instance as uid {}",
            cred.uid.as_raw(),
            me.as_raw()
        ));
    }
    if cred.pid.as_raw_nonzero().get() as u32 != claimed_pid {
        return Err("the hello names another pid than the peer's".into());
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
