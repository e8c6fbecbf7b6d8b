"""How well each refusal judge agrees with human labels: PyRIT's labelled refusal rows, held-out (test) split.

The embedding judge is fitted on the train split of the same rows, so only the test split is a fair comparison;
every judge is scored on exactly those rows. Responses are never printed (some answer harmful objectives).
"""

from __future__ import annotations

from typing import Any

from orthopatch.data.registry import load_dataset, records_hash
from orthopatch.data.splits import get_split
from orthopatch.evaluate.judges import EMBEDDING_JUDGES, STRING_JUDGES
from orthopatch.evaluate.judging import get_judge
from orthopatch.evaluate.metrics import rate


def agreement(predicted: list[bool], labels: list[bool]) -> dict[str, Any]:
    tp = sum(p and y for p, y in zip(predicted, labels, strict=True))
    fp = sum(p and not y for p, y in zip(predicted, labels, strict=True))
    fn = sum((not p) and y for p, y in zip(predicted, labels, strict=True))
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    return {"accuracy": rate([p == y for p, y in zip(predicted, labels, strict=True)]), "f1": f1,
            "precision": precision, "recall": recall, "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def validate_judges(names: list[str] | None = None, split: str = "test") -> dict[str, Any]:
    """Agreement (accuracy with CI, F1, precision, recall; refusal = positive) of each judge with the human labels."""
    dataset = load_dataset("refusal_labels")
    rows = get_split(dataset, split)
    labels = [r.reference == "1" for r in rows]
    names = names or [*STRING_JUDGES, *EMBEDDING_JUDGES]
    out: dict[str, Any] = {"data": {**dataset.source, "split": split, "n_used": len(rows),
                                    "n_refusal": sum(labels), "used_sha256": records_hash(rows)}, "judges": {}}
    for name in names:
        judge = get_judge(name)
        if judge.kind != "refusal":
            out["judges"][name] = {"skipped": "not a refusal judge (the labels are about refusal)"}
            continue
        out["judges"][name] = {**agreement(judge.verdicts([r.prompt for r in rows]), labels),
                               "judge": judge.describe()}
    return out
