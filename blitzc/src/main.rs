//! The `blitzc` command line. Exit codes follow DESIGN.md: `check` 0 clean
//! (warnings allowed), 1 errors, 2 usage or IO error; `route` 0 matched,
//! 1 no route, 2 usage.
#![forbid(unsafe_code)]

use blitzc::build::Profile;
use blitzc::diag::render::{self, Format, Report};
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
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
    /// Check, generate and compile a spec into one gateway binary.
    Build {
        spec: PathBuf,
        /// Where to put the binary (default: ./GATEWAY-NAME).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ProfileArg::Release)]
        profile: ProfileArg,
    },
    /// Write the generated gateway crate into a folder.
    Emit {
        spec: PathBuf,
        #[arg(short = 'o', long = "output", required = true)]
        output: PathBuf,
    },
    /// Build a spec and run the gateway in the foreground.
    Run {
        spec: PathBuf,
        #[arg(long, value_enum, default_value_t = ProfileArg::Release)]
        profile: ProfileArg,
        /// Arguments for the gateway binary (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Serve a spec with the reference interpreter: no cargo, instant start.
    Dev {
        spec: PathBuf,
        /// Arguments for the gateway (after `--`), as for a built binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print the name of the route that would serve a request.
    Route {
        spec: PathBuf,
        /// Request method, e.g. GET.
        method: String,
        /// `http://host/path?query`, or `/path?query` (host from -H 'host: ...').
        url: String,
        /// A request header, `name: value` (repeatable). The value is taken
        /// as bytes: it need not be UTF-8 (obs-text, RFC 9110 §5.5).
        #[arg(short = 'H', long = "header")]
        headers: Vec<OsString>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProfileArg {
    Release,
    Max,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Release => Profile::Release,
            ProfileArg::Max => Profile::Max,
        }
    }
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
        Command::Build {
            spec,
            output,
            profile,
        } => match build(&spec, output, profile.into()) {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Emit { spec, output } => emit(&spec, &output),
        Command::Run {
            spec,
            profile,
            args,
        } => run(&spec, profile.into(), &args),
        Command::Dev { spec, args } => dev(&spec, args),
    }
}

fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn check(specs: &[PathBuf], format: Format, deny_warnings: bool) -> ExitCode {
    // A spec that cannot be read does not hide the others' diagnostics (a
    // pull request's lint shows them all); it still makes the exit 2.
    let mut checked = Vec::new();
    let mut unreadable = false;
    for path in specs {
        match blitzc::check_path(path) {
            Ok(c) => checked.push(c),
            Err(e) => {
                eprintln!("error: cannot read `{}`: {e}", path.display());
                unreadable = true;
            }
        }
    }
    if checked.is_empty() {
        return ExitCode::from(2);
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
    if unreadable {
        ExitCode::from(2)
    } else if errors || (deny_warnings && warnings) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn route(spec_path: &Path, method: &str, url: &str, headers: &[OsString]) -> ExitCode {
    let checked = match blitzc::check_path(spec_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", spec_path.display());
            return ExitCode::from(2);
        }
    };
    // A shadowed route (B050) does not change what the matcher does, and
    // `route` is how one finds out which route wins instead: route anyway,
    // with a note. Any other error makes the spec unusable (exit 2).
    let routable = checked
        .diagnostics
        .iter()
        .all(|d| !d.is_error() || d.code == blitzc::diag::Code::ShadowedRoute);
    let spec = match &checked.spec {
        Some(spec) if routable => spec,
        _ => {
            let report = [Report {
                file: &checked.file,
                diagnostics: &checked.diagnostics,
            }];
            eprint!("{}", render::render(&report, Format::Human, false));
            return ExitCode::from(2);
        }
    };
    for d in checked.diagnostics.iter().filter(|d| d.is_error()) {
        eprintln!("note: {} ({}; see `blitzc check`)", d.message, d.code);
    }
    let method = method.trim();
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        eprintln!("error: `{method}` is not an HTTP method (a token such as GET)");
        return ExitCode::from(2);
    }
    let mut parsed_headers = Vec::new();
    for header in headers {
        match split_header(header.as_bytes()) {
            Some(field) => parsed_headers.push(field),
            None => {
                eprintln!(
                    "error: header `{}` is not `name: value`",
                    header.to_string_lossy()
                );
                return ExitCode::from(2);
            }
        }
    }
    let (host, target) = match split_url(url) {
        // The authority of an absolute-form target wins over `Host`
        // (RFC 9112 §3.2.2).
        Some((Some(host), target)) => (host.to_string(), target),
        Some((None, target)) => {
            let host = parsed_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("host"))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            (host.unwrap_or_default(), target)
        }
        None => {
            eprintln!(
                "error: `{url}` is neither an absolute http(s) URL with a host nor a path starting with `/`"
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
        method,
        host: &host,
        target: &target,
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

/// `name: value` as a request would carry it: a token name, the value
/// without the whitespace around it (RFC 9110 §5.5), any bytes but CR, LF
/// and NUL.
fn split_header(header: &[u8]) -> Option<(&str, &[u8])> {
    let colon = header.iter().position(|&b| b == b':')?;
    let (name, value) = (&header[..colon], &header[colon + 1..]);
    if name.is_empty() || !name.iter().copied().all(is_token_byte) {
        return None;
    }
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    let value = &value[start..end];
    if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return None;
    }
    // A token is ASCII.
    Some((std::str::from_utf8(name).ok()?, value))
}

/// A `tchar` of RFC 9110 §5.6.2: what methods and header names are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits `http://[user@]host[:port][/path][?query][#fragment]` into
/// `(Some(authority), "/path?query")` — the path defaults to `/`, so
/// `http://host?x=1` is `/?x=1` — or returns `(None, url)` for an
/// origin-form `/path?query`. The scheme is case-insensitive; the fragment
/// is never sent. `None` for anything else, or an empty host.
fn split_url(url: &str) -> Option<(Option<&str>, std::borrow::Cow<'_, str>)> {
    use std::borrow::Cow;
    let url = url.split('#').next().unwrap_or(url);
    if url.starts_with('/') {
        return Some((None, Cow::Borrowed(url)));
    }
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        // `[::1]` has colons of its own; only strip a numeric port.
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    if name.is_empty() {
        return None;
    }
    let target = if target.starts_with('/') {
        Cow::Borrowed(target)
    } else {
        Cow::Owned(format!("/{target}"))
    };
    Some((Some(host), target))
}

/// Checks a spec for `build`, `emit` and `run`: prints its diagnostics (and
/// what the runtime cannot serve yet) on stderr; exit 1 on any error.
fn checked_for_build(spec_path: &Path) -> Result<(blitzc::Checked, blitz_ir::Spec), ExitCode> {
    let mut checked = match blitzc::check_path(spec_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", spec_path.display());
            return Err(ExitCode::from(2));
        }
    };
    if let Some(spec) = &checked.spec
        && !checked.has_errors()
    {
        checked
            .diagnostics
            .extend(blitzc::codegen::support::unsupported(spec));
        blitzc::diag::sort(&mut checked.diagnostics);
    }
    if !checked.diagnostics.is_empty() {
        let report = [Report {
            file: &checked.file,
            diagnostics: &checked.diagnostics,
        }];
        eprint!(
            "{}",
            render::render(&report, Format::Human, std::io::stderr().is_terminal())
        );
    }
    match checked.spec.take() {
        Some(spec) if !checked.has_errors() => Ok((checked, spec)),
        _ => Err(ExitCode::from(1)),
    }
}

fn build(spec_path: &Path, output: Option<PathBuf>, profile: Profile) -> Result<PathBuf, ExitCode> {
    let (checked, spec) = checked_for_build(spec_path)?;
    let source = blitzc::codegen::generate(&spec, &checked.file);
    let name = &spec.gateway.name.value;
    let output = output.unwrap_or_else(|| PathBuf::from(blitzc::build::binary_name(name)));
    // Found before cargo runs, and IO errors (exit 2), not failed builds.
    let written = output.as_os_str().as_bytes();
    let names_a_folder = written.ends_with(b"/")
        || written.ends_with(b"/.")
        || written.ends_with(b"/..")
        || written == b"."
        || written == b"..";
    let not_a_binary = if output.is_dir() || names_a_folder {
        Some("a directory")
    } else {
        // A device node, a socket, a pipe, or a link to one (`/dev/stdout`):
        // the binary would be renamed over it (`-o /dev/null` as root
        // replaced the system's). A link to a file, or a dangling one, is
        // replaced by the binary; its target is left alone.
        std::fs::metadata(&output)
            .ok()
            .filter(|m| !m.is_file())
            .map(|_| "not a regular file")
    };
    if let Some(what) = not_a_binary {
        eprintln!(
            "error: `{}` is {what}: -o names the binary to write",
            output.display()
        );
        return Err(ExitCode::from(2));
    }
    eprintln!(
        "blitzc: building gateway `{name}` ({}) with cargo",
        source.spec_hash
    );
    blitzc::build::build(name, spec_path, &source, profile, &output).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(3)
    })
}

fn emit(spec_path: &Path, output: &Path) -> ExitCode {
    let (checked, spec) = match checked_for_build(spec_path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let source = blitzc::codegen::generate(&spec, &checked.file);
    if let Some(file) = foreign_crate(output) {
        eprintln!(
            "error: `{}` was not written by blitzc: emit into an empty folder, or one blitzc emitted into",
            file.display()
        );
        return ExitCode::from(2);
    }
    match blitzc::build::write_crate(output, &spec.gateway.name.value, spec_path, &source) {
        Ok(()) => {
            println!("{}", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write `{}`: {e}", output.display());
            ExitCode::from(2)
        }
    }
}

/// A file of `dir` that `emit` would overwrite though blitzc did not
/// write it: a manifest without blitzc's mark, or sources without a
/// manifest.
fn foreign_crate(dir: &Path) -> Option<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    match std::fs::read_to_string(&manifest) {
        Ok(text) if text.starts_with(blitzc::build::MANIFEST_MARK) => None,
        Ok(_) => Some(manifest),
        Err(_) if manifest.exists() => Some(manifest),
        Err(_) => ["src/main.rs", "src/gateway.rs"]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|f| f.exists()),
    }
}

fn run(spec_path: &Path, profile: Profile, args: &[String]) -> ExitCode {
    let dir = blitzc::build::cache_dir().join("bin");
    let name = spec_path
        .file_stem()
        .map_or_else(|| "gateway".into(), |s| s.to_string_lossy().into_owned());
    let output = dir.join(blitzc::build::binary_name(&name));
    let binary = match build(spec_path, Some(output), profile) {
        Ok(path) => path,
        Err(code) => return code,
    };
    // Become the gateway: signals (SIGTERM to drain, SIGHUP) and the exit
    // status are then the gateway's own, with no blitzc process in between.
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(&binary).args(args).exec();
    eprintln!("error: cannot run `{}`: {error}", binary.display());
    ExitCode::from(3)
}

fn dev(spec_path: &Path, args: Vec<String>) -> ExitCode {
    let (_checked, spec) = match checked_for_build(spec_path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let hash: &'static str = Box::leak(blitzc::codegen::spec_hash(&spec).into_boxed_str());
    let spec: &'static blitz_ir::Spec = Box::leak(Box::new(spec));
    let interpreter = match blitz_runtime::interp::Interpreter::new(spec) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    drop(interpreter); // proves the spec interprets before workers start
    eprintln!(
        "blitzc: serving `{}` with the reference interpreter ({hash})",
        spec.gateway.name.value
    );
    let config = blitz_runtime::interp::config(spec, hash);
    let program = format!("blitzc dev {}", spec_path.display());
    blitz_runtime::app::main_with_args(config, &program, args.into_iter(), move |_worker| {
        // Checked above: the same spec compiles the same regexes.
        blitz_runtime::interp::Interpreter::new(spec).unwrap_or_else(|e| panic!("{e}"))
    })
}
