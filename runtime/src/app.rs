//! The command line of a generated gateway binary (DESIGN.md, "The
//! generated binary"): generated `main` calls [`main`] with the spec's
//! configuration and a constructor of the gateway.
//!
//! ```text
//! GATEWAY [--workers N|auto] [--driver auto|io-uring|poll] [--grace 30s]
//!         [--admin-socket PATH] [--upgrade [--detach]]
//! GATEWAY --version      blitzc version and the spec's hash
//! ```
//!
//! SIGTERM/SIGINT drain gracefully; SIGHUP re-reads the listeners' TLS
//! certificates and the upstream CA files (see [`crate::rt`]). `--upgrade` takes
//! the listening sockets over from the instance serving on the control
//! socket (`--admin-socket`, else the spec's `admin { socket }`, else
//! `$XDG_RUNTIME_DIR/blitz-NAME.sock` or `/tmp/blitz-NAME.sock`), which
//! then drains and exits 0 (see [`crate::handoff`], docs/operations.md).
//! `--detach` (for a service manager's reload command) runs the new
//! instance in the background and returns once it serves.

#![forbid(unsafe_code)]

use crate::handoff::default_socket_path;
use crate::lb::PoolConfig;
use crate::rt::{DriverChoice, ListenerConfig, ServerConfig, parse_duration, serve};
use crate::{Gateway, Limits};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

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
        "usage: {name} [--workers N|auto] [--driver auto|io-uring|poll] [--grace DURATION]\n       \
         {pad} [--admin-socket PATH] [--upgrade [--detach]]\n       {name} --version",
        pad = " ".repeat(name.len())
    )
}

/// Runs the gateway: parses the command line, then serves until drained.
/// Exit codes: 0 after a graceful drain (also after handing off to a new
/// instance), 1 on a start-up failure (for `--upgrade`: no handoff, the
/// running instance keeps serving), 2 on a usage error.
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
        name: config.name.to_string(),
        admin_socket: Some(
            config
                .admin_socket
                .map_or_else(|| default_socket_path(config.name), PathBuf::from),
        ),
        ..ServerConfig::default()
    };
    let mut driver = None;
    let mut detach = false;
    let mut forwarded = Vec::new();
    while let Some(arg) = args.next() {
        if arg != "--detach" {
            forwarded.push(arg.clone());
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        if inline.is_some()
            && matches!(
                flag.as_str(),
                "--version" | "-V" | "--help" | "-h" | "--upgrade" | "--detach"
            )
        {
            // `--detach=yes` must not pass as `--detach`: it would reach the
            // detached child as written and detach it again, without end.
            log_line!("{flag} takes no value\n{}", usage(program));
            return ExitCode::from(2);
        }
        match flag.as_str() {
            "--version" | "-V" => {
                return print_out(&format!(
                    "{} (blitzc {}, spec {})",
                    config.name, config.blitzc_version, config.spec_hash
                ));
            }
            "--help" | "-h" => return print_out(&usage(program)),
            "--upgrade" => server.upgrade = true,
            "--detach" => detach = true,
            "--workers" | "--driver" | "--grace" | "--admin-socket" => {
                let separate = inline.is_none();
                let Some(value) = inline.or_else(|| args.next()) else {
                    log_line!("{flag} needs a value\n{}", usage(program));
                    return ExitCode::from(2);
                };
                if separate {
                    forwarded.push(value.clone());
                }
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
                    "--admin-socket" => {
                        server.admin_socket = Some(PathBuf::from(&value));
                        Ok(())
                    }
                    _ => parse_duration(&value)
                        .map(|d| server.grace = d)
                        .map_err(|e| format!("--grace: {e}")),
                };
                if let Err(e) = parsed {
                    log_line!("{e}\n{}", usage(program));
                    return ExitCode::from(2);
                }
            }
            other => {
                log_line!("unknown argument {other:?}\n{}", usage(program));
                return ExitCode::from(2);
            }
        }
    }
    server.driver = match driver.map_or_else(DriverChoice::from_env, Ok) {
        Ok(d) => d,
        Err(e) => {
            log_line!("{e}");
            return ExitCode::from(2);
        }
    };
    if config.listeners.is_empty() {
        log_line!("{}: the spec has no listener", config.name);
        return ExitCode::from(1);
    }
    if detach {
        if !server.upgrade {
            log_line!("--detach goes with --upgrade\n{}", usage(program));
            return ExitCode::from(2);
        }
        return run_detached(config.name, &forwarded);
    }
    server.listeners = config.listeners;
    match serve(server, make_gateway) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log_line!("{}: {e}", config.name);
            ExitCode::from(1)
        }
    }
}

/// Prints `text` and a newline on stdout: exit 0, or 1 when stdout
/// refused it (a closed pipe), without the panic of `println!`.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// `--upgrade --detach`: runs the same command without `--detach` in the
/// background (its own process group, stdin closed, stderr shared) and
/// returns once it serves (exit 0) or gave up (exit 1, the old instance
/// serving on). The child reports readiness with one `ready PID` line on
/// its stdout, a pipe to this process (env `BLITZ_REPORT_READY`).
fn run_detached(name: &str, args: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            log_line!("{name}: --detach: cannot find this executable: {e}");
            return ExitCode::from(1);
        }
    };
    let child = Command::new(exe)
        .args(args)
        .env(crate::rt::REPORT_READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log_line!("{name}: --detach: cannot start the new instance: {e}");
            return ExitCode::from(1);
        }
    };
    let ready = child.stdout.take().and_then(|out| {
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).ok()?;
        line.strip_prefix("ready ")
            .map(|pid| pid.trim().to_string())
    });
    match ready {
        Some(pid) => {
            log_line!("{name}: upgraded: pid {pid} serves");
            ExitCode::SUCCESS
        }
        None => {
            // The new instance's own stderr (inherited) said why.
            let status = match child.wait() {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            log_line!("{name}: upgrade failed ({status}); the running instance keeps serving");
            ExitCode::from(1)
        }
    }
}
