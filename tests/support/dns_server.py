"""A tiny authoritative DNS server for tests (UDP, dnslib): answers A and
AAAA questions from `records`, which a test may change while it runs, with
a fixed TTL. Unknown names get NXDOMAIN. Counts the questions it got."""

from __future__ import annotations

import socket
import threading

from dnslib import AAAA, QTYPE, RR, A, DNSRecord, RCODE


class DnsServer:
    def __init__(self, records: dict[str, list[str]], ttl: int = 1):
        self.records = {k.rstrip(".").lower(): list(v) for k, v in records.items()}
        self.ttl = ttl
        self.questions = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"dns-{self.port}", daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, ips: list[str]) -> None:
        self.records[name.rstrip(".").lower()] = list(ips)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(1500)
            except OSError:
                continue
            try:
                query = DNSRecord.parse(data)
            except Exception:  # noqa: BLE001 - garbage is ignored, as a server would
                continue
            self.questions += 1
            reply = query.reply()
            name = str(query.q.qname).rstrip(".").lower()
            ips = self.records.get(name)
            if ips is None:
                reply.header.rcode = RCODE.NXDOMAIN
            for ip in ips or []:
                if query.q.qtype == QTYPE.A and ":" not in ip:
                    reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
                elif query.q.qtype == QTYPE.AAAA and ":" in ip:
                    reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=self.ttl))
            self.sock.sendto(reply.pack(), peer)
