"""``orthopatch demo``: from an unaligned model to a measured LoRA safety patch, in one run.

1. load the base (the embedded SmolLM2-135M-Instruct unless ``--model`` says otherwise);
2. evaluate it: held-out harmful refusal (HarmBench direct and under jailbreak families), over-refusal, trivia,
   GSM8K, fact pairs, perplexity;
3. train a LoRA refusal patch on safety data only (AdvBench train split + project-written refusals);
4. evaluate the patched model the same way, plus KL to the base;
5. print both side by side and write everything under the output directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from orthopatch.config import EvalConfig, TrainConfig
from orthopatch.evaluate.runner import run_eval
from orthopatch.io import check_new_output, write_json_atomic
from orthopatch.models.loading import load_model
from orthopatch.report.table import side_by_side
from orthopatch.train.sft import train_patch


def run_demo(output: str = "runs/demo", *, model: str | None = None, overwrite: bool = False, quick: bool = False,
             train_overrides: dict[str, Any] | None = None, eval_overrides: dict[str, Any] | None = None,
             progress: bool = True, echo=print) -> dict[str, Any]:
    root = check_new_output(output, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    loaded = load_model(model)
    echo(f"base model: {loaded[2].spec} (fingerprint {loaded[2].fingerprint[:12]})")

    # The demo's evaluation keeps the short-prompt attack families (the long PyRIT and DAN templates take most of a
    # full `orthopatch eval` on a CPU) and a smaller GSM8K slice, so that the whole demo stays near a quarter hour.
    eval_cfg = EvalConfig(model=model, **{"attacks": ["prefix_injection", "refusal_suppression", "gcg", "past_tense"],
                                          "n_gsm8k": 8, "gsm8k_max_new_tokens": 96, **(eval_overrides or {})})
    # The naive recipe of PROBES.md (r=8 all-linear, lr 2e-4, 2 epochs, batch 8) on 160 AdvBench training goals:
    # about five minutes of training on two CPU cores, so the whole demo stays well under fifteen.
    train_cfg = TrainConfig(model=model, output=str(root / "patch"),
                            **{"max_examples": 160, **(train_overrides or {})})
    if quick:  # a smoke-sized run (tests, first look): a fraction of the data and samples
        eval_cfg = dataclasses.replace(eval_cfg, n_harmful=16, n_benign=8, n_trivia=16, n_perplexity=16, n_kl=8,
                                       n_attack=4, n_sensitive=4, n_gsm8k=4, gsm8k_max_new_tokens=48,
                                       n_fact_pairs=16, attack_max_tokens=1024)
        train_cfg = dataclasses.replace(train_cfg, max_examples=48, epochs=1)

    echo("1/3 evaluating the base model")
    _, base = run_eval(dataclasses.replace(eval_cfg, output=str(root / "eval-base")), overwrite=overwrite,
                       progress=progress, model_and_tokenizer=loaded)
    echo("2/3 training a LoRA safety patch on safety data only")
    patch = train_patch(train_cfg, overwrite=overwrite, progress=progress, model_and_tokenizer=loaded,
                        command="orthopatch demo")
    echo("3/3 evaluating the patched model")
    _, patched = run_eval(dataclasses.replace(eval_cfg, output=str(root / "eval-patched"), patch=str(patch)),
                          overwrite=overwrite, progress=progress, model_and_tokenizer=loaded)

    cost = json.loads((patch / "orthopatch.json").read_text(encoding="utf-8"))["cost"]
    table = side_by_side({"base": base, "patched": patched}, title="orthopatch demo: base vs LoRA safety patch")
    summary = {"base": str(root / "eval-base"), "patch": str(patch), "patched": str(root / "eval-patched"),
               "training_cost": cost, "wall_seconds": round(time.perf_counter() - start, 1)}
    (root / "table.txt").write_text(table, encoding="utf-8")
    write_json_atomic(root / "summary.json", summary)
    echo(table)
    echo(f"training cost: {cost['examples']} examples x {cost['epochs']} epochs, {cost['tokens_trained']} tokens, "
         f"{cost['wall_seconds']} s ({cost['tokens_per_second']} tokens/s), peak memory {cost['peak_memory_mb']} MB, "
         f"{cost['trainable_parameters']} trainable parameters")
    echo(f"demo finished in {summary['wall_seconds']} s; outputs in {Path(root)}")
    return summary
