"""Benchmark: `orthopatch serve` under concurrent clients, side by side in one run, each server alone on the machine
while it is measured. C clients (threads) send N chat completions of benign prompts (greedy, M new tokens) to:

- orthopatch serve, the base (batching on: up to --max-batch rows decoded together);
- the same server, the gated patch (when --patch is given): its gate decides per request;
- orthopatch serve with batching off (--max-batch 1: one request at a time);
- `transformers serve --continuous-batching` on the same model directory (skip with --no-transformers).

All servers run at once (an idle one waits on an empty queue) and the load takes them in turn, for --rounds rounds,
so that the drift of a shared machine spreads over every server alike. Reports requests/s, completion tokens/s, p50
and p95 latency for each, and the ratios the serve issue names.

    python benchmarks/serve.py --patch runs/demo/selective               # embedded SmolLM2-135M, 16 clients
    python benchmarks/serve.py --model DIR --clients 2 --requests 4 --rounds 1 --max-tokens 4 --no-transformers
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from orthopatch.data.registry import load_dataset
from orthopatch.data.splits import get_split
from orthopatch.models.loading import resolve_model_path
from orthopatch.serve.process import ServerProcess


def benign_prompts(n: int) -> list[str]:
    records = get_split(load_dataset("rho_overrefusal"), "test") + get_split(load_dataset("chatterbot_prompts"),
                                                                            "validation")
    return [r.prompt for r in records[:n]]


def load(url: str, model: str, prompts: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    """``requests`` chat completions from ``clients`` threads; every one must succeed."""
    def one(i: int) -> tuple[float, int]:
        body = {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                "max_tokens": max_tokens, "temperature": 0}
        started = time.perf_counter()
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
        response.raise_for_status()
        return time.perf_counter() - started, response.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    return {"seconds": time.perf_counter() - started, "latencies": [r[0] for r in results],
            "tokens": sum(r[1] for r in results)}


def summary(rounds: list[dict]) -> dict:
    seconds = sum(r["seconds"] for r in rounds)
    latencies = sorted(latency for r in rounds for latency in r["latencies"])
    return {"requests": len(latencies), "seconds": round(seconds, 3),
            "requests_per_s": round(len(latencies) / seconds, 4),
            "completion_tokens_per_s": round(sum(r["tokens"] for r in rounds) / seconds, 2),
            "p50_latency_s": round(statistics.median(latencies), 3),
            "p95_latency_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)}


def start_servers(args) -> dict[str, tuple[ServerProcess, str]]:
    """Every compared server, each with the model id its load uses (idle servers cost nothing while another is
    measured: their engines wait on an empty queue)."""
    served = ["--served-model-name", "base"] + (["--model", args.model] if args.model else [])
    servers: dict[str, tuple[ServerProcess, str]] = {}
    patch = ["--patch", f"selective={args.patch}"] if args.patch else []
    batched = ServerProcess(*served, *patch, "--max-batch", str(args.max_batch))
    servers["orthopatch_base"] = (batched, "base")
    if args.patch:
        servers["orthopatch_gated"] = (batched, "selective")
    servers["orthopatch_unbatched"] = (ServerProcess(*served, "--max-batch", "1", "--max-queue",
                                                     str(max(64, args.clients))), "base")
    if not args.no_transformers:
        path = str(resolve_model_path(args.model)[1])
        command = [str(Path(sys.executable).with_name("transformers")), "serve", path, "--continuous-batching",
                   "--device", "cpu" if not torch.cuda.is_available() else "auto", "--host", "127.0.0.1",
                   "--port", "{port}"]
        servers["transformers_serve_cb"] = (ServerProcess(command=command), path)
    return servers


def measure(args, prompts: list[str]) -> dict:
    """Rounds that take the servers in turn (drift of a shared machine spreads over all of them)."""
    servers = start_servers(args)
    try:
        for server, model in servers.values():
            load(server.url, model, prompts, 1, 1, args.max_tokens)  # warm-up, not timed
        rounds: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (server, model) in servers.items():
                rounds[name].append(load(server.url, model, prompts, args.clients, args.requests, args.max_tokens))
        return {name: summary(each) for name, each in rounds.items()}
    finally:
        for server in {id(s): s for s, _ in servers.values()}.values():
            server.stop()


def ratio(runs: dict, a: str, b: str) -> float | None:
    return round(runs[a]["requests_per_s"] / runs[b]["requests_per_s"], 3) if a in runs and b in runs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--patch", help="a gated patch (train --preset selective), served as 'selective'")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="requests per server per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers serve")
    args = parser.parse_args()
    prompts = benign_prompts(max(args.requests, 2))
    runs = measure(args, prompts)
    print(json.dumps({
        "model": args.model or "embedded", "patch": args.patch, "clients": args.clients,
        "max_tokens": args.max_tokens, "threads": torch.get_num_threads(), "runs": runs,
        "ratios": {"base_vs_transformers_serve": ratio(runs, "orthopatch_base", "transformers_serve_cb"),
                   "base_vs_unbatched": ratio(runs, "orthopatch_base", "orthopatch_unbatched"),
                   "gated_vs_base": ratio(runs, "orthopatch_gated", "orthopatch_base")},
    }, indent=2))


if __name__ == "__main__":
    main()
