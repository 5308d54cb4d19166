"""Throwaway certificates for TLS tests, made with the `openssl` command, and
an HTTPS origin.

`Pki(folder)` makes a root CA (`ca`) and an intermediate CA (`int`) signed by
it; `leaf(name, dns, key=..., signer=...)` issues `name.crt` / `name.key`.
Key types: `ec` (P-256, PKCS#8), `ec-sec1` (P-256, `EC PRIVATE KEY`), `p384`,
`p521`, `rsa` (2048, PKCS#8), `rsa-pkcs1` (`RSA PRIVATE KEY`), `rsa1024`,
`ed25519`, `ed448`. `expired(name, dns)` issues one valid only in January
2020, `dated(name, dns, start, end)` one valid between two dates (`openssl
ca`, which takes explicit dates).

`TlsOrigin` is the recording origin of `support/origin.py` behind TLS
(Python's ssl): every accepted connection is wrapped first, and the SNI each
client sent is kept in `sni_seen`, the number of finished handshakes in
`handshakes`. Its `/cut?n=K` and `/close` close with a TCP FIN and no
close_notify (`OriginConn.close` shuts the socket, not the TLS layer).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

from support.origin import Origin

KEY_ARGS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ec-sec1": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "p521": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
    "rsa": ["-newkey", "rsa:2048"],
    "rsa-pkcs1": ["-newkey", "rsa:2048"],
    "rsa1024": ["-newkey", "rsa:1024"],
    "ed25519": ["-newkey", "ed25519"],
    "ed448": ["-newkey", "ed448"],
}
# Keys re-written in their algorithm's traditional PEM form.
TRADITIONAL = {"ec-sec1", "rsa-pkcs1"}


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


class Pki:
    def __init__(self, folder: Path):
        self.dir = folder
        self.serial = 10
        openssl("req", "-x509", *KEY_ARGS["ec"], "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-subj", "/CN=Blitz QA Root", "-days", "30", cwd=folder)
        (folder / "int.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        self._issue("int", "/CN=Blitz QA Intermediate", "int.ext", "ec", "ca")

    def path(self, name: str) -> Path:
        return self.dir / name

    def _issue(self, name: str, subject: str, ext: str, key: str, signer: str) -> None:
        self.serial += 1
        openssl("req", *KEY_ARGS[key], "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=self.dir)
        if key in TRADITIONAL:
            openssl("pkey", "-in", f"{name}.key", "-traditional", "-out", f"{name}.pem", cwd=self.dir)
            (self.dir / f"{name}.pem").replace(self.dir / f"{name}.key")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{signer}.crt", "-CAkey", f"{signer}.key",
                "-set_serial", str(self.serial), "-days", "30", "-extfile", ext, "-out", f"{name}.crt",
                cwd=self.dir)

    def leaf(self, name: str, *names: str, key: str = "ec", signer: str = "ca") -> str:
        """`name.crt` / `name.key` for DNS names (or `IP:a.b.c.d` entries);
        signed by the intermediate, `name.crt` holds the chain (leaf first)."""
        sans = ",".join(n if n.startswith("IP:") else f"DNS:{n}" for n in names)
        (self.dir / f"{name}.ext").write_text(f"subjectAltName={sans}\n")
        self._issue(name, f"/CN={names[0] if names else name}", f"{name}.ext", key, signer)
        if signer == "int":
            leaf = (self.dir / f"{name}.crt").read_text()
            (self.dir / f"{name}.crt").write_text(leaf + (self.dir / "int.crt").read_text())
        return name

    def expired(self, name: str, dns: str) -> str:
        """A certificate for `dns` valid only in January 2020."""
        return self.dated(name, dns, "20200101000000Z", "20200201000000Z")

    def dated(self, name: str, dns: str, start: str, end: str) -> str:
        """A certificate for `dns` valid from `start` to `end` (`YYYYMMDDHHMMSSZ`)."""
        self._ca_sign(name, f"/CN={dns}", start, end, f"subjectAltName = DNS:{dns}")
        return name

    def with_expired_intermediate(self, name: str, dns: str) -> str:
        """A certificate for `dns`, valid now, issued by an intermediate that
        expired in 2021 (`name-int`); `name.crt` holds the chain, leaf first."""
        inter = f"{name}-int"
        self._ca_sign(inter, "/CN=Blitz QA Old Intermediate", "20200101000000Z", "20210101000000Z",
                      "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign")
        (self.dir / f"{name}.ext").write_text(f"subjectAltName=DNS:{dns}\n")
        self._issue(name, f"/CN={dns}", f"{name}.ext", "ec", inter)
        leaf = (self.dir / f"{name}.crt").read_text()
        (self.dir / f"{name}.crt").write_text(leaf + (self.dir / f"{inter}.crt").read_text())
        return name

    def _ca_sign(self, name: str, subject: str, start: str, end: str, extensions: str) -> None:
        """`name.key` and `name.crt` signed by the root with explicit dates
        (`openssl ca`, the OpenSSL 3.0 command that takes them) and
        `extensions` (config lines)."""
        db = self.dir / "ca-db"
        db.mkdir(exist_ok=True)
        (db / "index.txt").write_text("")
        self.serial += 1
        (db / "serial").write_text(f"{1000 + self.serial}\n")
        (self.dir / "ca.cnf").write_text(
            "[ca]\ndefault_ca = qa\n[qa]\ndatabase = ca-db/index.txt\nserial = ca-db/serial\n"
            "new_certs_dir = ca-db\ncertificate = ca.crt\nprivate_key = ca.key\ndefault_md = sha256\n"
            "policy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
            f"[ext]\n{extensions}\n"
        )
        openssl("req", *KEY_ARGS["ec"], "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=self.dir)
        openssl("ca", "-batch", "-config", "ca.cnf", "-in", f"{name}.csr", "-out", f"{name}.crt", "-notext",
                "-startdate", start, "-enddate", end, "-extensions", "ext", cwd=self.dir)

    def der(self, name: str) -> bytes:
        """The DER of the first certificate in `name.crt`."""
        text = (self.dir / f"{name}.crt").read_text()
        end = "-----END CERTIFICATE-----"
        return ssl.PEM_cert_to_DER_cert(text[: text.index(end) + len(end)])


def served_cert(port: int, server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The DER certificate a TLS server on 127.0.0.1:port presents for
    `server_name` (None: no SNI), unverified."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True)


class TlsOrigin(Origin):
    """The recording origin over TLS, with `cert` / `key` (paths)."""

    def __init__(self, cert: Path, key: Path):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sni_seen: list[str | None] = []
        self.handshakes = 0
        self.handshake_errors: list[str] = []
        self._tls_lock = threading.Lock()

        def on_sni(_sock, name, _ctx):
            with self._tls_lock:
                self.sni_seen.append(name)

        self.ctx.sni_callback = on_sni
        super().__init__()

    def _serve(self, c) -> None:
        try:
            c.sock.settimeout(5)
            c.sock = self.ctx.wrap_socket(c.sock, server_side=True)
        except (OSError, ssl.SSLError) as e:
            with self._tls_lock:
                self.handshake_errors.append(str(e))
            c.sock.close()
            c.closed = True
            return
        with self._tls_lock:
            self.handshakes += 1
            self._handshake_done(c.sock)
        super()._serve(c)

    def _handshake_done(self, sock: ssl.SSLSocket) -> None:
        """Called with the lock held after each handshake that succeeded:
        for subclasses that record more of it."""
