//! The upgrading (new) side of the handoff: `GATEWAY --upgrade`.
//!
//! [`take_over`] says hello and receives the old process's sockets; the
//! caller matches them to its listeners and starts accepting, then either
//! [`Takeover::complete`]s (ready → the old one drains, the control path
//! becomes ours) or [`Takeover::abort`]s (the old one keeps serving).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ControlSocket;
use super::wire::{Control, Kind, Message};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A handoff in progress: the old process's sockets are ours to use, the
/// old process still serves until [`Takeover::complete`].
#[derive(Debug)]
pub struct Takeover {
    conn: Control,
    path: PathBuf,
    /// Where this process binds its control socket before it renames it
    /// over `path`.
    temp: TempPath,
    /// The old process's listening sockets with their addresses.
    pub sockets: Vec<(Kind, SocketAddr, OwnedFd)>,
}

/// Connects to the running instance of gateway `name` at `path` and
/// receives its listening sockets. Errors are messages for the operator.
/// `stall_after_sockets` is a test hook ([`crate::rt::TestHooks`]): the
/// process stops once it holds the sockets, for a test to kill it there.
pub fn take_over(path: &Path, name: &str, stall_after_sockets: bool) -> Result<Takeover, String> {
    let stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "no running instance to upgrade at {} ({e}); start the gateway without --upgrade",
            path.display()
        )
    })?;
    let mut conn = Control::new(stream, TIMEOUT).map_err(|e| e.to_string())?;
    let hello = Message::Hello {
        pid: std::process::id(),
        name: name.to_string(),
    };
    conn.send(&hello, &[])
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let (msg, fds) = conn.recv().map_err(|e| {
        format!(
            "control socket {}: no answer from the running instance ({e})",
            path.display()
        )
    })?;
    let addrs = match msg {
        Message::Sockets(addrs) => addrs,
        Message::Refused(why) => return Err(format!("the running instance refused: {why}")),
        other => return Err(format!("unexpected answer {:?}", other.encode().trim())),
    };
    if addrs.len() != fds.len() {
        return Err(format!(
            "the running instance named {} sockets but passed {}",
            addrs.len(),
            fds.len()
        ));
    }
    let sockets: Vec<_> = addrs
        .into_iter()
        .zip(fds)
        .map(|((kind, addr), fd)| (kind, addr, fd))
        .collect();
    for (_, addr, fd) in &sockets {
        let actual = socket2::SockRef::from(fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket());
        if actual != Some(*addr) {
            return Err(format!(
                "a passed socket is bound to {actual:?}, not to {addr} as announced"
            ));
        }
    }
    if stall_after_sockets {
        log_line!(
            "blitz: upgrade: received {} sockets; stalling (test hook)",
            sockets.len()
        );
        std::thread::sleep(Duration::from_secs(120));
        return Err("stalled by the test hook".to_string());
    }
    let temp = TempPath::next_to(path).map_err(|e| {
        format!(
            "cannot open the folder of the control socket {}: {e}",
            path.display()
        )
    })?;
    Ok(Takeover {
        conn,
        path: path.to_path_buf(),
        temp,
        sockets,
    })
}

impl Takeover {
    /// Gives up: the old process keeps serving. The sockets taken out of
    /// `self.sockets` are closed by the caller (the old one holds them).
    pub fn abort(mut self, why: &str) {
        let _ = self.conn.send(&Message::Abort(why.to_string()), &[]);
    }

    /// Binds the control socket this process will serve, at a temporary
    /// path next to the current one (renamed over it by [`complete`]).
    /// Done before any worker accepts, so a failure here aborts cleanly.
    ///
    /// [`complete`]: Takeover::complete
    pub fn bind_next(&self) -> Result<ControlSocket, String> {
        let temp = &self.temp.path;
        let _ = std::fs::remove_file(temp);
        ControlSocket::bind_at(temp, &self.path)
            .map_err(|e| format!("cannot bind the next control socket: {e}"))
    }

    /// Every worker accepts on every passed socket: tells the old process
    /// to drain, and moves `next` (from [`bind_next`]) over the control
    /// socket path. Returns the control socket (`None` if the path could
    /// not be taken: serving anyway, but not upgradable) and the old
    /// process's pid (0 if it did not say). Nothing here can undo the
    /// handoff: this process serves from the moment it says `ready`.
    ///
    /// [`bind_next`]: Takeover::bind_next
    pub fn complete(mut self, next: ControlSocket) -> (Option<ControlSocket>, u32) {
        let old_pid = match self
            .conn
            .send(&Message::Ready, &[])
            .and_then(|()| self.conn.recv())
        {
            Ok((Message::Draining { pid }, _)) => pid,
            Ok((other, _)) => {
                log_line!(
                    "blitz: upgrade: unexpected answer to ready: {:?}",
                    other.encode().trim()
                );
                0
            }
            Err(e) => {
                log_line!("blitz: upgrade: the old process did not confirm the drain: {e}");
                0
            }
        };
        let temp = &self.temp.path;
        if let Err(e) = std::fs::rename(temp, &self.path) {
            let _ = std::fs::remove_file(temp);
            log_line!(
                "blitz: upgrade: serving, but cannot take over the control socket {} ({e}): \
                 this instance cannot be upgraded",
                self.path.display()
            );
            return (None, old_pid);
        }
        (Some(next), old_pid)
    }
}

/// The longest path a Unix socket binds at: `sun_path` holds 108 bytes,
/// the last one a NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The temporary path next to the control socket: its name plus
/// `.PID.new`. When that is too long to bind at while the control
/// socket's own path is not, it is reached through the folder, held open
/// (`/proc/self/fd/N/NAME.PID.new`): an instance is upgradable whenever
/// it could bind its control socket.
#[derive(Debug)]
struct TempPath {
    path: PathBuf,
    _folder: Option<std::fs::File>,
}

impl TempPath {
    fn next_to(path: &Path) -> std::io::Result<TempPath> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.new", std::process::id()));
        let beside = path.with_file_name(&name);
        if beside.as_os_str().as_bytes().len() <= MAX_SOCKET_PATH {
            return Ok(TempPath {
                path: beside,
                _folder: None,
            });
        }
        let folder = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => std::fs::File::open(parent)?,
            None => std::fs::File::open(".")?,
        };
        let mut through = PathBuf::from(format!("/proc/self/fd/{}", folder.as_raw_fd()));
        through.push(name);
        Ok(TempPath {
            path: through,
            _folder: Some(folder),
        })
    }
}
