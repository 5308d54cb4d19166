//! Rust names for spec items: valid, unique and deterministic identifiers
//! derived from the spec's names, plus the origin comment of each route.

use crate::diag::SourceFile;
use blitz_ir::Spec;
use proc_macro2::Ident;
use quote::format_ident;
use std::collections::HashSet;

/// Identifiers of the generated items, by route index.
#[derive(Debug)]
pub struct Names {
    /// `Route` enum variants (`UsersRead`).
    pub route_variants: Vec<Ident>,
    /// Matcher functions (`matches_users_read`).
    pub route_fns: Vec<Ident>,
    /// `route "users-read" (gateway.kdl:42)`.
    pub route_origin: Vec<String>,
}

/// Splits a spec name into lower-case ASCII words.
fn words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn camel(name: &str) -> String {
    let mut out: String = words(name)
        .iter()
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'R');
    }
    out
}

fn snake(name: &str) -> String {
    words(name).join("_")
}

/// Makes `candidate` unique among `taken` by appending the route's index.
fn unique(candidate: String, index: usize, taken: &mut HashSet<String>) -> String {
    let mut name = candidate.clone();
    let mut suffix = index;
    while taken.contains(&name) {
        name = format!("{candidate}{suffix}");
        suffix += 1;
    }
    taken.insert(name.clone());
    name
}

impl Names {
    pub fn new(spec: &Spec, file: &SourceFile) -> Self {
        // Reserved: the fallback variant and Rust keywords used as names.
        let mut variants: HashSet<String> =
            ["NoRoute", "Self"].iter().map(|s| s.to_string()).collect();
        let mut fns = HashSet::new();
        let file_name = file
            .path
            .file_name()
            .map_or_else(|| file.display_path(), |n| n.to_string_lossy().into_owned());
        let mut names = Names {
            route_variants: Vec::new(),
            route_fns: Vec::new(),
            route_origin: Vec::new(),
        };
        for (i, route) in spec.routes.iter().enumerate() {
            let variant = unique(camel(&route.name.value), i, &mut variants);
            let function = unique(
                format!("matches_{}", snake(&route.name.value))
                    .trim_end_matches('_')
                    .to_string(),
                i,
                &mut fns,
            );
            names.route_variants.push(format_ident!("{}", variant));
            names.route_fns.push(format_ident!("{}", function));
            let (line, _) = file.line_col(route.span.start);
            names.route_origin.push(format!(
                "route {:?} ({}:{})",
                route.name.value,
                super::comment_text(&file_name),
                line
            ));
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(camel("users-read"), "UsersRead");
        assert_eq!(camel("404"), "R404");
        assert_eq!(camel("é"), "R");
        assert_eq!(snake("Users Read!"), "users_read");
        let mut taken = HashSet::new();
        assert_eq!(unique("A".into(), 0, &mut taken), "A");
        assert_eq!(unique("A".into(), 3, &mut taken), "A3");
    }
}
