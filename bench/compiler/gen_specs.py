#!/usr/bin/env python3
"""Writes route-heavy gateway specs and request samples for bench/compiler.

For each size N: `OUT/routes-N.kdl` (N routes, respond actions only, so no
origin is needed) and `OUT/requests-N.txt` (one request per line:
`KIND TARGET-ROUTE HEX-OF-RAW-HEAD`). The generator is deterministic (fixed
seed) so runs compare.

Shape of a spec, meant to look like a multi-tenant API gateway:
- about sqrt(N) exact hosts, a quarter as many wildcard domains
  (`*.tK.example.net`), and ~5% of routes with no host at all (they land
  in every host class of the compiled decision tree);
- routes come in small per-service blocks on one host set: an optional
  canary route (header matcher) first, then method-split routes on the same
  2- or 3-segment prefix (`/orders/items`, `/orders/v2/items`), sometimes
  an exact `.../health` path before them;
- no catch-all route, so requests can miss (a 404).

Requests: hits aimed at routes spread evenly over the table (always
including the last route), plus misses (unknown path on a known host,
known path on an unknown host, unknown host and path).
"""
import math
import os
import random
import sys

SERVICES = """users orders cart search catalog payments billing invoices shipping
inventory reviews ratings accounts auth profile settings notifications
messages chat feed media uploads reports analytics events tickets support
bookings calendar tasks projects teams orgs plans coupons pricing wallet
loyalty partners vendors warehouses""".split()
RESOURCES = """items list detail history status export import batch summary
lines entries refunds tokens sessions keys roles members invites comments
likes tags files images thumbs drafts archive queue jobs logs metrics
alerts rules groups quotas limits prefs devices addresses cards""".split()
GLOBAL_SERVICES = "static assets public status docs downloads media-cdn well-known".split()

def build(n, api=False, seed=20261126):
    rng = random.Random(seed + n)
    n_exact = max(2, round(math.sqrt(n)))
    n_wild = max(1, n_exact // 4)
    exact_hosts = [f"{rng.choice(['api', 'shop', 'app', 'www', 'm'])}-{k}.example.com" for k in range(n_exact)]
    wild_domains = [f".t{k}.example.net" for k in range(n_wild)]
    used = set()  # (host pattern, prefix): one block per host and prefix, so nothing is shadowed
    routes = []   # dicts: name, hosts (list of patterns), prefix, exact, methods, header
    while len(routes) < n:
        r = rng.random()
        if r < 0.05:
            hosts = []
            key = "*"
            seg1 = rng.choice(GLOBAL_SERVICES)
        elif r < 0.25:
            hosts = ["*" + rng.choice(wild_domains)]
            key = hosts[0]
            seg1 = rng.choice(SERVICES)
        else:
            hosts = [rng.choice(exact_hosts)]
            if rng.random() < 0.1:
                hosts.append(rng.choice(exact_hosts))
                hosts = sorted(set(hosts))
            key = " ".join(hosts)
            seg1 = rng.choice(SERVICES)
        if rng.random() < 0.5:
            prefix = f"/{seg1}/{rng.choice(RESOURCES)}"
        else:
            prefix = f"/{seg1}/v{rng.randint(1, 3)}/{rng.choice(RESOURCES)}"
        if api and hosts:
            prefix = "/api" + prefix  # the `api` variant: every host's routes under one first segment
        # Global prefixes must not collide with any host's, and vice versa:
        # keep one namespace per prefix across host keys of different kinds.
        keys = hosts or ["*"]
        if any((k, prefix) in used for k in keys) or ("*", prefix) in used \
                or (key == "*" and any(p == prefix for _, p in used)):
            continue
        used.update((k, prefix) for k in keys)
        block = []
        base = f"{seg1}-{prefix.split('/')[-1]}-{len(routes)}"
        if rng.random() < 0.15:
            header = ("x-canary", "1") if rng.random() < 0.7 else ("x-tenant", None)
            block.append(dict(name=f"{base}-canary", hosts=hosts, prefix=prefix, exact=None, methods=None, header=header))
        if rng.random() < 0.2:
            block.append(dict(name=f"{base}-health", hosts=hosts, prefix=None, exact=prefix + "/health", methods=["GET"], header=None))
        split = rng.random()
        if split < 0.4:
            block.append(dict(name=f"{base}-read", hosts=hosts, prefix=prefix, exact=None, methods=["GET", "HEAD"], header=None))
            block.append(dict(name=f"{base}-write", hosts=hosts, prefix=prefix, exact=None, methods=["POST", "PUT", "PATCH", "DELETE"], header=None))
        elif split < 0.6:
            block.append(dict(name=f"{base}-get", hosts=hosts, prefix=prefix, exact=None, methods=["GET"], header=None))
        else:
            block.append(dict(name=f"{base}", hosts=hosts, prefix=prefix, exact=None, methods=None, header=None))
        routes.extend(block)
    routes = routes[:n]
    return routes, exact_hosts, wild_domains

def q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

def spec_text(name, routes, port):
    variant = "" if name.isdigit() else " (every host-bound path under /api)"
    out = [f"// {len(routes)} routes{variant}, generated by bench/compiler/gen_specs.py; respond actions only.",
           "version 1", "", f'gateway "routes-{name}" {{', "    workers 1", "}", "",
           'listener "http" {', f'    bind "127.0.0.1:{port}"', '    protocols "h1"', "}", ""]
    for r in routes:
        out.append(f"route {q(r['name'])} {{")
        out.append("    match {")
        if r["hosts"]:
            out.append("        host " + " ".join(q(h) for h in r["hosts"]))
        if r["exact"]:
            out.append("        path " + q(r["exact"]))
        else:
            out.append("        path-prefix " + q(r["prefix"]))
        if r["methods"]:
            out.append("        method " + " ".join(q(m) for m in r["methods"]))
        if r["header"]:
            name, value = r["header"]
            out.append(f"        header {q(name)}" + (f" {q(value)}" if value else ""))
        out.append("    }")
        out.append(f"    respond 200 body={q(r['name'])[:-1]}\\n\" content-type=\"text/plain\"")
        out.append("}")
    return "\n".join(out) + "\n"

def head(method, host, target, extra=()):
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: blitz-bench/1",
             "Accept: */*", "Accept-Encoding: gzip"]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()

def request_for(rng, r, exact_hosts):
    if not r["hosts"]:
        host = rng.choice(exact_hosts)
    else:
        h = rng.choice(r["hosts"])
        host = (rng.choice(["eu", "acme", "x1"]) + h[1:]) if h.startswith("*") else h
    if rng.random() < 0.2:
        host += ":8080"
    target = r["exact"] or f"{r['prefix']}/{rng.randint(1, 99999)}"
    if rng.random() < 0.3:
        target += f"?page={rng.randint(1, 9)}"
    method = rng.choice(r["methods"]) if r["methods"] else rng.choice(["GET", "GET", "POST"])
    extra = []
    if r["header"]:
        extra.append((r["header"][0].title(), r["header"][1] or "t1"))
    return head(method, host, target, extra)

def requests(n, routes, exact_hosts, wild_domains, hits=56, seed=7):
    rng = random.Random(seed + n)
    out = []
    # Evenly spread targets, the last route always included.
    for k in range(hits):
        idx = min(n - 1, (k + 1) * n // hits - 1) if n >= hits else (k * n // hits if k < hits - 1 else n - 1)
        idx = max(0, idx)
        out.append(("hit", idx, request_for(rng, routes[idx], exact_hosts)))
    misses = [
        head("GET", rng.choice(exact_hosts), "/nothing/here/1"),
        head("GET", rng.choice(exact_hosts) + ":8080", "/orders/nope"),
        head("POST", "unknown.example.org", routes[-1]["prefix"] or "/users/items"),
        head("GET", "unknown.example.org", "/"),
        head("GET", "a" + wild_domains[0], "/no/such/path"),
        head("GET", rng.choice(exact_hosts), "/"),
        head("DELETE", "deep.x" + wild_domains[-1], "/users/items/1"),
        head("GET", "localhost", "/favicon.ico"),
    ]
    out += [("miss", -1, m) for m in misses]
    return out

def main():
    outdir = sys.argv[1]
    # A size is `N` or `Napi` (the same table with every host-bound path under `/api`).
    sizes = sys.argv[2].split(",") if len(sys.argv) > 2 else ["10", "100", "1000", "10000"]
    port = int(os.environ.get("SPEC_PORT", "9310"))
    os.makedirs(outdir, exist_ok=True)
    for name in dict.fromkeys(sizes):
        api = name.endswith("api")
        n = int(name[:-3] if api else name)
        routes, exact_hosts, wild = build(n, api)
        with open(os.path.join(outdir, f"routes-{name}.kdl"), "w") as f:
            f.write(spec_text(name, routes, port))
        with open(os.path.join(outdir, f"requests-{name}.txt"), "w") as f:
            for kind, idx, raw in requests(n, routes, exact_hosts, wild):
                f.write(f"{kind} {idx} {raw.hex()}\n")
        # The request wrk sends in the throughput test: a late route.
        late = next(r for r in reversed(routes) if r["hosts"] and not r["header"] and not r["exact"]
                    and (r["methods"] is None or "GET" in r["methods"]))
        host = late["hosts"][0]
        host = "acme" + host[1:] if host.startswith("*") else host
        method = "GET"
        with open(os.path.join(outdir, f"late-{name}.txt"), "w") as f:
            f.write(f"{method} {host} {late['prefix']}/42 {late['name']} {routes.index(late)}\n")

if __name__ == "__main__":
    main()
