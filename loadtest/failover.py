#!/usr/bin/env python3
"""One of three backends failing, absorbed by retry + circuit breaker: the same load (wrk,
concurrency 64, small JSON chat, a fresh x-request-id per request so the weighted choice spreads
over all three) against three set-ups of one gateway config with three equally weighted mocks:

  healthy   all three mocks answer
  killed    the third mock's process is killed (connections refused)
  http500   the third backend answers every request with 500 (injected x-mock-status header)

The gateway runs with --proxy-retry --proxy-circuit-breaker (threshold 3, cooldown 30 s).
Prints req/s, p50/p99 latency, the error rate (non-2xx seen by the client) and the latency added
against the healthy run.

    python3 loadtest/failover.py                 # 3 rounds x 5 s
    python3 loadtest/failover.py --rounds 1 --duration 10

Pinning as in compare.py: the gateway on the lower half of the CPUs, mocks and wrk on the rest.
"""
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import wrk_bench, CHAT_BODY, free_port, median_round, to_us, wait_port  # noqa: E402

FLAGS = ["--proxy-retry", "--proxy-circuit-breaker", "--proxy-cb-failure-threshold", "3",
         "--proxy-cb-cooldown-secs", "30"]


def wrk(bench, port, load_cpus):
    lua = os.path.join(bench.tmp, f"failover{port}.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f'wrk.body = [[{CHAT_BODY}]]\n')
        f.write('local n = 0\nrequest = function()\n  n = n + 1\n'
                '  wrk.headers["x-request-id"] = "fo-" .. tostring(math.random(1, 2^31)) .. "-" .. n\n'
                '  return wrk.format()\nend\n')
    d = bench.args.duration
    out = subprocess.run(["taskset", "-c", load_cpus, "wrk", "--latency", "-t", "2", "-c", "64", "-d", f"{d}s",
                          "-s", lua, f"http://127.0.0.1:{port}/v1/chat/completions"],
                         capture_output=True, text=True, timeout=d + 60).stdout
    r = {"rps": float((re.search(r"Requests/sec:\s+([\d.]+)", out) or [0, 0])[1])}
    total = re.search(r"(\d+) requests in", out)
    r["total"] = int(total.group(1)) if total else 0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        r[f"p{pct}"] = to_us(m.group(1)) if m else float("nan")
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = (int(errs.group(1)) if errs else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    r["error_rate"] = r["errors"] / r["total"] if r["total"] else float("nan")
    return r


def start_mock(bench, cpus):
    port = free_port()
    p = bench.start([bench.mock_bin, "--listen", f"127.0.0.1:{port}"], cpus)
    wait_port(port)
    return p, port


def main():
    args, bench, tmp = wrk_bench(__doc__, "ditto-failover-")
    try:
        proxy_cpus, load_cpus = bench.cpus(args.workers)
        mocks = [start_mock(bench, load_cpus) for _ in range(3)]

        def config(name, third_extra):
            backends = []
            for i, (_, port) in enumerate(mocks):
                b = {"name": f"b{i}", "base_url": f"http://127.0.0.1:{port}/v1", "max_in_flight": 100000}
                if i == 2:
                    b.update(third_extra)
                backends.append(b)
            path = os.path.join(tmp, f"{name}.json")
            with open(path, "w") as f:
                json.dump({"backends": backends, "virtual_keys": [],
                           "router": {"default_backends": [{"backend": b["name"]} for b in backends]}}, f)
            return path

        def gateway(cfg):
            port = free_port()
            p = bench.start([bench.gw_bin, cfg, "--listen", f"127.0.0.1:{port}", "--workers", str(args.workers),
                             "--proxy-max-in-flight", "100000"] + FLAGS, proxy_cpus)
            wait_port(port)
            return p, port

        rounds = {"healthy": [], "http500": [], "killed": []}
        _, healthy = gateway(config("healthy", {}))
        _, failing = gateway(config("http500", {"headers": {"x-mock-status": "500"}}))
        for _ in range(args.rounds):
            rounds["healthy"].append(wrk(bench, healthy, load_cpus))
            rounds["http500"].append(wrk(bench, failing, load_cpus))
        # Kill the third mock for good: the healthy config now has one backend refusing.
        bench.stop(mocks[2][0])
        _, killed = gateway(config("killed", {}))
        for _ in range(args.rounds):
            rounds["killed"].append(wrk(bench, killed, load_cpus))
        res = {k: median_round(v) for k, v in rounds.items()}
        print(f"{args.workers} worker(s) on CPU {proxy_cpus}; mocks + wrk on CPU {load_cpus}; "
              f"{args.rounds} rounds x {args.duration}s, median round; flags: {' '.join(FLAGS)}")
        print(f"{'set-up':>34} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>7} {'error rate':>10} "
              f"{'+p50 us':>8} {'+p99 us':>8}")
        base = res["healthy"]
        for name, label in (("healthy", "3 healthy backends"), ("killed", "1 of 3 killed (refused)"),
                            ("http500", "1 of 3 answering 500")):
            r = res[name]
            print(f"{label:>34} {r['rps']:>9.0f} {r['p50']:>8.0f} {r['p99']:>8.0f} {r['errors']:>7} "
                  f"{r['error_rate'] * 100:>9.3f}% {r['p50'] - base['p50']:>8.0f} {r['p99'] - base['p99']:>8.0f}")
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
