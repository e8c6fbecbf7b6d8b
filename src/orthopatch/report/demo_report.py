"""The demo's self-contained ``report.html``: the refusal / over-refusal frontier of each recipe, the side-by-side
table, what each recipe cost to train, and benign answers before and after each patch (never harmful text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orthopatch.report.figures import frontier_figure
from orthopatch.report.html import Figure, Section, Table, cell, write_report
from orthopatch.report.table import metric_rows


def _table(results: dict[str, dict[str, Any]]) -> Table:
    labels = list(results)
    rendered = {label: {name: text for name, text, _ in metric_rows(record)} for label, record in results.items()}
    names = list(dict.fromkeys(name for rows in rendered.values() for name in rows))
    return Table(["metric", *labels], [[name, *(rendered[label].get(name, "-") for label in labels)]
                                       for name in names])


def write_demo_report(root: Path, results: dict[str, dict[str, Any]], curves: dict[str, list[tuple]],
                      chosen: dict[str, tuple[float, float]], answers: list[dict[str, Any]],
                      costs: dict[str, dict[str, Any]], table_text: str) -> Path:
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    base_point = curves.get("naive (dose)", [(None, None, "")])[0][:2]
    figure = frontier_figure({**curves, "base": [(*base_point, "base")]} if base_point[0] is not None else curves,
                             chosen, figures / "frontier",
                             "each line: one recipe over its dose or gate threshold; stars: as shipped")
    sections = [
        Section("Refusal against over-refusal", paragraphs=[
            "A safety patch should refuse harmful requests (up) without refusing benign ones (left). The naive "
            "recipe moves along its dose; the selective patch along its gate threshold, computed from the base's "
            "answers and the patch's answers without its gate (a prompt the gate passes gets the base's answer "
            "exactly). Stars mark the settings each recipe ships with, chosen on validation data."],
            figures=[Figure(figure, "harmful refusal (HarmBench, held out) against over-refusal (benign-sensitive "
                                    "and look-alike prompts)")]),
        Section("Base, naive and selective side by side", paragraphs=[
            "Rates with 95% Wilson intervals; n per set in each cell. Samples are small on a CPU: a difference of a "
            "few points is noise."], tables=[_table(results)]),
        Section("What training cost", tables=[Table(
            ["recipe", "examples", "tokens", "training s", "gate fitting s", "total s", "peak MB", "trainable"],
            [[label, c["examples"], c["tokens_trained"], c["wall_seconds"], cell(c.get("gate_fit_seconds")),
              c.get("total_seconds"), c["peak_memory_mb"], c["trainable_parameters"]]
             for label, c in costs.items()])]),
        Section("Benign answers before and after", paragraphs=[
            "The first prompt of each benign set (a fixed choice, not picked by outcome), answered greedily by each "
            "model; [refused] marks what the refusal judge counted as a refusal."],
            tables=[Table(["set", "prompt", *[label for label in results]],
                          [[row["set"], row["prompt"], *[row[label]["response"][:300]
                                                         + (" [refused]" if row[label]["refused"] else "")
                                                         for label in results]] for row in answers])]),
        Section("The table as printed", code=[table_text]),
    ]
    return write_report(root / "report.html", "orthopatch demo: a selective safety patch", sections,
                        intro=["Embedded or given base model, greedy decoding, judge strmatch-refusal; every number "
                               "comes from the evaluation directories next to this file (results.json, samples.jsonl)."])
