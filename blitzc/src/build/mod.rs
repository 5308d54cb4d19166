//! From generated source to a binary: the crate writer (templates/ plus the
//! generated `gateway.rs`) and the cargo invocation.
//!
//! Every build on a machine shares one cargo target directory, so the
//! runtime and its dependencies compile once per profile and feature set;
//! a warm `blitzc build` compiles only the generated crate and links.
//! Generated crates live in a cache folder keyed by the gateway's name and
//! are rewritten only where their content changed, so cargo's fingerprints
//! stay valid between builds of the same spec. Two builds of one name at
//! once (CI jobs of two sites sharing a cache) take turns: a lock file per
//! crate is held from writing the crate until the binary is copied out.

use crate::codegen::GatewaySource;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

const CARGO_TEMPLATE: &str = include_str!("../../../templates/Cargo.toml");
const MAIN_TEMPLATE: &str = include_str!("../../../templates/main.rs");
/// The workspace's lock file: generated crates start from the same
/// dependency versions the runtime was tested with.
const LOCK_FILE: &str = include_str!("../../../Cargo.lock");

/// Build profile of the generated crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Optimised, fast to link (no LTO).
    Release,
    /// Fat LTO, one codegen unit, `panic = "abort"`: slowest build, fastest binary.
    Max,
}

impl Profile {
    fn cargo_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Max => "max",
        }
    }
}

/// An environment variable that is set and not empty (an empty one counts
/// as unset, as the XDG base directory specification says of its own).
fn env_set(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The runtime crate generated gateways depend on: `BLITZ_RUNTIME` or the
/// runtime of the source tree blitzc was built from.
pub fn runtime_path() -> PathBuf {
    env_set("BLITZ_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime"))
}

/// Where generated crates and the shared target directory live:
/// `BLITZ_CACHE_DIR`, else `$XDG_CACHE_HOME/blitz` (when absolute, as the
/// XDG specification wants), else `~/.cache/blitz`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env_set("BLITZ_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env_set("XDG_CACHE_HOME").map(PathBuf::from)
        && dir.is_absolute()
    {
        return dir.join("blitz");
    }
    match env_set("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/blitz"),
        None => std::env::temp_dir().join("blitz-cache"),
    }
}

/// Names cargo keeps for folders of its own target directory: it refuses
/// a binary called so.
const CARGO_RESERVED: [&str; 4] = ["build", "deps", "examples", "incremental"];

/// A file-system-safe name for the gateway's crate and binary.
pub fn binary_name(gateway: &str) -> String {
    let name: String = gateway
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty()
        || name.starts_with(|c: char| c.is_ascii_digit())
        || CARGO_RESERVED.contains(&name.as_str())
    {
        format!("gw-{name}")
    } else {
        name
    }
}

/// `text` on one line, for a comment of the manifest: a control character
/// (a newline would end the comment and start TOML of the spec's making)
/// is written as its escape.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `template` with each `{{key}}` replaced by its value, in one pass: a
/// value is never read for placeholders (a gateway named `{{bin}}` is
/// written as such).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let known = after.find("}}").and_then(|close| {
            let value = values.iter().find(|(key, _)| *key == &after[..close])?.1;
            Some((value, close))
        });
        match known {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `text` as a TOML basic string, quotes and escapes included.
fn toml_string(text: &str) -> String {
    toml_edit::Value::from(text).to_string().trim().to_string()
}

/// The first line of every manifest blitzc writes: how `emit` knows a
/// crate it may overwrite.
pub const MANIFEST_MARK: &str = "# Generated by blitzc";

/// Writes `path` only when its content differs (keeps cargo's mtimes).
fn write_if_changed(path: &Path, content: &str) -> io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content)
}

/// Writes the gateway crate into `dir`.
pub fn write_crate(
    dir: &Path,
    gateway: &str,
    spec_file: &Path,
    source: &GatewaySource,
) -> io::Result<()> {
    // A missing runtime is said as such: the caller reports the error
    // under the output path it was writing.
    let runtime = std::fs::canonicalize(runtime_path()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "the Blitz runtime sources at `{}` (set BLITZ_RUNTIME to their folder): {e}",
                runtime_path().display()
            ),
        )
    })?;
    let bin = binary_name(gateway);
    let features = source
        .features
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let spec_name = spec_file.file_name().map_or_else(
        || spec_file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let Some(runtime) = runtime.to_str() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the Blitz runtime sources at `{}` (a cargo manifest names paths in UTF-8: set BLITZ_RUNTIME to a folder whose path is)",
                runtime.display()
            ),
        ));
    };
    let manifest = fill(
        CARGO_TEMPLATE,
        &[
            ("spec_file", &one_line(&spec_name)),
            ("gateway", &one_line(gateway)),
            ("package", &format!("blitz-gateway-{bin}")),
            ("bin", &bin),
            ("runtime_path", &toml_string(runtime)),
            ("features", &features),
        ],
    );
    debug_assert!(manifest.starts_with(MANIFEST_MARK));
    write_if_changed(&dir.join("Cargo.toml"), &manifest)?;
    write_if_changed(&dir.join("src/main.rs"), MAIN_TEMPLATE)?;
    write_if_changed(&dir.join("src/gateway.rs"), &source.code)?;
    if !dir.join("Cargo.lock").exists() {
        std::fs::write(dir.join("Cargo.lock"), LOCK_FILE)?;
    }
    Ok(())
}

/// Why a build failed.
#[derive(Debug)]
pub enum BuildError {
    /// A step around cargo failed: what it was doing (naming the path or
    /// program), and the error.
    Io(String, io::Error),
    /// cargo ran and failed (its output went to stderr).
    Cargo(std::process::ExitStatus),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Io(what, e) => write!(f, "{what}: {e}"),
            BuildError::Cargo(status) => write!(f, "cargo build failed ({status})"),
        }
    }
}

/// Says what a failing step was doing.
fn doing(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> BuildError {
    move |e| BuildError::Io(what(), e)
}

/// Writes the crate into the cache, runs cargo (progress on stderr), and
/// copies the binary to `output`. Returns the binary's path.
pub fn build(
    gateway: &str,
    spec_file: &Path,
    source: &GatewaySource,
    profile: Profile,
    output: &Path,
) -> Result<PathBuf, BuildError> {
    let cache = cache_dir();
    let bin = binary_name(gateway);
    let crates = cache.join("crates");
    let crate_dir = crates.join(&bin);
    let target_dir =
        env_set("BLITZ_TARGET_DIR").map_or_else(|| cache.join("target"), PathBuf::from);
    std::fs::create_dir_all(&crates).map_err(doing(|| {
        format!("cannot make the cache folder `{}`", crates.display())
    }))?;
    // Held until the binary is copied out: the crate and the binary in the
    // target folder are this build's alone meanwhile.
    let lock_path = crates.join(format!("{bin}.lock"));
    // Read-only when it cannot be written (a read-only cache whose crate is
    // up to date still builds): `flock` takes either.
    let lock = std::fs::File::create(&lock_path)
        .or_else(|e| match std::fs::File::open(&lock_path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.is_file()) => Ok(file),
            _ => Err(e),
        })
        .map_err(doing(|| format!("cannot open `{}`", lock_path.display())))?;
    if lock.try_lock().is_err() {
        eprintln!("blitzc: waiting for another build of gateway `{gateway}` to finish");
        lock.lock()
            .map_err(doing(|| format!("cannot lock `{}`", lock_path.display())))?;
    }
    write_crate(&crate_dir, gateway, spec_file, source).map_err(doing(|| {
        format!(
            "cannot write the gateway crate in `{}`",
            crate_dir.display()
        )
    }))?;
    let cargo = env_set("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--profile")
        .arg(profile.cargo_name())
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .map_err(doing(|| {
            format!(
                "cannot run cargo (`{}`: set CARGO to it, or put it on PATH)",
                Path::new(&cargo).display()
            )
        }))?;
    if !status.success() {
        return Err(BuildError::Cargo(status));
    }
    let built = target_dir.join(profile.cargo_name()).join(&bin);
    install(&built, output)?;
    Ok(crate::codegen::absolute_from_here(output))
}

/// Copies the binary `built` to `output`: to a temporary name beside it,
/// then renamed over it, so a binary running from `output` (an upgrade's
/// old process) keeps its inode. A failed copy or rename leaves no
/// temporary file (a build killed mid-copy can: it is named by its pid).
fn install(built: &Path, output: &Path) -> Result<(), BuildError> {
    let failed = || format!("cannot write the binary to `{}`", output.display());
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(doing(failed))?;
    }
    let name = output.file_name().unwrap_or(output.as_os_str());
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".blitz-tmp-{}", std::process::id()));
    let tmp = output.with_file_name(tmp_name);
    let installed = std::fs::copy(built, &tmp).and_then(|_| std::fs::rename(&tmp, output));
    if installed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    installed.map_err(doing(failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names_are_file_and_cargo_safe() {
        assert_eq!(binary_name("Edge EU1"), "edge-eu1");
        assert_eq!(binary_name("1st"), "gw-1st");
        assert_eq!(binary_name("***"), "gw-");
        for reserved in CARGO_RESERVED {
            assert_eq!(binary_name(reserved), format!("gw-{reserved}"));
        }
        assert_eq!(binary_name("builds"), "builds");
    }

    #[test]
    fn a_template_is_filled_in_one_pass() {
        let values = [("a", "{{b}}"), ("b", "B")];
        assert_eq!(fill("{{a}} {{b}} {{c}} {{", &values), "{{b}} B {{c}} {{");
    }

    #[test]
    fn a_manifest_comment_stays_one_line() {
        assert_eq!(one_line("a\nb\r\u{7}c"), "a\\nb\\r\\u{7}c");
        assert_eq!(one_line("caf\u{e9} \"x\""), "caf\u{e9} \"x\"");
    }

    #[test]
    fn a_path_becomes_a_toml_string() {
        for path in ["/a/b", "/x/run\"time", "/x/run\\time", "/x/\u{e9}"] {
            let doc: toml_edit::DocumentMut = format!("p = {}", toml_string(path)).parse().unwrap();
            assert_eq!(doc["p"].as_str(), Some(path));
        }
    }
}
