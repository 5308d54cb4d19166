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
use std::path::{Path, PathBuf};
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
    /// The control socket's path (a new process binds next to it).
    path: PathBuf,
    /// Emptied by [`ControlServer::withdraw`].
    sockets: Mutex<Vec<(Kind, SocketAddr, OwnedFd)>>,
    state: Mutex<State>,
    on_handed_off: Box<dyn Fn(u32) + Send + Sync>,
    /// Opened once a handoff's new process was told `draining` (or the
    /// telling failed): the process must not exit before.
    told: crate::rt::Gate,
}

/// The running control server. Dropping it unlinks the control socket
/// path (if it is still this process's, and no successor took over); the
/// thread lives on until exit.
pub struct ControlServer {
    shared: Arc<Shared>,
    path: Option<PathGuard>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // Under the state lock, which a session holds while it marks the
        // handoff done, before it tells the new process (which then renames
        // its socket over the path) that this one drains. So either the path
        // is unlinked before that rename, or it is left to the new process.
        // Checking the file's identity alone is not enough: the check and
        // the unlink could straddle the rename and remove the new socket.
        let state = lock(&self.shared.state);
        if let Some(path) = self.path.take() {
            if matches!(*state, State::HandedOff { .. }) {
                path.disarm();
            } else {
                drop(path);
            }
        }
    }
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

    /// After a handoff, waits (at most `timeout`) until the new process was
    /// told `draining`; returns at once when no handoff happened.
    pub fn wait_told(&self, timeout: Duration) {
        if matches!(*lock(&self.shared.state), State::HandedOff { .. }) {
            self.shared.told.wait(timeout);
        }
    }
}

/// Serves the control socket on a thread of its own until the process
/// exits. `on_handed_off(new_pid)` runs once, when a new process is ready:
/// it must start the drain, and return once this process accepts no new
/// connection (the new process is then told `draining`).
pub fn spawn(
    socket: ControlSocket,
    offer: Offer,
    on_handed_off: impl Fn(u32) + Send + Sync + 'static,
) -> io::Result<ControlServer> {
    let ControlSocket { listener, path } = socket;
    let shared = Arc::new(Shared {
        name: offer.name,
        path: path.path().to_path_buf(),
        sockets: Mutex::new(offer.sockets),
        state: Mutex::new(State::Idle),
        on_handed_off: Box::new(on_handed_off),
        told: crate::rt::Gate::default(),
    });
    let for_thread = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("blitz-control".into())
        .spawn(move || accept_loop(&listener, for_thread))?;
    Ok(ControlServer {
        shared,
        path: Some(path),
    })
}

fn accept_loop(listener: &UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                log_line!("blitz: control socket accept failed: {e}");
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
            log_line!("blitz: cannot start a control session: {e}");
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
            log_line!("blitz: upgrade by pid {pid} refused: {why}");
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
            log_line!("blitz: upgrade by pid {pid} did not complete, still serving: {why}");
        }
    }
}

/// Removes the control socket a new process `pid` may have bound next to
/// `path` (`NAME.PID.new`, see the client's `TempPath`), once it went away
/// before it was ready (killed): one that aborts removes its own.
fn remove_left_behind(path: &Path, pid: u32) {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{pid}.new"));
    let _ = std::fs::remove_file(path.with_file_name(name));
}

/// Passes the sockets and waits for `ready`; on `ready`, starts the drain.
fn hand_over(conn: &mut Control, shared: &Shared, pid: u32) -> Result<(), String> {
    {
        let sockets = lock(&shared.sockets);
        log_line!(
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
            // Before `draining`: from then on the path is the new process's
            // (see `ControlServer`'s drop).
            *lock(&shared.state) = State::HandedOff { pid };
            (shared.on_handed_off)(pid);
            let _ = conn.send(
                &Message::Draining {
                    pid: std::process::id(),
                },
                &[],
            );
            shared.told.open();
            log_line!("blitz: upgrade: pid {pid} is serving; draining");
            Ok(())
        }
        Ok((Message::Abort(why), _)) => Err(format!("the new binary refused to take over: {why}")),
        Ok((other, _)) => Err(format!("unexpected {:?}", other.encode().trim())),
        Err(e) if is_timeout(&e) => Err(format!(
            "the new process did not report ready within {READY_TIMEOUT:?}"
        )),
        Err(e) => {
            remove_left_behind(&shared.path, pid);
            Err(format!(
                "the new process went away before it was ready ({e})"
            ))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// The old process drops its control server as soon as its drain ends,
    /// which for an idle gateway is while the new process is renaming its own
    /// socket over the path. Once handed off, the old one must leave the path
    /// alone: a check "is it still my file?" followed by an unlink could
    /// straddle that rename and remove the new process's socket, leaving the
    /// serving instance impossible to upgrade.
    #[test]
    fn after_the_handoff_the_old_server_leaves_the_path_to_the_new_one() {
        let dir = std::env::temp_dir().join(format!("blitz-handoff-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("gw.sock");
        let socket = ControlSocket::bind_fresh(&path).unwrap_or_else(|e| panic!("{e}"));
        let (handed_tx, handed_rx) = mpsc::channel();
        let offer = Offer {
            name: "gw".into(),
            sockets: Vec::new(),
        };
        let server = spawn(socket, offer, move |pid| {
            let _ = handed_tx.send(pid);
        })
        .unwrap_or_else(|e| panic!("{e}"));

        // The new process, up to the moment it learns the old one drains
        // (before it renames its own socket over the path).
        let stream = UnixStream::connect(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut new =
            Control::new(stream, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let hello = Message::Hello {
            pid: std::process::id(),
            name: "gw".into(),
        };
        new.send(&hello, &[]).unwrap_or_else(|e| panic!("{e}"));
        let (msg, _) = new.recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(msg, Message::Sockets(Vec::new()));
        new.send(&Message::Ready, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let (msg, _) = new.recv().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(msg, Message::Draining { .. }), "{msg:?}");
        assert_eq!(
            handed_rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some(std::process::id())
        );

        drop(server);
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "the old process unlinked the control socket path after handing off"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
