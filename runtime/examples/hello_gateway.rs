//! A hand-written gateway on the Blitz runtime, standing in for generated
//! code until the compiler emits it. Its CLI is a contract for the
//! end-to-end tests and benchmarks:
//!
//! ```text
//! hello_gateway --listen 127.0.0.1:PORT [--listen ADDR…] --upstream 127.0.0.1:PORT
//!   [--workers N|auto] [--driver auto|io-uring|poll]
//!   [--header-timeout 10s] [--idle-timeout 60s] [--body-timeout 30s]
//!   [--max-header-bytes 16384] [--max-headers 100] [--max-body-bytes 10485760]
//!   [--connect-timeout 1s] [--response-timeout 30s] [--grace 30s]
//!   [--protocols h1|h2|h2c, comma-separated] [--tls-cert PEM --tls-key PEM]
//!   [--admin-socket PATH] [--upgrade] [--tag TAG]
//! ```
//!
//! `--protocols` lists what the listener speaks (default `h1`); `h2c`
//! needs the runtime's `h2` feature (`--features blitz-runtime/h2`).
//!
//! Routes: `GET|HEAD /healthz` → 200 "ok\n"; `/redirect` → 301 to
//! https://example.com/; `/tag` → 200 "TAG\n"; everything else → the
//! upstream. With `--tag`, every response carries `x-gateway-tag: TAG`
//! (so two "builds" answer differently in the upgrade tests).
//! `--admin-socket` serves the control socket (no default here: tests run
//! many gateways side by side); `--upgrade` takes over from the instance
//! serving it.
//!
//! Test hooks, from the environment (the upgrade tests'; a generated
//! gateway has none): `BLITZ_TEST_DRAIN_DELAY_MS=N` makes each worker see
//! a drain N ms late; `BLITZ_TEST_HANDOFF_STALL=after-sockets` stops an
//! `--upgrade` right after it received the sockets.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use blitz_runtime::http::{RequestHead, ResponseHead};
use blitz_runtime::lb::Upstream;
use blitz_runtime::rt::parse_duration;
use blitz_runtime::{
    Action, CertConfig, DriverChoice, Gateway, ListenerConfig, Protocols, ServerConfig, TestHooks,
    TlsConfig, serve,
};

/// `h1`, `h2` (over TLS, by ALPN), `h2c`, comma-separated.
fn parse_protocols(value: &str) -> Result<Protocols, String> {
    let mut p = Protocols {
        h1: false,
        ..Protocols::H1
    };
    for name in value.split(',') {
        match name {
            "h1" => p.h1 = true,
            "h2c" if cfg!(feature = "h2") => p.h2c = true,
            "h2" if cfg!(feature = "h2") => p.h2 = true,
            "h2" | "h2c" => return Err(format!("{name} needs the runtime's h2 feature")),
            other => return Err(format!("unknown protocol {other:?} (h1, h2, h2c)")),
        }
    }
    if !p.h1 && !p.h2 && !p.h2c {
        return Err("--protocols needs h1, h2 or h2c".into());
    }
    Ok(p)
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Healthz,
    Redirect,
    Tag,
    Origin,
}

struct Hello {
    upstream: SocketAddr,
    tag: Option<&'static str>,
}

impl Gateway for Hello {
    type Route = Route;
    type Ctx = ();

    fn upstreams(&self) -> Vec<Upstream> {
        vec![Upstream::single("origin", self.upstream)]
    }

    fn route(&self, req: &RequestHead) -> Route {
        match req.path_only() {
            b"/healthz" if matches!(req.method(), "GET" | "HEAD") => Route::Healthz,
            b"/redirect" => Route::Redirect,
            b"/tag" => Route::Tag,
            _ => Route::Origin,
        }
    }

    fn request(&self, route: Route, _req: &mut RequestHead, _ctx: &mut ()) -> Action {
        match route {
            Route::Healthz => Action::Respond {
                status: 200,
                body: Cow::Borrowed(b"ok\n"),
                content_type: "text/plain",
            },
            Route::Redirect => Action::Redirect {
                location: Cow::Borrowed("https://example.com/"),
                status: 301,
            },
            Route::Tag => Action::Respond {
                status: 200,
                body: Cow::Owned(format!("{}\n", self.tag.unwrap_or("")).into_bytes()),
                content_type: "text/plain",
            },
            Route::Origin => Action::Proxy {
                upstream: 0,
                strip_prefix: None,
            },
        }
    }

    fn response(&self, _route: Route, resp: &mut ResponseHead, _ctx: &mut ()) {
        if let Some(tag) = self.tag {
            resp.headers_mut().set("x-gateway-tag", tag.as_bytes());
        }
    }
}

const USAGE: &str = "usage: hello_gateway --listen ADDR --upstream ADDR [--workers N|auto] \
[--driver auto|io-uring|poll] [--header-timeout 10s] [--idle-timeout 60s] [--body-timeout 30s] \
[--max-header-bytes 16384] [--max-headers 100] [--max-body-bytes 10485760] \
[--connect-timeout 1s] [--response-timeout 30s] [--grace 30s] [--pool-max-idle 128] [--protocols h1,h2,h2c] \
[--tls-cert PEM --tls-key PEM (needs the `tls` feature)] \
[--admin-socket PATH] [--upgrade] [--tag TAG]";

fn parse_args() -> Result<(ServerConfig, SocketAddr, Option<&'static str>), String> {
    let mut config = ServerConfig {
        name: "hello".to_string(),
        ..ServerConfig::default()
    };
    let mut tag = None;
    let mut listen = Vec::new();
    let mut upstream = None;
    let mut driver = None;
    let mut protocols = Protocols::H1;
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        if flag == "--upgrade" {
            config.upgrade = true;
            continue;
        }
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (flag, None),
        };
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?,
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: invalid number {v:?}"))
        };
        let dur = |v: &str| parse_duration(v).map_err(|e| format!("{flag}: {e}"));
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| format!("{flag}: invalid address {v:?}"))
        };
        let l = &mut config.limits;
        match flag.as_str() {
            "--listen" => listen.push(addr(&value)?),
            "--upstream" => upstream = Some(addr(&value)?),
            "--workers" => {
                config.workers = if value == "auto" {
                    0
                } else {
                    num(&value)?.max(1) as usize
                }
            }
            "--driver" => driver = Some(value.parse::<DriverChoice>()?),
            "--header-timeout" => l.header_timeout = dur(&value)?,
            "--idle-timeout" => l.idle_timeout = dur(&value)?,
            "--body-timeout" => l.body_timeout = dur(&value)?,
            "--max-header-bytes" => l.max_header_bytes = num(&value)? as usize,
            "--max-headers" => l.max_headers = num(&value)? as usize,
            "--max-body-bytes" => l.max_body_bytes = num(&value)?,
            "--connect-timeout" => l.connect_timeout = dur(&value)?,
            "--response-timeout" => l.response_timeout = dur(&value)?,
            "--grace" => config.grace = dur(&value)?,
            "--pool-max-idle" => config.pool.max_idle = num(&value)? as usize,
            "--protocols" => protocols = parse_protocols(&value)?,
            "--tls-cert" => tls_cert = Some(value.into()),
            "--tls-key" => tls_key = Some(value.into()),
            "--admin-socket" => config.admin_socket = Some(PathBuf::from(&value)),
            "--tag" => tag = Some(&*Box::leak(value.into_boxed_str())),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if listen.is_empty() {
        return Err(format!("--listen is required\n{USAGE}"));
    }
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            certs: vec![CertConfig {
                cert,
                key,
                sni: None,
            }],
        }),
        (None, None) => None,
        _ => return Err(format!("--tls-cert and --tls-key go together\n{USAGE}")),
    };
    // The first listener is "hello", further ones "hello-2", "hello-3"…;
    // all speak `--protocols`, with the same TLS.
    config.listeners = listen
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let mut l = match i {
                0 => ListenerConfig::h1("hello", a),
                _ => ListenerConfig::h1(format!("hello-{}", i + 1), a),
            };
            l.protocols = protocols;
            l.tls = tls.clone();
            l
        })
        .collect();
    let upstream = upstream.ok_or_else(|| format!("--upstream is required\n{USAGE}"))?;
    config.driver = match driver {
        Some(d) => d,
        None => DriverChoice::from_env()?,
    };
    config.test_hooks = test_hooks_from_env();
    Ok((config, upstream, tag))
}

/// The upgrade tests' fault injection (see the module docs).
fn test_hooks_from_env() -> TestHooks {
    TestHooks {
        drain_delay: std::env::var("BLITZ_TEST_DRAIN_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis),
        stall_after_sockets: std::env::var("BLITZ_TEST_HANDOFF_STALL")
            .is_ok_and(|v| v == "after-sockets"),
    }
}

fn main() -> ExitCode {
    let (config, upstream, tag) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            blitz_runtime::log_line!("{e}");
            return ExitCode::from(2);
        }
    };
    match serve(config, move |_worker| Hello { upstream, tag }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            blitz_runtime::log_line!("hello_gateway: {e}");
            ExitCode::from(1)
        }
    }
}
