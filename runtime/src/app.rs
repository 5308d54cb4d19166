//! The command line of a generated gateway binary (DESIGN.md, "The
//! generated binary"): generated `main` calls [`main`] with the spec's
//! configuration and a constructor of the gateway.
//!
//! ```text
//! GATEWAY [--workers N|auto] [--driver auto|io-uring|poll] [--grace 30s]
//! GATEWAY --version      blitzc version and the spec's hash
//! ```
//!
//! SIGTERM/SIGINT drain gracefully; SIGHUP re-reads the listeners' TLS
//! certificates (see [`crate::rt`]).

#![forbid(unsafe_code)]

use crate::lb::PoolConfig;
use crate::rt::{DriverChoice, ListenerConfig, ServerConfig, parse_duration, serve};
use crate::{Gateway, Limits};
use std::process::ExitCode;

/// Everything a generated gateway knows from its spec that is not code.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The spec's gateway name.
    pub name: &'static str,
    /// Version of blitzc that generated the gateway.
    pub blitzc_version: &'static str,
    /// `sha256:` hash of the spec's canonical model.
    pub spec_hash: &'static str,
    /// The spec's listeners, in spec order.
    pub listeners: Vec<ListenerConfig>,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Request limits and upstream timeouts.
    pub limits: Limits,
    /// Upstream connection pool policy.
    pub pool: PoolConfig,
    /// Control socket for upgrades, when the spec names one.
    pub admin_socket: Option<&'static str>,
}

fn usage(name: &str) -> String {
    format!(
        "usage: {name} [--workers N|auto] [--driver auto|io-uring|poll] [--grace DURATION]\n       {name} --version"
    )
}

/// Runs the gateway: parses the command line, then serves until drained.
/// Exit codes: 0 after a graceful drain, 1 on a start-up failure, 2 on a
/// usage error.
pub fn main<G, F>(config: GatewayConfig, make_gateway: F) -> ExitCode
where
    G: Gateway,
    F: Fn(usize) -> G + Send + Sync + 'static,
{
    let program = std::env::args()
        .next()
        .unwrap_or_else(|| config.name.to_string());
    main_with_args(config, &program, std::env::args().skip(1), make_gateway)
}

/// [`main`] with the program name and arguments given (for hosts such as
/// `blitzc dev`, whose own command line is not the gateway's).
pub fn main_with_args<G, F>(
    config: GatewayConfig,
    program: &str,
    mut args: impl Iterator<Item = String>,
    make_gateway: F,
) -> ExitCode
where
    G: Gateway,
    F: Fn(usize) -> G + Send + Sync + 'static,
{
    let mut server = ServerConfig {
        workers: config.workers,
        limits: config.limits,
        pool: config.pool,
        ..ServerConfig::default()
    };
    let mut driver = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        match flag.as_str() {
            "--version" | "-V" => {
                println!(
                    "{} (blitzc {}, spec {})",
                    config.name, config.blitzc_version, config.spec_hash
                );
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{}", usage(program));
                return ExitCode::SUCCESS;
            }
            "--upgrade" => {
                eprintln!(
                    "{}: --upgrade: socket handoff is not available in this runtime yet",
                    config.name
                );
                return ExitCode::from(2);
            }
            "--workers" | "--driver" | "--grace" => {
                let Some(value) = inline.or_else(|| args.next()) else {
                    eprintln!("{flag} needs a value\n{}", usage(program));
                    return ExitCode::from(2);
                };
                let parsed: Result<(), String> = match flag.as_str() {
                    "--workers" if value == "auto" => {
                        server.workers = 0;
                        Ok(())
                    }
                    "--workers" => value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .map(|n| server.workers = n)
                        .ok_or_else(|| format!("--workers: invalid number {value:?}")),
                    "--driver" => value.parse::<DriverChoice>().map(|d| driver = Some(d)),
                    _ => parse_duration(&value)
                        .map(|d| server.grace = d)
                        .map_err(|e| format!("--grace: {e}")),
                };
                if let Err(e) = parsed {
                    eprintln!("{e}\n{}", usage(program));
                    return ExitCode::from(2);
                }
            }
            other => {
                eprintln!("unknown argument {other:?}\n{}", usage(program));
                return ExitCode::from(2);
            }
        }
    }
    server.driver = match driver.map_or_else(DriverChoice::from_env, Ok) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if config.listeners.is_empty() {
        eprintln!("{}: the spec has no listener", config.name);
        return ExitCode::from(1);
    }
    server.listeners = config.listeners;
    match serve(server, make_gateway) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", config.name);
            ExitCode::from(1)
        }
    }
}
