"""An origin that plays a scripted answer per request, right or wrong.

`RogueOrigin` is the recording origin of `support/origin.py` (same accept
loop, head parser, body reader and per-connection byte log) with another
serving loop: the answer to a request is the `Script` registered for its
target (`origin.scripts[target] = Script(...)`), played byte for byte. A
script is the exact bytes to write, cut into pieces with a pause before
each, and how the connection ends after them:

  keep     read the next request on the same connection
  close    shut the write side (FIN), then read until the gateway closes
  reset    close with a TCP RST (SO_LINGER 0)
  wait     write nothing more, read until the gateway closes
  stall    like wait: the gateway's response timeout has to end it

`early=True` plays the script as soon as the head is read, before reading
the request body (an answer that does not wait for the upload); afterwards
the rest of the body is read and discarded (a lingering close, so the
answer is not lost to a reset).

Every request is recorded as an `Arrival` (its connection, its index on
that connection, the script it got). Bytes that reach a connection after
an answer that left it unusable (`close`, `wait`, `stall`, `early`) are
counted in `late_bytes[conn_id]`: the gateway sent something on a
connection it had no business using. A target with no script gets a
plain keep-alive 200 (`default_answer`), so bystander requests work.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from support.origin import Origin, OriginConn, RecordedRequest

# Bound on how long a connection thread waits for the gateway to close after
# an answer that ended it (the gateway's timeouts are far shorter).
LINGER_BOUND = 8.0


@dataclass
class Script:
    """One answer: `pieces` written in order, `pauses[i]` seconds before piece i."""

    pieces: list
    pauses: list
    end: str = "keep"  # keep | close | reset | wait | stall
    early: bool = False

    @property
    def wire(self) -> bytes:
        return b"".join(self.pieces)


@dataclass
class Arrival:
    """A request as it reached the origin."""

    index: int  # order of arrival over the origin's life
    conn_id: int
    seq: int  # index on its connection (0: a fresh connection)
    req: RecordedRequest
    scripted: bool
    sent: int = 0  # answer bytes written before the connection ended
    done: bool = False  # the answer was played to its end


def default_answer(req: RecordedRequest, conn_id: int) -> bytes:
    body = f"{req.method} {req.target}\n".encode("latin-1")
    head = f"HTTP/1.1 200 OK\r\nx-rogue-answer: default\r\nx-origin-conn: {conn_id}\r\n"
    if req.method == "HEAD":
        return (head + f"content-length: {len(body)}\r\n\r\n").encode()
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


class RogueOrigin(Origin):
    def __init__(self):
        # set before the accept loop (started by Origin) can serve anything
        self.scripts: dict[str, Script] = {}
        self.arrivals: list[Arrival] = []
        self.late_bytes: dict[int, int] = {}
        self._arrived = 0
        super().__init__()

    def reset(self) -> None:
        with self.cond:
            super().reset()
            self.arrivals = []
            self.scripts = {}

    def arrivals_since(self, index: int) -> list[Arrival]:
        with self.cond:
            return [a for a in self.arrivals if a.index >= index]

    @property
    def next_index(self) -> int:
        """The index the next arrival will get."""
        with self.cond:
            return self._arrived

    # ------------------------------------------------------------ server
    def _exchanges(self, c: OriginConn) -> None:
        """Each request's scripted answer (or the default one), in order."""
        buf = bytearray()
        while not self.stopping.is_set() and not c.closed:
            req = self._next_head(c, buf)
            script = self.scripts.get(req.target)
            with self.cond:
                c.requests.append(req)
                self.requests.append(req)
                arrival = Arrival(self._arrived, c.id, req.seq, req, script is not None)
                self._arrived += 1
                self.arrivals.append(arrival)
                self.cond.notify_all()
            if req.head_error:
                c.close()
                return
            if script is None:
                self._read_body(c, req, buf)
                req.complete = req.body_error is None
                if req.body_error or not c.send(default_answer(req, c.id)):
                    return
                continue
            if not script.early:
                self._read_body(c, req, buf)
                with self.cond:
                    req.complete = req.body_error is None
                if req.body_error:
                    return
            if not self._play(c, script, arrival):
                return
            if script.end == "keep" and not script.early:
                continue
            self._finish(c, script, counted=not script.early)
            return

    def _play(self, c: OriginConn, script: Script, arrival: Arrival) -> bool:
        """Writes the pieces; False once the connection is gone."""
        for pause, piece in zip(script.pauses, script.pieces):
            if pause and not c.sleep(pause):
                return False
            if piece and not c.send(piece, timeout=5.0):
                return False
            with self.cond:
                arrival.sent += len(piece)
        with self.cond:
            arrival.done = True
        return True

    def _finish(self, c: OriginConn, script: Script, counted: bool) -> None:
        """Ends the connection as the script says, counting what the gateway
        still sends on it (when the request was read whole, that is a new
        request on a connection that was not reusable)."""
        if script.end == "reset":
            c.reset()
            return
        if script.end == "close":
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
        before = c.nbytes
        ended = False
        deadline = time.monotonic() + LINGER_BOUND
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                c.sock.settimeout(0.2)
                d = c.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                ended = True
                break
            if not d:
                ended = True
                break
            c._record(d)
        with self.cond:
            c.peer_closed = ended
            if counted and c.nbytes > before:
                self.late_bytes[c.id] = c.nbytes - before
            self.cond.notify_all()

