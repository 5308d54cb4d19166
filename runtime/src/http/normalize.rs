//! Path normalisation for routing and forwarding, byte for byte the
//! semantics of the reference matcher (`blitz_ir::matcher::normalize_path`):
//!
//! - the query and fragment are dropped;
//! - percent-encoded unreserved characters are decoded (`%2e` is `.`,
//!   `%75` is `u`); other escapes are kept, with upper-case hex (`%2F`);
//! - repeated slashes are merged (`//admin` is `/admin`);
//! - dot-segments are removed (RFC 3986 §5.2.4), never above the root.
//!
//! So `/public/%2e%2e//admin` routes, and is forwarded, as `/admin`: the
//! route decision and the upstream see the same path.

/// Appends the normalised form of `target`'s path to `out`. Returns false
/// (leaving `out` as it was) when the path does not start with `/` or has
/// a malformed percent escape.
pub fn normalize_path(target: &[u8], out: &mut Vec<u8>) -> bool {
    let end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let path = &target[..end];
    if path.first() != Some(&b'/') {
        return false;
    }
    let start = out.len();
    // Phase 1: decode unreserved escapes onto the end of `out`.
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                path.get(i + 1).and_then(|&c| hex(c)),
                path.get(i + 2).and_then(|&c| hex(c)),
            ) else {
                out.truncate(start);
                return false;
            };
            let v = (h << 4) | l;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v);
            } else {
                out.extend_from_slice(&[
                    b'%',
                    path[i + 1].to_ascii_uppercase(),
                    path[i + 2].to_ascii_uppercase(),
                ]);
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    // Phase 2: segments, in place (the write cursor never passes the read
    // cursor: every segment is rewritten at or before where it was read).
    let decoded_end = out.len();
    let mut w = start;
    let mut r = start + 1;
    let mut trailing = false;
    loop {
        let e = out[r..decoded_end]
            .iter()
            .position(|&b| b == b'/')
            .map_or(decoded_end, |p| r + p);
        let last = e == decoded_end;
        match &out[r..e] {
            b"." => trailing = true,
            b".." => {
                w = out[start..w]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .map_or(start, |p| start + p);
                trailing = true;
            }
            b"" if !last => {}
            b"" => trailing = true,
            _ => {
                out[w] = b'/';
                out.copy_within(r..e, w + 1);
                w += 1 + (e - r);
                trailing = false;
            }
        }
        if last {
            break;
        }
        r = e + 1;
    }
    out.truncate(w);
    if trailing || w == start {
        out.push(b'/');
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    fn norm(p: &str) -> Option<String> {
        let mut out = b"prefix".to_vec();
        if normalize_path(p.as_bytes(), &mut out) {
            Some(String::from_utf8_lossy(&out[6..]).into_owned())
        } else {
            assert_eq!(out, b"prefix");
            None
        }
    }

    #[test]
    fn same_cases_as_the_reference_matcher() {
        let cases = [
            ("/", "/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a//b", "/a/b"),
            ("//a", "/a"),
            ("/a/", "/a/"),
            ("/a?x=1", "/a"),
            ("/a#frag", "/a"),
            ("/%2e%2e/a", "/a"),
            ("/%75sers", "/users"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/%2E/b", "/a/b"),
            ("/public/%2e%2e//admin", "/admin"),
            ("/a/b/c/../../d", "/a/d"),
            ("/a/..b/.c", "/a/..b/.c"),
        ];
        for (input, expected) in cases {
            assert_eq!(norm(input).as_deref(), Some(expected), "{input}");
        }
        assert_eq!(norm("a/b"), None);
        assert_eq!(norm("/a%zz"), None);
        assert_eq!(norm("/a%2"), None);
        assert_eq!(norm("*"), None);
    }
}
