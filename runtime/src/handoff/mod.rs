//! Zero-downtime upgrades: the control socket and the socket handoff
//! (DESIGN.md, "The generated binary"; docs/operations.md for operators).
//!
//! A running gateway listens on its control socket ([`server`]). `GATEWAY
//! --upgrade` connects ([`client`]) after it initialised its workers,
//! receives every listening socket by `SCM_RIGHTS` with its address
//! ([`wire`]), accepts on all of them, says `ready`, and only then does
//! the old process stop accepting and drain. The passed descriptors are
//! the *same* kernel sockets, so connections queued in a backlog at the
//! moment of the switch are accepted by whichever process asks next: none
//! is refused, none is stranded.
//!
//! The control socket's path always names one live process: the new one
//! binds a temporary path and renames it over the old one's once the old
//! one drains; a process unlinks the path at exit only if it is still its
//! own socket and it did not hand off (the new process may be renaming
//! over it at that very moment).

#![forbid(unsafe_code)]

pub mod client;
pub mod server;
pub mod wire;

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The control socket path when neither the spec (`admin { socket }`)
/// nor `--admin-socket` names one: `$XDG_RUNTIME_DIR/blitz-NAME.sock`
/// (when that is an absolute path), or `/tmp/blitz-NAME.sock`.
pub fn default_socket_path(gateway_name: &str) -> PathBuf {
    // An empty or relative value is ignored, as the XDG Base Directory
    // spec says: a relative one would put the socket where the gateway
    // happened to start, and an `--upgrade` started elsewhere would miss it.
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| Path::new(d).is_absolute())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    // One file name whatever the gateway is called: a `/` would name a
    // folder that is not there, and no path holds a NUL.
    let name = gateway_name.replace(['/', '\0'], "-");
    dir.join(format!("blitz-{name}.sock"))
}

/// A bound control socket and the path it is reachable at.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathGuard,
}

/// Unlinks the control socket path when dropped, unless a successor's
/// socket replaced ours there.
#[derive(Debug)]
pub(crate) struct PathGuard {
    path: PathBuf,
    /// Device and inode of our socket file.
    id: (u64, u64),
    /// Unlink at drop (unless disarmed: a successor owns the path).
    armed: bool,
}

impl ControlSocket {
    /// Binds `path` for a fresh start. A stale socket file (nobody
    /// listening) is replaced; a live one is an error: another instance
    /// runs there (upgrade it with `--upgrade` instead).
    pub fn bind_fresh(path: &Path) -> io::Result<ControlSocket> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another instance listens on the control socket {}",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Self::bind_at(path, path)
    }

    /// Binds `bind_path` (owner-only permissions); `path` is where it will
    /// be reachable.
    fn bind_at(bind_path: &Path, path: &Path) -> io::Result<ControlSocket> {
        let listener = UnixListener::bind(bind_path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind control socket {}: {e}", bind_path.display()),
            )
        })?;
        std::fs::set_permissions(bind_path, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::metadata(bind_path)?;
        Ok(ControlSocket {
            listener,
            path: PathGuard {
                path: path.to_path_buf(),
                id: (meta.dev(), meta.ino()),
                armed: true,
            },
        })
    }

    /// The path clients connect to.
    pub fn path(&self) -> &Path {
        &self.path.path
    }
}

impl PathGuard {
    /// The control socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the path as it is when dropped: a successor took it over.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_socket_path_is_one_file_whatever_the_name() {
        let path = default_socket_path("eu/1\0x");
        assert_eq!(path.file_name().unwrap(), "blitz-eu-1-x.sock");
        assert_eq!(
            default_socket_path("edge-eu1").file_name().unwrap(),
            "blitz-edge-eu1.sock"
        );
    }
}
