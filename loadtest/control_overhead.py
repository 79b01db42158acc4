#!/usr/bin/env python3
"""What the control plane costs: plain passthrough against passthrough with a virtual key whose
requests go through rpm and tpm limits, a token budget and a USD budget (key and tenant
scopes), priced from a LiteLLM price file and settled on every response's usage, with the
SQLite store on. Same mock upstream, same load (wrk, concurrency 64, small JSON), rounds
alternating between the two gateways; prints req/s, latency and the ratio (target >= 0.90).

    python3 loadtest/control_overhead.py                 # 3 rounds x 5 s
    python3 loadtest/control_overhead.py --rounds 5 --duration 10 --workers 1

Pinning as in compare.py: gateways on the lower half of the CPUs, mock and wrk on the rest.
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import wrk_bench, CHAT_BODY, free_port, median_round, to_us, wait_port  # noqa: E402

import re  # noqa: E402

PRICES = {"gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07}}


def gateway(bench, cfg, workers, cpus, extra):
    port = free_port()
    p = bench.start([bench.gw_bin, cfg, "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
                     "--proxy-max-in-flight", "100000"] + extra, cpus,
                    # Both gateways without the access log: only the control plane differs.
                    env={"DITTO_ACCESS_LOG": "off"})
    wait_port(port)
    return p, port


def wrk(bench, port, conns, load_cpus, header):
    lua = os.path.join(bench.tmp, f"chat{port}.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        if header:
            f.write(f'wrk.headers["Authorization"] = "{header}"\n')
        f.write(f'wrk.body = [[{CHAT_BODY}]]\n')
    d = bench.args.duration
    out = subprocess.run(["taskset", "-c", load_cpus, "wrk", "--latency", "-t", "2", "-c", str(conns), "-d", f"{d}s",
                          "-s", lua, f"http://127.0.0.1:{port}/v1/chat/completions"],
                         capture_output=True, text=True, timeout=d + 60).stdout
    r = {"rps": float((re.search(r"Requests/sec:\s+([\d.]+)", out) or [0, 0])[1])}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        r[f"p{pct}"] = to_us(m.group(1)) if m else float("nan")
    total = re.search(r"(\d+) requests in", out)
    r["requests"] = int(total.group(1)) if total else 0
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    r["errors"] = int(errs.group(1)) if errs else 0
    return r


def main():
    args, bench, tmp = wrk_bench(__doc__, "ditto-control-")
    try:
        proxy_cpus, load_cpus = bench.cpus(args.workers)
        bench.start_mock(load_cpus)
        backend = [{"name": "mock", "base_url": f"http://127.0.0.1:{bench.mock_port}/v1", "max_in_flight": 100000}]
        router = {"default_backends": [{"backend": "mock"}]}
        plain = os.path.join(tmp, "plain.json")
        with open(plain, "w") as f:
            json.dump({"backends": backend, "virtual_keys": [], "router": router}, f)
        keyed = os.path.join(tmp, "keyed.json")
        big = 10 ** 12
        with open(keyed, "w") as f:
            json.dump({"backends": backend, "router": router, "virtual_keys": [{
                "id": "bench", "token": "sk-bench", "tenant_id": "acme",
                "limits": {"rpm": 10 ** 9, "tpm": big},
                "budget": {"total_tokens": big, "total_usd_micros": big},
                "tenant_limits": {"rpm": 10 ** 9},
                "tenant_budget": {"total_tokens": big},
            }]}, f)
        prices = os.path.join(tmp, "prices.json")
        with open(prices, "w") as f:
            json.dump(PRICES, f)
        _, plain_port = gateway(bench, plain, args.workers, proxy_cpus, [])
        _, keyed_port = gateway(bench, keyed, args.workers, proxy_cpus,
                                ["--sqlite", os.path.join(tmp, "gw.db"), "--pricing-litellm", prices])
        rounds = {"plain": [], "keyed": []}
        for _ in range(args.rounds):
            rounds["plain"].append(wrk(bench, plain_port, 64, load_cpus, None))
            rounds["keyed"].append(wrk(bench, keyed_port, 64, load_cpus, "Bearer sk-bench"))
        res = {k: median_round(v) for k, v in rounds.items()}
        print(f"{args.workers} worker(s) on CPU {proxy_cpus}; mock + wrk on CPU {load_cpus}; "
              f"{args.rounds} rounds x {args.duration}s, median round")
        print(f"{'gateway':>28} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>7}")
        for name, label in (("plain", "plain passthrough"), ("keyed", "key + limits + budgets")):
            r = res[name]
            print(f"{label:>28} {r['rps']:>9.0f} {r['p50']:>8.0f} {r['p99']:>8.0f} {r['errors']:>7}")
        ratio = res["keyed"]["rps"] / res["plain"]["rps"] if res["plain"]["rps"] else float("nan")
        print(f"ratio keyed / plain: {ratio:.3f} (target >= 0.90)")
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
