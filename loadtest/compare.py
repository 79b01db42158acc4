#!/usr/bin/env python3
"""Same load, three targets, one run: the mock upstream directly, nginx as a keep-alive reverse
proxy, and ditto-gateway. Prints, per scenario, req/s, latency percentiles, the latency added
over direct, RSS and every ratio to nginx.

    python3 loadtest/compare.py                      # every scenario, 3 rounds x 5 s
    python3 loadtest/compare.py --scenarios b --rounds 5 --duration 10

Scenarios (issue "Performance"): a) c=1 latency; b) c=64 throughput, small JSON; c) 1,000
concurrent SSE streams of 50 events 20 ms apart: time to first event and inter-event gap;
d) 1 MiB request bodies; e) b with 1 worker and with every CPU (scaling).

Pinning: the proxy under test (nginx or the gateway) gets CPU 0 (CPUs 0..N-1 in the scaling
run), the mock upstream and the load generators the remaining CPUs; on a 2-CPU machine that
is CPU 1. Targets run in alternation over several rounds and the median round is shown, so a
noisy moment hurts all three alike. Load: wrk (Debian package) for throughput in b and e,
ditto-loadgen (this crate) for p99.9, SSE arrival gaps and large bodies. Everything listens on
127.0.0.1 ports picked at random, is bounded in time, and is stopped at the end.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}'
SSE_BODY = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'
TARGETS = ("direct", "nginx", "gateway")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


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


def tree(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid] + [int(p) for p in out.split()]


def to_us(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1_000_000}[m.group(2)]


class Bench:
    def __init__(self, args, tmp):
        self.args, self.tmp, self.procs = args, tmp, []
        n = os.cpu_count() or 1
        self.ncpu = n
        self.gw_bin = os.path.join(ROOT, "target/release/ditto-gateway")
        self.mock_bin = os.path.join(ROOT, "target/release/mock-upstream")
        self.loadgen = os.path.join(ROOT, "target/release/ditto-loadgen")
        self.nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    def start(self, cmd, cpus, env=None):
        log = open(os.path.join(self.tmp, f"proc{len(self.procs)}.log"), "w")
        p = subprocess.Popen(["taskset", "-c", cpus] + cmd, stdout=subprocess.DEVNULL, stderr=log,
                             env=dict(os.environ, **(env or {})))
        self.procs.append(p)
        return p

    def stop(self, p):
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
        self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)

    def cpus(self, proxy_workers):
        # The upper half of the CPUs (CPU 1 on a 2-CPU machine) always carries the mock and the
        # load generators, so the scaling run can grow the proxy over the lower half.
        half = max(1, self.ncpu // 2)
        proxy = list(range(min(proxy_workers, half)))
        rest = list(range(half, self.ncpu)) or [0]
        return ",".join(map(str, proxy)), ",".join(map(str, rest))

    def start_mock(self, cpus):
        self.mock_port = free_port()
        workers = max(1, len(cpus.split(",")))
        self.mock = self.start([self.mock_bin, "--listen", f"127.0.0.1:{self.mock_port}", "--workers", str(workers)], cpus)
        wait_port(self.mock_port)

    def start_proxies(self, workers, proxy_cpus):
        tmp, mock_port = self.tmp, self.mock_port
        self.nginx_port, self.gw_port = free_port(), free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 1024; }}
    server {{
        listen 127.0.0.1:{self.nginx_port} reuseport;
        client_max_body_size 64m;
        client_body_buffer_size 2m;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
""")
        self.nginx = self.start([self.nginx_bin, "-c", conf, "-e", os.path.join(tmp, "nginx-error.log")], proxy_cpus)
        cfg = os.path.join(tmp, "gateway.json")
        with open(cfg, "w") as f:
            json.dump({
                "backends": [{"name": "mock", "base_url": f"http://127.0.0.1:{mock_port}/v1", "max_in_flight": 100000}],
                "virtual_keys": [],
                "router": {"default_backends": [{"backend": "mock", "weight": 1.0}], "rules": []},
            }, f)
        self.gw = self.start([self.gw_bin, cfg, "--listen", f"127.0.0.1:{self.gw_port}", "--workers", str(workers),
                              "--proxy-max-in-flight", "100000"], proxy_cpus,
                             # nginx runs with access_log off: the gateway's access log off too.
                             env=dict({"DITTO_ACCESS_LOG": "off"},
                                      **({"MONOIO_FORCE_LEGACY_DRIVER": "1"} if self.args.gateway_legacy else {})))
        wait_port(self.nginx_port)
        wait_port(self.gw_port)
        time.sleep(0.3)

    def url(self, target, path="/v1/chat/completions"):
        port = {"direct": self.mock_port, "nginx": self.nginx_port, "gateway": self.gw_port}[target]
        return f"http://127.0.0.1:{port}{path}"

    def rss(self):
        return {"nginx": rss_kib(tree(self.nginx.pid)), "gateway": rss_kib([self.gw.pid])}

    def wrk(self, target, conns, load_cpus):
        lua = os.path.join(self.tmp, "chat.lua")
        with open(lua, "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{CHAT_BODY}]]\n')
        d = self.args.duration
        out = subprocess.run(["taskset", "-c", load_cpus, "wrk", "--latency", "-t", str(min(conns, 2)), "-c", str(conns),
                              "-d", f"{d}s", "-s", lua, self.url(target)], capture_output=True, text=True, timeout=d + 60).stdout
        r = {"rps": float((re.search(r"Requests/sec:\s+([\d.]+)", out) or [0, 0])[1])}
        for pct in ("50", "90", "99"):
            m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
            r[f"p{pct}"] = to_us(m.group(1)) if m else float("nan")
        errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        r["errors"] = (int(errs.group(1)) if errs else 0) + (sum(map(int, sock.groups())) if sock else 0)
        return r

    def loadgen_run(self, target, load_cpus, *extra, duration=None):
        d = duration or self.args.duration
        cmd = ["taskset", "-c", load_cpus, self.loadgen, "--url", self.url(target), "--duration", str(d)] + list(extra)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=d + 120)
        try:
            j = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"loadgen failed: {out.stderr[-500:]}")
        return {"rps": j["rps"], "p50": j["p50_us"], "p90": j["p90_us"], "p99": j["p99_us"], "p999": j["p999_us"],
                "errors": j["errors"], "ttfe_p50": j["first_event_p50_us"], "ttfe_p99": j["first_event_p99_us"],
                "gap_p50": j["gap_p50_us"], "gap_p99": j["gap_p99_us"], "gap_max": j["gap_max_us"], "events": j["events"]}


def wrk_bench(doc, prefix, more_flags=None):
    """The common start of the wrk comparisons (control_overhead, obs_overhead, translate_load,
    failover): their flags (plus any `more_flags(parser)` adds), a release build unless
    --skip-build, and a Bench in a fresh temp dir."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-build", action="store_true")
    if more_flags:
        more_flags(ap)
    args = ap.parse_args()
    args.gateway_legacy = False
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "ditto-gateway", "--bin", "mock-upstream"],
                       cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix=prefix)
    return args, Bench(args, tmp), tmp


def median_round(rounds, key="rps"):
    rs = sorted(rounds, key=lambda r: r[key])
    med = dict(rs[len(rs) // 2])
    med["errors"] = sum(r["errors"] for r in rounds)
    return med


def alternate(bench, fn, peak):
    rounds = {t: [] for t in TARGETS}
    for _ in range(bench.args.rounds):
        for t in TARGETS:
            rounds[t].append(fn(t))
            if t != "direct":
                peak[t] = max(peak[t], bench.rss()[t])
    return rounds


def table(title, cols, rows):
    print(f"\n{title}")
    print("  ".join(f"{c[0]:>{c[1]}}" for c in cols))
    for r in rows:
        print("  ".join(f"{v:>{c[1]}}" for v, c in zip(r, cols)))


def fmt(x, nd=0):
    if isinstance(x, float) and x != x:
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def latency_rows(res, keys):
    rows = []
    d, n = res["direct"], res["nginx"]
    for t in TARGETS:
        r = res[t]
        added = r["p99"] - d["p99"] if t != "direct" else 0.0
        rows.append([t, fmt(r["rps"])] + [fmt(float(r[k])) for k in keys] + [fmt(float(added)), fmt(r["rps"] / n["rps"] if n["rps"] else float("nan"), 2), r["errors"]])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenarios", default="abcde")
    ap.add_argument("--sse-streams", type=int, default=1000)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--gateway-legacy", action="store_true", help="run the gateway on the epoll driver")
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install -y wrk nginx-light util-linux")
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "ditto-gateway", "--bin", "mock-upstream", "--bin", "ditto-loadgen"],
                       cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="ditto-compare-")
    bench = Bench(args, tmp)
    cpu_desc = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name:[ ]*//p' | head -1"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {bench.ncpu} CPUs ({cpu_desc}); {args.rounds} rounds x {args.duration}s per target, median round shown; "
          f"gateway driver: {'legacy (epoll)' if args.gateway_legacy else 'io_uring when available'}")
    try:
        proxy_cpus, load_cpus = bench.cpus(1)
        bench.start_mock(load_cpus)
        bench.start_proxies(1, proxy_cpus)
        idle = bench.rss()
        peak = {"nginx": 0, "gateway": 0}
        print(f"1 worker: proxy on CPU {proxy_cpus}; mock + load generator on CPU {load_cpus}")
        cols = [("target", 8), ("req/s", 8)]
        if "a" in args.scenarios:
            res = {t: median_round(rs) for t, rs in alternate(bench, lambda t: bench.loadgen_run(t, load_cpus, "--conns", "1"), peak).items()}
            table("(a) concurrency 1, small JSON (ditto-loadgen); latencies in microseconds",
                  cols + [("p50", 6), ("p99", 6), ("p99.9", 6), ("+p99", 6), ("÷nginx", 6), ("errors", 6)],
                  latency_rows(res, ["p50", "p99", "p999"]))
        if "b" in args.scenarios:
            res = {t: median_round(rs) for t, rs in alternate(bench, lambda t: bench.wrk(t, 64, load_cpus), peak).items()}
            table("(b) concurrency 64, small JSON (wrk); latencies in microseconds",
                  cols + [("p50", 6), ("p90", 6), ("p99", 6), ("+p99", 6), ("÷nginx", 6), ("errors", 6)],
                  latency_rows(res, ["p50", "p90", "p99"]))
        if "c" in args.scenarios:
            n = str(args.sse_streams)
            fn = lambda t: bench.loadgen_run(t, load_cpus, "--mode", "sse", "--conns", n, "--body", SSE_BODY,
                                             "--header", "x-mock-events: 50", "--header", "x-mock-delay-ms: 20", duration=1)
            res = {t: median_round(rs, "gap_p99") for t, rs in alternate(bench, fn, peak).items()}
            d = res["direct"]
            rows = [[t, fmt(res[t]["events"]), fmt(res[t]["ttfe_p50"]), fmt(res[t]["ttfe_p99"]), fmt(res[t]["gap_p50"]),
                     fmt(res[t]["gap_p99"]), fmt(res[t]["gap_max"]),
                     fmt(res[t]["ttfe_p99"] - d["ttfe_p99"]), fmt(res[t]["gap_p99"] - d["gap_p99"]), res[t]["errors"]] for t in TARGETS]
            table(f"(c) {n} concurrent SSE streams x 50 events, 20 ms apart; microseconds",
                  [("target", 8), ("events", 7), ("ttfe50", 7), ("ttfe99", 7), ("gap50", 6), ("gap99", 6), ("gapmax", 7),
                   ("+ttfe99", 7), ("+gap99", 7), ("errors", 6)], rows)
        if "d" in args.scenarios:
            fn = lambda t: bench.loadgen_run(t, load_cpus, "--conns", "8", "--body-size", str(1 << 20))
            res = {t: median_round(rs) for t, rs in alternate(bench, fn, peak).items()}
            table("(d) 1 MiB request bodies, concurrency 8 (ditto-loadgen); microseconds",
                  cols + [("p50", 6), ("p99", 6), ("p99.9", 6), ("+p99", 6), ("÷nginx", 6), ("errors", 6)],
                  latency_rows(res, ["p50", "p99", "p999"]))
        print(f"\nRSS KiB: gateway idle {idle['gateway']}, peak under load {peak['gateway']}; "
              f"nginx (master + workers) idle {idle['nginx']}, peak under load {peak['nginx']}")
        if "e" in args.scenarios and bench.ncpu > 2:
            bench.stop(bench.nginx)
            bench.stop(bench.gw)
            allw = bench.ncpu // 2
            proxy_cpus2, _ = bench.cpus(allw)
            bench.start_proxies(allw, proxy_cpus2)
            res = {t: median_round(rs) for t, rs in alternate(bench, lambda t: bench.wrk(t, 64 * allw, load_cpus), peak).items()}
            table(f"(e) scaling: {allw} workers on CPUs {proxy_cpus2}, concurrency {64 * allw} (wrk)",
                  cols + [("p50", 6), ("p90", 6), ("p99", 6), ("+p99", 6), ("÷nginx", 6), ("errors", 6)],
                  latency_rows(res, ["p50", "p90", "p99"]))
        elif "e" in args.scenarios:
            print("\n(e) scaling skipped: needs more than 2 CPUs (the proxy and the load must not share CPUs)")
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
