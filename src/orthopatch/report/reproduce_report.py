"""The reproduction report: claims first, then each experiment's table and figures, then provenance."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from orthopatch.report.html import Figure, Section, Table, cell, write_report
from orthopatch.report.selective_report import report_section


def _figures(paths: list[tuple[Path, str]]) -> list[Figure]:
    return [Figure(path, caption) for path, caption in paths if path.is_file()]


def _sweep_section(root: Path, sweep: dict[str, Any]) -> Section:
    columns = ["id", "harmful_refusal", "jailbreak_asr_mean", "over_refusal", "trivia", "perplexity",
               "train_seconds", "tokens_trained", "peak_memory_mb", "trainable_parameters", "size_on_disk_mb"]
    percent = {"harmful_refusal", "jailbreak_asr_mean", "over_refusal", "trivia"}
    target = sweep["cost_to_target"]
    return Section(
        "Baselines: LoRA vs full-parameter SFT, data mixing, DPO, ranks",
        paragraphs=[f"Cost to reach the target ({target['rule']}): safety-only LoRA met="
                    f"{target['lora_safety_only']['met']} in {target['lora_safety_only']['train_seconds']:.0f} s of "
                    f"training; the full-parameter ratio search ({len(target['full_ratio_search']['cells'])} runs) "
                    f"was met by {target['full_ratio_search']['met_by'] or 'none'} after "
                    f"{target['full_ratio_search']['train_seconds']:.0f} s."],
        tables=[Table(columns, [[cell(row.get(c), c in percent) for c in columns]
                                for row in [sweep["base"], *sweep["rows"]]],
                      "held-out HarmBench refusal, jailbreak ASR, over-refusal, trivia, perplexity; cost")],
        figures=_figures([(root / "sweep" / "figures" / "tradeoff.png", "safety-utility trade-off (Figure 1a)"),
                          (root / "sweep" / "figures" / "ratio.png", "general-data share (Figure 3)"),
                          (root / "sweep" / "figures" / "rank.png", "LoRA rank")]))


def _geometry_section(root: Path, geometry: dict[str, Any]) -> Section:
    keys = ["k=r/paper_similarity", "k=r/random_paper_similarity", "k=r/mso_input", "k=r/random_mso_input",
            "k=32/energy_input", "k=32/random_energy_input", "relative_fro", "significant_singular_values",
            "interference"]
    rows = [[key, *(cell(entry["summary"]["all"].get(key)) for entry in geometry["targets"].values())]
            for key in keys]
    return Section(
        "Geometry: is the update orthogonal to W0's principal subspace?",
        paragraphs=["Means over modules; the random values are what a random subspace of the same size gives."],
        tables=[Table(["measure", *geometry["targets"]], rows)],
        figures=_figures([(root / "geometry" / f"geometry_{name}.png", f"per layer: {name.replace('_', ' ')}")
                          for name in ("orthogonality", "energy", "magnitude", "interference", "hidden_shift")]))


def _redteam_section(root: Path, redteam: dict[str, Any]) -> Section:
    rows = [[mode, r["round"], cell(r.get("asr_this_round"), True), cell(r.get("asr_earlier_rounds"), True),
             cell(r.get("asr_all"), True), cell(r.get("over_refusal"), True), cell(r.get("trivia"), True),
             cell(r.get("perplexity"))] for mode, rs in redteam["modes"].items() for r in rs]
    return Section(
        "Lifelong red-teaming",
        paragraphs=[f"Rounds' attack families: {redteam['schedule']}. ASR on held-out HarmBench goals."],
        tables=[Table(["mode", "round", "ASR this round", "ASR earlier rounds", "ASR all rounds",
                       "over-refusal", "trivia", "perplexity"], rows)],
        figures=_figures([(root / "redteam" / "rounds.png", "metrics across rounds")]))


def _domains_section(root: Path, domains: dict[str, Any]) -> Section:
    columns = list(domains["table"][0])
    return Section(
        "Is safety special? Domain patches (section 5.4)",
        tables=[Table(columns, [[cell(row.get(c)) for c in columns] for row in domains["table"]])],
        figures=_figures([(root / "domains" / "domains.png", "update geometry by domain (Figure 8b style)")]))


def _judges_section(root: Path, judges: dict[str, Any]) -> Section:
    rows = [[name, cell(e["accuracy"]["value"]), cell(e["f1"]), cell(e["precision"]), cell(e["recall"]),
             e["judge"]["version"]] for name, e in judges["judges"].items() if "accuracy" in e]
    return Section(
        "Judges and their agreement with human labels",
        paragraphs=[f"PyRIT's human-labelled refusal rows, held-out split, n={judges['data']['n_used']}. The "
                    "safety numbers above use strmatch-refusal."],
        tables=[Table(["judge", "accuracy", "F1", "precision", "recall", "version"], rows)])


def _provenance(root: Path, cfg, done: dict[str, Any], command: str | None) -> Section:
    sweep = done.get("sweep")
    provenance = [f"command: {command or '-'}", "config: " + json.dumps(dataclasses.asdict(cfg), indent=1)]
    if sweep:
        provenance.append("model: " + json.dumps(sweep["model"]))
        provenance.append("libraries: " + json.dumps(sweep["libraries"], indent=1))
        first = next(iter(sorted((root / "sweep" / "cells").glob("*/results.json"))), None)
        if first is not None:
            results = json.loads(first.read_text(encoding="utf-8"))
            provenance.append("evaluation data (name, package, records sha256): " + json.dumps(
                {k: [v.get("package"), v.get("used_sha256") or v.get("records_sha256")]
                 for k, v in results["data"].items() if isinstance(v, dict)}, indent=1))
            provenance.append("judge: " + json.dumps(results["judge"]))
    return Section("Provenance", code=provenance)


SECTIONS = (("sweep", _sweep_section), ("geometry", _geometry_section), ("selective", None),
            ("redteam", _redteam_section), ("domains", _domains_section), ("judges", _judges_section))


def build_report(root: Path, cfg, done: dict[str, Any], claims: list[dict[str, Any]], command: str | None) -> Path:
    sections = [Section("Claims", paragraphs=[
        "Each of the paper's claims, the rule used to test it on this model, the numbers, and the verdict. Rules use "
        "test splits never used for selection; a claim whose experiment was not run is 'not measured'."],
        tables=[Table(["claim", "rule", "measured", "verdict"],
                      [[c["claim"], c["rule"], c["value"], c["verdict"]] for c in claims])])]
    for step, section in SECTIONS:
        if done.get(step):
            sections.append(report_section(root / "selective", done[step]) if step == "selective"
                            else section(root, done[step]))
    sections.append(_provenance(root, cfg, done, command))
    return write_report(root / "report.html", "orthopatch: reproducing 'Decoupling Safety into Orthogonal Subspace'",
                        sections, intro=["Every number below was measured by orthopatch on the model named under "
                                         "Provenance, with the commands and configs shown there."])
