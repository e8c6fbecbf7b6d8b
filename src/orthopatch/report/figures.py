"""Figures (matplotlib, PNG), each saved with the CSV of the numbers it plots."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any


def _per_layer(entry: dict[str, Any], value) -> dict[int, float]:
    """Mean over the modules of each layer of ``value(module_row)``."""
    acc: dict[int, list[float]] = defaultdict(list)
    for row in entry["modules"]:
        if row["layer"] is not None:
            v = value(row)
            if v is not None:
                acc[row["layer"]].append(v)
    return {layer: sum(vs) / len(vs) for layer, vs in sorted(acc.items())}


def _save(fig, path: Path, series: dict[str, dict[int, float]], ylabel: str) -> None:
    fig.savefig(path.with_suffix(".png"), dpi=110, bbox_inches="tight")
    with open(path.with_suffix(".csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series", "layer", ylabel])
        for name, points in series.items():
            for layer, value in points.items():
                writer.writerow([name, layer, value])


def geometry_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """Per-layer lines, one per target, for orthogonality, magnitude, interference and hidden-state shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = results["targets"]
    panels = [
        ("orthogonality", "paper similarity max|V_Δᵀ V_0| (k = r)", lambda r: r["k"]["r"]["paper_similarity"],
         lambda r: r["k"]["r"]["random"]["paper_similarity"]),
        ("energy", "energy of ΔW in W0's top-k input subspace (largest k)",
         lambda r: r["k"][_largest_k(r)]["energy_input"], lambda r: r["k"][_largest_k(r)]["random"]["energy_input"]),
        ("magnitude", "‖ΔW‖_F", lambda r: r["fro"], None),
        ("interference", "‖W0 x_Δ + ΔW x_0‖ / ‖W0 x‖ (benign)", lambda r: r.get("interference"), None),
    ]
    written = []
    for name, ylabel, value, random in panels:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        series: dict[str, dict[int, float]] = {}
        for label, entry in targets.items():
            series[label] = _per_layer(entry, value)
            if series[label]:
                ax.plot(list(series[label]), list(series[label].values()), marker="o", ms=3, label=label)
            if random is not None:
                baseline = _per_layer(entry, random)
                series[f"{label} (random)"] = baseline
                ax.plot(list(baseline), list(baseline.values()), ls="--", lw=1, label=f"{label}: random subspace")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        _save(fig, out / f"geometry_{name}", series, ylabel)
        plt.close(fig)
        written.append(out / f"geometry_{name}.png")
    if all("hidden_shift" in entry for entry in targets.values()):
        fig, ax = plt.subplots(figsize=(7, 3.6))
        series = {}
        for label, entry in targets.items():
            for which, style in (("benign", "-"), ("jailbreak", ":")):
                points = {i: row["last_relative"] for i, row in enumerate(entry["hidden_shift"][which])}
                series[f"{label} {which}"] = points
                ax.plot(list(points), list(points.values()), ls=style, marker="o", ms=3, label=f"{label}: {which}")
        ax.set_xlabel("layer")
        ax.set_ylabel("hidden-state shift ‖Δh‖/‖h‖ (last token)", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        _save(fig, out / "geometry_hidden_shift", series, "relative shift")
        plt.close(fig)
        written.append(out / "geometry_hidden_shift.png")
    return written


def _largest_k(row: dict[str, Any]) -> str:
    numeric = [k for k in row["k"] if k != "r"]
    return max(numeric, key=int) if numeric else "r"


def frontier_figure(curves: dict[str, list[tuple[float, float, str]]], chosen: dict[str, tuple[float, float]],
                    path: Path, title: str) -> Path:
    """Harmful refusal against over-refusal, one line per recipe over its dose or gate threshold (each point
    labelled), the operating point each recipe ships with marked; saved as PNG with the CSV of every point."""
    import matplotlib  # deferred: matplotlib's import is slow and needs its Agg backend set first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for name, points in curves.items():
        ordered = sorted(points)
        line, = ax.plot([p[0] for p in ordered], [p[1] for p in ordered], marker=".", label=name)
        if name in chosen:
            ax.scatter(*chosen[name], s=120, marker="*", color=line.get_color(), zorder=5)
    ax.set_xlabel("over-refusal (benign-sensitive prompts refused)")
    ax.set_ylabel("harmful refusal (held-out HarmBench)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.fill_between([0.0, 0.05], 0.95, 1.0, color="green", alpha=0.25,
                    label="target: refusal >= 95%, over-refusal <= 5%")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.savefig(path.with_suffix(".png"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    with open(path.with_suffix(".csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["recipe", "over_refusal", "harmful_refusal", "setting", "shipped"])
        for name, points in curves.items():
            for over, refusal, setting in points:
                writer.writerow([name, over, refusal, setting, chosen.get(name) == (over, refusal)])
    return path.with_suffix(".png")
