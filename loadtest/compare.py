#!/usr/bin/env python3
"""Same load, three targets, one run: the mock upstream directly, nginx as a keep-alive reverse
proxy, and ditto-gateway. Prints req/s, latency percentiles, RSS and the ratios to nginx.

Usage:  python3 loadtest/compare.py [--duration 5] [--rounds 3] [--workers 1] [--skip-build]

Pinning (2-core default): the proxy under test (nginx or the gateway, one worker each unless
--workers says otherwise) gets CPU 0; the mock upstream and the load generator share the rest.
Targets are measured in alternation over several rounds and the median round is reported, so a
noisy moment hurts all three alike. Everything listens on 127.0.0.1 ports picked at random and
every process is stopped at the end.
"""
import argparse
import json
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}'


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


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]
    except OSError:
        return []


def cpus():
    n = os.cpu_count() or 1
    proxy = "0"
    rest = ",".join(str(i) for i in range(1, n)) or "0"
    return proxy, rest


def parse_wrk(text):
    """wrk --latency output -> dict(rps, p50, p90, p99) with latencies in microseconds."""
    def to_us(v):
        m = re.match(r"([\d.]+)(us|ms|s)", v)
        if not m:
            return float("nan")
        x, unit = float(m.group(1)), m.group(2)
        return x * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]

    res = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    res["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M)
        res[f"p{pct}"] = to_us(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    res["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        res["errors"] += sum(int(x) for x in m.groups())
    return res


def run_wrk(url, conns, duration, lua, loadgen_cpus):
    threads = max(1, min(conns, 2))
    cmd = ["taskset", "-c", loadgen_cpus, "wrk", "--latency", "-t", str(threads), "-c", str(conns),
           "-d", f"{duration}s", "-s", lua, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    return parse_wrk(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="gateway workers and nginx worker_processes")
    ap.add_argument("--conns", default="1,64", help="comma-separated concurrency levels")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--json", help="also write the results here as JSON")
    args = ap.parse_args()

    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} not found: apt-get install -y wrk nginx-light util-linux")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "ditto-gateway", "--bin", "mock-upstream"],
                       cwd=ROOT, check=True)
    gw_bin = os.path.join(ROOT, "target/release/ditto-gateway")
    mock_bin = os.path.join(ROOT, "target/release/mock-upstream")
    proxy_cpu, rest_cpus = cpus()
    if args.workers > 1:
        proxy_cpu = ",".join(str(i) for i in range(args.workers))
    tmp = tempfile.mkdtemp(prefix="ditto-compare-")
    procs = []

    def start(cmd, cpu, **kw):
        p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{len(procs)}.log"), "w"), **kw)
        procs.append(p)
        return p

    try:
        mock_port, nginx_port, gw_port = free_port(), free_port(), free_port()
        start([mock_bin, "--listen", f"127.0.0.1:{mock_port}", "--workers", "1", "--events", "5"], rest_cpus)
        wait_port(mock_port)

        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes {args.workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{nginx_port} reuseport;
        client_max_body_size 64m;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
        nginx = start([nginx_bin, "-c", conf, "-e", os.path.join(tmp, "nginx-error.log")], proxy_cpu)
        wait_port(nginx_port)

        cfg = os.path.join(tmp, "gateway.json")
        with open(cfg, "w") as f:
            json.dump({
                "backends": [{"name": "mock", "base_url": f"http://127.0.0.1:{mock_port}/v1", "max_in_flight": 100000}],
                "virtual_keys": [],
                "router": {"default_backends": [{"backend": "mock", "weight": 1.0}], "rules": []},
            }, f)
        gw = start([gw_bin, cfg, "--listen", f"127.0.0.1:{gw_port}", "--workers", str(args.workers),
                    "--proxy-max-in-flight", "100000"], proxy_cpu)
        wait_port(gw_port)
        time.sleep(0.5)

        idle = {"nginx": rss_kib([nginx.pid] + children(nginx.pid)), "gateway": rss_kib([gw.pid])}
        lua = os.path.join(tmp, "chat.lua")
        with open(lua, "w") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = '{CHAT_BODY}'\n")
        targets = {
            "direct": f"http://127.0.0.1:{mock_port}/v1/chat/completions",
            "nginx": f"http://127.0.0.1:{nginx_port}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{gw_port}/v1/chat/completions",
        }
        results = {}
        peak = {"nginx": 0, "gateway": 0}
        for conns in [int(c) for c in args.conns.split(",")]:
            rounds = {t: [] for t in targets}
            for _ in range(args.rounds):
                for name, url in targets.items():
                    rounds[name].append(run_wrk(url, conns, args.duration, lua, rest_cpus))
                    if name == "nginx":
                        peak["nginx"] = max(peak["nginx"], rss_kib([nginx.pid] + children(nginx.pid)))
                    if name == "gateway":
                        peak["gateway"] = max(peak["gateway"], rss_kib([gw.pid]))
            for name, rs in rounds.items():
                med = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
                med["errors"] = sum(r["errors"] for r in rs)
                results[(conns, name)] = med

        cpu_desc = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name:[ ]*//p' | head -1"], capture_output=True, text=True).stdout.strip()
        print(f"\nmachine: {os.cpu_count()} CPUs ({cpu_desc}); proxy pinned to CPU {proxy_cpu}, mock + wrk on CPU {rest_cpus}; "
              f"{args.workers} worker(s); {args.rounds} rounds x {args.duration}s, median round shown\n")
        print(f"{'conns':>5} {'target':>8} {'req/s':>10} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} {'+p99 vs direct':>15} {'rps/nginx':>10} {'errors':>7}")
        for conns in [int(c) for c in args.conns.split(",")]:
            d = results[(conns, "direct")]
            n = results[(conns, "nginx")]
            for name in targets:
                r = results[(conns, name)]
                added = r["p99"] - d["p99"] if name != "direct" else 0.0
                ratio = r["rps"] / n["rps"] if n["rps"] else float("nan")
                print(f"{conns:>5} {name:>8} {r['rps']:>10.0f} {r['p50']:>8.0f} {r['p90']:>8.0f} {r['p99']:>8.0f} {added:>15.0f} {ratio:>10.2f} {r['errors']:>7}")
        print(f"\nRSS KiB: gateway idle {idle['gateway']}, under load {peak['gateway']}; "
              f"nginx (master+workers) idle {idle['nginx']}, under load {peak['nginx']}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({f"{c}/{n}": r for (c, n), r in results.items()} | {"rss": {"idle": idle, "peak": peak}}, f, indent=2)
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
