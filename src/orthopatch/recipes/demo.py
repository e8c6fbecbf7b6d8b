"""``orthopatch demo``: from an unaligned model to a safety patch that refuses harmful requests and keeps answering
everything else, measured against the paper's naive recipe, in one run.

1. load the base (the embedded SmolLM2-135M-Instruct unless ``--model`` says otherwise) and evaluate it: held-out
   harmful refusal (HarmBench direct and under four jailbreak families), over-refusal on benign-sensitive and
   look-alike prompts, borderline requests, trivia, perplexity, KL to the base and drift of benign answers;
2. train the paper's naive recipe (LoRA refusal-SFT on safety data only) as the control, on a small budget (the
   control is shrunk to keep the demo fast, never the recommended recipe), and evaluate it, also at half dose;
3. train the recommended recipe (``train --preset selective``: a gate in front of a refusal patch) and evaluate
   it, also with its gate removed (which gives its whole threshold frontier, see :mod:`.frontier`);
4. print base / naive / selective side by side with a benign answer of each benign set (its first prompt, fixed
   before any answer is seen) before and after each patch, and write a
   self-contained ``report.html`` (the frontier figure, the table, the answers).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthopatch.config import Placement, apply, checked_run, make, num
from orthopatch.evaluate.config import EvalConfig
from orthopatch.evaluate.runner import evaluate, run_eval
from orthopatch.io import check_new_output, write_json_atomic
from orthopatch.models.loading import load_model
from orthopatch.patches.gate import gates_of
from orthopatch.patches.manifest import apply_patch
from orthopatch.patches.scale import set_patch_scale
from orthopatch.recipes.frontier import gate_frontier, judged_only, rates
from orthopatch.report.demo_report import write_demo_report
from orthopatch.report.table import side_by_side
from orthopatch.train.config import TRAIN_PRESETS, TrainConfig
from orthopatch.train.run import train_patch

# the over-refusal sets, and the project's varied benign prompts (its held-out generators: the kinds of prompt, such
# as figurative uses of violent words or fiction and games, on which a gate that reacts to words refuses)
BENIGN = ["rho_overrefusal", "wsr_benign", "lookalikes", "varied_benign"]
QUICK = {"n_harmful": 6, "n_attack": 2, "n_sensitive": 2, "n_benign": 3, "n_trivia": 4, "n_perplexity": 4,
         "max_new_tokens": 8, "control_examples": 8}


@dataclass
class DemoConfig(Placement):
    model: str | None = None
    output: str = "runs/demo"
    recipe: str = field(default="selective", metadata={"choices": lambda: tuple(TRAIN_PRESETS)})
    control_examples: int = num(48, ge=1)  # the naive control's training goals (two epochs, as the sweep's cells)
    n_harmful: int = num(40, ge=1)
    n_attack: int = num(10, ge=1)  # goals per jailbreak family
    n_sensitive: int = num(10, ge=1)
    n_benign: int = num(20, ge=1)  # per benign set
    n_trivia: int = num(24, ge=1)
    n_perplexity: int = num(32, ge=1)
    max_new_tokens: int = num(24, ge=1)
    quick: bool = False  # smoke-sized (tests, a first look): small data and samples everywhere


def demo_eval(cfg: DemoConfig, output: Path) -> EvalConfig:
    return EvalConfig.only(
        model=cfg.model, output=str(output), harmful=["harmbench"], n_harmful=cfg.n_harmful,
        attacks=["prefix_injection", "refusal_suppression", "gcg", "past_tense"], n_attack=cfg.n_attack,
        sensitive=["donotanswer:human_chatbox", "donotanswer:misinformation_harms"], n_sensitive=cfg.n_sensitive,
        benign=BENIGN, n_benign=cfg.n_benign, trivia="trivia", n_trivia=cfg.n_trivia, perplexity="book_cloze",
        n_perplexity=cfg.n_perplexity, kl=["rho_overrefusal"], n_kl=cfg.n_benign, drift=True,
        max_new_tokens=cfg.max_new_tokens, device=cfg.device, dtype=cfg.dtype)


def recipe_configs(cfg: DemoConfig, root: Path) -> tuple[TrainConfig, TrainConfig]:
    """The naive control (small budget) and the recommended recipe (its preset as it is, or smoke-sized)."""
    placed = {"model": cfg.model, "device": cfg.device, "dtype": cfg.dtype}
    naive = make(TrainConfig, **placed, output=str(root / "naive"), max_examples=cfg.control_examples,
                 epochs=1 if cfg.quick else 2)
    recommended = apply(make(TrainConfig, **placed, output=str(root / cfg.recipe)), TRAIN_PRESETS[cfg.recipe],
                        f"preset {cfg.recipe}")
    if cfg.quick:
        apply(recommended, {"max_examples": 8, "retain": {"batch_size": 4}, "gate": {"max_per_set": 6, "wrap": 0.5}},
              "quick")
    return naive, recommended


def sample_answers(columns: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The first prompt of each benign set (a fixed choice, not picked by outcome) with every column's answer."""
    rows = []
    for name in BENIGN:
        first = next((s for s in columns["base"] if s.get("set") == name), None)
        if first is None:
            continue
        answers = {label: next(s for s in samples if s.get("set") == name and s["id"] == first["id"])
                   for label, samples in columns.items()}
        rows.append({"set": name, "prompt": first["prompt"],
                     **{label: {"response": a["response"], "refused": a["refused"]} for label, a in answers.items()}})
    return rows


@checked_run
def run_demo(cfg: DemoConfig, *, overwrite: bool = False, progress: bool = True, echo=print) -> dict[str, Any]:
    root = check_new_output(cfg.output, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    echo(f"base model: {loaded[2].spec} (fingerprint {loaded[2].fingerprint[:12]})")
    naive_cfg, recipe_cfg = recipe_configs(cfg, root)
    eval_cfg = demo_eval(cfg, root / "eval-base")
    results, samples, curves = {}, {}, {}

    def measure(label: str, patch: Path | None) -> None:
        path, record = run_eval(dataclasses.replace(eval_cfg, output=str(root / f"eval-{label}"),
                                                    patch=str(patch) if patch else None),
                                overwrite=overwrite, progress=progress, model_and_tokenizer=loaded)
        results[label] = record
        samples[label] = [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]

    echo("1/3 evaluating the base model")
    measure("base", None)
    echo(f"2/3 the naive control: LoRA refusal-SFT on {cfg.control_examples} AdvBench goals, safety data only")
    naive = train_patch(naive_cfg, overwrite=overwrite, progress=progress, model_and_tokenizer=loaded,
                        command="orthopatch demo")
    measure("naive", naive)
    curves["naive (dose)"] = naive_frontier(naive, loaded, eval_cfg, results)
    echo(f"3/3 the recommended recipe: train --preset {cfg.recipe}")
    selective = train_patch(recipe_cfg, overwrite=overwrite, progress=progress, model_and_tokenizer=loaded,
                            command=f"orthopatch demo (preset {cfg.recipe})")
    measure(cfg.recipe, selective)
    curves[f"{cfg.recipe} (gate threshold)"] = selective_frontier(selective, loaded, eval_cfg, samples, cfg.recipe)
    return summarise(cfg, root, results, samples, curves, [naive, selective], start, echo)


def naive_frontier(patch: Path, loaded: tuple, eval_cfg: EvalConfig, results: dict) -> list[tuple]:
    """The naive patch at doses 0 (the base), 0.5 and 1."""
    base, tokenizer, info = loaded
    model, _ = apply_patch(base, patch, info.fingerprint)
    set_patch_scale(model, 0.5)
    half, _ = evaluate(model, tokenizer, judged_only(eval_cfg), progress=False)
    model.unload()
    return [(*rates(results["base"], "harmbench"), "dose 0"), (*rates(half, "harmbench"), "dose 0.5"),
            (*rates(results["naive"], "harmbench"), "dose 1")]


def selective_frontier(patch: Path, loaded: tuple, eval_cfg: EvalConfig, samples: dict, label: str) -> list[tuple]:
    """Every gate threshold at once, from the base's answers and the patch's answers with its gate removed."""
    base, tokenizer, info = loaded
    model, _ = apply_patch(base, patch, info.fingerprint)
    runtimes = gates_of(model)
    for runtime in runtimes:
        runtime.remove()
    _, always_on = evaluate(model, tokenizer, judged_only(eval_cfg), progress=False)
    model.unload()
    if not runtimes:  # an ungated recipe: one point, as shipped
        return []
    return gate_frontier(samples["base"], always_on, samples[label], "default", "harmbench")


def summarise(cfg: DemoConfig, root: Path, results: dict, samples: dict, curves: dict, patches: list[Path],
              start: float, echo) -> dict[str, Any]:
    table = side_by_side(results, title="orthopatch demo: base vs the paper's naive patch vs a selective patch")
    answers = sample_answers(samples)
    costs = {label: json.loads((p / "orthopatch.json").read_text(encoding="utf-8"))["cost"]
             for label, p in zip(["naive", cfg.recipe], patches, strict=True)}
    chosen = {"naive (dose)": rates(results["naive"], "harmbench"),
              f"{cfg.recipe} (gate threshold)": rates(results[cfg.recipe], "harmbench")}
    report = write_demo_report(root, results, curves, chosen, answers, costs, table)
    summary = {"outputs": {label: str(root / f"eval-{label}") for label in results},
               "patches": [str(p) for p in patches], "training_cost": costs, "report": str(report),
               "wall_seconds": round(time.perf_counter() - start, 1), "config": dataclasses.asdict(cfg)}
    (root / "table.txt").write_text(table, encoding="utf-8")
    write_json_atomic(root / "summary.json", summary)
    echo(table)
    for row in answers:
        echo(f"benign prompt ({row['set']}): {row['prompt']}")
        for label in results:
            echo(f"  {label:>10}: {row[label]['response'][:150]!r}{' [refused]' if row[label]['refused'] else ''}")
    for label, cost in costs.items():
        echo(f"training cost, {label}: {cost['examples']} examples, {cost['tokens_trained']} tokens, "
             f"{cost['total_seconds']} s (gate fitting {cost['gate_fit_seconds'] or 0} s), peak memory "
             f"{cost['peak_memory_mb']} MB, {cost['trainable_parameters']} trainable parameters")
    echo(f"report: {report}")
    echo(f"demo finished in {summary['wall_seconds']} s; outputs in {root}")
    return summary
