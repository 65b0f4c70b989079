"""Starts real `unherd serve` processes on 127.0.0.1 with ports chosen at run time, and talks
HTTP/1.1 to them: one request at a time (http.client) or a herd of them at once (asyncio)."""
import asyncio
import codecs
import http.client
import os
import re
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("UNHERD_BIN", "build/unherd")
TOKEN = "test-token"

# A herd needs a descriptor per client.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


def route(name, prefix, port, **extra):
    lines = [f'[[routes]]', f'name = "{name}"', f'prefix = "{prefix}"',
             f'upstream = "http://127.0.0.1:{port}"']
    for k, v in extra.items():
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


class Gateway:
    """A running `unherd serve`. `routes` is TOML text of [[routes]] tables."""

    def __init__(self, routes, server_extra="", cache_extra="", store_dir=None, preexec_fn=None,
                 access_log=None):
        """store_dir: where the disk tier lives (default: this gateway's own temporary
        directory); pass another gateway's `store_dir` to restart on its store. access_log:
        the setting (default: a file in that directory)."""
        self.dir = tempfile.mkdtemp(prefix="unherd-test-")
        self.store_dir = store_dir or os.path.join(self.dir, "cache")
        self.config = os.path.join(self.dir, "unherd.toml")
        self.access_log = access_log or os.path.join(self.dir, "access.log")
        self.cache_extra = cache_extra
        self.write_config(routes, server_extra)
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.config],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=preexec_fn)
        self.log_lines = []  # what it printed before it said where it listens
        self._stderr_seen = ""  # what wait_for_stderr has read so far
        self._stderr_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        m = None
        while m is None:
            line = self._read_line(timeout=30)
            if not line:
                self.proc.kill()
                raise RuntimeError(f"gateway did not start: {self.log_lines!r} "
                                   f"{self.proc.stderr.read()}")
            m = re.search(r"http://[\d.]+:(\d+) \(admin http://[\d.]+:(\d+)\)", line)
            self.log_lines.append(line)
        self.port, self.admin_port = int(m.group(1)), int(m.group(2))

    def write_config(self, routes, server_extra=""):
        with open(self.config, "w") as f:
            f.write('[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
                    f'threads = 2\nadmin_token = "{TOKEN}"\naccess_log = "{self.access_log}"\n'
                    f'shutdown_grace = "5s"\n{server_extra}\n'
                    f'[cache]\nmemory = "64MiB"\npath = "{self.store_dir}"\n{self.cache_extra}\n'
                    f'\n{routes}')

    def stats(self):
        import json
        return json.loads(self.get("/stats", admin=True)[2])

    def wait_for_stderr(self, text, timeout=30):
        """Waits until the gateway has written `text` to stderr (since it started); returns
        whether it has. What is read here is still part of `stderr_text` after stop()."""
        fd = self.proc.stderr.fileno()
        end = time.monotonic() + timeout
        while text not in self._stderr_seen:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return False
            chunk = os.read(fd, 65536)
            if not chunk:  # it exited
                return False
            self._stderr_seen += self._stderr_decoder.decode(chunk)
        return True

    def _read_line(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else None

    def get(self, target, headers=None, method="GET", body=None, admin=False, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port if admin else self.port,
                                          timeout=timeout)
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def raw(self, data, timeout=10):
        """Sends raw bytes; returns the status code of the answer (0 if none)."""
        buf = self._send_raw(data, timeout, until=lambda b: b"\r\n" in b)
        m = re.match(rb"HTTP/1\.1 (\d{3})", buf)
        return int(m.group(1)) if m else 0

    def _send_raw(self, data, timeout, until):
        """Sends raw bytes on a new connection; reads until `until(bytes so far)`, a close, a
        reset or the timeout, and returns what was read."""
        import socket
        buf = b""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            try:
                while not until(buf):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except (ConnectionResetError, socket.timeout):
                pass
        return buf

    def exchange(self, data, timeout=10):
        """Sends raw bytes on one connection; once the first answer is in, sends a probe (a
        `Connection: close` request no route serves, X-Request-Id `probe`). Returns (answers,
        closed): every answer before the probe's, as (status, headers, body) with lower-case
        header names, and whether the gateway closed the connection instead of answering the
        probe. Answers are read by Content-Length (none for 1xx, 204, 304): not for HEAD."""
        import socket
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            reader = _AnswerReader(s)
            answers, closed = [], False
            first = reader.next()
            if first is None:
                return answers, True
            answers.append(first)
            try:
                s.sendall(b"GET /__no-route-probe HTTP/1.1\r\nHost: t\r\nX-Request-Id: probe\r\n"
                          b"Connection: close\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            while (answer := reader.next()) is not None:
                if answer[1].get("x-request-id") == "probe":
                    return answers, False
                answers.append(answer)
            return answers, True

    def raw_exchange(self, data, timeout=10):
        """Sends raw bytes; returns every byte the gateway sent back until it closed."""
        return self._send_raw(data, timeout, until=lambda b: False)

    def herd(self, targets, headers=""):
        return asyncio.run(_herd(self.port, targets, headers))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.stdout.closed:  # stopped before
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr_text = self._stderr_seen + self.proc.stderr.read()
        if self.proc.returncode not in (0, -signal.SIGKILL):  # a sanitizer's report, say
            kept = os.path.join(self.dir, "stderr.txt")
            with open(kept, "w") as f:
                f.write(self.stderr_text)
            sys.stderr.write(f"gateway exited {self.proc.returncode}; its stderr is in {kept} "
                             f"and begins:\n{self.stderr_text[:20000]}\n")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


class _AnswerReader:
    """HTTP/1.1 answers off a socket, one at a time, framed by Content-Length."""

    def __init__(self, sock):
        self.sock, self.buf, self.eof = sock, b"", False

    def _fill(self):
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buf += chunk
        self.eof = not chunk
        return bool(chunk)

    def next(self):
        """The next answer, or None when the connection ends first. Raises socket.timeout."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
        length = 0 if status < 200 or status in (204, 304) else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            if not self._fill():
                break
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body


async def _one(port, target, headers):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


async def _herd(port, targets, headers):
    # headers: one string of header lines for every request, or a list of one per request.
    per_request = headers if isinstance(headers, list) else [headers] * len(targets)
    return await asyncio.wait_for(
        asyncio.gather(*(_one(port, t, h) for t, h in zip(targets, per_request))), timeout=120)


def eventually(pred, timeout=10.0):
    """Polls a condition another process makes true (not a way to let time pass)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()
