#!/usr/bin/env python3
"""Turns bench/compiler/out/ into the Markdown tables of RESULTS-compiler.md."""
import json
import os
import statistics
import sys

out = sys.argv[1]
p = lambda *a: os.path.join(out, *a)

def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default

print("## Machine\n")
print("```\n" + read(p("machine.txt")).strip() + "\n```\n")

# 1. decision time
crit = p("criterion")
if os.path.isdir(crit):
    print("## 1. Route decision time (criterion median, ns per decision)\n")
    prep = [l for l in read(p("prep.log")).splitlines() if l.startswith("prep:")]
    for group, what in [("mixed", "all samples: hits spread over the table + misses"),
                        ("late", "hits on the last 10% of the table"),
                        ("miss", "requests no route serves (404)")]:
        rows = {}
        for kind in ("compiled", "interpreted"):
            d = os.path.join(crit, group, kind)
            if not os.path.isdir(d):
                continue
            for n in os.listdir(d):
                if not n[:1].isdigit():
                    continue
                est = json.load(open(os.path.join(d, n, "new", "estimates.json")))
                bm = json.load(open(os.path.join(d, n, "new", "benchmark.json")))
                elems = (bm.get("throughput") or {}).get("Elements", 1)
                rows.setdefault(n, {})[kind] = (est["median"]["point_estimate"] / elems, elems)
        if not rows:
            continue
        print(f"**{group}** ({what})\n")
        print("| routes | requests in set | compiled ns | interpreted ns | interpreted / compiled |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for n in sorted(rows, key=lambda k: (int(k.rstrip("abcdefghijklmnopqrstuvwxyz")), k)):
            c, i = rows[n].get("compiled"), rows[n].get("interpreted")
            label = f"{int(n):,}" if n.isdigit() else f"{int(n.rstrip('api')):,} `/api`-only"
            if c and i:
                print(f"| {label} | {c[1]} | {c[0]:.1f} | {i[0]:,.0f} | **{i[0] / c[0]:.0f}×** |")
        print()
    secs = read(p("decide-compile-s.txt")).strip()
    if prep or secs:
        print("Generation (blitzc library, release): " + "; ".join(l[len("prep: "):] for l in prep)
              + (f". `cargo bench --no-run` of the crate with all these gateways took {secs} s in this run "
                 "(near 0 when no generated gateway changed; bench profile = the gateway release profile)."
                 if secs else "") + "\n")
    agree = [l for l in read(p("decide.log")).splitlines() if l.startswith("decide:")]
    if agree:
        print("Agreement check before timing:\n")
        print("```\n" + "\n".join(agree) + "\n```\n")

# 2. build time
rows = []
for s in ("quickstart", "routes-1000"):
    for case, label in (("nochange", "nothing changed"), ("body", "one response body changed")):
        f = p(f"build-{s}-{case}.json")
        if os.path.exists(f):
            r = json.load(open(f))["results"][0]
            rows.append((s, label, r["median"], r["min"], r["max"], len(r["times"])))
if rows:
    print("## 2. `blitzc build` with a warm cache (hyperfine, seconds)\n")
    print("| spec | change | median s | min s | max s | runs |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for s, label, med, lo, hi, k in rows:
        print(f"| {s} | {label} | **{med:.2f}** | {lo:.2f} | {hi:.2f} | {k} |")
    print()

# 3. size
size = read(p("size.tsv")).strip()
if size:
    print("## 3. Binary size\n")
    print("| spec | profile | unstripped | stripped | build s (this run) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for line in size.splitlines():
        s, prof, full, stripped, secs = line.split("\t")
        mib = lambda b: f"{int(b) / 1048576:.2f} MiB"
        print(f"| {s} | {prof} | {mib(full)} | {mib(stripped)} | {secs} |")
    print()

# 4. rps
rps = read(p("rps.tsv")).strip().splitlines()[1:]
if rps:
    print("## 4. Requests/s, compiled gateway vs `blitzc dev` (wrk, late route)\n")
    runs = {}
    for line in rps:
        n, kind, rep, r, p50, p99, non, load = line.split("\t")[:8]
        runs.setdefault((int(n), kind), []).append((float(r or 0), p50, p99, non, load))
    print("| routes | gateway | runs req/s (in order) | median req/s | p50 (median run) | p99 (median run) | non-2xx |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    kinds = [k for k in ("compiled", "compiled-max", "interpreted") if any(key[1] == k for key in runs)]
    for n in sorted({k[0] for k in runs}, reverse=True):
        meds = {}
        for kind in kinds:
            rs = runs.get((n, kind), [])
            if not rs:
                continue
            med = statistics.median(r[0] for r in rs)
            meds[kind] = med
            mid = sorted(rs, key=lambda r: r[0])[len(rs) // 2]
            print(f"| {n:,} | {kind} | {', '.join(f'{r[0]:,.0f}' for r in rs)} | **{med:,.0f}** | {mid[1]} | {mid[2]} | {sum(int(r[3]) for r in rs)} |")
        for kind in ("compiled", "compiled-max"):
            if kind in meds and "interpreted" in meds:
                pairs = [c[0] / i[0] for c, i in zip(runs[(n, kind)], runs[(n, "interpreted")]) if i[0]]
                per_pair = ", ".join(f"{r:.2f}" for r in pairs)
                print(f"| {n:,} | **{kind} / interpreted** | per round: {per_pair} | **{meds[kind] / meds['interpreted']:.2f}×** (median of rounds {statistics.median(pairs):.2f}×) | | | |")
    print()
