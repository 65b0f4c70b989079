#!/usr/bin/env python3
"""unherd, nginx and Varnish side by side on this machine (`make compare`).

Each system runs with a private configuration from this directory on 127.0.0.1 ports chosen at
run time (never a system service), in front of the same counting upstream. Every workload runs
against the three in turn, rounds rotating the order (A B C, B C A, C A B) so that machine noise
does not favour one. Hit runs also report each server's CPU time per answer, and one paced run
(pace.lua) measures hit latency below saturation, where client and server do not queue for the
same cores. Prints one markdown table and appends it to bench/RESULTS.md.

Usage: bench/compare/compare.py [--rounds 3] [--wrk-seconds 10] [--fill 100000] [--no-append]
"""
import argparse
import datetime
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "gateway", "integration"))
from upstream import Upstream  # noqa: E402  the counting upstream the gateway's tests use

UNHERD = os.path.join(ROOT, "build", "unherd")
TOOL = os.path.join(ROOT, "build", "bench", "unherd-bench")
SYSTEMS = ["unherd", "nginx", "varnish"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def tree(pid):
    """pid and its descendants."""
    out = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        kids = ""
    for k in kids.split():
        out += tree(int(k))
    return out


def memory_kib(pid, *fields):
    """Sum of /proc status fields (VmRSS, VmHWM, RssAnon, ...) over a process tree."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.split(":")[0] in fields:
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    """User + system CPU time used so far by a process tree."""
    ticks = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


# Memory a cache holds for its entries: anonymous and shared memory (nginx's keys zone), not
# file pages it has mapped or read, which the kernel reclaims (unherd's LMDB map, nginx's files).
HELD = ("RssAnon", "RssShmem")


def render(template, **values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@" + k + "@", str(v))
    return text


class System:
    def __init__(self, name, work, up_port, fill_port):
        self.name, self.work = name, os.path.join(work, name)
        os.makedirs(self.work, exist_ok=True)
        self.port = free_port()
        self.proc = None
        getattr(self, "start_" + name)(up_port, fill_port)
        wait_port(self.port, self.proc, name)

    def start_unherd(self, up_port, fill_port):
        conf = os.path.join(self.work, "unherd.toml")
        with open(conf, "w") as f:
            f.write(render("unherd.toml", PORT=self.port, ADMIN=free_port(), UP=up_port,
                           FILL=fill_port, WORK=self.work))
        self.proc = subprocess.Popen([UNHERD, "serve", "--config", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_nginx(self, up_port, fill_port):
        conf = os.path.join(self.work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(render("nginx.conf", PORT=self.port, UP=up_port, FILL=fill_port,
                           WORK=self.work, USER="user root;" if os.geteuid() == 0 else ""))
        self.proc = subprocess.Popen(["nginx", "-p", self.work, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_varnish(self, up_port, fill_port):
        vcl = os.path.join(self.work, "default.vcl")
        with open(vcl, "w") as f:
            f.write(render("default.vcl", UP=up_port, FILL=fill_port))
        self.proc = subprocess.Popen(
            ["varnishd", "-F", "-j", "none", "-n", self.work, "-a", f"127.0.0.1:{self.port}",
             "-T", f"127.0.0.1:{free_port()}", "-f", vcl, "-s", "malloc,1g"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, target):
        return f"http://127.0.0.1:{self.port}{target}"

    def get(self, target):
        try:
            with urllib.request.urlopen(self.url(target), timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # Stopped first, all of them, then killed: a master killed before its workers (or
            # after them) could otherwise start new ones that outlive the run.
            procs = tree(self.proc.pid)
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for p in procs:
                    try:
                        os.kill(p, sig)
                    except OSError:
                        pass
            self.proc.wait()


def herd(system, n, target, keys=0):
    cmd = [TOOL, "herd", "--port", str(system.port), "--n", str(n), "--target", target]
    if keys:
        cmd += ["--keys", str(keys)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    f = dict(re.findall(r"(\w+)=([\d.]+)", out))
    ok = sum(int(c) for s, c in re.findall(r"(\d{3})x(\d+)", out) if s == "200")
    return {"p50": float(f.get("p50_ms", 0)), "p99": float(f.get("p99_ms", 0)),
            "max": float(f.get("max_ms", 0)), "errors": int(f.get("errors", 0)) + n - ok,
            "ok": ok}


def wrk(system, target, seconds, script=None, connections=64):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cpu_before = cpu_seconds(system.proc.pid)
    out = subprocess.run(cmd + [system.url(target)], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    cpu = cpu_seconds(system.proc.pid) - cpu_before

    def ms(label):
        m = re.search(label + r"\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    requests = int(done.group(1)) if done else 0
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": ms(" 50%"), "p99": ms(" 99%"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            # the server's CPU time per answer: what a hit costs, whoever got the cores
            "cpu_us": cpu * 1e6 / requests if requests else float("nan")}


def rotations(rounds):
    for r in range(rounds):
        yield r, SYSTEMS[r % 3:] + SYSTEMS[:r % 3]


def q(**params):
    return "?" + urllib.parse.urlencode(params)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--fill", type=int, default=100_000)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    for tool in ("nginx", "varnishd", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"compare: {tool} is missing: scripts/install-deps compare")

    work = tempfile.mkdtemp(prefix="unherd-compare-")
    up = Upstream()
    fill = subprocess.Popen([TOOL, "upstream", "--latency-ms", "0", "--body-bytes", "1024",
                             "--cache-control", "max-age=3600"], stdout=subprocess.PIPE, text=True)
    fill_port = int(fill.stdout.readline().split()[1])
    systems = {}
    results = {s: {} for s in SYSTEMS}

    def record(system, key, value):
        results[system].setdefault(key, []).append(value)

    def calls(target):
        return up.count(target)

    try:
        for name in SYSTEMS:
            systems[name] = System(name, work, up.port, fill_port)
        print(f"compare: unherd :{systems['unherd'].port}, nginx :{systems['nginx'].port}, "
              f"varnish :{systems['varnish'].port}; upstream :{up.port}", flush=True)

        # 1. Thundering herd on a cold key, upstream latency 200 ms.
        for n in (100, 1000):
            for r, order in rotations(args.rounds):
                for name in order:
                    target = f"/herd/{name}/n{n}/r{r}" + q(delay_ms=200, cc="max-age=3600")
                    h = herd(systems[name], n, target)
                    h["calls"] = calls(target)
                    record(name, f"herd{n}", h)
                    time.sleep(0.2)
            print(f"compare: herd N={n} done", flush=True)

        # 2. 1,000 concurrent requests over 100 keys.
        for r, order in rotations(args.rounds):
            for name in order:
                before = up.state.total
                h = herd(systems[name], 1000, f"/keys/{name}/r{r}" + q(delay_ms=200,
                                                                       cc="max-age=3600"),
                         keys=100)
                h["calls"] = up.state.total - before
                record(name, "keys", h)
                time.sleep(0.2)
        print("compare: 100 keys done", flush=True)

        # 3. Stale-while-revalidate: a stale entry, 100 concurrent requests.
        # 4. Upstream down with a stale entry.
        for r, order in rotations(args.rounds):
            swr = {n: f"/swr/{n}/r{r}" + q(delay_ms=200,
                                            cc="max-age=1, stale-while-revalidate=60")
                   for n in order}
            down = {n: f"/down/{n}/r{r}" + q(cc="max-age=1, stale-if-error=300") for n in order}
            for name in order:
                systems[name].get(swr[name])
                systems[name].get(down[name])
            time.sleep(2.0)  # both entries are stale now
            for name in order:
                before = up.state.total
                h = herd(systems[name], 100, swr[name])
                time.sleep(0.5)  # let a background refresh reach the upstream
                h["calls"] = up.state.total - before
                record(name, "swr", h)
            urllib.request.urlopen(f"http://127.0.0.1:{up.port}/__down?on=1").read()
            for name in order:
                before = up.state.total
                h = herd(systems[name], 100, down[name])
                h["calls"] = up.state.total - before
                record(name, "down", h)
            urllib.request.urlopen(f"http://127.0.0.1:{up.port}/__down?on=0").read()
        print("compare: stale workloads done", flush=True)

        # 4b. Upstream answering 503 (each after 200 ms), an entry past stale-while-revalidate
        # but inside stale-if-error: 100 concurrent requests as the outage starts for the key,
        # and 100 more 3 s into it. Upstream calls are counted from the first herd to the end of
        # the second (background retries included).
        for r, order in rotations(args.rounds):
            sie = {n: f"/sie/{n}/r{r}" + q(delay_ms=200, cc="max-age=1, stale-if-error=300")
                   for n in order}
            for name in order:
                # The round before may have left unherd's breaker open (30 s): fill only once it
                # lets the request through, or the round would measure an entry never stored.
                deadline = time.monotonic() + 60
                while systems[name].get(sie[name])[0] != 200 and time.monotonic() < deadline:
                    time.sleep(0.5)
            time.sleep(2.0)  # past max-age; the /sie route keeps no stale-while-revalidate
            urllib.request.urlopen(f"http://127.0.0.1:{up.port}/__down?on=1").read()
            for name in order:
                before = calls(sie[name])
                started = time.monotonic()
                first = herd(systems[name], 100, sie[name])
                first["calls"] = calls(sie[name]) - before
                record(name, "sie_start", first)
                time.sleep(max(0.0, started + 3.0 - time.monotonic()))
                later = herd(systems[name], 100, sie[name])
                later["calls"] = calls(sie[name]) - before
                record(name, "sie_3s", later)
            urllib.request.urlopen(f"http://127.0.0.1:{up.port}/__down?on=0").read()
        print("compare: 503ing upstream done", flush=True)

        # 5. Cache-hit throughput, 1 KiB and 64 KiB.
        for size, pad in (("1k", 900), ("64k", 65_400)):
            for name in SYSTEMS:
                # The outages above may have left a breaker open (unherd's opens for 30 s): wait
                # until the entry is really cached, or wrk would measure refusals.
                target = f"/hit/{size}" + q(pad=pad, cc="max-age=3600")
                deadline = time.monotonic() + 60
                while systems[name].get(target)[0] != 200 and time.monotonic() < deadline:
                    time.sleep(0.5)
                systems[name].get(target)
            for r, order in rotations(args.rounds):
                for name in order:
                    record(name, f"wrk{size}",
                           wrk(systems[name], f"/hit/{size}" + q(pad=pad, cc="max-age=3600"),
                               args.wrk_seconds))
            print(f"compare: hits {size} done", flush=True)

        # 5b. Latency of hits at a paced load, the same for every system (see pace.lua).
        # The same for 64 KiB answers: the write path's own tail, where nobody queues.
        pace = os.path.join(HERE, "pace.lua")
        for r, order in rotations(args.rounds):
            for name in order:
                record(name, "paced", wrk(systems[name], "/hit/1k" + q(pad=900, cc="max-age=3600"),
                                          args.wrk_seconds, script=pace))
                record(name, "paced64k",
                       wrk(systems[name], "/hit/64k" + q(pad=65_400, cc="max-age=3600"),
                           args.wrk_seconds, script=pace))
        print("compare: paced hits done", flush=True)

        # 6. Memory: after the hit runs, then with `fill` more cached 1 KiB entries.
        lua = os.path.join(work, "fill.lua")
        with open(lua, "w") as f:
            f.write(render("fill.lua", LIMIT=args.fill // 2))
        for name in SYSTEMS:
            results[name]["rss_hits"] = memory_kib(systems[name].proc.pid, "VmHWM")
            # A fresh process: memory freed by earlier runs but kept by the allocator would
            # otherwise absorb the new entries and hide their cost.
            systems[name].stop()
            systems[name] = System(name, os.path.join(work, "fresh"), up.port, fill_port)
            systems[name].get("/fill/warm")
            pid = systems[name].proc.pid
            before = memory_kib(pid, *HELD)
            wrk(systems[name], "/fill/", max(10, args.fill // 5000), script=lua, connections=32)
            time.sleep(1.0)
            results[name]["rss_fill"] = memory_kib(pid, "VmRSS")
            results[name]["held_fill"] = memory_kib(pid, *HELD)
            results[name]["per_entry"] = (results[name]["held_fill"] - before) * 1024 / args.fill
        print("compare: memory done", flush=True)
    finally:
        for s in systems.values():
            s.stop()
        fill.send_signal(signal.SIGTERM)
        fill.wait()
        up.stop()
        shutil.rmtree(work, ignore_errors=True)

    table = make_table(results, args)
    print(table)
    if not args.no_append:
        with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
            f.write("\n" + table)


def make_table(results, args):
    def herd_cells(key):
        out = []
        for s in SYSTEMS:
            hs = results[s][key]
            calls = sorted({h["calls"] for h in hs})
            out.append(f"calls {'/'.join(map(str, calls))}; p50 {median([h['p50'] for h in hs]):.0f}"
                       f" / p99 {median([h['p99'] for h in hs]):.0f}"
                       f" / max {median([h['max'] for h in hs]):.0f} ms;"
                       f" errors {sum(h['errors'] for h in hs)}")
        return out

    def sie_cells(s, key):
        hs = results[s][key]
        return (f"{sum(h['ok'] for h in hs)}/{100 * len(hs)};"
                f" {median([h['p50'] for h in hs]):.1f} / {median([h['p99'] for h in hs]):.1f} ms;"
                f" calls {'/'.join(str(h['calls']) for h in hs)}")

    def row(label, cells):
        return f"| {label} | " + " | ".join(cells) + " |"

    def wrk_cells(key):
        out = []
        best = max(median([w["rps"] for w in results[s][key]]) for s in SYSTEMS)
        for s in SYSTEMS:
            ws = results[s][key]
            rps = median([w["rps"] for w in ws])
            cell = (f"{rps / 1000:.1f}k req/s; p50 {median([w['p50'] for w in ws]):.2f}"
                    f" / p99 {median([w['p99'] for w in ws]):.2f} ms;"
                    f" {median([w['cpu_us'] for w in ws]):.1f} µs CPU/req")
            bad = sum(w["non2xx"] for w in ws)
            if bad:
                cell += f"; {bad} non-2xx"
            out.append(f"**{cell}**" if rps == best else cell)
        return out

    def paced_cells(kind="paced"):
        p99 = {s: median([w["p99"] for w in results[s][kind]]) for s in SYSTEMS}
        out = []
        for s in SYSTEMS:
            ws = results[s][kind]
            cell = (f"{median([w['rps'] for w in ws]) / 1000:.1f}k req/s;"
                    f" p50 {median([w['p50'] for w in ws]):.2f} / p99 {p99[s]:.2f} ms")
            out.append(f"**{cell}**" if p99[s] == min(p99.values()) else cell)
        return out

    now = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [
        f"## Side by side — `make compare`, {now}",
        "",
        f"{os.cpu_count()} vCPU ({cpu}); unherd {version()}, nginx {tool_version('nginx')}, "
        f"Varnish {tool_version('varnishd')}; configs in `bench/compare/`; upstream latency "
        f"200 ms where marked; {args.rounds} rounds in rotating order, medians shown.",
        "",
        "| workload | unherd | nginx | Varnish |",
        "|---|---|---|---|",
        row("1. herd, cold key, N = 100 (200 ms upstream)", herd_cells("herd100")),
        row("1. herd, cold key, N = 1,000 (200 ms upstream)", herd_cells("herd1000")),
        row("2. 1,000 requests over 100 keys: upstream calls; p99",
            [f"calls {'/'.join(str(h['calls']) for h in results[s]['keys'])}; "
             f"p99 {median([h['p99'] for h in results[s]['keys']]):.0f} ms; "
             f"errors {sum(h['errors'] for h in results[s]['keys'])}" for s in SYSTEMS]),
        row("3. stale entry, N = 100 (stale-while-revalidate): p99; upstream calls",
            [f"p99 {median([h['p99'] for h in results[s]['swr']]):.1f} ms; calls "
             f"{'/'.join(str(h['calls']) for h in results[s]['swr'])}" for s in SYSTEMS]),
        row("4. upstream down, stale entry, N = 100: served; p99",
            [f"{sum(h['ok'] for h in results[s]['down'])}/{100 * len(results[s]['down'])} "
             f"served; p99 {median([h['p99'] for h in results[s]['down']]):.1f} ms"
             for s in SYSTEMS]),
        row("4b. upstream 503ing (200 ms each), entry inside stale-if-error, N = 100: "
            "at the outage start; 3 s in (served; p50 / p99; upstream calls so far)",
            [f"start {sie_cells(s, 'sie_start')}; 3 s in {sie_cells(s, 'sie_3s')}"
             for s in SYSTEMS]),
        row("5. hits, 1 KiB, `wrk -t2 -c64`", wrk_cells("wrk1k")),
        row("5. hits, 64 KiB, `wrk -t2 -c64`", wrk_cells("wrk64k")),
        row("5b. hits, 1 KiB, paced (each connection waits 1 ms between requests)",
            paced_cells()),
        row("5b. hits, 64 KiB, paced (each connection waits 1 ms between requests)",
            paced_cells("paced64k")),
        row("6. peak RSS after the hit runs", [f"{results[s]['rss_hits'] / 1024:.1f} MiB"
                                              for s in SYSTEMS]),
        row(f"6. with {args.fill:,} more cached 1 KiB entries: RSS; anon+shm; per entry",
            [f"{results[s]['rss_fill'] / 1024:.1f} MiB; {results[s]['held_fill'] / 1024:.1f} MiB;"
             f" **{results[s]['per_entry']:.0f} B**" for s in SYSTEMS]),
        "",
    ]
    return "\n".join(lines)


def version():
    return subprocess.run([UNHERD, "--version"], capture_output=True, text=True).stdout.strip()


def tool_version(tool):
    out = subprocess.run([tool, "-V" if tool == "varnishd" else "-v"], capture_output=True,
                         text=True)
    m = re.search(r"(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    main()
