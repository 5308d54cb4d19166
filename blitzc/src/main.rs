//! The `blitzc` command line. Exit codes follow DESIGN.md: `check` 0 clean
//! (warnings allowed), 1 errors, 2 usage or IO error; `route` 0 matched,
//! 1 no route, 2 usage.
#![forbid(unsafe_code)]

use blitzc::diag::render::{self, Format, Report};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "blitzc", version, about = "The Blitz gateway compiler")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and validate specs, reporting every problem at once.
    Check {
        /// Spec files (.kdl or .toml).
        #[arg(required = true)]
        specs: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = FormatArg::Human)]
        format: FormatArg,
        /// Treat warnings as errors (exit 1).
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Print the name of the route that would serve a request.
    Route {
        spec: PathBuf,
        /// Request method, e.g. GET.
        method: String,
        /// `http://host/path?query`, or `/path?query` (host from -H 'host: ...').
        url: String,
        /// A request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Human,
    Json,
    Github,
    Sarif,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Human => Format::Human,
            FormatArg::Json => Format::Json,
            FormatArg::Github => Format::Github,
            FormatArg::Sarif => Format::Sarif,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Check {
            specs,
            format,
            deny_warnings,
        } => check(&specs, format.into(), deny_warnings),
        Command::Route {
            spec,
            method,
            url,
            headers,
        } => route(&spec, &method, &url, &headers),
    }
}

fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn check(specs: &[PathBuf], format: Format, deny_warnings: bool) -> ExitCode {
    let mut checked = Vec::new();
    for path in specs {
        match blitzc::check_path(path) {
            Ok(c) => checked.push(c),
            Err(e) => {
                eprintln!("error: cannot read `{}`: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let reports: Vec<Report<'_>> = checked
        .iter()
        .map(|c| Report {
            file: &c.file,
            diagnostics: &c.diagnostics,
        })
        .collect();
    let out = render::render(&reports, format, use_color());
    let _ = std::io::stdout().write_all(out.as_bytes());
    let errors = checked.iter().any(|c| c.has_errors());
    let warnings = checked.iter().any(|c| c.has_warnings());
    if errors || (deny_warnings && warnings) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn route(spec_path: &PathBuf, method: &str, url: &str, headers: &[String]) -> ExitCode {
    let checked = match blitzc::check_path(spec_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", spec_path.display());
            return ExitCode::from(2);
        }
    };
    let spec = match (&checked.spec, checked.has_errors()) {
        (Some(spec), false) => spec,
        _ => {
            let report = [Report {
                file: &checked.file,
                diagnostics: &checked.diagnostics,
            }];
            eprint!("{}", render::render(&report, Format::Human, false));
            return ExitCode::from(2);
        }
    };
    let mut parsed_headers = Vec::new();
    for header in headers {
        match header.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => {
                parsed_headers.push((name.trim(), value.trim()))
            }
            _ => {
                eprintln!("error: header `{header}` is not `name: value`");
                return ExitCode::from(2);
            }
        }
    }
    let (host, target) = match split_url(url) {
        Some((Some(host), target)) => (host.to_string(), target),
        Some((None, target)) => {
            let host = parsed_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("host"))
                .map(|(_, v)| *v);
            (host.unwrap_or("").to_string(), target)
        }
        None => {
            eprintln!(
                "error: `{url}` is neither an absolute http(s) URL nor a path starting with `/`"
            );
            return ExitCode::from(2);
        }
    };
    let router = match blitz_ir::matcher::Router::new(spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let head = blitz_ir::matcher::RequestHead {
        method: method.trim(),
        host: &host,
        target,
        headers: &parsed_headers,
    };
    match router.route(&head) {
        Ok(Some(i)) => {
            println!("{}", spec.routes[i].name.value);
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("no route matches (404)");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("error: the path of `{url}` is not a valid request path");
            ExitCode::from(2)
        }
    }
}

/// Splits `http://host[:port]/path?q` into (Some(authority), "/path?q"), or
/// returns (None, url) for an origin-form `/path?q`.
fn split_url(url: &str) -> Option<(Option<&str>, &str)> {
    if url.starts_with('/') {
        return Some((None, url));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(_) | None => (rest.split('?').next().unwrap_or(rest), "/"),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    Some((Some(authority), target))
}
