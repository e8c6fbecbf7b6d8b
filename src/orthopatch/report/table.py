"""Side-by-side tables of evaluation results (rich renders them; plain text where there is no terminal)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render(table: Table, width: int = 140) -> str:
    """A rich table as plain text (no terminal codes): for printing, logs and files alike."""
    console = Console(width=width, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def _pct(metric: dict | None) -> str:
    if not metric:
        return "-"
    if metric["value"] is None:
        return "n=0 (none left)"
    low, high = metric["ci95"]
    return f"{100 * metric['value']:.1f}% [{100 * low:.0f}-{100 * high:.0f}] n={metric['n']}"


def metric_rows(results: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """(label, formatted value, raw value) for each metric of one results record, in a fixed order."""
    m = results["metrics"]
    data = results.get("data", {})
    rows: list[tuple[str, str, float | None]] = []

    def add(label: str, metric: dict | None, text: str | None = None) -> None:
        rows.append((label, text if text is not None else _pct(metric), metric["value"] if metric else None))

    for name, value in m.get("harmful_refusal", {}).items():
        add(f"harmful refusal, direct: {name} (higher is safer)", value)
    for family, value in m.get("jailbreak_asr", {}).items():
        skipped = data.get(f"attack:{family}", {}).get("skipped_too_long")
        add(f"jailbreak ASR: {family}{f' ({skipped} too long, skipped)' if skipped else ''} (lower is safer)", value)
    if m.get("jailbreak_asr_mean"):
        mean = m["jailbreak_asr_mean"]
        add(f"jailbreak ASR: mean over {mean['n_families']} families (lower is safer)", mean,
            "-" if mean["value"] is None else f"{100 * mean['value']:.1f}%")
    for name, value in m.get("sensitive_refusal", {}).items():
        add(f"sensitive (borderline) refusal: {name}", value)
    for name, value in m.get("over_refusal", {}).items():
        label = "over-refusal: all benign-sensitive" if name == "all" else f"over-refusal: {name}"
        add(label + " (lower is better)", value)
        for category, each in m.get("over_refusal_by_category", {}).get(name, {}).items():
            add(f"  {name} / {category}", each)
    for judge, info in m.get("judges", {}).items():
        for set_name, entry in info["sets"].items():
            add(f"judge {judge} vs primary, disagreement: {set_name}", entry["disagreement"])
    if "trivia_accuracy" in m:
        add("trivia accuracy (higher is better)", m["trivia_accuracy"])
    if "gsm8k_accuracy" in m:
        add("GSM8K exact match (higher is better)", m["gsm8k_accuracy"])
    if "fact_pair_accuracy" in m:
        add("fact pairs, likelihood-per-byte accuracy (higher is better)", m["fact_pair_accuracy"])
    if "perplexity" in m:
        rows.append(("perplexity, book_cloze (lower is better)", f"{m['perplexity']['value']:.2f}",
                     m["perplexity"]["value"]))
    if m.get("kl_to_base") and m["kl_to_base"]["value"] is not None:
        kl = m["kl_to_base"]
        rows.append(("KL to base, mean / first answer token", f"{kl['value']:.4f} / {kl['first_response_token']:.4f}",
                     kl["value"]))
    if m.get("response_drift") and m["response_drift"]["n"]:
        drift = m["response_drift"]
        rows.append(("benign answers vs base: identical / mean similarity",
                     f"{100 * drift['identical']['value']:.1f}% / {drift['mean_similarity']:.3f}",
                     drift["mean_similarity"]))
    for task, values in m.get("lm_eval", {}).items():
        for key, value in values.items():
            if key != "sample_len" and "stderr" not in key:
                rows.append((f"lm-eval {task}: {key}", f"{value:.4f}", value))
    for adapter, gate in m.get("gate", {}).items():
        for set_name, value in gate["flagged"].items():
            add(f"gate {adapter}: prompts flagged (patch on): {set_name}", value)
        rows += _gate_separation_rows(adapter, gate)
    return rows


def _gate_separation_rows(adapter: str, gate: dict[str, Any]) -> list[tuple[str, str, float]]:
    """A gate's AUROC between harmful and benign prompts, and within pairs where the run had any."""
    pairs = gate.get("pairs") or {}
    found = [(f"gate {adapter}: AUROC harmful vs benign", gate["auroc_harmful_vs_benign"]),
             (f"gate {adapter}: AUROC within pairs (request vs its twin, n={pairs.get('n')})",
              pairs.get("auroc_within_pairs"))]
    return [(label, f"{value:.3f}", value) for label, value in found if value is not None]


def side_by_side(columns: dict[str, dict[str, Any]], title: str = "orthopatch") -> str:
    """Render several results records as one table (rows = metrics, columns = runs); returns the text."""
    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    rendered = {name: dict((label, text) for label, text, _ in metric_rows(res)) for name, res in columns.items()}
    labels: list[str] = []
    for rows in rendered.values():
        labels += [label for label in rows if label not in labels]
    for name in columns:
        table.add_column(name, justify="right")
    for label in labels:
        table.add_row(label, *(rendered[name].get(label, "-") for name in columns))
    return render(table)


def geometry_table(results: dict[str, Any]) -> str:
    """Overall means per target: orthogonality with random baselines, magnitudes, functional measures."""
    table = Table(title="orthopatch analyze (means over modules; random-subspace value in brackets)")
    table.add_column("measure")
    targets = results["targets"]
    for label in targets:
        table.add_column(label, justify="right")
    summaries = {label: entry["summary"]["all"] for label, entry in targets.items()}
    keys = sorted({k for s in summaries.values() for k in s if not k.split("/")[-1].startswith("random")
                   and k != "n_modules"})

    def cell(summary: dict, key: str) -> str:
        if key not in summary:
            return "-"
        prefix, _, name = key.rpartition("/")
        random = summary.get(f"{prefix}/random_{name}") if prefix else None
        return f"{summary[key]:.4g}" + (f" [{random:.3g}]" if random is not None else "")

    for key in keys:
        table.add_row(key, *(cell(summaries[label], key) for label in targets))
    for which in ("benign", "jailbreak"):
        if all("hidden_shift" in e for e in targets.values()):
            table.add_row(f"hidden shift {which}, mean over layers (relative, last token)",
                          *(f"{sum(r['last_relative'] for r in e['hidden_shift'][which]) / len(e['hidden_shift'][which]):.4g}"
                            for e in targets.values()))
    return render(table, width=160)


def judge_validation_table(report: dict[str, Any]) -> str:
    data = report["data"]
    table = Table(title=f"judge agreement with PyRIT human refusal labels: held-out {data['split']} split, "
                        f"n={data['n_used']} ({data['n_refusal']} refusals)")
    for column in ("judge", "accuracy [95% CI]", "F1", "precision", "recall"):
        table.add_column(column, justify="left" if column == "judge" else "right")
    for name, entry in report["judges"].items():
        if "skipped" in entry:
            table.add_row(name, entry["skipped"], "", "", "")
            continue
        acc = entry["accuracy"]
        table.add_row(name, f"{acc['value']:.3f} [{acc['ci95'][0]:.2f}-{acc['ci95'][1]:.2f}]", f"{entry['f1']:.3f}",
                      f"{entry['precision']:.3f}", f"{entry['recall']:.3f}")
    return render(table)


def sweep_table(summary: dict[str, Any]) -> str:
    table = Table(title="orthopatch sweep (held-out HarmBench; over-refusal on benign-sensitive prompts)")
    columns = [("cell", "id"), ("refusal", "harmful_refusal"), ("jailbreak ASR", "jailbreak_asr_mean"),
               ("over-refusal", "over_refusal"), ("trivia", "trivia"), ("ppl", "perplexity"),
               ("train s", "train_seconds"), ("peak MB", "peak_memory_mb"), ("trainable", "trainable_parameters"),
               ("MB on disk", "size_on_disk_mb")]
    for title, _ in columns:
        table.add_column(title, justify="left" if title == "cell" else "right")
    for row in [summary["base"], *summary["rows"]]:
        cells = []
        for _, key in columns:
            value = row.get(key)
            if value is None:
                cells.append("-")
            elif key in ("harmful_refusal", "jailbreak_asr_mean", "over_refusal", "trivia"):
                cells.append(f"{100 * value:.1f}%")
            elif isinstance(value, float):
                cells.append(f"{value:.2f}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    target = summary["cost_to_target"]
    return render(table, width=160) + (
        f"target ({target['rule']}): LoRA safety-only met={target['lora_safety_only']['met']} in "
        f"{target['lora_safety_only']['train_seconds']:.0f} s; full-parameter ratio search met by "
        f"{target['full_ratio_search']['met_by'] or 'none'} after {target['full_ratio_search']['train_seconds']:.0f} "
        "s of training")
