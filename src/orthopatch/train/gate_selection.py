"""Choosing a gate by how it does on sources it never saw: leave one source out.

Every training and validation prompt of a gate belongs to a *source*: a harmful set, a jailbreak or rephrasing
family, a benign set or one kind within it (a look-alike framing kind, a category of the varied benign prompts), the
wrapped benign prompts. For each source that has training prompts, the probe is fitted again without them (and,
for a set, without the wrapped or rephrased copies of its prompts), its
threshold set on the harmful validation prompts of the other sources, and its error measured on that source's
validation prompts: the share flagged for a benign source, the share missed for a harmful one. A source with only
validation prompts (the over-refusal sets) is out of source already. The mean of those errors (benign and harmful
halves weighted alike) estimates the gate's error on prompts shaped unlike anything it was fitted on, which is
what users send; the error of the gate fitted on everything, on the same prompts, is the in-source error beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from orthopatch.patches.gate import Gate

Fit = Any  # (X, y, l2) -> a fitted head


def recall_threshold(positive: torch.Tensor, recall: float) -> float:
    """The highest threshold that flags at least ``recall`` of the positive scores."""
    ordered = positive.sort().values
    return float(ordered[int((1 - recall) * len(ordered) + 1e-9)])


def benign_rate_threshold(negative: torch.Tensor, rate: float) -> float:
    """The lowest threshold that flags at most ``rate`` of the negative scores."""
    ordered = negative.sort(descending=True).values
    k = int(rate * len(ordered) + 1e-9)
    if k >= len(ordered):
        return float(ordered[-1])
    return float(torch.nextafter(ordered[k], torch.tensor(float("inf"), dtype=ordered.dtype)))


@dataclass(frozen=True)
class OperatingPoint:
    """Where a gate's threshold sits: keep ``recall`` of the harmful validation prompts, or, with
    ``max_benign_rate``, flag at most that share of the benign ones (the user's budget for over-refusal)."""

    recall: float
    max_benign_rate: float | None = None

    def threshold(self, harmful: torch.Tensor, benign: torch.Tensor) -> float:
        if self.max_benign_rate is not None:
            return benign_rate_threshold(benign, self.max_benign_rate)
        return recall_threshold(harmful, self.recall)

    def describe(self) -> str:
        if self.max_benign_rate is not None:
            return f"the threshold flagging at most {self.max_benign_rate:g} of the benign validation prompts"
        return f"the threshold keeping {self.recall:g} of the harmful validation prompts"


def _error(gate: Gate, X: torch.Tensor, harmful: bool) -> float:
    flagged = (gate.logits(X) >= gate.threshold).float().mean()
    return round(float(1 - flagged if harmful else flagged), 4)


def source_folds(sources: list[str], harmful: dict[str, bool], k: int) -> dict[str, frozenset[str]]:
    """Each source's fold: the sources held out with it, ``k`` folds each holding harmful and benign sources (in a
    fixed order by name, dealt out in turn)."""
    fold = {}
    for side in (True, False):
        for i, source in enumerate(sorted(s for s in sources if harmful[s] is side)):
            fold[source] = i % k
    return {s: frozenset(t for t in sources if fold[t] == fold[s]) for s in sources}


def leave_one_source_out(fit: Fit, full: Gate, train: tuple[torch.Tensor, torch.Tensor, list[str]],
                         validation: tuple[torch.Tensor, torch.Tensor, list[str]], l2: float,
                         operating: OperatingPoint | float, origins: list[str] | None = None,
                         refit: Callable[[torch.Tensor], tuple[Gate, torch.Tensor]] | None = None,
                         folds: int | None = None) -> dict[str, Any]:
    """The in-source and out-of-source error of each source, and their means. ``train`` and ``validation`` are
    (features, labels 1 = harmful, source of each row); ``full`` is the probe fitted on every training row.
    ``origins`` (the set each training row was drawn from): holding out a set also holds out the wrapped and
    rephrased copies of its prompts, which would otherwise carry its content into fitting. ``refit`` (for gates whose
    features learn): given the training rows to keep, the gate fitted on them alone and its features of the
    validation rows, in place of refitting the head on fixed features. ``folds``: hold the sources out in that many
    folds instead of one at a time (a costly refit runs once per fold; each source is still judged by a gate that
    never saw it)."""
    X, y, units = train
    origins = origins or units
    operating = operating if isinstance(operating, OperatingPoint) else OperatingPoint(operating)
    Xv, yv, vunits = validation
    names = list(dict.fromkeys(vunits))
    harmful_of = {s: bool(yv[vunits.index(s)] > 0) for s in names}
    groups = source_folds(names, harmful_of, folds) if folds else {s: frozenset({s}) for s in names}
    fitted: dict[frozenset[str], tuple[Gate, torch.Tensor]] = {}
    per_source: dict[str, dict[str, Any]] = {}
    for source in names:
        rows = torch.tensor([u == source for u in vunits])
        harmful, group = harmful_of[source], groups[source]
        held = torch.tensor([u in group or o in group for u, o in zip(units, origins, strict=True)])
        entry = {"harmful": harmful, "n_validation": int(rows.sum()), "n_train_held_out": int(held.sum()),
                 "in_source": _error(full, Xv[rows], harmful)}
        in_group = torch.tensor([u in group for u in vunits])
        keep, others, others_benign = ~held, (yv > 0) & ~in_group, (yv == 0) & ~in_group
        if held.any() and not ((y[keep] > 0).any() and (y[keep] == 0).any() and others.any()):
            entry["out_of_source"] = None  # the only source of its class: nothing to fit or threshold without it
        elif held.any():
            if group not in fitted:
                fitted[group] = refit(keep) if refit is not None else (full.with_head(fit(X[keep], y[keep], l2)), Xv)
            gate, features = fitted[group]
            gate.threshold = operating.threshold(gate.logits(features[others]), gate.logits(features[others_benign]))
            entry["out_of_source"] = _error(gate, features[rows], harmful)
        else:  # no training prompt of this kind: the full probe never saw it
            entry["out_of_source"] = entry["in_source"]
        per_source[source] = entry
    held_out = f"{folds} folds of sources" if folds else "one source at a time"
    return {"sources": per_source, "held_out": held_out, **summary(per_source)}


def summary(per_source: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean errors per class, in and out of source, their balanced means, and the standard error of the balanced
    out-of-source mean (over sources: with a dozen sources it is wide, and selection has to know it)."""
    def values(key: str, harmful: bool) -> list[float]:
        return [e[key] for e in per_source.values() if e["harmful"] is harmful and e[key] is not None]

    def mean(key: str, harmful: bool) -> float | None:
        found = values(key, harmful)
        return round(sum(found) / len(found), 4) if found else None

    out = {f"{side}_{key}": mean(key, side == "harmful_miss") for side in ("benign_flagged", "harmful_miss")
           for key in ("in_source", "out_of_source")}
    for key in ("in_source", "out_of_source"):
        halves = [v for v in (out[f"benign_flagged_{key}"], out[f"harmful_miss_{key}"]) if v is not None]
        out[f"balanced_error_{key}"] = round(sum(halves) / len(halves), 4) if halves else None
    variances = [torch.tensor(v).var().item() / len(v) for v in (values("out_of_source", False),
                                                                  values("out_of_source", True)) if len(v) > 1]
    out["standard_error_out_of_source"] = round(sum(variances) ** 0.5 / len(variances), 4) if variances else None
    return out


def error_table(report: dict[str, Any]) -> str:
    """The per-source table as Markdown (in-source next to out-of-source error)."""
    lines = ["| source | kind | validation prompts | error in source | error out of source |", "|---|---|---|---|---|"]
    for name, e in report["sources"].items():
        kind = "harmful (missed)" if e["harmful"] else "benign (flagged)"
        lines.append(f"| {name} | {kind} | {e['n_validation']} | {_pct(e['in_source'])} | "
                     f"{_pct(e['out_of_source'])} |")
    lines.append(f"| **balanced mean** | | | {_pct(report['balanced_error_in_source'])} | "
                 f"{_pct(report['balanced_error_out_of_source'])} |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def kind_table(candidates: list[dict[str, Any]]) -> str:
    """Per gate kind (feature kinds joined by +), its best candidate by out-of-source error (else by benign
    validation prompts flagged) as Markdown: errors in and out of source and the AUROC between the validation
    requests and their benign twins."""
    best: dict[str, dict[str, Any]] = {}
    rank = lambda c: (c.get("balanced_error_out_of_source") is None,  # noqa: E731
                      c.get("balanced_error_out_of_source") or 0.0, c["false_positive_rate"])
    for candidate in candidates:
        kind = candidate.get("kinds", candidate["features"])
        if kind not in best or rank(candidate) < rank(best[kind]):
            best[kind] = candidate
    lines = ["| gate kind | best candidate | error in source | error out of source | twin AUROC |",
             "|---|---|---|---|---|"]
    for kind, c in best.items():
        twin = c.get("twin_auroc")
        lines.append(f"| {kind} | {c['features']} | {_pct(c.get('balanced_error_in_source'))} | "
                     f"{_pct(c.get('balanced_error_out_of_source'))} | {'-' if twin is None else f'{twin:.3f}'} |")
    return "\n".join(lines)
