"""A scripted HTTP/1.1 upstream on a raw socket, for answers no well-behaved server would give.

It listens on 127.0.0.1 and a free port, serves each connection on a thread of its own and keeps
it open across requests (keep-alive), like a real upstream. Each request head (and body, by
Content-Length) is read and recorded as a `Seen` (connection id, method, target, headers, body),
in arrival order. The answer comes from a script per path (the target without its query): a
`Script` says which bytes to write, verbatim, so they may break the framing (bytes past the
Content-Length, a body on a 204), and what to do after them:
  later   bytes kept for the idle connection, written when the test calls `send_later()`
  close   close the connection after the answer (without saying so in a header)
A path may be given several scripts: its requests take them in turn, the last one repeats.
Unscripted paths answer 200 with the target as the body.
Connection ids count from 1 in accept order; `eof` holds the ids of connections the gateway
closed (its end of file, or a reset, seen here), `ended` those closed by either side.
"""
import fcntl
import socket
import struct
import termios
import threading
from dataclasses import dataclass, field

from harness import eventually


@dataclass
class Script:
    response: bytes
    later: bytes = b""
    close: bool = False


@dataclass
class Seen:
    conn: int
    method: str
    target: str
    headers: dict = field(default_factory=dict)  # lower-case names
    body: bytes = b""


def ok(body, *headers):
    """A well-framed 200 answer with `body` and extra header lines."""
    head = "".join(f"{h}\r\n" for h in headers)
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n").encode() + body


class RawUpstream:
    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.changed = threading.Condition()  # protects everything below; notified on each change
        self.seen = []
        self.eof = set()
        self.ended = set()
        self.scripts = {}
        self.turns = {}  # path -> how many of its scripts were used
        self.pending_later = []  # (socket, bytes) waiting for send_later()
        self.conns = {}  # id -> socket
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    # -- what a test controls

    def script(self, path, *scripts):
        with self.changed:
            self.scripts[path] = list(scripts)
            self.turns[path] = 0

    def send_later(self):
        """Writes every answer's `later` bytes on its (idle) connection; returns once the
        gateway's side has acknowledged them, so they wait in its receive buffer."""
        with self.changed:
            pending, self.pending_later = self.pending_later, []
        for sock, data in pending:
            sock.sendall(data)
        for sock, _ in pending:
            if not eventually(lambda: _unacknowledged(sock) == 0):
                raise TimeoutError("the gateway's side did not take the bytes")

    def wait_for(self, pred, timeout=10):
        """Waits until pred(self) holds, re-checked on each request and each closed connection."""
        with self.changed:
            return self.changed.wait_for(lambda: pred(self), timeout=timeout)

    def requests(self, path=None):
        with self.changed:
            return [s for s in self.seen if path is None or s.target.split("?")[0] == path]

    def stop(self):
        self.stopping = True
        self.listener.close()
        with self.changed:
            conns = list(self.conns.values())
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- serving

    def _accept(self):
        next_id = 1
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.changed:
                self.conns[next_id] = sock
            threading.Thread(target=self._serve, args=(sock, next_id), daemon=True).start()
            next_id += 1

    def _serve(self, sock, conn):
        buf = b""
        peer_closed = False
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        peer_closed = True
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        peer_closed = True
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                script = self._next_script(target.split("?")[0], target)
                with self.changed:
                    self.seen.append(Seen(conn, method, target, headers, body))
                    self.changed.notify_all()
                sock.sendall(script.response)
                if script.later:
                    with self.changed:
                        self.pending_later.append((sock, script.later))
                if script.close:
                    sock.shutdown(socket.SHUT_RDWR)
                    return
        except ConnectionResetError:
            peer_closed = True
        except OSError:
            pass
        finally:
            with self.changed:
                if peer_closed:
                    self.eof.add(conn)
                self.ended.add(conn)
                self.conns.pop(conn, None)
                self.changed.notify_all()
            sock.close()

    def _next_script(self, path, target):
        with self.changed:
            scripts = self.scripts.get(path)
            if not scripts:
                return Script(ok(target.encode()))
            turn = self.turns[path]
            self.turns[path] = turn + 1
            return scripts[min(turn, len(scripts) - 1)]


def _unacknowledged(sock):
    """Bytes written on `sock` its peer has not acknowledged yet (Linux SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
