#!/usr/bin/env python3
"""Writes a 5,000-route KDL gateway spec for timing `blitzc check`.

The routes look like a large multi-tenant edge: 40 virtual hosts (exact
names and wildcards), each with REST prefixes under /api/vN, method sets,
some canary-header and query conditions, a few regexes, and a per-host
fallback after each host's routes. A handful of routes are shadowed on
purpose (the check must report exactly those), so the spec exercises the
shadow analysis on realistic overlaps rather than on disjoint routes only.

Usage: gen.py [ROUTES] > spec.kdl   (deterministic: fixed seed)
"""

import random
import sys

ROUTES = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
rng = random.Random(5000)

RESOURCES = [
    "users", "orders", "items", "carts", "payments", "invoices", "search",
    "sessions", "reviews", "shipments", "accounts", "teams", "projects",
    "files", "events", "tokens", "reports", "plans", "coupons", "tickets",
]
METHOD_SETS = [["GET", "HEAD"], ["POST"], ["PUT", "PATCH"], ["DELETE"], ["GET"]]
HOSTS = []
for i in range(30):
    HOSTS.append([f"svc{i}.example.com"])
for i in range(10):
    HOSTS.append([f"*.tenant{i}.example.net", f"tenant{i}.example.net"])

out = []
w = out.append
w("version 1\n")
w('gateway "bench-5000" {\n    workers 1\n}\n')
w('listener "public" {\n    bind "127.0.0.1:8080"\n    protocols "h1"\n}\n')
for u in range(8):
    w(f'upstream "u{u}" {{\n    server "127.0.0.1:{9000 + u}"\n}}\n')


def kdl_list(values):
    return " ".join(f'"{v}"' for v in values)


count = 0
shadowed = []


def route(name, conditions, upstream=None):
    global count
    count += 1
    w(f'route "{name}" {{\n')
    if conditions:
        w("    match {\n")
        for c in conditions:
            w(f"        {c}\n")
        w("    }\n")
    w(f'    proxy "u{upstream if upstream is not None else count % 8}"\n}}\n')


base, rest = divmod(ROUTES - 1, len(HOSTS))
for h, names in enumerate(HOSTS):
    per_host = base + (1 if h < rest else 0)
    host_cond = f"host {kdl_list(names)}"
    # Draw the host's routes, then order them most specific first (deeper
    # paths, exact before prefix, with extra conditions before without), as
    # a careful author would: then no route covers a later one by accident.
    # Per (path, extra conditions), method sets are kept disjoint.
    drawn = []
    methods_used = {}
    planted = 0
    while len(drawn) < per_host - 1:
        version = rng.choice([1, 2, 3])
        resource = rng.choice(RESOURCES)
        depth = rng.random()
        if depth < 0.5:
            path = f"/api/v{version}/{resource}"
        elif depth < 0.85:
            path = f"/api/v{version}/{resource}/{rng.choice(RESOURCES)}"
        else:
            path = f"/api/v{version}/{resource}/{rng.choice(RESOURCES)}/{rng.randint(0, 99)}"
        roll = rng.random()
        if roll < 0.03:
            kind = "regex"
        elif roll < 0.23:
            kind = "path"
        else:
            kind = "path-prefix"
        roll = rng.random()
        extra = []
        if roll < 0.10:
            extra.append(f'header "x-canary" "{rng.choice(["1", "2"])}"')
        elif roll < 0.15:
            extra.append('header "x-debug"')
        elif roll < 0.20:
            extra.append(f'query "lang" "{rng.choice(["en", "fr", "de"])}"')
        key = (kind, path, tuple(extra))
        used = methods_used.setdefault(key, set())
        free = [m for m in METHOD_SETS if not used & set(m)]
        if not free:
            continue
        methods = rng.choice(free)
        used.update(methods)
        drawn.append((path.count("/"), kind, path, methods, extra))
        # Now and then plant a route that an earlier one covers: one
        # segment deeper, a subset of the methods (placed after it below).
        if len(shadowed) < 10 and len(drawn) % 97 == 0 and kind == "path-prefix" and not extra:
            planted += 1
            drawn.append((-1, "planted", path, methods, extra))
    kind_order = {"path": 0, "regex": 1, "path-prefix": 2}
    regular = [d for d in drawn if d[1] != "planted"]
    regular.sort(key=lambda d: (-d[0], d[2], 0 if d[4] else 1, kind_order[d[1]]))
    plants = [d for d in drawn if d[1] == "planted"]
    for i, (_, kind, path, methods, extra) in enumerate(regular):
        conditions = [host_cond]
        if kind == "regex":
            conditions.append(f'path-regex "{path}/[0-9]+"')
        else:
            conditions.append(f'{kind} "{path}"')
        conditions.append(f"method {kdl_list(methods)}")
        conditions.extend(extra)
        route(f"h{h}-r{i}", conditions)
    for _, _, path, methods, _ in plants:
        name = f"h{h}-shadowed{len(shadowed)}"
        route(name, [host_cond, f'path-prefix "{path}/deeper"', f'method "{methods[0]}"'])
        shadowed.append(name)
    # The host's own fallback: everything else on this host.
    route(f"h{h}-fallback", [host_cond])

route("fallback", [])
sys.stdout.write("".join(out))
sys.stderr.write(f"{count} routes, shadowed on purpose: {', '.join(shadowed)}\n")
