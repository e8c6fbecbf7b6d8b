"""The selective study's outputs: ``selective.csv`` and ``selective.md`` (one row per method family, the targets
met point by point, training cost), and the frontier figures (validation and test) with their CSVs; and the
section the reproduction report shows."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from orthopatch.io import write_text_atomic
from orthopatch.report.figures import frontier_figure
from orthopatch.report.html import Figure, Section, Table, cell
from orthopatch.train.gate_selection import error_table, kind_table

COLUMNS = [("family", "family"), ("setting", "setting"), ("HarmBench refusal", "harmful_refusal"),
           ("over-refusal (rho+wsr)", "over_refusal"), ("mean jailbreak ASR", "jailbreak_asr_mean"),
           ("look-alike over-refusal", "lookalike_over_refusal"), ("benign twins refused", "twins_over_refusal"),
           ("trivia", "trivia"), ("perplexity", "perplexity"),
           ("benign answers as the base's", "benign_identical_to_base"), ("train + gate s", "train_seconds")]
PERCENT = {"harmful_refusal", "over_refusal", "jailbreak_asr_mean", "lookalike_over_refusal", "twins_over_refusal",
           "trivia", "benign_identical_to_base"}


def rows_of(record: dict[str, Any]) -> list[list[str]]:
    out = []
    for family, row in record["test"].items():
        met = row.get("targets")
        cells = [family if key == "family" else cell(row.get(key), key in PERCENT) for _, key in COLUMNS]
        cells.append("-" if met is None else f"{sum(met.values())}/{len(met)}: " +
                     ", ".join(name for name, ok in met.items() if ok))
        out.append(cells)
    return out


def header() -> list[str]:
    return [title for title, _ in COLUMNS] + ["targets met (test)"]


def validation_lines(selection: dict[str, Any]) -> list[str]:
    """What chose: each family's validation point as shipped, and its margin."""
    lines = [f"Chosen on validation: **{selection['chosen']}** ({selection['rule']}).", "",
             "| family | validation harmful refusal | validation over-refusal | margin |", "|---|---|---|---|"]
    for family, entry in selection["families"].items():
        p = entry["shipped"]
        lines.append(f"| {family} | {cell(p['harmful_refusal'], True)} | {cell(p['over_refusal'], True)} | "
                     f"{p['harmful_refusal'] - p['over_refusal']:.3f} |")
    return lines + [""]


def markdown(record: dict[str, Any]) -> str:
    lines = validation_lines(record["selection"]) + ["Test splits, each family as shipped:", ""]
    lines += ["| " + " | ".join(header()) + " |", "|" + "---|" * len(header())]
    lines += ["| " + " | ".join(row) + " |" for row in rows_of(record)]
    for family, entry in record["selection"]["families"].items():
        if entry.get("gate"):
            lines += ["", gate_sentence(family, entry["gate"])]
            if entry["gate"].get("candidates"):
                lines += ["", f"The {family} family's gate kinds, each at its best candidate:", "",
                          kind_table(entry["gate"]["candidates"])]
        if entry.get("gate_sources"):
            lines += ["", f"The {family} family's gate, validation error per source: fitted on every source (in "
                      "source) and refitted without that source (out of source)", "",
                      error_table(entry["gate_sources"])]
    return "\n".join(lines) + "\n"


def gate_sentence(family: str, gate: dict[str, Any]) -> str:
    data = f", fitted {gate['data']} (gate.extra)" if gate.get("data") else ""
    return (f"The {family} family's gate: {gate['chosen']} (L2 {gate['l2']}{data}), chosen {gate['mode']}: "
            f"{gate['rule']}.")


def source_table(report: dict[str, Any], family: str) -> Table:
    rows = [[name, "harmful (missed)" if e["harmful"] else "benign (flagged)", str(e["n_validation"]),
             cell(e["in_source"], True), cell(e["out_of_source"], True)] for name, e in report["sources"].items()]
    rows.append(["balanced mean", "", "", cell(report["balanced_error_in_source"], True),
                 cell(report["balanced_error_out_of_source"], True)])
    return Table(["source", "kind", "validation prompts", "error in source", "error out of source"], rows,
                 f"The {family} gate's error per source, fitted with it and without it (leave one source out)")


def selective_outputs(root: Path, record: dict[str, Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header())
    writer.writerows(rows_of(record))
    write_text_atomic(root / "selective.csv", buffer.getvalue())
    write_text_atomic(root / "selective.md", markdown(record))
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    selection = record["selection"]["families"]
    frontier_figure({f: [tuple(p) for p in e["curve"]] for f, e in selection.items()},
                    {f: (e["shipped"]["over_refusal"], e["shipped"]["harmful_refusal"]) for f, e in selection.items()},
                    figures / "frontier_validation", "validation: harmful refusal against over-refusal (the "
                                                     "study's rule names the sets); stars: chosen")
    frontier_figure({f: [tuple(p) for p in c] for f, c in record["test_curves"].items()},
                    {f: (r["over_refusal"], r["harmful_refusal"]) for f, r in record["test"].items() if f != "base"},
                    figures / "frontier_test", "test: HarmBench refusal against over-refusal (rho + wsr); stars: "
                                               "as shipped")


def report_section(root: Path, record: dict[str, Any]) -> Section:
    """The reproduction report's section on the selective patch."""
    selection = record["selection"]
    ablations = selection.get("ablations") or {}
    tables = [Table(header(), rows_of(record), "Test splits, each family at the setting chosen on validation")]
    if ablations.get("gate"):
        tables.append(Table(["contrast sets", "validation recall", "false positives", "AUROC"],
                            [[name, cell(v["recall"], True), cell(v["false_positive_rate"], True), cell(v["auroc"])]
                             for name, v in ablations["gate"].items()], "The gate without each contrast set"))
    tables += [source_table(e["gate_sources"], family) for family, e in selection["families"].items()
               if e.get("gate_sources")]
    if ablations.get("retain"):
        tables.append(Table(["contrastive patch without", "validation refusal", "over-refusal"],
                            [[name, cell(v["harmful_refusal"], True), cell(v["over_refusal"], True)]
                             for name, v in ablations["retain"].items()], "The retain term without each set"))
    gates = [gate_sentence(family, e["gate"]) for family, e in selection["families"].items() if e.get("gate")]
    return Section("A selective safety patch", paragraphs=[
        f"Chosen on validation: {selection['chosen']} ({selection['rule']}). Every family was trained on the same "
        "harmful data with the same budget; the gated ones were placed along their gate threshold, the others along "
        "their dose.", *gates], tables=tables,
        figures=[Figure(root / "figures" / "frontier_test.png", "test frontier of each family"),
                 Figure(root / "figures" / "frontier_validation.png", "validation frontier (what chose)")])
