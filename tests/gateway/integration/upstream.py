"""A counting, controllable HTTP/1.1 upstream for the gateway's integration tests.

Behaviour is chosen per request by query parameters, so one server serves every test:
  cc=...        Cache-Control of the answer        delay_ms=N   answer after N ms
  vary=H        Vary: H, and the value of request header H echoed in the body
  status=N      status code                        etag=E       ETag (If-None-Match: E -> 304)
  cookie=1      add Set-Cookie (a value of its own per request)       lm=...  Last-Modified
  hdr=Name:Value  add that header line (repeatable)   nm=Name:Value  add it to a 304 (repeatable)
  echo=H        the values of request header H, every line, echoed in the body
and by request header: X-Cc: V   Cache-Control V instead of cc= (an input the key ignores)
  mode=garbage|truncate|reset   answer with junk, a short body, or by closing the socket
  mode=early_hints              send a 103 before the answer
and for the whole server, by control calls:
  POST /__fail?n=N&status=S   the next N requests answer S (default 503)
  POST /__down?on=1|0         every request answers 503 while on
  POST /__hold?path=P         requests for path P (P* for a prefix) wait, once counted, until
                              released: a test sees the herd arrive and decides when it is answered
  POST /__release?path=P&n=N  lets the N oldest held requests for P go on, the hold staying; without
                              n, lets every one go and ends the hold
  GET /__held?path=P&n=N&timeout_ms=T   waits until N requests for P are held (at most T ms);
                              answers how many are held now
Counters: GET /__count?target=T (requests for T), /__total, /__304s; POST /__reset.
What it saw: GET /__headers (the last 20 requests' headers); `state.bodies_seen` in process.
"""
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# A held request goes on by itself after this long, so a test that fails before releasing it
# cannot leave the server's threads waiting for good.
HOLD_LIMIT_S = 120


def _matches(pattern, path):
    return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified when a request is held
        self._clear()

    def _clear(self):
        """Everything but the lock and its condition, which waiting threads keep using."""
        self.counts = {}
        self.total = 0
        self.not_modified = 0
        self.fail_next = 0
        self.fail_status = 503
        self.down = False
        self.headers_seen = []
        self.lines_seen = []  # every request's header lines, as sent: (name, value), repeats kept
        self.bodies_seen = []  # request bodies, in the order of headers_seen
        self.holds = set()  # path patterns held
        self.held = []  # (path, gate) of the requests waiting now, oldest first

    def reset(self):
        with self.lock:
            for _, gate in self.held:
                gate.set()
            self._clear()
            self.changed.notify_all()

    # -- holding requests (the caller holds no lock)

    def hold(self, pattern):
        """From now on, requests whose URL path matches `pattern` (exact, or a prefix when it
        ends with *) wait, after they are counted, until released."""
        with self.lock:
            self.holds.add(pattern)

    def release(self, pattern, n=None):
        """Lets the `n` oldest held requests matching `pattern` go on, the hold staying; with
        n None, every one of them, and the hold ends. Returns how many it let go."""
        with self.lock:
            matching = [h for h in self.held if _matches(pattern, h[0])]
            if n is None:
                self.holds.discard(pattern)
            else:
                matching = matching[:n]
            for entry in matching:
                self.held.remove(entry)
                entry[1].set()
            return len(matching)

    def held_count(self, pattern):
        with self.lock:
            return sum(1 for path, _ in self.held if _matches(pattern, path))

    def wait_held(self, pattern, n, timeout=30):
        """Waits until `n` requests matching `pattern` are held at once; whether they are."""
        with self.changed:
            return self.changed.wait_for(
                lambda: sum(1 for path, _ in self.held if _matches(pattern, path)) >= n,
                timeout=timeout)

    def _hold_here(self, path):
        """Called with the lock held, as a request is counted: its gate if it is to wait."""
        if not any(_matches(p, path) for p in self.holds):
            return None
        gate = threading.Event()
        self.held.append((path, gate))
        self.changed.notify_all()
        return gate


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State = None

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _control(self, url, q):
        st = self.state
        if url.path == "/__count":
            with st.lock:
                n = st.counts.get(q.get("target", [""])[0], 0)
            return self._send(200, str(n).encode())
        if url.path == "/__total":
            return self._send(200, str(st.total).encode())
        if url.path == "/__304s":
            return self._send(200, str(st.not_modified).encode())
        if url.path == "/__headers":
            with st.lock:
                return self._send(200, json.dumps(st.headers_seen[-20:]).encode())
        if url.path == "/__reset":
            st.reset()
            return self._send(200, b"ok")
        if url.path == "/__fail":
            with st.lock:
                st.fail_next = int(q.get("n", ["1"])[0])
                st.fail_status = int(q.get("status", ["503"])[0])
            return self._send(200, b"ok")
        if url.path == "/__down":
            with st.lock:
                st.down = q.get("on", ["1"])[0] == "1"
            return self._send(200, b"ok")
        if url.path == "/__hold":
            st.hold(q["path"][0])
            return self._send(200, b"ok")
        if url.path == "/__release":
            n = int(q["n"][0]) if "n" in q else None
            return self._send(200, str(st.release(q["path"][0], n)).encode())
        if url.path == "/__held":
            st.wait_held(q["path"][0], int(q.get("n", ["0"])[0]),
                         int(q.get("timeout_ms", ["0"])[0]) / 1000)
            return self._send(200, str(st.held_count(q["path"][0])).encode())
        return self._send(404, b"no such control")

    def _handle(self):
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        if url.path.startswith("/__"):
            return self._control(url, q)
        length = int(self.headers.get("Content-Length", "0") or 0)
        request_body = self.rfile.read(length) if length else b""
        st = self.state
        with st.lock:
            st.counts[self.path] = st.counts.get(self.path, 0) + 1
            st.total += 1
            st.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
            st.lines_seen.append(list(self.headers.items()))
            st.bodies_seen.append(request_body)
            fail = st.down or st.fail_next > 0
            if st.fail_next > 0:
                st.fail_next -= 1
            fail_status = 503 if st.down else st.fail_status
            number = st.counts[self.path]
            gate = st._hold_here(url.path)
        if gate is not None and not gate.wait(HOLD_LIMIT_S):
            with st.lock:  # never released: it goes on by itself, and is held no more
                st.held = [h for h in st.held if h[1] is not gate]
        delay = int(q.get("delay_ms", ["0"])[0])
        if delay:
            time.sleep(delay / 1000)
        mode = q.get("mode", [""])[0]
        if mode == "reset":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if mode == "garbage":
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            self.close_connection = True
            return
        if mode == "truncate":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        extra = [tuple(h.split(":", 1)) for h in q.get("hdr", []) if ":" in h]
        if fail:
            return self._send(fail_status, b'{"error":"down"}', [("Content-Type", "application/json")])
        if mode == "early_hints":  # an informational answer before the real one
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        headers = [("Content-Type", "application/json")]
        etag = q.get("etag", [None])[0]
        if etag:
            headers.append(("ETag", etag))
            if self.headers.get("If-None-Match") == etag:
                with st.lock:
                    st.not_modified += 1
                headers += [tuple(h.split(":", 1)) for h in q.get("nm", []) if ":" in h]
                return self._send(304, b"", headers)
        if self.headers.get("X-Cc"):  # a header the key ignores decides the answer
            headers.append(("Cache-Control", self.headers["X-Cc"]))
        elif "cc" in q:
            headers.append(("Cache-Control", q["cc"][0]))
        if "lm" in q:
            headers.append(("Last-Modified", q["lm"][0]))
        if q.get("cookie", ["0"])[0] == "1":
            headers.append(("Set-Cookie", f"session=abc-{number}"))
        headers.extend(extra)
        vary = q.get("vary", [None])[0]
        if vary:
            headers.append(("Vary", vary))
        status = int(q.get("status", ["200"])[0])
        pad = int(q.get("pad", ["0"])[0])  # a body of about that many more bytes
        body = json.dumps({"target": self.path, "n": number,
                           "auth": self.headers.get("Authorization"),
                           "varied": self.headers.get(vary) if vary else None,
                           "echo": self.headers.get_all(q["echo"][0]) if "echo" in q else None,
                           "query": q,
                           "pad": q.get("pad_char", ["x"])[0] * pad}).encode()
        return self._send(status, body, headers)

    def _handle_quietly(self):
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the gateway gave up on this answer

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_TRACE = _handle_quietly


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops a herd's connects
    daemon_threads = True


class Server6(Server):
    address_family = socket.AF_INET6


class Upstream:
    """Runs the upstream on 127.0.0.1 (or `host`, "::1" for IPv6) and a free port, in this
    process."""

    def __init__(self, host="127.0.0.1"):
        self.state = State()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = (Server6 if ":" in host else Server)((host, 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, target):
        with self.state.lock:
            return self.state.counts.get(target, 0)

    def hold(self, pattern):
        self.state.hold(pattern)

    def release(self, pattern, n=None):
        return self.state.release(pattern, n)

    def wait_held(self, pattern, n, timeout=30):
        return self.state.wait_held(pattern, n, timeout)

    def stop(self):
        with self.state.lock:
            self.state.holds.clear()
        self.state.release("*")
        self.server.shutdown()
        self.server.server_close()
