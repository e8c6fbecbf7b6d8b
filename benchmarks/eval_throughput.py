"""Benchmark: orthopatch's evaluation generation against plain batched ``generate``, side by side in one run on the
same model, prompt sets and token budget; reports prompts/s of each, the speed-up, and how many answers and
judgements agree (harmful prompts are never printed: counts only).

    python benchmarks/eval_throughput.py                          # embedded SmolLM2-135M, the default eval's sets
    python benchmarks/eval_throughput.py --model DIR --sets benign --n 48

Routes, each generating set by set as ``orthopatch eval`` does, greedy, stopping at the end-of-turn token:
- ``plain``: batches of ``--batch-size`` prompts in the sets' order, left-padded, ``model.generate`` (what a user of
  transformers writes);
- ``sorted``: set by set, prompts sorted by length, then batched;
- ``orthopatch``: template families grouped, each batch's common opening computed once and its KV cache shared,
  ``--token-budget`` if given.
Answers can differ in rare rows: padding and batch shapes change floating-point summation order, so a near-tie
between two tokens may break the other way; the judgements are compared too.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from orthopatch.evaluate.config import EvalConfig
from orthopatch.evaluate.judging import get_judge
from orthopatch.evaluate.runner import prompt_sets
from orthopatch.models.generation import chat_prompt_ids, generate, left_pad
from orthopatch.models.loading import load_model


@torch.no_grad()
def plain(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    ids = chat_prompt_ids(tokenizer, prompts)
    out = []
    for start in range(0, len(ids), batch_size):
        input_ids, attention = left_pad(ids[start:start + batch_size], tokenizer.pad_token_id, model.device)
        generated = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, temperature=None, top_p=None, top_k=None)
        out += [tokenizer.decode(row[input_ids.shape[1]:], skip_special_tokens=True).strip() for row in generated]
    return out


def prompt_lists(which: str, n: int | None) -> list[list[str]]:
    cfg = EvalConfig() if which == "default" else EvalConfig(harmful=[], attacks=[], sensitive=[])
    sets = [[r.prompt for r in s.records] for s in prompt_sets(cfg)]
    return [s[:n] for s in sets] if n else sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--sets", choices=["default", "benign"], default="default",
                        help="the default eval's judged sets, or its benign sets only")
    parser.add_argument("--n", type=int, default=None, help="at most this many prompts per set")
    parser.add_argument("--old-batch-size", type=int, default=16, help="prompts per batch of plain and sorted")
    parser.add_argument("--batch-size", type=int, default=64, help="at most this many prompts per batch (orthopatch)")
    parser.add_argument("--token-budget", type=int, default=8192, help="and at most rows x width tokens (orthopatch)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    model, tokenizer, info = load_model(args.model, device="auto")
    sets = prompt_lists(args.sets, args.n)
    new = args.max_new_tokens
    per_set = {  # set by set, sorted by length
        "plain": lambda p: plain(model, tokenizer, p, new, args.old_batch_size),
        "sorted": lambda p: generate(model, tokenizer, p, max_new_tokens=new, batch_size=args.old_batch_size)}
    for route in per_set.values():  # warm-up, not timed
        route(sets[0][:2])
    seconds, answers = {}, {}
    for name, route in per_set.items():
        start = time.perf_counter()
        answers[name] = [text for prompts in sets for text in route(prompts)]
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()  # every set in one call, as orthopatch eval does now
    answers["orthopatch"] = generate(model, tokenizer, [p for prompts in sets for p in prompts], max_new_tokens=new,
                                     batch_size=args.batch_size, token_budget=args.token_budget, share_prefix=True)
    seconds["orthopatch"] = time.perf_counter() - start
    judge = get_judge(EvalConfig().judge)
    verdicts = {name: judge.verdicts(texts) for name, texts in answers.items()}
    n = len(answers["plain"])
    result = {"model": info.spec, "device": str(model.device), "threads": torch.get_num_threads(),
              "sets": len(sets), "n_prompts": n, "prompt_tokens": sum(map(len, chat_prompt_ids(
                  tokenizer, [p for s in sets for p in s]))),
              "max_new_tokens": new, "batch_size": args.batch_size, "token_budget": args.token_budget,
              "routes": {name: {"seconds": round(s, 2), "prompts_per_s": round(n / s, 3),
                                "identical_answers": sum(a == b for a, b in zip(answers["plain"], answers[name],
                                                                                strict=True)),
                                "identical_judgements": sum(a == b for a, b in zip(verdicts["plain"], verdicts[name],
                                                                                   strict=True))}
                         for name, s in seconds.items()},
              "speedup": round(seconds["plain"] / seconds["orthopatch"], 3),
              "speedup_vs_sorted": round(seconds["sorted"] / seconds["orthopatch"], 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
