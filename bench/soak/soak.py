#!/usr/bin/env python3
"""Soak: the gateway under a long mixed load, with its resources printed once a minute.

Starts `unherd serve` (build/unherd) and the tests' counting upstream on 127.0.0.1 with ports
chosen at run time, then for --minutes (default 10) runs at once:
  hits      keep-alive clients asking a small hot set of keys
  misses    clients asking keys never seen before (fills and evicts the cache)
  herds     every few seconds, 200 concurrent requests for one cold key (200 ms upstream)
  private   requests whose answers are private (hit-for-pass) and Vary'd (learned names)
  purges    admin purges by key and by prefix
  slow      clients that send half a request head and stall, or open and say nothing
  faults    the upstream failing (503s), resetting and answering garbage, in turns
  large     answers past max_object_bytes and long pass-through bodies, half of their clients
            reading slowly or leaving early (streamed at the client's pace, inflight_memory)
and in phases, a third of the run each:
  log       the access log goes to a pipe: read, then not read at all (a stalled reader), then
            read again
  disk      the disk tier under a small budget: misses of 64 KB answers fill and evict it
Each minute it prints the gateway's RSS, open descriptors, client connections, cache bytes,
hint bytes, in-flight bytes, access-log queue bytes and requests served, and at the end whether
RSS and descriptors stayed flat after the first minutes (warm-up). Not part of CI: it takes minutes by design. Loopback only; every
loop is bounded by the deadline.
"""
import argparse
import asyncio
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "gateway", "integration"))
os.environ.setdefault("UNHERD_BIN", os.path.join(ROOT, "build", "unherd"))

from harness import TOKEN, Gateway, route  # noqa: E402
from upstream import Upstream  # noqa: E402


def proc_figures(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed since the listing
            pass
    return rss // 1024, len(fds), sockets


class Load:
    def __init__(self, gw, up, deadline):
        self.gw, self.up, self.deadline = gw, up, deadline
        self.served = 0
        self.errors = 0
        self.lock = threading.Lock()

    def alive(self):
        return time.monotonic() < self.deadline

    def count(self, ok):
        with self.lock:
            self.served += 1
            self.errors += 0 if ok else 1

    def client(self, targets, headers=b""):
        """A keep-alive client asking `targets()` in turn until the deadline."""
        while self.alive():
            try:
                s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=10)
                f = s.makefile("rb")
                for _ in range(200):
                    if not self.alive():
                        break
                    s.sendall(b"GET " + targets().encode() + b" HTTP/1.1\r\nHost: soak\r\n" +
                              headers + b"\r\n")
                    status = f.readline()
                    length = 0
                    while (line := f.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    f.read(length)
                    self.count(status.startswith(b"HTTP/1.1 2") or status.startswith(b"HTTP/1.1 3"))
                s.close()
            except OSError:
                self.count(False)
                time.sleep(0.05)

    def hits(self):
        self.client(lambda: f"/api/hot/{random.randrange(50)}?cc=max-age%3D3600")

    def misses(self):
        n = iter(range(10**9))
        self.client(lambda: f"/api/cold/{next(n)}-{random.random()}?pad=2000")

    def private(self):
        self.client(lambda: random.choice([f"/api/priv/{random.randrange(10**6)}?cc=private",
                                           f"/api/vary/{random.randrange(10**6)}?vary=X-Lang"]),
                    headers=b"X-Lang: en\r\n")

    def herds(self):
        async def one(target):
            r, w = await asyncio.open_connection("127.0.0.1", self.gw.port)
            w.write(f"GET {target} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
            data = await r.read()
            w.close()
            self.count(data.startswith(b"HTTP/1.1 2"))

        async def herd(target):
            await asyncio.gather(*(one(target) for _ in range(200)), return_exceptions=True)

        i = 0
        while self.alive():
            asyncio.run(herd(f"/api/herd/{i}?delay_ms=200"))
            i += 1
            time.sleep(3)

    def purges(self):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        while self.alive():
            for q in (f"key=/api/hot/{random.randrange(50)}?cc=max-age%3D3600", "prefix=/api/cold/"):
                try:
                    self.gw.get("/purge?" + q, method="POST", admin=True, headers=auth)
                except OSError:
                    pass
            time.sleep(1)

    def slow(self):
        while self.alive():
            held = []
            for i in range(50):
                try:
                    s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=5)
                    if i % 2:
                        s.sendall(b"GET /api/slow HTTP/1.1\r\nHost: so")  # half a head
                    held.append(s)
                except OSError:
                    pass
            time.sleep(5)
            for s in held:
                s.close()

    def large(self):
        while self.alive():
            for i in range(4):
                slow = i % 2 == 1
                method = "POST" if i >= 2 else "GET"
                target = f"/api/large/{random.randrange(10**6)}?pad=3000000"
                try:
                    s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=10)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                    s.sendall(f"{method} {target} HTTP/1.1\r\nHost: soak\r\n"
                              f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
                    got = 0
                    while self.alive():
                        chunk = s.recv(4096 if slow else 1 << 20)
                        if not chunk:
                            break
                        got += len(chunk)
                        if slow:
                            time.sleep(0.01)
                            if got > 1_000_000:
                                break  # leaves before the end
                    s.close()
                    self.count(got > 0)
                except OSError:
                    self.count(False)

    def disk_fill(self, start, end):
        n = iter(range(10**9))
        while self.alive() and time.monotonic() < start:
            time.sleep(1)
        def targets():
            return f"/api/fill/{next(n)}?pad=64000&cc=max-age%3D600"
        while self.alive() and time.monotonic() < end:
            try:
                self.gw.get(targets())
                self.count(True)
            except OSError:
                self.count(False)

    def log_reader(self, stall_from, stall_until):
        """Reads the gateway's stdout (its access log), but not while the phase stalls it."""
        import select
        fd = self.gw.proc.stdout.fileno()
        while self.alive():
            if stall_from <= time.monotonic() < stall_until:
                time.sleep(0.2)
                continue
            if select.select([fd], [], [], 0.2)[0] and not os.read(fd, 1 << 20):
                return

    def faults(self):
        base = f"http://127.0.0.1:{self.up.port}"
        while self.alive():
            for path in ("/__fail?n=5&status=503", "/__fail?n=0"):
                try:
                    urllib.request.urlopen(urllib.request.Request(base + path, method="POST")).read()
                except OSError:
                    pass
                time.sleep(5)
            for mode in ("reset", "garbage", "truncate"):
                try:
                    self.gw.get(f"/api/fault/{random.random()}?mode={mode}")
                except OSError:
                    pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    up = Upstream()
    # Faults come in short bursts; the breaker opens on a real outage, not on a burst. The access
    # log goes to stdout (a pipe this script reads, then stalls, then reads again); the disk tier
    # has a small budget, so the disk phase fills and evicts it.
    gw = Gateway(route("api", "/api", up.port, fresh_ttl='"2s"', stale_ttl='"5s"',
                       timeout='"10s"',
                       retry='{ attempts = 2, base = "10ms", cap = "50ms" }',
                       breaker='{ failure_rate = 0.9, window = 200, min_calls = 100, '
                               'open_for = "2s" }'),
                 server_extra='idle_timeout = "10s"\nsend_timeout = "10s"\n'
                              'inflight_memory = "64MiB"\naccess_log_queue_bytes = "4MiB"',
                 cache_extra='disk = "64MiB"\nmax_object_bytes = "1MiB"\n'
                             'hints_memory = "1MiB"',
                 access_log="-")
    start = time.monotonic()
    deadline = start + args.minutes * 60
    third = (deadline - start) / 3
    load = Load(gw, up, deadline)
    workers = ([load.hits] * 4 + [load.misses] * 2 + [load.private] * 2 +
               [load.herds, load.purges, load.slow, load.faults, load.large] +
               [lambda: load.log_reader(start + third, start + 2 * third),
                lambda: load.disk_fill(start + third, start + 2 * third)])
    threads = [threading.Thread(target=w, daemon=True) for w in workers]
    for t in threads:
        t.start()
    print(f"soak: {args.minutes:g} min against pid {gw.proc.pid} "
          f"(http://127.0.0.1:{gw.port}); one line a minute")
    print("| minute | phase | RSS MiB | fds | sockets | cache MiB | disk MiB | hints KiB | "
          "in flight KiB | log queue KiB | log dropped | served | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    minute = 0
    while time.monotonic() < deadline:
        time.sleep(min(60, max(0, deadline - time.monotonic())))
        minute += 1
        rss, fds, sockets = proc_figures(gw.proc.pid)
        stats = gw.stats()
        rows.append((rss, fds))
        elapsed = time.monotonic() - start
        phase = ("mixed" if elapsed < third else
                 "log stalled + disk fill" if elapsed < 2 * third else "mixed")
        disk = next((t for name, t in stats["tiers"].items() if name == "disk"), None) \
            if isinstance(stats.get("tiers"), dict) else None
        disk_mib = (disk or {}).get("bytes", 0) / 2**20
        print(f"| {minute} | {phase} | {rss} | {fds} | {sockets} | "
              f"{stats['cache']['bytes'] / 2**20:.1f} | {disk_mib:.1f} | "
              f"{stats['hints']['bytes'] / 1024:.0f} | {stats['inflight']['bytes'] / 1024:.0f} | "
              f"{stats['access_log_queued_bytes'] / 1024:.0f} | {stats['access_log_dropped']} | "
              f"{load.served} | {load.errors} |", flush=True)
    for t in threads:
        t.join(timeout=30)
    time.sleep(12)  # past idle_timeout: idle client connections are closed
    rss, fds, sockets = proc_figures(gw.proc.pid)
    print(f"after the load: RSS {rss} MiB, {fds} fds, {sockets} sockets")
    warm = rows[len(rows) // 3:] if len(rows) >= 3 else rows
    if warm:
        print(f"after warm-up: RSS {min(r for r, _ in warm)}–{max(r for r, _ in warm)} MiB, "
              f"fds {min(f for _, f in warm)}–{max(f for _, f in warm)}")
    gw.stop()
    up.stop()


if __name__ == "__main__":
    main()
