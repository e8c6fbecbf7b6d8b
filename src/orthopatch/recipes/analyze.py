"""``orthopatch analyze``: geometry of one or more patches / fine-tuned models against their base.

Writes ``geometry.json`` (per module, per-module-type means, overall means, random baselines), ``geometry.csv`` (one
row per module and k) and per-layer figures (PNG, with the CSV data behind each).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orthopatch.analysis.deltas import ModuleDelta, WeightReader, read_deltas
from orthopatch.analysis.functional import hidden_shift, interference
from orthopatch.analysis.geometry import (
    Factors,
    empirical_baselines,
    mean_or_nan,
    module_geometry,
    pairwise_overlap,
)
from orthopatch.analysis.spectra import cached_top_singular
from orthopatch.config import Placement, checked_run, num
from orthopatch.data.registry import load_dataset
from orthopatch.data.splits import get_split
from orthopatch.errors import UserError
from orthopatch.evaluate.attacks import ATTACKS, drop_too_long
from orthopatch.io import atomic_dir, write_json_atomic
from orthopatch.models.loading import fingerprint, load_model, resolve_model_path
from orthopatch.models.probes import auroc
from orthopatch.patches.gate import gate_scores, gates_of
from orthopatch.patches.manifest import apply_patch, verify_patch
from orthopatch.report.figures import geometry_figures


@dataclass
class AnalyzeConfig(Placement):
    targets: list[str] = field(default_factory=list)  # LoRA patch directories and/or fine-tuned model directories
    labels: list[str] | None = None
    base: str | None = None  # the base model (default: the embedded SmolLM2)
    output: str = "runs/analysis"
    ks: list[int] = num(factory=lambda: [32, 128], ge=1)  # W0 subspace sizes, besides k = r
    rank: int = num(8, ge=1)  # ΔW directions compared for a full fine-tuning update (LoRA: its own rank)
    functional: bool = True
    n_prompts: int = num(24, ge=1)
    baseline_samples: int = num(32, ge=1)
    allow_base_mismatch: bool = False


SCALARS = ("fro", "spectral", "relative_fro", "stable_rank", "significant_singular_values", "interference",
           "update_response")


def summarise(modules: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of every scalar measure, per module type and overall; k is named "r" when it equals the rank."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in modules:
        groups[row["module_type"]].append(row)
        groups["all"].append(row)
    out = {}
    for group, rows in groups.items():
        flat: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            for key in SCALARS:
                if key in row:
                    flat[key].append(float(row[key]))
            for k_name, measures in row["k"].items():
                for key, value in measures.items():
                    if key == "random":
                        for rkey, rvalue in value.items():
                            flat[f"k={k_name}/random_{rkey}"].append(rvalue)
                    elif not isinstance(value, list):  # the full cosine lists stay per module
                        flat[f"k={k_name}/{key}"].append(value)
        out[group] = {key: mean_or_nan(values) for key, values in sorted(flat.items())}
        out[group]["n_modules"] = len(rows)
    return out


def geometry_of(target: str, base: WeightReader, base_fp: str, cfg: AnalyzeConfig,
                baselines: dict) -> tuple[list[dict], list[ModuleDelta], str]:
    modules, deltas = [], []
    kind = "lora" if (Path(target) / "adapter_config.json").is_file() else "full"
    for delta in read_deltas(target, base):
        r = delta.delta.S.numel() if kind == "lora" else cfg.rank
        ks = sorted({r, *cfg.ks})
        base_f = cached_top_singular(base_fp, delta.name, delta.W0, max(ks))
        row = module_geometry(base_f, float(delta.W0.norm()), delta.delta, r, ks)
        for k, measures in row["k"].items():
            d_in = delta.W0.shape[1]
            key = (d_in, r, int(k))
            if key not in baselines:
                baselines[key] = empirical_baselines(d_in, r, int(k), cfg.baseline_samples)
            measures["random"]["paper_similarity"] = baselines[key]["paper_similarity"]
            measures["random"]["mso_input_empirical"] = baselines[key]["mso"]
            measures["random"]["energy_input_empirical"] = baselines[key]["projection_energy"]
        row["k"] = {("r" if int(k) == r else k): v for k, v in row["k"].items()}
        modules.append({"name": delta.name, "layer": delta.layer, "module_type": delta.module_type, **row})
        deltas.append(delta)
    if not modules:
        raise UserError("no weight updates found", path=target)
    return modules, deltas, kind


def functional_measures(target: str, kind: str, base_spec: str | None, deltas: list[ModuleDelta],
                        base_fp: str, cfg: AnalyzeConfig) -> dict[str, Any]:
    n = cfg.n_prompts
    benign = [r.prompt for r in get_split(load_dataset("rho_overrefusal"), "test", limit=n)]
    goals = get_split(load_dataset("harmbench"), "test", limit=n)
    jailbreak, skipped = drop_too_long(ATTACKS["pyrit_top_level"].build(goals, "test", 0, None), 1500)

    base_model, tokenizer, info = load_model(base_spec, device=cfg.device, dtype=cfg.dtype)
    V0 = {d.name: cached_top_singular(base_fp, d.name, d.W0, max(sorted({cfg.rank, *cfg.ks}))).V[:, :d.delta.S.numel()
                                                                                                if kind == "lora"
                                                                                                else cfg.rank]
          for d in deltas}
    interfere = interference(base_model, tokenizer, benign, deltas, V0)
    gate = None
    if kind == "lora":
        patched, _ = apply_patch(base_model, target, info.fingerprint, allow_base_mismatch=cfg.allow_base_mismatch)
        shift_b = hidden_shift(patched, patched, tokenizer, benign, base_context=patched.disable_adapter)
        shift_j = hidden_shift(patched, patched, tokenizer, [r.prompt for r in jailbreak],
                               base_context=patched.disable_adapter)
        gate = gate_separation(patched, tokenizer, benign, [r.prompt for r in jailbreak])
    else:
        tuned, _, _ = load_model(target, device=cfg.device, dtype=cfg.dtype)
        shift_b = hidden_shift(base_model, tuned, tokenizer, benign)
        shift_j = hidden_shift(base_model, tuned, tokenizer, [r.prompt for r in jailbreak])
    return {"interference": interfere, "hidden_shift": {"benign": shift_b, "jailbreak": shift_j}, "gate": gate,
            "prompts": {"benign": "rho_overrefusal/test", "benign_n": len(benign), "jailbreak_n": len(jailbreak),
                        "jailbreak": "harmbench/test x pyrit top_level templates (test split)",
                        "jailbreak_skipped_too_long": skipped}}


def gate_separation(model, tokenizer, benign: list[str], jailbreak: list[str]) -> dict[str, Any] | None:
    """A gated patch's gate on the analysis prompts: the share of each set it flags, and its ROC AUC (jailbreak
    prompts against benign ones). The geometry above is its LoRA part's."""
    runtimes = gates_of(model)
    if not runtimes:
        return None
    runtime = runtimes[0]
    b, j = (torch.tensor(gate_scores(runtime, tokenizer, prompts)) for prompts in (benign, jailbreak))
    return {"describe": runtime.gate.describe(), "layer": runtime.gate.layer, "threshold": runtime.gate.threshold,
            "auroc": auroc(j, b),
            "flagged_benign": float((b >= runtime.gate.threshold).float().mean()) if len(b) else None,
            "flagged_jailbreak": float((j >= runtime.gate.threshold).float().mean()) if len(j) else None}


@checked_run
def analyze(cfg: AnalyzeConfig, *, overwrite: bool = False, echo=print) -> tuple[Path, dict[str, Any]]:
    if not cfg.targets:
        raise UserError("give at least one patch or model directory to analyse")
    labels = cfg.labels or [Path(t).name for t in cfg.targets]
    if len(labels) != len(cfg.targets):
        raise UserError("give one label per target", field="labels")
    base_name, base_path = resolve_model_path(cfg.base)
    base_fp = fingerprint(base_path)
    reader = WeightReader(base_path)
    baselines: dict = {}
    results: dict[str, Any] = {"format": "orthopatch-geometry/1", "base": {"spec": base_name, "path": str(base_path),
                                                                             "fingerprint": base_fp},
                               "config": cfg.__dict__, "targets": {}}
    start = time.perf_counter()
    factors: dict[str, dict[str, Factors]] = {}
    for target, label in zip(cfg.targets, labels, strict=True):
        if (Path(target) / "orthopatch.json").is_file() and (Path(target) / "adapter_config.json").is_file():
            verify_patch(target, base_fp, cfg.allow_base_mismatch)
        t0 = time.perf_counter()
        modules, deltas, kind = geometry_of(target, reader, base_fp, cfg, baselines)
        echo(f"{label}: {len(modules)} modules ({kind}) in {time.perf_counter() - t0:.1f} s")
        entry: dict[str, Any] = {"path": str(target), "kind": kind, "modules": modules}
        if cfg.functional:
            func = functional_measures(target, kind, cfg.base, deltas, base_fp, cfg)
            for row in modules:
                row.update(func["interference"].get(row["name"], {}))
            entry["hidden_shift"] = func["hidden_shift"]
            if func["gate"] is not None:
                entry["gate"] = func["gate"]
            entry["functional_prompts"] = func["prompts"]
        entry["summary"] = summarise(modules)
        results["targets"][label] = entry
        factors[label] = {d.name: d.delta for d in deltas}
        del deltas
    results["overlap"] = pairwise_overlap(factors, cfg.rank)
    results["wall_seconds"] = round(time.perf_counter() - start, 2)
    with atomic_dir(cfg.output, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / "geometry.json", results)
        (tmp / "geometry.csv").write_text(to_csv(results), encoding="utf-8")
        geometry_figures(results, tmp)
    return Path(cfg.output), results


def to_csv(results: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["target", "kind", "module", "layer", "module_type", "k", "measure", "value", "random"])
    for label, entry in results["targets"].items():
        for row in entry["modules"]:
            for key in SCALARS:
                if key in row:
                    writer.writerow([label, entry["kind"], row["name"], row["layer"], row["module_type"], "", key,
                                     row[key], ""])
            for k, measures in row["k"].items():
                for key, value in measures.items():
                    if key != "random" and not isinstance(value, list):
                        random = measures["random"].get(key, "")
                        writer.writerow([label, entry["kind"], row["name"], row["layer"], row["module_type"], k,
                                         key, value, random])
    return buffer.getvalue()


def load_results(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "geometry.json").read_text(encoding="utf-8"))
