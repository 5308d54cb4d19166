//! Resolution of servers named by DNS, at start and then in the background
//! (one thread for the whole gateway, never on the request path).
//!
//! A name is looked up, in order:
//!
//! 1. in `/etc/hosts` (as the system resolver would first): re-read every
//!    [`DEFAULT_REFRESH`];
//! 2. by DNS over UDP (A and AAAA, `simple-dns` for the wire format) at the
//!    first `nameserver` of `/etc/resolv.conf`, or at `BLITZ_DNS_SERVER`
//!    (`IP:PORT`) when set: re-resolved when the answer's TTL (the smallest
//!    of its records) runs out, clamped to [`MIN_REFRESH`]..[`MAX_REFRESH`];
//! 3. else by the system resolver (`getaddrinfo`), which says nothing of
//!    TTLs: re-resolved every [`DEFAULT_REFRESH`].
//!
//! `BLITZ_DNS_REFRESH` (a duration such as `5s`) overrides
//! [`DEFAULT_REFRESH`]. A failed or empty resolution keeps the last
//! addresses (a resolver outage must not empty an upstream) and is tried
//! again after [`MIN_REFRESH`]. Names are used as written (no search
//! domains).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};

use super::Directory;
use crate::lb::ServerAddress;

/// Re-resolution interval of names without a TTL (hosts file, system resolver).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// Shortest time between two resolutions of a name.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest time between two resolutions of a name.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Time allowed for one DNS answer.
const QUERY_TIMEOUT: Duration = Duration::from_millis(800);

/// The addresses of a name and how long they are valid.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Addresses, deduplicated, in the resolver's order.
    pub addrs: Vec<SocketAddr>,
    /// How long they may be used; `None`: unknown (hosts file, system resolver).
    pub ttl: Option<Duration>,
}

/// Resolves `host` once (blocking), as described in the module docs.
pub fn resolve(host: &str, port: u16) -> io::Result<Resolved> {
    let from_hosts = std::fs::read_to_string("/etc/hosts")
        .map(|text| hosts_lookup(&text, host))
        .unwrap_or_default();
    if !from_hosts.is_empty() {
        return Ok(Resolved {
            addrs: from_hosts
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            ttl: None,
        });
    }
    if let Some(server) = nameserver()
        && let Ok((ips, ttl)) = query_both(server, host)
        && !ips.is_empty()
    {
        return Ok(Resolved {
            addrs: ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            ttl: Some(ttl),
        });
    }
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in (host, port).to_socket_addrs()? {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    Ok(Resolved { addrs, ttl: None })
}

/// The addresses `/etc/hosts` (its text) gives `host`.
fn hosts_lookup(text: &str, host: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if fields.any(|name| name.eq_ignore_ascii_case(host)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// `BLITZ_DNS_SERVER`, else the first `nameserver` of `/etc/resolv.conf`.
fn nameserver() -> Option<SocketAddr> {
    if let Ok(v) = std::env::var("BLITZ_DNS_SERVER") {
        return v.parse().ok();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        (f.next() == Some("nameserver"))
            .then(|| f.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// A and AAAA of `host` at `server`, with the smallest TTL of the answers.
fn query_both(server: SocketAddr, host: &str) -> io::Result<(Vec<IpAddr>, Duration)> {
    let mut ips = Vec::new();
    let mut ttl = MAX_REFRESH;
    let mut answered = false;
    for qtype in [TYPE::A, TYPE::AAAA] {
        if let Ok((found, t)) = query(server, host, qtype) {
            answered = true;
            for ip in found {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            ttl = ttl.min(t);
        }
    }
    if answered {
        Ok((ips, ttl))
    } else {
        Err(io::Error::other("no DNS answer"))
    }
}

/// One question over UDP.
fn query(server: SocketAddr, host: &str, qtype: TYPE) -> io::Result<(Vec<IpAddr>, Duration)> {
    let bad =
        |e: simple_dns::SimpleDnsError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let id = (nanos as u16) ^ ((nanos >> 16) as u16) ^ (std::process::id() as u16);
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    let name = Name::new(host).map_err(bad)?;
    packet.questions.push(Question::new(
        name,
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    let bytes = packet.build_bytes_vec().map_err(bad)?;
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(QUERY_TIMEOUT))?;
    socket.send(&bytes)?;
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + QUERY_TIMEOUT;
    loop {
        let n = socket.recv(&mut buf)?;
        let Ok(reply) = Packet::parse(&buf[..n]) else {
            continue;
        };
        if reply.id() != id {
            if Instant::now() >= deadline {
                return Err(io::ErrorKind::TimedOut.into());
            }
            continue;
        }
        if !matches!(reply.rcode(), RCODE::NoError | RCODE::NameError) {
            return Err(io::Error::other(format!("DNS answer {:?}", reply.rcode())));
        }
        let mut ips = Vec::new();
        let mut ttl = MAX_REFRESH;
        for rr in &reply.answers {
            let ip = match &rr.rdata {
                RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
                RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(a.address)),
                _ => continue,
            };
            ips.push(ip);
            ttl = ttl.min(Duration::from_secs(u64::from(rr.ttl)));
        }
        return Ok((ips, ttl));
    }
}

fn refresh_interval() -> Duration {
    std::env::var("BLITZ_DNS_REFRESH")
        .ok()
        .and_then(|v| crate::rt::parse_duration(&v).ok())
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Re-resolves every DNS server until the directory is stopped.
pub fn run(dir: &Directory) {
    let refresh = refresh_interval();
    // (upstream, server, next resolution). The first comes soon: the
    // start-up resolution did not keep its TTL.
    let mut due: Vec<(usize, usize, Instant)> = Vec::new();
    let start = Instant::now();
    for (u, up) in dir.upstreams().iter().enumerate() {
        for (s, server) in up.servers.iter().enumerate() {
            if matches!(server.address, ServerAddress::Dns { .. }) {
                due.push((u, s, start + MIN_REFRESH));
            }
        }
    }
    loop {
        let now = Instant::now();
        for (u, s, next) in &mut due {
            if *next > now {
                continue;
            }
            let up = &dir.upstreams()[*u];
            let ServerAddress::Dns { host, port } = &up.servers[*s].address else {
                continue;
            };
            match resolve(host, *port) {
                Ok(r) if !r.addrs.is_empty() => {
                    if up.update_server(*s, &r.addrs) {
                        log_line!("blitz: upstream {:?}: {host} is now {:?}", up.name, r.addrs);
                    }
                    *next =
                        Instant::now() + r.ttl.unwrap_or(refresh).clamp(MIN_REFRESH, MAX_REFRESH);
                }
                Ok(_) | Err(_) => *next = Instant::now() + MIN_REFRESH,
            }
        }
        let wake = due.iter().map(|d| d.2).min().unwrap_or(now + MAX_REFRESH);
        if !dir.sleep(wake.saturating_duration_since(Instant::now())) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_lines() {
        let text = "127.0.0.1 localhost\n# 10.0.0.1 svc\n::1 localhost ip6-localhost\n10.0.0.2\tsvc.test other # comment\n";
        assert_eq!(
            hosts_lookup(text, "localhost"),
            [
                "127.0.0.1"
                    .parse::<IpAddr>()
                    .unwrap_or_else(|e| panic!("{e}")),
                "::1".parse().unwrap_or_else(|e| panic!("{e}"))
            ]
        );
        assert_eq!(hosts_lookup(text, "SVC.test").len(), 1);
        assert!(hosts_lookup(text, "svc").is_empty());
    }

    /// A one-shot DNS server on a thread: answers A with 10.1.2.3, TTL 7.
    #[test]
    fn queries_a_dns_server_and_keeps_the_ttl() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = server.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let (n, peer) = server.recv_from(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            let q = Packet::parse(&buf[..n]).unwrap_or_else(|e| panic!("{e}"));
            let mut reply = Packet::new_reply(q.id());
            reply.answers.push(simple_dns::ResourceRecord::new(
                q.questions[0].qname.clone(),
                CLASS::IN,
                7,
                RData::A(simple_dns::rdata::A {
                    address: u32::from(Ipv4Addr::new(10, 1, 2, 3)),
                }),
            ));
            let bytes = reply.build_bytes_vec().unwrap_or_else(|e| panic!("{e}"));
            let _ = server.send_to(&bytes, peer);
        });
        let (ips, ttl) = query(addr, "svc.test", TYPE::A).unwrap_or_else(|e| panic!("{e}"));
        let _ = t.join();
        assert_eq!(ips, [IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))]);
        assert_eq!(ttl, Duration::from_secs(7));
    }
}
