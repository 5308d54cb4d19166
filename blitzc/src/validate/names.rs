//! Names and the graph between items: duplicate names (B020), listeners that
//! would bind the same socket (B022), chains that `use` each other in a cycle
//! (B023), items nothing references (B024), and a spec without a listener
//! (B015).

use crate::diag::{Code, Diagnostic};
use blitz_ir::{ItemKind, Span, Spanned, Spec, StepKind};
use std::collections::HashMap;
use std::net::SocketAddr;

pub fn check(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    duplicate_names(spec, diagnostics);
    duplicate_binds(spec, diagnostics);
    chain_cycles(spec, diagnostics);
    unused_items(spec, diagnostics);
    no_listener(spec, diagnostics);
}

const KINDS: [ItemKind; 7] = [
    ItemKind::Listener,
    ItemKind::Upstream,
    ItemKind::Jwt,
    ItemKind::RateLimit,
    ItemKind::Plugin,
    ItemKind::Chain,
    ItemKind::Route,
];

/// B020: a name given twice within one kind; reported at every repeat.
fn duplicate_names(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    for kind in KINDS {
        let mut first: HashMap<&str, Span> = HashMap::new();
        for name in spec.names(kind) {
            match first.get(name.value.as_str()) {
                Some(&earlier) => {
                    let keyword = kind.keyword();
                    let help = if kind == ItemKind::Route {
                        "rename one of them: route names appear in logs and metrics".to_string()
                    } else {
                        format!(
                            "rename one of them: references to `{}` go to the first {keyword}",
                            name.value
                        )
                    };
                    diagnostics.push(
                        Diagnostic::error(
                            Code::DuplicateName,
                            name.span,
                            format!("duplicate {keyword} name `{}`", name.value),
                        )
                        .label("used again here")
                        .help(help)
                        .related(earlier, "first defined here"),
                    );
                }
                None => {
                    first.insert(&name.value, name.span);
                }
            }
        }
    }
}

/// Whether two TCP sockets bound to `a` and `b` collide on Linux: the same
/// port, and the same address or a wildcard that covers the other
/// (`0.0.0.0` covers every IPv4 address; `[::]` is dual-stack by default
/// and covers every address). An IPv4-mapped IPv6 address
/// (`[::ffff:127.0.0.1]`) is the IPv4 address it maps. Port 0 asks the
/// kernel for a free port, a different one for each listener: no collision.
fn binds_collide(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    ia == ib
        || (ia.is_ipv6() && ia.is_unspecified())
        || (ib.is_ipv6() && ib.is_unspecified())
        || (ia.is_ipv4() && ib.is_ipv4() && (ia.is_unspecified() || ib.is_unspecified()))
}

/// B022: two listeners (or a listener and the metrics endpoint) whose
/// sockets would collide. Each is reported once, against the first socket
/// it collides with.
fn duplicate_binds(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    let mut sockets: Vec<(String, &Spanned<SocketAddr>)> = spec
        .listeners
        .iter()
        .map(|l| (format!("listener `{}`", l.name.value), &l.bind))
        .collect();
    if let Some(metrics) = &spec.metrics {
        sockets.push(("the metrics endpoint".to_string(), &metrics.bind));
    }
    // Report at whichever of the two comes later in the file.
    sockets.sort_by_key(|(_, bind)| bind.span);
    for (j, (what, bind)) in sockets.iter().enumerate() {
        let Some((other, earlier)) = sockets[..j]
            .iter()
            .find(|(_, earlier)| binds_collide(earlier.value, bind.value))
        else {
            continue;
        };
        let (message, help) = if earlier.value == bind.value {
            (
                format!("{what} binds `{}` again", bind.value),
                "give each listener its own address or port; one listener can serve several protocols"
                    .to_string(),
            )
        } else {
            (
                format!(
                    "{what} binds `{}`, which `{}` already covers",
                    bind.value, earlier.value
                ),
                format!(
                    "a wildcard address binds port {} on every address: use another port, or bind specific addresses only",
                    bind.value.port()
                ),
            )
        };
        diagnostics.push(
            Diagnostic::error(Code::DuplicateBind, bind.span, message)
                .label("address already in use")
                .help(help)
                .related(earlier.span, format!("{other} binds it here")),
        );
    }
}

/// B023: chains that `use` each other in a cycle, once per cycle (per
/// strongly connected component of the `use` graph), at a `use` in it.
fn chain_cycles(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    // Edges: chain -> (used chain, the `use` step's name).
    let edges: Vec<Vec<(usize, &Spanned<String>)>> = spec
        .chains
        .iter()
        .map(|chain| {
            chain
                .steps
                .iter()
                .filter_map(|step| match &step.kind {
                    StepKind::Use(r) => r.index.map(|i| (i, &r.name)),
                    _ => None,
                })
                .filter(|(i, _)| *i < spec.chains.len())
                .collect()
        })
        .collect();
    let successors: Vec<Vec<usize>> = edges
        .iter()
        .map(|e| e.iter().map(|(i, _)| *i).collect())
        .collect();
    for component in strongly_connected(&successors) {
        let start = component.iter().copied().min().unwrap_or_default();
        let cyclic = component.len() > 1 || successors[start].contains(&start);
        if !cyclic {
            continue;
        }
        // A path start -> ... -> start inside the component, for the message.
        let path = cycle_path(&successors, &component, start);
        let names: Vec<String> = path
            .iter()
            .chain(std::iter::once(&start))
            .map(|&i| format!("`{}`", spec.chains[i].name.value))
            .collect();
        // The `use` steps along the path: the first is the primary span.
        let mut uses = path.iter().enumerate().filter_map(|(k, &from)| {
            let to = path.get(k + 1).copied().unwrap_or(start);
            edges[from]
                .iter()
                .find(|(i, _)| *i == to)
                .map(|(_, name)| *name)
        });
        let Some(first) = uses.next() else { continue };
        let mut diagnostic = Diagnostic::error(
            Code::ChainCycle,
            first.span,
            if path.len() == 1 {
                format!("chain {} uses itself", names[0])
            } else {
                format!("chains use each other in a cycle: {}", names.join(" → "))
            },
        )
        .label("this `use` leads back to the chain it is in")
        .help("a chain cannot include itself, directly or through another chain: remove one `use` of the cycle");
        for other in uses {
            diagnostic = diagnostic.related(other.span, "part of the cycle");
        }
        diagnostics.push(diagnostic);
    }
}

/// Tarjan's algorithm; components in no particular order.
fn strongly_connected(successors: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'g> {
        successors: &'g [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.successors[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.components.push(component);
        }
    }
    let n = successors.len();
    let mut state = State {
        successors,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.components
}

/// The nodes of a shortest cycle through `start` inside `component`,
/// starting with `start` (breadth-first search back to it).
fn cycle_path(successors: &[Vec<usize>], component: &[usize], start: usize) -> Vec<usize> {
    if successors[start].contains(&start) {
        return vec![start];
    }
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &successors[v] {
            if !component.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while at != start {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    vec![start]
}

/// B024 (warning): a jwt, rate-limit, plugin or chain that no route or
/// chain references (a reference from an unused chain still counts: the
/// chain gets the warning).
///
/// Upstreams are exempt: the SPEC.md example, which must check clean,
/// declares one that no route proxies to (`sessions`), so an upstream
/// without a route is a valid declaration, not a mistake to flag.
fn unused_items(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    let mut used: HashMap<ItemKind, Vec<bool>> = HashMap::new();
    for kind in [
        ItemKind::Jwt,
        ItemKind::RateLimit,
        ItemKind::Plugin,
        ItemKind::Chain,
    ] {
        used.insert(kind, vec![false; spec.names(kind).len()]);
    }
    let mut mark = |kind: ItemKind, index: Option<usize>| {
        if let Some(flags) = used.get_mut(&kind)
            && let Some(flag) = index.and_then(|i| flags.get_mut(i))
        {
            *flag = true;
        }
    };
    for step in spec.all_steps() {
        match &step.kind {
            StepKind::Auth(r) | StepKind::RateLimit(r) | StepKind::Plugin(r) | StepKind::Use(r) => {
                mark(r.kind, r.index);
            }
            StepKind::RequireRole(_)
            | StepKind::RequestHeaders(_)
            | StepKind::ResponseHeaders(_) => {}
        }
    }
    let mut unused: Vec<(ItemKind, &Spanned<String>)> = Vec::new();
    for (kind, flags) in &used {
        for (name, used) in spec.names(*kind).into_iter().zip(flags) {
            if !used {
                unused.push((*kind, name));
            }
        }
    }
    unused.sort_by_key(|(_, name)| name.span);
    for (kind, name) in unused {
        let keyword = kind.keyword();
        let how = match kind {
            ItemKind::Jwt => format!("`auth \"{}\"`", name.value),
            ItemKind::Chain => format!("`use \"{}\"`", name.value),
            _ => format!("`{keyword} \"{}\"`", name.value),
        };
        diagnostics.push(
            Diagnostic::warning(
                Code::Unused,
                name.span,
                format!("{keyword} `{}` is never used", name.value),
            )
            .label("nothing references this")
            .help(format!(
                "reference it from a route or chain with {how}, or remove it"
            )),
        );
    }
}

/// B015: a spec without a listener accepts no connection.
fn no_listener(spec: &Spec, diagnostics: &mut Vec<Diagnostic>) {
    // A listener left out for a bad field was reported already.
    let listener_left_out = spec
        .left_out
        .iter()
        .any(|(kind, _)| *kind == ItemKind::Listener);
    if !spec.listeners.is_empty() || listener_left_out {
        return;
    }
    // The model keeps no span for `version 1`, which is required to be
    // first: point at the start of the file.
    diagnostics.push(
        Diagnostic::error(
            Code::NoListener,
            Span::new(0, 0),
            "the spec has no listener",
        )
        .label("no `listener` in this spec")
        .help_in(
            "add one, e.g. `listener \"public\" { bind \"0.0.0.0:8080\" }`",
            "add one, e.g. `[[listener]]` with `name = \"public\"` and `bind = \"0.0.0.0:8080\"`",
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn wildcard_binds_collide() {
        assert!(binds_collide(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(binds_collide(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(binds_collide(addr("[::]:80"), addr("127.0.0.1:80")));
        assert!(binds_collide(addr("[::1]:80"), addr("[::]:80")));
        assert!(!binds_collide(addr("0.0.0.0:80"), addr("0.0.0.0:81")));
        assert!(!binds_collide(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!binds_collide(addr("0.0.0.0:80"), addr("[::1]:80")));
        assert!(binds_collide(
            addr("[::ffff:127.0.0.1]:80"),
            addr("127.0.0.1:80")
        ));
        assert!(binds_collide(
            addr("0.0.0.0:80"),
            addr("[::ffff:10.0.0.1]:80")
        ));
        assert!(!binds_collide(
            addr("[::ffff:127.0.0.2]:80"),
            addr("127.0.0.1:80")
        ));
        assert!(!binds_collide(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
        assert!(!binds_collide(addr("0.0.0.0:0"), addr("[::]:0")));
    }

    #[test]
    fn cycles() {
        // 0 -> 1 -> 2 -> 0, 3 -> 3, 4 -> 0
        let g = vec![vec![1], vec![2], vec![0], vec![3], vec![0]];
        let mut sccs: Vec<Vec<usize>> = strongly_connected(&g)
            .into_iter()
            .map(|mut c| {
                c.sort();
                c
            })
            .collect();
        sccs.sort();
        assert_eq!(sccs, vec![vec![0, 1, 2], vec![3], vec![4]]);
        assert_eq!(cycle_path(&g, &[0, 1, 2], 0), vec![0, 1, 2]);
        assert_eq!(cycle_path(&g, &[3], 3), vec![3]);
    }
}
