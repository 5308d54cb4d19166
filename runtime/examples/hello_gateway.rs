//! A hand-written gateway on the Blitz runtime, standing in for generated
//! code until the compiler emits it. Its CLI is a contract for the
//! end-to-end tests and benchmarks:
//!
//! ```text
//! hello_gateway --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
//!   [--workers N|auto] [--driver auto|io-uring|poll]
//!   [--header-timeout 10s] [--idle-timeout 60s] [--body-timeout 30s]
//!   [--max-header-bytes 16384] [--max-headers 100] [--max-body-bytes 10485760]
//!   [--connect-timeout 1s] [--response-timeout 30s] [--grace 30s]
//! ```
//!
//! Routes: `GET|HEAD /healthz` → 200 "ok\n"; `/redirect` → 301 to
//! https://example.com/; everything else → the upstream.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::process::ExitCode;

use blitz_runtime::http::RequestHead;
use blitz_runtime::lb::Upstream;
use blitz_runtime::rt::parse_duration;
use blitz_runtime::{
    Action, CertConfig, DriverChoice, Gateway, ListenerConfig, ServerConfig, TlsConfig, serve,
};

#[derive(Debug, Clone, Copy)]
enum Route {
    Healthz,
    Redirect,
    Origin,
}

struct Hello {
    upstream: SocketAddr,
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
            Route::Origin => Action::Proxy {
                upstream: 0,
                strip_prefix: None,
            },
        }
    }
}

const USAGE: &str = "usage: hello_gateway --listen ADDR --upstream ADDR [--workers N|auto] \
[--driver auto|io-uring|poll] [--header-timeout 10s] [--idle-timeout 60s] [--body-timeout 30s] \
[--max-header-bytes 16384] [--max-headers 100] [--max-body-bytes 10485760] \
[--connect-timeout 1s] [--response-timeout 30s] [--grace 30s] \
[--tls-cert PEM --tls-key PEM (needs the `tls` feature)]";

fn parse_args() -> Result<(ServerConfig, SocketAddr), String> {
    let mut config = ServerConfig::default();
    let mut listen = None;
    let mut upstream = None;
    let mut driver = None;
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
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
            "--listen" => listen = Some(addr(&value)?),
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
            "--tls-cert" => tls_cert = Some(value.into()),
            "--tls-key" => tls_key = Some(value.into()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let mut listener = ListenerConfig::h1("hello", listen);
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            listener.tls = Some(TlsConfig {
                certs: vec![CertConfig {
                    cert,
                    key,
                    sni: None,
                }],
            })
        }
        (None, None) => {}
        _ => return Err(format!("--tls-cert and --tls-key go together\n{USAGE}")),
    }
    config.listeners = vec![listener];
    let upstream = upstream.ok_or_else(|| format!("--upstream is required\n{USAGE}"))?;
    config.driver = match driver {
        Some(d) => d,
        None => DriverChoice::from_env()?,
    };
    Ok((config, upstream))
}

fn main() -> ExitCode {
    let (config, upstream) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match serve(config, move |_worker| Hello { upstream }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello_gateway: {e}");
            ExitCode::from(1)
        }
    }
}
