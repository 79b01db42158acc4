#!/usr/bin/env python3
"""What observability costs: the same passthrough gateway with the access log off
(DITTO_ACCESS_LOG=off) against the default text access log, and against --json-logs plus
--prometheus-metrics (scraped once a second during the run). Access lines go to the gateway's
stderr, which the bench writes to a file. Per-core counters are always on (GET /metrics needs
them), so "plain" already pays for them; benches/metrics.rs measures them alone.
Same mock upstream, same load (wrk, concurrency 64, small JSON), rounds alternating between the
gateways; prints req/s, latency, the gateway's CPU time per request (user + system, from
/proc, over each round) and the ratios (target: JSON logs + metrics cost < 3%).

On a shared 2-CPU VM, req/s of one round can swing by 10% either way, more than the cost
being measured; CPU time per request swings less, and the median over many alternating
rounds is the figure to quote. `--callgrind N` adds a count that does not swing at all: the
gateway's user-space instructions per request under valgrind (N and 5N sequential requests
per mode, the difference divided by 4N, so start-up cancels out). It leaves out kernel time
(the TCP work that is most of a request's cost), so its ratio overstates the cost in time.

    python3 loadtest/obs_overhead.py                 # 3 rounds x 5 s
    python3 loadtest/obs_overhead.py --rounds 9 --duration 5 --skip-build --callgrind 1000

Pinning as in compare.py: gateways on the lower half of the CPUs, mock and wrk on the rest.
"""
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import wrk_bench, free_port, median_round, wait_port  # noqa: E402
from control_overhead import CHAT_BODY, wrk  # noqa: E402


def gateway(bench, cfg, workers, cpus, extra, env):
    port = free_port()
    p = bench.start([bench.gw_bin, cfg, "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
                     "--proxy-max-in-flight", "100000"] + extra, cpus, env)
    wait_port(port)
    return p, port


def cpu_ticks(pid):
    """(utime, stime) of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def instructions_per_request(bench, cfg, extra, env, n):
    """User-space instructions per request (callgrind), start-up cancelled out."""
    counts = []
    for total in (n, 5 * n):
        port = free_port()
        out = os.path.join(bench.tmp, f"callgrind.{port}.out")
        p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", bench.gw_bin, cfg,
                              "--listen", f"127.0.0.1:{port}", "--workers", "1"] + extra,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             # valgrind does not know io_uring: the epoll driver, in every mode alike.
                             env=dict(os.environ, MONOIO_FORCE_LEGACY_DRIVER="1", **env))
        wait_port(port, timeout=60)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(total):
            c.request("POST", "/v1/chat/completions", CHAT_BODY.encode(), {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        c.close()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        with open(out) as f:
            counts.append(int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M).group(1)))
    return (counts[1] - counts[0]) / (4 * n)


def scraper(port, stop):
    """Scrape /metrics/prometheus once a second, as Prometheus would."""
    while not stop.wait(1.0):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics/prometheus", timeout=5).read()
        except OSError:
            pass


def main():
    args, bench, tmp = wrk_bench(__doc__, "ditto-obs-", lambda ap: ap.add_argument(
        "--callgrind", type=int, default=0, metavar="N",
        help="also count instructions per request under valgrind (N and 5N requests per mode)"))
    try:
        proxy_cpus, load_cpus = bench.cpus(args.workers)
        bench.start_mock(load_cpus)
        cfg = os.path.join(tmp, "plain.json")
        with open(cfg, "w") as f:
            json.dump({"backends": [{"name": "mock", "base_url": f"http://127.0.0.1:{bench.mock_port}/v1",
                                     "max_in_flight": 100000}],
                       "virtual_keys": [], "router": {"default_backends": [{"backend": "mock"}]}}, f)
        modes = {
            "plain": ([], {"DITTO_ACCESS_LOG": "off"}),
            "text": ([], {}),
            "obs": (["--json-logs", "--prometheus-metrics"], {}),
        }
        procs = {k: gateway(bench, cfg, args.workers, proxy_cpus, x, e) for k, (x, e) in modes.items()}
        rounds = {k: [] for k in modes}
        order = list(procs)
        rng = random.Random(7)
        for _ in range(args.rounds):
            # A fresh order each round: a slot in the round (first after an idle pause, say)
            # must not favour one gateway every time.
            rng.shuffle(order)
            for name in order:
                p, port = procs[name]
                stop = threading.Event()
                t = None
                if name == "obs":
                    t = threading.Thread(target=scraper, args=(port, stop), daemon=True)
                    t.start()
                u0, s0 = cpu_ticks(p.pid)
                r = wrk(bench, port, 64, load_cpus, None)
                u1, s1 = cpu_ticks(p.pid)
                per_req = 1e6 / os.sysconf("SC_CLK_TCK") / max(r["requests"], 1)
                r["cpu_us"] = (u1 - u0 + s1 - s0) * per_req
                r["user_us"] = (u1 - u0) * per_req
                rounds[name].append(r)
                stop.set()
                if t:
                    t.join()
        res = {k: median_round(v) for k, v in rounds.items()}
        cpu = {k: statistics.median(r["cpu_us"] for r in v) for k, v in rounds.items()}
        user = {k: statistics.median(r["user_us"] for r in v) for k, v in rounds.items()}
        print(f"{args.workers} worker(s) on CPU {proxy_cpus}; mock + wrk on CPU {load_cpus}; "
              f"{args.rounds} rounds x {args.duration}s, median round")
        print(f"{'gateway':>34} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>7} {'ratio':>6} "
              f"{'CPU us/req':>10} {'ratio':>6} {'user us':>8}")
        base = res["plain"]["rps"] or float("nan")
        labels = (("plain", "access log off (counters on)"),
                  ("text", "text access log (default)"),
                  ("obs", "--json-logs --prometheus-metrics"))
        for name, label in labels:
            r = res[name]
            print(f"{label:>34} {r['rps']:>9.0f} {r['p50']:>8.0f} {r['p99']:>8.0f} {r['errors']:>7} "
                  f"{r['rps'] / base:>6.3f} {cpu[name]:>10.2f} {cpu[name] / cpu['plain']:>6.3f} "
                  f"{user[name]:>8.2f}")
        print(f"cost of JSON logs + metrics: {100 * (1 - res['obs']['rps'] / base):.1f}% of throughput, "
              f"{100 * (cpu['obs'] / cpu['plain'] - 1):.1f}% more CPU per request (target < 3%)")
        if args.callgrind and shutil.which("valgrind"):
            ir = {k: instructions_per_request(bench, cfg, x, e, args.callgrind) for k, (x, e) in modes.items()}
            print(f"user-space instructions per request (callgrind, {args.callgrind} and {5 * args.callgrind} "
                  "sequential requests):")
            for name, label in labels:
                print(f"{label:>34} {ir[name]:>9.0f} {ir[name] / ir['plain']:>6.3f}")
            # The extra instructions are user-space work; as a share of all the CPU time a
            # request takes (user + kernel), assuming the same speed per instruction.
            share = user["plain"] / cpu["plain"]
            print(f"user-space share of the CPU time per request: {share:.2f}; so JSON logs + metrics "
                  f"~{100 * (ir['obs'] / ir['plain'] - 1) * share:.1f}% of the CPU time per request")
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
