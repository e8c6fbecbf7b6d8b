"""Benchmark: reading a gate's prompts to fit it. The base's hidden states of a preset's gate prompts are read by a
plain left-padded pass per batch and by the pass that computes each batch's common opening once and shares its cache
(what fitting uses), side by side in one run, in alternating rounds; reports seconds, tokens computed, the speed-up
and the largest difference between the two routes' pooled features.

    python benchmarks/gate_features.py                                   # embedded SmolLM2-135M, the recipe
    python benchmarks/gate_features.py --preset selective-fast --n 512 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from orthopatch.config import make
from orthopatch.data.gate_data import gate_data
from orthopatch.models.generation import chat_prompt_ids, left_pad
from orthopatch.models.loading import load_model
from orthopatch.patches.gate import many_gate_inputs
from orthopatch.patches.gates import pool
from orthopatch.patches.hidden_pass import layer_features, shared_opening
from orthopatch.train.config import TRAIN_PRESETS, TrainConfig
from orthopatch.train.gate import candidate_layers


def read(model, rows: list[list[int]], pad_id: int, layers: list[int], batch_size: int, shared: bool
         ) -> tuple[float, int, torch.Tensor]:
    """(seconds, tokens computed, last and mean pooled features of the deepest layer, in input order)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.zeros(len(rows), 2 * model.config.hidden_size)
    tokens, start = 0, time.perf_counter()
    for begin in range(0, len(order), batch_size):
        chunk = order[begin:begin + batch_size]
        batch = [rows[i] for i in chunk]
        if shared:
            inputs = many_gate_inputs(model, batch, pad_id, layers)
            attention, hidden = inputs.attention, inputs.hidden
            opening = shared_opening(batch)
            tokens += opening + len(batch) * max(len(r) - opening for r in batch)
        else:
            ids, attention = left_pad(batch, pad_id, next(model.parameters()).device)
            hidden = layer_features(model, ids, attention, layers)
            tokens += ids.numel()
        deepest = hidden[max(layers)]
        out[chunk] = torch.cat([pool(deepest, attention, "last"), pool(deepest, attention, "mean")], 1).float()
    return time.perf_counter() - start, tokens, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--preset", default="selective", choices=[p for p in TRAIN_PRESETS
                                                                        if "gate" in TRAIN_PRESETS[p]])
    parser.add_argument("--n", type=int, default=512, help="gate training prompts read (the first n, in order)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each route reports its median")
    args = parser.parse_args()
    model, tokenizer, _ = load_model(args.model, device="auto")
    settings = make(TrainConfig, **TRAIN_PRESETS[args.preset]).gate
    data = gate_data(settings, 0, 0)
    rows = chat_prompt_ids(tokenizer, (data.train_harmful + data.train_benign)[: args.n])
    layers = candidate_layers(model, settings)
    read(model, rows[:4], tokenizer.pad_token_id, layers, 4, True)  # warm-up, not timed
    runs: dict[str, list] = {"plain": [], "shared": []}
    for _ in range(args.rounds):
        for route in runs:
            runs[route].append(read(model, rows, tokenizer.pad_token_id, layers, args.batch_size, route == "shared"))
    median = {route: sorted(r[0] for r in results)[len(results) // 2] for route, results in runs.items()}
    print(json.dumps({
        "model": args.model or "embedded", "preset": args.preset, "device": str(model.device),
        "threads": torch.get_num_threads(), "prompts": len(rows), "layers": layers, "batch_size": args.batch_size,
        "routes": {route: {"seconds": round(median[route], 3), "seconds_per_round": [round(r[0], 3) for r in results],
                           "tokens": results[0][1], "prompts_per_s": round(len(rows) / median[route], 2)}
                   for route, results in runs.items()},
        "speedup": round(median["plain"] / median["shared"], 3),
        "max_abs_difference": float((runs["plain"][0][2] - runs["shared"][0][2]).abs().max())}, indent=2))


if __name__ == "__main__":
    main()
