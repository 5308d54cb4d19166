"""Diagnostic positions agree with the parser and across the four formats
of `blitzc check`, with the real `blitzc`.

- A KDL spec's lines are counted at every KDL v2 newline (CRLF, CR, LF,
  NEL, VT, FF, LS, PS: what the `kdl` crate's v2 parser breaks lines at),
  so a CR-only file no longer puts every diagnostic on line 1; a TOML
  spec's at LF and CRLF only (TOML's newlines).
- Columns count characters in every format: the human (miette) header
  `[file:line:column]` no longer counts bytes where json, github and sarif
  count characters.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

KDL_NEWLINES = {
    "lf": "\n",
    "crlf": "\r\n",
    "cr": "\r",
    "nel": "\u0085",
    "vt": "\u000b",
    "ff": "\u000c",
    "ls": "\u2028",
    "ps": "\u2029",
}

# Line 5 refers to an upstream nobody defines (B021); `é` and `ü` come before
# it on its line, so its column in characters (41) is not the one in bytes (43).
KDL_LINES = [
    "version 1",
    'listener "é" {',
    '    bind "127.0.0.1:8080"',
    "}",
    'route "ré-ü" { match { path "/x"; }; proxy "nope"; }',
    "",
]
LINE, COLUMN = 5, KDL_LINES[4].index('"nope"') + 1

HUMAN_HEADER = re.compile(r"╭─\[([^\]]+):(\d+):(\d+)\]")


def check(blitzc: Path, spec: Path, fmt: str) -> str:
    r = subprocess.run(
        [str(blitzc), "check", "--format", fmt, spec.name],
        cwd=spec.parent,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )
    assert r.returncode == 1, (fmt, r.returncode, r.stdout, r.stderr)
    return r.stdout


def positions(blitzc: Path, spec: Path) -> dict[str, tuple[int, int]]:
    """(line, column) of the one diagnostic, as each format reports it."""
    (d,) = json.loads(check(blitzc, spec, "json"))["diagnostics"]
    assert d["code"] == "B021", d
    out = {"json": (d["line"], d["column"])}
    m = re.search(r"line=(\d+),col=(\d+),title=B021", check(blitzc, spec, "github"))
    assert m, "no B021 annotation"
    out["github"] = (int(m.group(1)), int(m.group(2)))
    (res,) = json.loads(check(blitzc, spec, "sarif"))["runs"][0]["results"]
    region = res["locations"][0]["physicalLocation"]["region"]
    out["sarif"] = (region["startLine"], region["startColumn"])
    headers = HUMAN_HEADER.findall(check(blitzc, spec, "human"))
    assert len(headers) == 1, headers
    name, line, column = headers[0]
    assert name == spec.name
    out["human"] = (int(line), int(column))
    return out


@pytest.mark.parametrize("newline", list(KDL_NEWLINES), ids=list(KDL_NEWLINES))
def test_kdl_newlines_count_as_lines_in_every_format(blitzc, tmp_path, newline):
    spec = tmp_path / "spec.kdl"
    spec.write_bytes(KDL_NEWLINES[newline].join(KDL_LINES).encode("utf-8"))
    got = positions(blitzc, spec)
    assert got == dict.fromkeys(got, (LINE, COLUMN)), got


@pytest.mark.parametrize("newline", ["cr", "nel", "ls"])
def test_human_snippet_shows_the_lines_a_kdl_newline_separates(blitzc, tmp_path, newline):
    spec = tmp_path / "spec.kdl"
    spec.write_bytes(KDL_NEWLINES[newline].join(KDL_LINES).encode("utf-8"))
    out = check(blitzc, spec, "human")
    numbered = dict(re.findall(r"^ *(\d+) │ (.*)$", out, re.M))
    assert numbered.get(str(LINE), "").rstrip() == KDL_LINES[LINE - 1], out
    assert numbered.get(str(LINE - 1), "").rstrip() == KDL_LINES[LINE - 2], out
    assert "\r" not in out, repr(out)


def test_human_column_counts_characters_like_json(blitzc, tmp_path):
    spec = tmp_path / "wide.kdl"
    # Two- and three-byte characters before the span: bytes would say 47.
    line = 'route "日本-é" { match { path "/x"; }; proxy "nope"; }'
    spec.write_text('version 1\nlistener "a" { bind "127.0.0.1:8080"; }\n' + line + "\n", encoding="utf-8")
    column = line.index('"nope"') + 1
    assert len(line[: column - 1].encode()) + 1 != column
    got = positions(blitzc, spec)
    assert got == dict.fromkeys(got, (3, column)), got


def test_toml_lines_are_lf_and_crlf_only(blitzc, tmp_path):
    """TOML's newlines are LF and CRLF: a NEL or LS in a comment is no line break."""
    spec = tmp_path / "spec.toml"
    lines = [
        "version = 1",
        "# a comment with a NEL \u0085 and an LS \u2028 in it",
        "[[listener]]",
        'name = "a"',
        'bind = "127.0.0.1:8080"',
        "[[route]]",
        'name = "r"',
        'match = { path = "/x" }',
        'proxy = "nope"',
        "",
    ]
    spec.write_bytes("\r\n".join(lines).encode("utf-8"))
    got = positions(blitzc, spec)
    assert got == dict.fromkeys(got, (9, len('proxy = "'))), got
