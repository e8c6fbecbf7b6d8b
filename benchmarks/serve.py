"""Benchmark: `orthopatch serve` on each engine against plain servers of the same model, side by side in one run,
each server alone on the machine while it is measured. C clients (threads) send N chat completions of benign prompts
(greedy, M new tokens), for each C of --clients (default: one client, then 16), to:

- orthopatch serve, torch engine: the base, and the gated patch (when --patch is given), batching up to --max-batch;
  and the same engine with batching off (--max-batch 1: one request at a time);
- orthopatch serve, llama.cpp engine (--engine llama.cpp, the base's GGUF file): the base and the gated patch;
- llama.cpp's own server (llama-server) on the same GGUF file with the same slots: the plain base;
- llama-cpp-python's server on the same GGUF file (with --llama-cpp-python PYTHON, a Python that has
  llama-cpp-python[server]);
- `transformers serve --continuous-batching` on the same model directory (skip with --no-transformers).

All servers run at once (an idle one waits on an empty queue) and the load takes them in turn, for --rounds rounds,
so that the drift of a shared machine spreads over every server alike. Reports requests/s, completion tokens/s, p50
and p95 latency for each, the ratios the serving targets name, and whether the llama.cpp engine's gated answers equal
llama.cpp's own with the adapter at its scale on flagged prompts and without it on the others.

    python benchmarks/serve.py --patch runs/demo/selective            # embedded SmolLM2-135M: 1 and 16 clients
    python benchmarks/serve.py --model DIR --gguf FILE --clients 2 --requests 4 --rounds 1 --max-tokens 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from orthopatch.data.registry import load_dataset
from orthopatch.data.splits import get_split
from orthopatch.models.embedded import embedded_gguf
from orthopatch.models.generation import chat_prompt_ids
from orthopatch.models.llamacpp import find_llama_server, slot_args
from orthopatch.models.loading import load_tokenizer, resolve_model_path
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


def llama_server_command(args, gguf: str, *extra: str) -> list[str]:
    """llama-server as the llama.cpp engine starts it: a slot per batch row, each holding a whole request."""
    return [str(find_llama_server(args.llama_server)), "--host", "127.0.0.1", "--port", "{port}", "-m", gguf,
            *slot_args(args.max_batch, args.context), *extra]


def start_servers(args, gguf: str) -> dict[str, tuple[ServerProcess, str]]:
    """Every compared server, each with the model id its load uses; if one fails to start, those started stop."""
    servers: dict[str, tuple[ServerProcess, str]] = {}
    try:
        add_servers(servers, args, gguf)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: dict[str, tuple[ServerProcess, str]]) -> None:
    for server in {id(s): s for s, _ in servers.values()}.values():
        server.stop()


def add_servers(servers: dict[str, tuple[ServerProcess, str]], args, gguf: str) -> None:
    served = ["--served-model-name", "base"] + (["--model", args.model] if args.model else [])
    patch = ["--patch", f"selective={args.patch}"] if args.patch else []
    for engine, flags in (("torch", []), ("llamacpp", ["--engine", "llama.cpp", "--gguf", gguf, "--context",
                                                       str(args.context)])):
        process = ServerProcess(*served, *patch, "--max-batch", str(args.max_batch), *flags)
        servers[f"orthopatch_{engine}_base"] = (process, "base")
        if args.patch:
            servers[f"orthopatch_{engine}_gated"] = (process, "selective")
    servers["orthopatch_torch_unbatched"] = (ServerProcess(*served, "--max-batch", "1", "--max-queue",
                                                           str(max(64, *args.clients))), "base")
    servers["llama_server_base"] = (ServerProcess(command=llama_server_command(args, gguf)), "base")
    if args.llama_cpp_python:
        command = [args.llama_cpp_python, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                   "--port", "{port}", "--n_ctx", str(args.context)]
        servers["llama_cpp_python_base"] = (ServerProcess(command=command, ready_path="/v1/models"), "base")
    if not args.no_transformers:
        path = str(resolve_model_path(args.model)[1])
        command = [str(Path(sys.executable).with_name("transformers")), "serve", path, "--continuous-batching",
                   "--device", "cpu" if not torch.cuda.is_available() else "auto", "--host", "127.0.0.1",
                   "--port", "{port}"]
        servers["transformers_serve_cb"] = (ServerProcess(command=command), path)


def measure(servers: dict, args, prompts: list[str]) -> dict:
    """Per client count, rounds that take the servers in turn (drift of a shared machine spreads over all)."""
    for server, model in servers.values():
        load(server.url, model, prompts, 1, 1, args.max_tokens)  # warm-up, not timed
    out = {}
    for clients in args.clients:
        requests = args.requests if clients > 1 else max(2, args.requests // 4)
        rounds: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (server, model) in servers.items():
                rounds[name].append(load(server.url, model, prompts, clients, requests, args.max_tokens))
        out[str(clients)] = {name: summary(each) for name, each in rounds.items()}
    return out


def same_answers_as_llama_cpp(args, gguf: str, engine: ServerProcess, prompts: list[str]) -> dict:
    """The llama.cpp engine's gated answers against llama-server's own, the patch's adapter at its scale where the
    gate flagged the prompt (as the engine reported) and at 0 elsewhere; greedy, one request at a time."""
    from orthopatch.patches.gguf import ADAPTER_FILE, export_gguf

    adapter = export_gguf(args.patch, Path(tempfile.mkdtemp()) / "adapter", model=args.model,
                          base_gguf=gguf) / ADAPTER_FILE
    own = ServerProcess(command=llama_server_command(args, gguf, "--lora", str(adapter), "--lora-init-without-apply"))
    tokenizer = load_tokenizer(resolve_model_path(args.model)[1])
    equal = flagged = 0
    try:
        for prompt in prompts:
            ours = load_answer(engine.url, "selective", prompt, args.max_tokens)
            body = {"prompt": chat_prompt_ids(tokenizer, [prompt])[0], "max_tokens": args.max_tokens,
                    "temperature": 0, "cache_prompt": False,
                    "lora": [{"id": 0, "scale": 1.0 if ours["orthopatch"]["applied"] else 0.0}]}
            theirs = httpx.post(own.url + "/v1/completions", json=body, timeout=600).json()["choices"][0]["text"]
            flagged += ours["orthopatch"]["applied"]
            equal += ours["choices"][0]["message"]["content"].strip() == theirs.rstrip("\ufffd").strip()
    finally:
        own.stop()
    return {"prompts": len(prompts), "flagged": flagged, "equal": equal}


def load_answer(url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=600).json()


def ratio(runs: dict, a: str, b: str) -> float | None:
    return round(runs[a]["requests_per_s"] / runs[b]["requests_per_s"], 3) if a in runs and b in runs else None


def ratios(results: dict) -> dict:
    named = {}
    for clients, runs in results.items():
        for name, (a, b) in {
                "llamacpp_gated_vs_llama_server": ("orthopatch_llamacpp_gated", "llama_server_base"),
                "llamacpp_gated_vs_torch_gated": ("orthopatch_llamacpp_gated", "orthopatch_torch_gated"),
                "llamacpp_gated_vs_llama_cpp_python": ("orthopatch_llamacpp_gated", "llama_cpp_python_base"),
                "llamacpp_base_vs_llama_server": ("orthopatch_llamacpp_base", "llama_server_base"),
                "torch_gated_vs_torch_base": ("orthopatch_torch_gated", "orthopatch_torch_base"),
                "torch_base_vs_unbatched": ("orthopatch_torch_base", "orthopatch_torch_unbatched"),
                "torch_base_vs_transformers_serve": ("orthopatch_torch_base", "transformers_serve_cb")}.items():
            named[f"{name}@{clients}"] = ratio(runs, a, b)
    return {k: v for k, v in named.items() if v is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--gguf", help="the base's GGUF file (default: the embedded model's)")
    parser.add_argument("--patch", help="a gated patch (train --preset selective), served as 'selective'")
    parser.add_argument("--clients", type=lambda text: [int(c) for c in text.split(",")], default=[1, 16],
                        help="comma-separated client counts (default: 1,16)")
    parser.add_argument("--requests", type=int, default=32, help="requests per server per round (a quarter for "
                                                                 "one client)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=4096, help="llama.cpp: tokens per slot")
    parser.add_argument("--llama-server", help="default: as `orthopatch serve --engine llama.cpp` finds it")
    parser.add_argument("--llama-cpp-python", metavar="PYTHON", help="a Python with llama-cpp-python[server]")
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers serve")
    args = parser.parse_args()
    gguf = args.gguf or str(embedded_gguf())
    prompts = benign_prompts(max(args.requests, 2))
    servers = start_servers(args, gguf)
    try:
        results = measure(servers, args, prompts)
        answers = same_answers_as_llama_cpp(args, gguf, servers["orthopatch_llamacpp_gated"][0], prompts) \
            if args.patch else None
    finally:
        stop_all(servers)
    print(json.dumps({"model": args.model or "embedded", "gguf": Path(gguf).name, "patch": args.patch,
                      "max_tokens": args.max_tokens, "max_batch": args.max_batch, "threads": torch.get_num_threads(),
                      "results": results, "ratios": ratios(results), "llamacpp_answers": answers}, indent=2))


if __name__ == "__main__":
    main()
