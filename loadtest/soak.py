#!/usr/bin/env python3
"""Memory soak: RSS of the gateway after 100,000 and after 1,000,000 proxied requests (small
JSON, keep-alive, concurrency 64), to show there is no growth. Bounded: stops at --total.

    python3 loadtest/soak.py [--total 1000000] [--skip-build]
"""
import argparse
import json
import os
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=1_000_000)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "ditto-gateway", "--bin", "mock-upstream", "--bin", "ditto-loadgen"],
                       cwd=ROOT, check=True)
    b = lambda n: os.path.join(ROOT, "target/release", n)
    tmp = tempfile.mkdtemp()
    mp, gp = free_port(), free_port()
    mock = subprocess.Popen(["taskset", "-c", "1", b("mock-upstream"), "--listen", f"127.0.0.1:{mp}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = os.path.join(tmp, "gw.json")
    with open(cfg, "w") as f:
        json.dump({"backends": [{"name": "mock", "base_url": f"http://127.0.0.1:{mp}/v1"}], "virtual_keys": [], "router": {}}, f)
    gw = subprocess.Popen(["taskset", "-c", "0", b("ditto-gateway"), cfg, "--listen", f"127.0.0.1:{gp}", "--workers", "1",
                           "--proxy-max-in-flight", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        print(f"idle RSS: {rss_kib(gw.pid)} KiB")
        done, marks = 0, {}
        while done < args.total:
            out = subprocess.run(["taskset", "-c", "1", b("ditto-loadgen"), "--url", f"http://127.0.0.1:{gp}/v1/chat/completions",
                                  "--conns", "64", "--duration", "2"], capture_output=True, text=True, timeout=60)
            r = json.loads(out.stdout)
            done += r["completed"]
            if r["errors"]:
                print(f"errors: {r['errors']}")
            for m in (100_000, args.total):
                if done >= m and m not in marks:
                    marks[m] = (done, rss_kib(gw.pid))
                    print(f"after {done} requests: RSS {marks[m][1]} KiB")
        a, z = marks[100_000][1], marks[args.total][1]
        print(f"growth from 100k to {args.total}: {100.0 * (z - a) / a:+.1f}%")
    finally:
        for p in (gw, mock):
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
