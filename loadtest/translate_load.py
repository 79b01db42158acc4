#!/usr/bin/env python3
"""What translation costs: chat completions through an Anthropic translation backend (OpenAI
chat -> Anthropic Messages -> OpenAI chat, issue 6) against plain passthrough, on one gateway
and the same mock upstream, non-stream and stream. Same load (wrk, concurrency 64), rounds
alternating; prints req/s, latency and the ratio translated / passthrough.

    python3 loadtest/translate_load.py                 # 3 rounds x 5 s
    python3 loadtest/translate_load.py --rounds 5 --duration 10 --workers 1

Pinning as in compare.py: the gateway on the lower half of the CPUs, mock and wrk on the rest.
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import wrk_bench, free_port, median_round, wait_port  # noqa: E402
from control_overhead import wrk  # noqa: E402


def body(model, stream):
    return json.dumps({"model": model, "stream": stream, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Say hello."}]})


def main():
    args, bench, tmp = wrk_bench(__doc__, "ditto-translate-")
    try:
        proxy_cpus, load_cpus = bench.cpus(args.workers)
        bench.start_mock(load_cpus)
        mock = f"http://127.0.0.1:{bench.mock_port}"
        cfg = os.path.join(tmp, "gw.json")
        with open(cfg, "w") as f:
            json.dump({
                "backends": [
                    {"name": "oai", "base_url": f"{mock}/v1", "max_in_flight": 100000},
                    {"name": "claude", "provider": "anthropic", "max_in_flight": 100000,
                     "provider_config": {"base_url": mock, "api_key": "sk-bench"}},
                ],
                "virtual_keys": [],
                "router": {"default_backends": [{"backend": "oai"}],
                           "rules": [{"model_prefix": "claude-", "backend": "claude"}]},
            }, f)
        port = free_port()
        bench.start([bench.gw_bin, cfg, "--listen", f"127.0.0.1:{port}", "--workers", str(args.workers),
                     "--proxy-max-in-flight", "100000"], proxy_cpus)
        wait_port(port)
        cases = [("passthrough", "gpt-4o-mini", False), ("anthropic", "claude-bench", False),
                 ("passthrough SSE", "gpt-4o-mini", True), ("anthropic SSE", "claude-bench", True)]
        rounds = {c[0]: [] for c in cases}
        # wrk's Lua body is fixed per run; control_overhead.wrk posts CHAT_BODY, so swap it in.
        import control_overhead
        for _ in range(args.rounds):
            for name, model, stream in cases:
                control_overhead.CHAT_BODY = body(model, stream)
                rounds[name].append(wrk(bench, port, 64, load_cpus, None))
        res = {k: median_round(v) for k, v in rounds.items()}
        print(f"{args.workers} worker(s) on CPU {proxy_cpus}; mock + wrk on CPU {load_cpus}; "
              f"{args.rounds} rounds x {args.duration}s, median round, concurrency 64")
        print(f"{'path':>18} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>7}")
        for name, _, _ in cases:
            r = res[name]
            print(f"{name:>18} {r['rps']:>9.0f} {r['p50']:>8.0f} {r['p99']:>8.0f} {r['errors']:>7}")
        for plain, tr in (("passthrough", "anthropic"), ("passthrough SSE", "anthropic SSE")):
            p = res[plain]["rps"]
            print(f"ratio {tr} / {plain}: {res[tr]['rps'] / p if p else float('nan'):.3f}")
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
