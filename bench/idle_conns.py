#!/usr/bin/env python3
"""Memory per idle keep-alive connection of a proxy.

    idle_conns.py PORT PID [PID...] [--conns 10000] [--path /] [--hold 2]

Opens CONNS connections to 127.0.0.1:PORT, sends one keep-alive request on
each and reads the answer (so every connection has been used and is now an
idle keep-alive connection), waits HOLD seconds, and prints the summed VmRSS
of the given PIDs (the proxy's serving processes) before and after, as one
tab-separated line:

    conns_open  rss_before_kib  rss_after_kib  kib_per_conn

Everything is bounded: connect/read timeouts, and the whole run stops after
--max-seconds. It raises its own RLIMIT_NOFILE as far as the hard limit allows.
"""

import argparse
import resource
import selectors
import socket
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("pids", type=int, nargs="+")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--path", default="/")
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 256
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        except (ValueError, OSError):
            pass
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = min(a.conns, limit - 64)
    if n < a.conns:
        print(f"idle_conns: RLIMIT_NOFILE {limit}: only {n} connections", file=sys.stderr)

    deadline = time.monotonic() + a.max_seconds
    req = f"GET {a.path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n\r\n".encode()
    time.sleep(0.5)
    before = rss_kib(a.pids)
    socks = []
    sel = selectors.DefaultSelector()
    failed = 0
    try:
        for start in range(0, n, a.batch):
            if time.monotonic() > deadline:
                break
            batch = []
            for _ in range(min(a.batch, n - start)):
                s = socket.socket()
                s.settimeout(5)
                try:
                    s.connect(("127.0.0.1", a.port))
                    s.sendall(req)
                except OSError:
                    failed += 1
                    s.close()
                    continue
                s.setblocking(False)
                batch.append(s)
                sel.register(s, selectors.EVENT_READ, bytearray())
            # read each response head (bodies are tiny); a connection counts once it answered
            pending = set(batch)
            t_end = time.monotonic() + 10
            while pending and time.monotonic() < t_end:
                for key, _ in sel.select(timeout=0.5):
                    s = key.fileobj
                    try:
                        d = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        d = b""
                    if not d:
                        failed += 1
                        pending.discard(s)
                        sel.unregister(s)
                        s.close()
                        continue
                    key.data.extend(d)
                    if b"\r\n\r\n" in key.data:
                        pending.discard(s)
                        sel.unregister(s)
                        socks.append(s)
            for s in pending:
                failed += 1
                sel.unregister(s)
                s.close()
        time.sleep(a.hold)
        # still open? (a proxy that drops idle connections is not measured as cheap)
        alive = 0
        for s in socks:
            try:
                d = s.recv(1)
                if d:
                    alive += 1
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        after = rss_kib(a.pids)
        per = (after - before) / alive if alive else float("nan")
        print(f"{alive}\t{before}\t{after}\t{per:.2f}")
        if failed:
            print(f"idle_conns: {failed} connections failed", file=sys.stderr)
    finally:
        for s in socks:
            s.close()
        sel.close()


if __name__ == "__main__":
    main()
