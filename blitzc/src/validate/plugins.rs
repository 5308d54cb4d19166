//! Plugin modules (B090): the `wasm` file exists and is a valid WebAssembly
//! core module (proxy-wasm plugins are core modules, not components).

use crate::diag::{Code, Diagnostic};
use blitz_ir::{Plugin, Spec};

pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    for plugin in &spec.plugins {
        if let Err((label, help)) = wasm_module(plugin) {
            diagnostics.push(
                Diagnostic::error(
                    Code::PluginFile,
                    plugin.wasm.span,
                    format!(
                        "plugin `{}`: `{}` is not a usable WebAssembly module",
                        plugin.name.value, plugin.wasm.written
                    ),
                )
                .label(label)
                .help(help),
            );
        }
    }
}

const MAGIC: &[u8; 4] = b"\0asm";
/// Module version 1; components have a different version/layer field.
const MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

/// Reads and validates the module; `Err((label, help))` when it is unusable.
fn wasm_module(plugin: &Plugin) -> Result<(), (String, String)> {
    let bytes = std::fs::read(&plugin.wasm.resolved).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => (
            "no such file".to_string(),
            "paths are relative to the spec file's folder; build the plugin first".to_string(),
        ),
        _ => (e.to_string(), "check the file's permissions".to_string()),
    })?;
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err((
            "not a WebAssembly binary (no `\\0asm` header)".to_string(),
            "give the compiled `.wasm` module, e.g. from `cargo build --target wasm32-wasip1`, not its source or text form"
                .to_string(),
        ));
    }
    if bytes[4..8] != MODULE_VERSION {
        return Err((
            "a WebAssembly component or another binary version, not a core module".to_string(),
            "proxy-wasm plugins are core modules (version 1): build for wasm32-wasip1 or wasm32-unknown-unknown"
                .to_string(),
        ));
    }
    wasmparser::Validator::new()
        .validate_all(&bytes)
        .map(|_| ())
        .map_err(|e| {
            (
                format!("invalid module: {} (at byte {})", e.message(), e.offset()),
                "the file is damaged or was built for unsupported WebAssembly features: rebuild it"
                    .to_string(),
            )
        })
}
