"""``orthopatch compare-domains``: is safety special? (the paper's section 5.4 and Figure 8b)

Trains one LoRA patch per domain with the same recipe and budget (rank, targets, learning rate, epochs, number of
examples): ``safety`` (AdvBench goals with refusal targets), ``knowledge`` (chatterbot trivia QA) and ``technical``
(chatterbot tech-support, coding and computers dialogues), all from their *train* splits; then
- evaluates the base and every patched model on the general and safety metrics and on each domain's own held-out
  *test* split (teacher-forced answer NLL for every domain with answers, trivia accuracy for knowledge), so each
  patch's own-domain gain and its interference with the rest are side by side;
- runs the geometry analysis on all patches together (the paper's similarity, MSO and projection energy with random
  baselines, magnitudes, hidden-state shift on benign inputs, interference) and the overlap of every domain patch
  with the safety patch;
- writes ``domains.json``, ``domains.csv`` and ``domains.png`` (Figure 8b style) with its CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthopatch.config import Placement, checked_run, make, num
from orthopatch.data.registry import load_dataset
from orthopatch.data.splits import get_split
from orthopatch.errors import UserError
from orthopatch.evaluate.config import EvalConfig
from orthopatch.evaluate.metrics import answer_nll
from orthopatch.evaluate.runner import evaluate
from orthopatch.io import check_new_output, write_json_atomic
from orthopatch.models.loading import load_model
from orthopatch.patches.manifest import apply_patch, library_versions
from orthopatch.recipes.analyze import AnalyzeConfig, analyze
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch

DOMAINS: dict[str, list[str]] = {"safety": ["advbench"], "knowledge": ["trivia"], "technical": ["chatterbot_tech"]}
DOMAIN_TEST = {"knowledge": "trivia", "technical": "chatterbot_tech"}  # held-out answers per domain


@dataclass
class DomainsConfig(Placement):
    model: str | None = None
    output: str = "runs/domains"
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))
    max_examples: int = num(64, ge=1)  # the same budget for every domain
    epochs: int = num(2, ge=1)
    lr: float = num(2e-4, gt=0)
    lora: LoraSettings = field(default_factory=LoraSettings)
    seed: int = num(0, ge=0)
    n_harmful: int = num(32, ge=1)
    n_benign: int = num(24, ge=2)
    n_trivia: int = num(40, ge=1)
    n_perplexity: int = num(40, ge=1)
    n_domain: int = num(40, ge=1)
    n_prompts: int = num(16, ge=1)  # prompts per set for the functional geometry measures
    max_new_tokens: int = num(24, ge=1)


def _eval_cfg(cfg: DomainsConfig) -> EvalConfig:
    return EvalConfig.only(model=cfg.model, harmful=["harmbench"], n_harmful=cfg.n_harmful,
                           benign=["rho_overrefusal", "wsr_benign"], n_benign=cfg.n_benign // 2, trivia="trivia",
                           n_trivia=cfg.n_trivia, perplexity="book_cloze", n_perplexity=cfg.n_perplexity,
                           kl=["rho_overrefusal"], n_kl=cfg.n_benign // 2, max_new_tokens=cfg.max_new_tokens,
                           device=cfg.device, dtype=cfg.dtype)


def held_out(domain: str, cfg: DomainsConfig):
    return get_split(load_dataset(DOMAIN_TEST[domain]), "test", 0, cfg.n_domain)


def _measure(model, tokenizer, cfg: DomainsConfig) -> dict[str, Any]:
    results, _ = evaluate(model, tokenizer, _eval_cfg(cfg), progress=False)
    m = results["metrics"]
    row = {"harmful_refusal": m["harmful_refusal"]["harmbench"]["value"],
           "over_refusal": m["over_refusal"]["all"]["value"], "trivia": m["trivia_accuracy"]["value"],
           "perplexity": m["perplexity"]["value"], "kl_to_base": m["kl_to_base"]["value"]}
    for domain in DOMAIN_TEST:
        row[f"{domain}_answer_nll"] = answer_nll(model, tokenizer, held_out(domain, cfg))["value"]
    return row


@checked_run
def run_domains(cfg: DomainsConfig, *, overwrite: bool = False, echo=print) -> dict[str, Any]:
    unknown = [d for d in cfg.domains if d not in DOMAINS]
    if unknown or "safety" not in cfg.domains:
        raise UserError(f"domains must include 'safety' and come from {', '.join(DOMAINS)}", field="domains")
    root = check_new_output(cfg.output, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    base, tokenizer, info = loaded
    rows = {"base": _measure(base, tokenizer, cfg)}
    patches: dict[str, Path] = {}
    for domain in cfg.domains:
        echo(f"{domain}: training")
        patches[domain] = train_patch(
            make(TrainConfig, model=cfg.model, output=str(root / domain), data=DOMAINS[domain],
                 max_examples=cfg.max_examples, lora=cfg.lora, lr=cfg.lr, epochs=cfg.epochs, seed=cfg.seed,
                 device=cfg.device, dtype=cfg.dtype),
            progress=False, model_and_tokenizer=loaded, overwrite=overwrite)
        echo(f"{domain}: evaluating")
        patched, _ = apply_patch(base, patches[domain], info.fingerprint)
        rows[domain] = _measure(patched, tokenizer, cfg)
        patched.unload()
    echo("geometry of all patches")
    _, geometry = analyze(AnalyzeConfig(targets=[str(patches[d]) for d in cfg.domains], labels=list(cfg.domains),
                                        base=cfg.model, output=str(root / "geometry"), n_prompts=cfg.n_prompts,
                                        device=cfg.device, dtype=cfg.dtype),
                          overwrite=overwrite, echo=lambda *_: None)
    table = summarise(rows, geometry, cfg.domains)
    record = {"format": "orthopatch-domains/1", "config": dataclasses.asdict(cfg), "model": info.to_dict(),
              "metrics": rows, "table": table, "overlap": geometry["overlap"],
              "budget": {d: json.loads((patches[d] / "orthopatch.json").read_text(encoding="utf-8"))["cost"]
                         for d in cfg.domains},
              "libraries": library_versions(), "wall_seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(root / "domains.json", record)
    _table_and_figure(root, table)
    return record


GEOMETRY_KEYS = ("k=r/paper_similarity", "k=r/mso_input", "k=32/energy_input", "relative_fro", "interference")


def summarise(rows: dict[str, dict], geometry: dict[str, Any], domains: list[str]) -> list[dict[str, Any]]:
    """One row per domain: geometry (with random baselines), own-domain gain, and interference with the rest."""
    base = rows["base"]
    table = []
    for domain in domains:
        summary = geometry["targets"][domain]["summary"]["all"]
        shift = geometry["targets"][domain].get("hidden_shift", {}).get("benign", [])
        row: dict[str, Any] = {"domain": domain}
        for key in GEOMETRY_KEYS:
            row[key] = summary.get(key)
            prefix, _, name = key.rpartition("/")
            if prefix:
                row[f"{prefix}/random_{name}"] = summary.get(f"{prefix}/random_{name}")
        row["hidden_shift_benign"] = sum(r["last_relative"] for r in shift) / len(shift) if shift else None
        pair = geometry["overlap"].get(f"safety vs {domain}")
        row["overlap_with_safety_mso_input"] = pair["mso_input"] if pair else None
        row["overlap_random_mso_input"] = pair["random_mso_input"] if pair else None
        m = rows[domain]
        row.update({"harmful_refusal": m["harmful_refusal"], "over_refusal": m["over_refusal"],
                    "trivia": m["trivia"], "perplexity_ratio": m["perplexity"] / base["perplexity"],
                    "kl_to_base": m["kl_to_base"]})
        for other in DOMAIN_TEST:  # negative = the answers became likelier than under the base
            row[f"{other}_answer_nll_change"] = m[f"{other}_answer_nll"] - base[f"{other}_answer_nll"]
        row["own_domain_nll_change"] = row[f"{domain}_answer_nll_change"] if domain in DOMAIN_TEST else None
        table.append(row)
    return table


def _table_and_figure(root: Path, table: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(table[0])
    for name in ("domains.csv",):
        tmp = root / f"{name}.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in table:
                writer.writerow([row.get(c) for c in columns])
        tmp.replace(root / name)
    panels = [("k=r/paper_similarity", "paper's similarity (k = r)"), ("k=r/mso_input", "MSO, input side (k = r)"),
              ("k=32/energy_input", "energy in W0's top-32 (input)"), ("relative_fro", "|dW|_F / |W0|_F")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2))
    names = [row["domain"] for row in table]
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.bar(names, [row[key] or 0.0 for row in table], color=["C3" if n == "safety" else "C0" for n in names])
        prefix, _, measure = key.rpartition("/")
        random = [row.get(f"{prefix}/random_{measure}") for row in table] if prefix else []
        if random and all(r is not None for r in random):
            ax.plot(names, random, "k_", markersize=30, label="random subspace")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle("update geometry by domain (same recipe and budget)", fontsize=10)
    fig.tight_layout()
    fig.savefig(root / "domains.png.tmp", format="png", dpi=120)
    plt.close(fig)
    (root / "domains.png.tmp").replace(root / "domains.png")
