#!/usr/bin/env python3
"""What observability costs: the same passthrough gateway with the access log off
(DITTO_ACCESS_LOG=off) against the default text access log, and against --json-logs plus
--prometheus-metrics (scraped once a second during the run). Access lines go to the gateway's
stderr, which the bench writes to a file. Per-core counters are always on (GET /metrics needs
them), so "plain" already pays for them; benches/metrics.rs measures them alone.
Same mock upstream, same load (wrk, concurrency 64, small JSON), rounds alternating between the
gateways; prints req/s, latency and the ratios (target: JSON logs + metrics >= 0.97 of plain).

    python3 loadtest/obs_overhead.py                 # 3 rounds x 5 s
    python3 loadtest/obs_overhead.py --rounds 5 --duration 10 --skip-build

Pinning as in compare.py: gateways on the lower half of the CPUs, mock and wrk on the rest.
"""
import json
import os
import shutil
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import wrk_bench, free_port, median_round, wait_port  # noqa: E402
from control_overhead import wrk  # noqa: E402


def gateway(bench, cfg, workers, cpus, extra, env):
    port = free_port()
    p = bench.start([bench.gw_bin, cfg, "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
                     "--proxy-max-in-flight", "100000"] + extra, cpus, env)
    wait_port(port)
    return p, port


def scraper(port, stop):
    """Scrape /metrics/prometheus once a second, as Prometheus would."""
    while not stop.wait(1.0):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics/prometheus", timeout=5).read()
        except OSError:
            pass


def main():
    args, bench, tmp = wrk_bench(__doc__, "ditto-obs-")
    try:
        proxy_cpus, load_cpus = bench.cpus(args.workers)
        bench.start_mock(load_cpus)
        cfg = os.path.join(tmp, "plain.json")
        with open(cfg, "w") as f:
            json.dump({"backends": [{"name": "mock", "base_url": f"http://127.0.0.1:{bench.mock_port}/v1",
                                     "max_in_flight": 100000}],
                       "virtual_keys": [], "router": {"default_backends": [{"backend": "mock"}]}}, f)
        ports = {
            "plain": gateway(bench, cfg, args.workers, proxy_cpus, [], {"DITTO_ACCESS_LOG": "off"})[1],
            "text": gateway(bench, cfg, args.workers, proxy_cpus, [], {})[1],
            "obs": gateway(bench, cfg, args.workers, proxy_cpus, ["--json-logs", "--prometheus-metrics"], {})[1],
        }
        rounds = {k: [] for k in ports}
        for _ in range(args.rounds):
            for name, port in ports.items():
                stop = threading.Event()
                t = None
                if name == "obs":
                    t = threading.Thread(target=scraper, args=(port, stop), daemon=True)
                    t.start()
                rounds[name].append(wrk(bench, port, 64, load_cpus, None))
                stop.set()
                if t:
                    t.join()
        res = {k: median_round(v) for k, v in rounds.items()}
        print(f"{args.workers} worker(s) on CPU {proxy_cpus}; mock + wrk on CPU {load_cpus}; "
              f"{args.rounds} rounds x {args.duration}s, median round")
        print(f"{'gateway':>34} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>7} {'ratio':>6}")
        base = res["plain"]["rps"] or float("nan")
        for name, label in (("plain", "access log off (counters on)"),
                            ("text", "text access log (default)"),
                            ("obs", "--json-logs --prometheus-metrics")):
            r = res[name]
            print(f"{label:>34} {r['rps']:>9.0f} {r['p50']:>8.0f} {r['p99']:>8.0f} {r['errors']:>7} "
                  f"{r['rps'] / base:>6.3f}")
        print(f"cost of JSON logs + metrics: {100 * (1 - res['obs']['rps'] / base):.1f}% of throughput (target < 3%)")
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
