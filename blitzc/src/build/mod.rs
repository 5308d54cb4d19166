//! From generated source to a binary: the crate writer (templates/ plus the
//! generated `gateway.rs`) and the cargo invocation.
//!
//! Every build on a machine shares one cargo target directory, so the
//! runtime and its dependencies compile once per profile and feature set;
//! a warm `blitzc build` compiles only the generated crate and links.
//! Generated crates live in a cache folder keyed by the gateway's name and
//! are rewritten only where their content changed, so cargo's fingerprints
//! stay valid between builds of the same spec.

use crate::codegen::GatewaySource;
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

/// The runtime crate generated gateways depend on: `BLITZ_RUNTIME` or the
/// runtime of the source tree blitzc was built from.
pub fn runtime_path() -> PathBuf {
    std::env::var_os("BLITZ_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime"))
}

/// Where generated crates and the shared target directory live:
/// `BLITZ_CACHE_DIR`, else `$XDG_CACHE_HOME/blitz`, else `~/.cache/blitz`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BLITZ_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("blitz");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/blitz"),
        None => std::env::temp_dir().join("blitz-cache"),
    }
}

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
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("gw-{name}")
    } else {
        name
    }
}

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
    let manifest = CARGO_TEMPLATE
        .replace("{{spec_file}}", &spec_name)
        .replace("{{gateway}}", gateway)
        .replace("{{package}}", &format!("blitz-gateway-{bin}"))
        .replace("{{bin}}", &bin)
        .replace("{{runtime_path}}", &runtime.to_string_lossy())
        .replace("{{features}}", &features);
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
    Io(io::Error),
    /// cargo ran and failed (its output went to stderr).
    Cargo(std::process::ExitStatus),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Io(e) => write!(f, "{e}"),
            BuildError::Cargo(status) => write!(f, "cargo build failed ({status})"),
        }
    }
}

impl From<io::Error> for BuildError {
    fn from(e: io::Error) -> Self {
        BuildError::Io(e)
    }
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
    let crate_dir = cache.join("crates").join(&bin);
    let target_dir =
        std::env::var_os("BLITZ_TARGET_DIR").map_or_else(|| cache.join("target"), PathBuf::from);
    write_crate(&crate_dir, gateway, spec_file, source)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--profile")
        .arg(profile.cargo_name())
        .arg("--target-dir")
        .arg(&target_dir)
        .status()?;
    if !status.success() {
        return Err(BuildError::Cargo(status));
    }
    let built = target_dir.join(profile.cargo_name()).join(&bin);
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    // Copy to a temporary name, then rename: a running binary at `output`
    // (an upgrade's old process) keeps its inode.
    let tmp = output.with_extension("blitz-tmp");
    std::fs::copy(&built, &tmp)?;
    std::fs::rename(&tmp, output)?;
    Ok(crate::codegen::absolute_from_here(output))
}
