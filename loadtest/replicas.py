#!/usr/bin/env python3
"""Two gateway replicas on one Redis: rpm and budgets are enforced globally, not per replica.

Starts redis-server (free port, no persistence), the mock upstream and two ditto-gateway
processes sharing it (`--redis`), then loads both replicas at once from client threads
(keep-alive connections, half on each replica):

  1. rpm: one key with `rpm` = --rpm, hammered for --duration seconds. Admitted requests are
     counted per wall-clock minute (the window the gateway uses) and per replica; the sum over
     both replicas must stay <= the limit in every window (two independent gateways would
     admit twice the limit).
  2. budget: one key with `budget.total_tokens` = --budget, hammered until every request is
     refused (402). Tokens of the 2xx answers are summed and compared with the budget and
     with the ledger `GET /admin/budgets` reports (the same on both replicas).
  3. throughput: a key with limits and a budget far away, both replicas, --duration seconds:
     req/s per replica and total, p50/p99 latency, all Redis-metered.

    python3 loadtest/replicas.py                       # release build, 10 s, rpm 600, budget 20000
    python3 loadtest/replicas.py --profile debug --duration 5 --workers 1

Everything listens on 127.0.0.1 ports picked at random and is stopped at the end.
"""
import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = "adm-secret"
BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 5,
                   "messages": [{"role": "user", "content": "Say hello."}]})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, cmd, log):
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def admin_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"authorization": f"Bearer {ADMIN}"})
    r = c.getresponse()
    data = json.loads(r.read() or b"null")
    c.close()
    return data


def spent(port, scope):
    for row in admin_get(port, "/admin/budgets")["data"]:
        if row["scope"] == scope and row["unit"] == "tokens":
            return row
    return None


def hammer(ports, token, duration, threads, stop_when_refused=False):
    """Load every port from `threads` threads each; returns a list of
    (replica index, status, unix send time, total tokens, latency s)."""
    out = []
    lock = threading.Lock()
    end = time.time() + duration
    refused_streak = {"n": 0}

    def worker(i, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.time() < end:
            if stop_when_refused and refused_streak["n"] > 200:
                break
            t0 = time.time()
            try:
                c.request("POST", "/v1/chat/completions", body=BODY,
                          headers={"content-type": "application/json",
                                   "authorization": f"Bearer {token}"})
                r = c.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException):
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            lat = time.time() - t0
            tokens = 0
            if r.status == 200:
                refused_streak["n"] = 0
                try:
                    tokens = json.loads(data)["usage"]["total_tokens"]
                except (ValueError, KeyError, TypeError):
                    pass
            else:
                refused_streak["n"] += 1
            mine.append((i, r.status, t0, tokens, lat))
        c.close()
        with lock:
            out.extend(mine)

    ts = [threading.Thread(target=worker, args=(i, p)) for i, p in enumerate(ports) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--budget", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=8, help="client threads per replica")
    ap.add_argument("--workers", type=int, default=1, help="cores per replica")
    ap.add_argument("--profile", default="release", choices=("release", "debug"))
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server not found: apt-get install -y redis-server")
    if not args.skip_build:
        cmd = ["cargo", "build", "--bin", "ditto-gateway", "--bin", "mock-upstream"]
        if args.profile == "release":
            cmd.append("--release")
        subprocess.run(cmd, cwd=ROOT, check=True)
    bins = os.path.join(ROOT, "target", args.profile)
    tmp = tempfile.mkdtemp(prefix="ditto-replicas-")
    procs = Procs()
    log = open(os.path.join(tmp, "log.txt"), "w")
    try:
        rport = free_port()
        procs.start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", tmp], log)
        wait_port(rport)
        mport = free_port()
        procs.start([os.path.join(bins, "mock-upstream"), "--listen", f"127.0.0.1:{mport}", "--workers", "2"], log)
        wait_port(mport)
        cfg = os.path.join(tmp, "gw.json")
        with open(cfg, "w") as f:
            json.dump({
                "backends": [{"name": "mock", "base_url": f"http://127.0.0.1:{mport}/v1", "max_in_flight": 100000}],
                "router": {"default_backends": [{"backend": "mock"}]},
                "virtual_keys": [
                    {"id": "rate", "token": "sk-rate", "limits": {"rpm": args.rpm}},
                    {"id": "spend", "token": "sk-spend", "budget": {"total_tokens": args.budget}},
                    {"id": "bulk", "token": "sk-bulk", "limits": {"rpm": 10 ** 9, "tpm": 10 ** 12},
                     "budget": {"total_tokens": 10 ** 12}},
                ],
            }, f)
        ports = []
        for _ in range(2):
            p = free_port()
            procs.start([os.path.join(bins, "ditto-gateway"), cfg, "--listen", f"127.0.0.1:{p}",
                         "--workers", str(args.workers), "--redis", f"redis://127.0.0.1:{rport}",
                         "--admin-token", ADMIN, "--store-flush-ms", "100",
                         "--proxy-max-in-flight", "100000"], log)
            wait_port(p)
            ports.append(p)
        print(f"2 replicas x {args.workers} worker(s), {args.profile} build, one redis-server; "
              f"{args.threads} client threads per replica")

        # 1. rpm
        res = hammer(ports, "sk-rate", args.duration, args.threads)
        windows = {}
        for i, status, t0, _, _ in res:
            if status == 200:
                w = windows.setdefault(int(t0 // 60), [0, 0])
                w[i] += 1
        refused = sum(1 for r in res if r[1] == 429)
        print(f"\n[rpm] limit {args.rpm}/min, {len(res)} requests in {args.duration}s, {refused} refused (429)")
        time.sleep(0.5)
        worst = 0
        for w, (a, b) in sorted(windows.items()):
            # The gateway's own count for the window: the shared meter in Redis.
            # (spent + leased: cores keep rpm leases until the window ends, so this is the
            # most the window could admit, >= what it did.)
            got = subprocess.run(["redis-cli", "-p", str(rport), "HMGET", f"ditto:meter:rpm:{w}:key:rate",
                                  "spent", "out"], capture_output=True, text=True).stdout.split()
            meter = sum(int(x) for x in got if x.isdigit())
            worst = max(worst, meter)
            print(f"  minute {w}: granted by Redis {meter}; seen by the client (by send time) "
                  f"{a + b} (replica A {a}, replica B {b})")
        print(f"  most granted in one window: {worst} of {args.rpm} -> "
              f"{'OK' if worst <= args.rpm else 'EXCEEDED'}; all windows together: "
              f"{sum(a + b for a, b in windows.values())} of {args.rpm * len(windows)}")

        # 2. budget
        res = hammer(ports, "sk-spend", max(args.duration * 3, 30), args.threads, stop_when_refused=True)
        ok = [r for r in res if r[1] == 200]
        used = sum(r[3] for r in ok)
        time.sleep(0.5)
        rows = [spent(p, "key:spend") for p in ports]
        print(f"\n[budget] {args.budget} tokens; {len(ok)} admitted ({sum(1 for r in ok if r[0] == 0)} on A, "
              f"{sum(1 for r in ok if r[0] == 1)} on B), {sum(1 for r in res if r[1] == 402)} refused (402)")
        print(f"  tokens used by 2xx answers: {used}; ledger on A: {rows[0]['spent']}, on B: {rows[1]['spent']}")
        print(f"  overshoot: {max(0, used - args.budget)} tokens -> "
              f"{'OK' if used <= args.budget else 'EXCEEDED'}; left unused: {args.budget - used}")

        # 3. throughput
        res = hammer(ports, "sk-bulk", args.duration, args.threads)
        ok = [r for r in res if r[1] == 200]
        lat = [r[4] * 1e6 for r in ok]
        print(f"\n[throughput] key with rpm/tpm/budget on Redis, {args.duration}s: "
              f"{len(ok) / args.duration:.0f} req/s total "
              f"(A {sum(1 for r in ok if r[0] == 0) / args.duration:.0f}, "
              f"B {sum(1 for r in ok if r[0] == 1) / args.duration:.0f}), "
              f"p50 {pct(lat, 50):.0f} us, p99 {pct(lat, 99):.0f} us, {len(res) - len(ok)} errors")
    finally:
        procs.stop_all()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
