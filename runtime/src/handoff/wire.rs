//! The control socket's wire format: one ASCII line per message, the
//! first word naming the protocol version, file descriptors riding along a
//! message as `SCM_RIGHTS` ancillary data.
//!
//! ```text
//! new → old   blitz-handoff/1 hello PID NAME
//! old → new   blitz-handoff/1 sockets tcp:ADDR tcp:ADDR …      (+ one fd per ADDR)
//!           | blitz-handoff/1 refused MESSAGE
//! new → old   blitz-handoff/1 ready
//!           | blitz-handoff/1 abort MESSAGE
//! old → new   blitz-handoff/1 draining PID
//! ```
//!
//! Lines rather than JSON: five messages with one free-text field (always
//! last, so it needs no quoting) do not justify a serializer in every
//! generated gateway. `SCM_RIGHTS` goes through rustix's safe `sendmsg`
//! and `recvmsg` (descriptors come back as `OwnedFd`, close-on-exec).

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// First word of every line; a new format gets a new number.
pub const VERSION: &str = "blitz-handoff/1";

/// Most descriptors one message may carry (listeners × workers).
pub const MAX_FDS: usize = 512;

/// Longest line accepted.
const MAX_LINE: usize = 64 * 1024;

/// The kind of a passed socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP listening socket.
    Tcp,
    /// A UDP socket (HTTP/3).
    Udp,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
        }
    }
}

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The new process introduces itself.
    Hello { pid: u32, name: String },
    /// The old process's listening sockets, in the order of the fds.
    Sockets(Vec<(Kind, SocketAddr)>),
    /// The old process will not hand over, and why.
    Refused(String),
    /// The new process accepts on every socket: the old may stop.
    Ready,
    /// The new process will not take over, and why.
    Abort(String),
    /// The old process stopped accepting and drains.
    Draining { pid: u32 },
}

/// One line of text: newlines in free text become spaces.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

impl Message {
    /// The line for this message, newline included.
    pub fn encode(&self) -> String {
        let body = match self {
            Message::Hello { pid, name } => format!("hello {pid} {}", one_line(name)),
            Message::Sockets(sockets) => {
                let mut s = String::from("sockets");
                for (kind, addr) in sockets {
                    s.push_str(&format!(" {}:{addr}", kind.as_str()));
                }
                s
            }
            Message::Refused(why) => format!("refused {}", one_line(why)),
            Message::Ready => "ready".to_string(),
            Message::Abort(why) => format!("abort {}", one_line(why)),
            Message::Draining { pid } => format!("draining {pid}"),
        };
        format!("{VERSION} {body}\n")
    }

    /// Parses one line (without its newline).
    pub fn decode(line: &str) -> Result<Message, String> {
        let (version, rest) = line.split_once(' ').unwrap_or((line, ""));
        if version != VERSION {
            return Err(if version.starts_with("blitz-handoff/") {
                format!("the other process speaks {version}, this one {VERSION}")
            } else {
                format!("not a blitz control socket message: {line:?}")
            });
        }
        let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let pid = |s: &str| s.parse::<u32>().map_err(|_| format!("bad pid in {line:?}"));
        match verb {
            "hello" => {
                let (p, name) = args.split_once(' ').unwrap_or((args, ""));
                Ok(Message::Hello {
                    pid: pid(p)?,
                    name: name.to_string(),
                })
            }
            "sockets" => args
                .split_whitespace()
                .map(|tok| {
                    let (kind, addr) = tok
                        .split_once(':')
                        .ok_or_else(|| format!("bad socket {tok:?}"))?;
                    let kind = match kind {
                        "tcp" => Kind::Tcp,
                        "udp" => Kind::Udp,
                        _ => return Err(format!("unknown socket kind {kind:?}")),
                    };
                    let addr = addr
                        .parse::<SocketAddr>()
                        .map_err(|_| format!("bad socket address {addr:?}"))?;
                    Ok((kind, addr))
                })
                .collect::<Result<Vec<_>, String>>()
                .map(Message::Sockets),
            "refused" => Ok(Message::Refused(args.to_string())),
            "ready" => Ok(Message::Ready),
            "abort" => Ok(Message::Abort(args.to_string())),
            "draining" => Ok(Message::Draining { pid: pid(args)? }),
            other => Err(format!("unknown control message {other:?}")),
        }
    }
}

/// One end of a control connection.
#[derive(Debug)]
pub struct Control {
    stream: UnixStream,
    /// Bytes received past the last line returned.
    pending: Vec<u8>,
    /// Descriptors received with `pending`.
    fds: Vec<OwnedFd>,
}

impl Control {
    /// Wraps a connected stream; every read and write times out after
    /// `timeout`.
    pub fn new(stream: UnixStream, timeout: Duration) -> io::Result<Control> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Control {
            stream,
            pending: Vec::new(),
            fds: Vec::new(),
        })
    }

    /// The underlying stream (for peer credentials).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Changes the read timeout (the wait for `ready` is longer).
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    /// Sends `msg`, with `fds` attached to its first byte.
    pub fn send(&mut self, msg: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::other(format!(
                "{} sockets to pass, at most {MAX_FDS} fit one message",
                fds.len()
            )));
        }
        let line = msg.encode();
        let bytes = line.as_bytes();
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("ancillary buffer too small"));
        }
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        // The fds went with the first byte; the rest, if any, is plain.
        (&self.stream).write_all(&bytes[sent..])?;
        Ok(())
    }

    /// Receives the next message and the descriptors that came with it.
    /// End of stream is `UnexpectedEof`, a timeout `WouldBlock`/`TimedOut`.
    pub fn recv(&mut self) -> io::Result<(Message, Vec<OwnedFd>)> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                let msg = Message::decode(&line).map_err(io::Error::other)?;
                return Ok((msg, std::mem::take(&mut self.fds)));
            }
            if self.pending.len() > MAX_LINE {
                return Err(io::Error::other("control message too long"));
            }
            self.read_some()?;
        }
    }

    fn read_some(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            self.stream.as_fd(),
            &mut [IoSliceMut::new(&mut chunk)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                self.fds.extend(fds);
            }
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::other(
                "more sockets passed than fit one message (descriptors truncated)",
            ));
        }
        if got.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other process closed the control connection",
            ));
        }
        self.pending.extend_from_slice(&chunk[..got.bytes]);
        Ok(())
    }
}

/// True when `e` is a read timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_round_trip() {
        let msgs = [
            Message::Hello {
                pid: 42,
                name: "edge eu1".into(),
            },
            Message::Sockets(vec![
                (
                    Kind::Tcp,
                    "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}")),
                ),
                (
                    Kind::Udp,
                    "[::1]:443".parse().unwrap_or_else(|e| panic!("{e}")),
                ),
            ]),
            Message::Sockets(vec![]),
            Message::Refused("an upgrade is already in progress".into()),
            Message::Ready,
            Message::Abort("listener gone\nsecond line".into()),
            Message::Draining { pid: 7 },
        ];
        for m in msgs {
            let line = m.encode();
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line:?}"
            );
            let back = Message::decode(line.trim_end_matches('\n'))
                .unwrap_or_else(|e| panic!("{e}: {line:?}"));
            match (&m, &back) {
                (Message::Abort(a), Message::Abort(b)) => assert_eq!(a.replace('\n', " "), *b),
                _ => assert_eq!(m, back),
            }
        }
    }

    #[test]
    fn other_versions_and_garbage_are_clear_errors() {
        let e = Message::decode("blitz-handoff/9 hello 1 x").unwrap_err();
        assert!(e.contains("blitz-handoff/9") && e.contains(VERSION), "{e}");
        assert!(Message::decode("GET / HTTP/1.1").is_err());
        assert!(Message::decode("blitz-handoff/1 sockets tcp:nonsense").is_err());
        assert!(Message::decode("blitz-handoff/1 launch").is_err());
    }

    #[test]
    fn descriptors_travel_with_their_message() {
        let (a, b) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        let mut a = Control::new(a, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let mut b = Control::new(b, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addrs = vec![
            (Kind::Tcp, l1.local_addr().unwrap_or_else(|e| panic!("{e}"))),
            (Kind::Tcp, l2.local_addr().unwrap_or_else(|e| panic!("{e}"))),
        ];
        a.send(&Message::Sockets(addrs.clone()), &[l1.as_fd(), l2.as_fd()])
            .unwrap_or_else(|e| panic!("{e}"));
        a.send(&Message::Ready, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let (msg, fds) = b.recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(msg, Message::Sockets(addrs.clone()));
        assert_eq!(fds.len(), 2);
        let got = std::net::TcpListener::from(fds.into_iter().next().unwrap_or_else(|| panic!()));
        assert_eq!(got.local_addr().ok(), Some(addrs[0].1));
        let (msg, fds) = b.recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((msg, fds.len()), (Message::Ready, 0));
        drop(a);
        let e = b.recv().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
