"""A counting, controllable HTTP/1.1 upstream for the gateway's integration tests.

Behaviour is chosen per request by query parameters, so one server serves every test:
  cc=...        Cache-Control of the answer        delay_ms=N   answer after N ms
  vary=H        Vary: H, and the value of request header H echoed in the body
  status=N      status code                        etag=E       ETag (If-None-Match: E -> 304)
  cookie=1      add Set-Cookie (a value of its own per request)       lm=...  Last-Modified
  hdr=Name:Value  add that header line (repeatable)
  echo=H        the values of request header H, every line, echoed in the body
and by request header: X-Cc: V   Cache-Control V instead of cc= (an input the key ignores)
  mode=garbage|truncate|reset   answer with junk, a short body, or by closing the socket
  mode=early_hints              send a 103 before the answer
and for the whole server, by control calls:
  POST /__fail?n=N&status=S   the next N requests answer S (default 503)
  POST /__down?on=1|0         every request answers 503 while on
Counters: GET /__count?target=T (requests for T), /__total, /__304s; POST /__reset.
What it saw: GET /__headers (the last 20 requests' headers); `state.bodies_seen` in process.
"""
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.total = 0
        self.not_modified = 0
        self.fail_next = 0
        self.fail_status = 503
        self.down = False
        self.headers_seen = []
        self.bodies_seen = []  # request bodies, in the order of headers_seen

    def reset(self):
        with self.lock:
            self.__init__()


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
            st.bodies_seen.append(request_body)
            fail = st.down or st.fail_next > 0
            if st.fail_next > 0:
                st.fail_next -= 1
            fail_status = 503 if st.down else st.fail_status
            number = st.counts[self.path]
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

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle_quietly


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops a herd's connects
    daemon_threads = True


class Upstream:
    """Runs the upstream on 127.0.0.1 and a free port, in this process."""

    def __init__(self):
        self.state = State()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = Server(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, target):
        with self.state.lock:
            return self.state.counts.get(target, 0)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
