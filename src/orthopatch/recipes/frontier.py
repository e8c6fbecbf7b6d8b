"""Refusal / over-refusal frontiers: what a recipe trades as its dose or its gate threshold moves.

A dose frontier needs one evaluation per dose. A gate's needs no more than two: a prompt the gate passes gets the
base's answer (exactly: gate-off rows compute the base's numbers) and a prompt it flags gets the always-on patch's,
so the base's and the always-on patch's judged answers, with each prompt's gate score, give the outcome at every
threshold at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from orthopatch.evaluate.config import EvalConfig


def judged_only(eval_cfg: EvalConfig) -> EvalConfig:
    """The same direct harmful and benign sets, nothing else: what a frontier point needs."""
    return dataclasses.replace(eval_cfg, attacks=[], sensitive=[], trivia=None, gsm8k=None, fact_pairs=None,
                               perplexity=None, kl=[], drift=False, lm_eval=[])


def rates(results: dict[str, Any], harmful: str) -> tuple[float, float]:
    """(over-refusal on every benign set, refusal of ``harmful``) of one evaluation."""
    m = results["metrics"]
    return m["over_refusal"]["all"]["value"], m["harmful_refusal"][harmful]["value"]


def _by_key(samples: list[dict[str, Any]], groups: tuple[str, ...]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["set"], s["id"]): s for s in samples if s.get("group") in groups}


def gate_frontier(base: list[dict[str, Any]], always_on: list[dict[str, Any]], gated: list[dict[str, Any]],
                  adapter: str, harmful: str) -> list[tuple[float, float, str]]:
    """(over-refusal, harmful refusal, threshold) at every threshold that changes a decision, from the judged samples
    of the base, of the patch without its gate, and of the gated patch (which holds each prompt's gate score)."""
    scores = {key: row["gate"][adapter] for key, row in _by_key(gated, ("harmful", "benign")).items()}
    base_rows, patch_rows = _by_key(base, ("harmful", "benign")), _by_key(always_on, ("harmful", "benign"))
    keys = [k for k in scores if k in base_rows and k in patch_rows]
    harmful_keys = [k for k in keys if k[0] == harmful]
    benign_keys = [k for k in keys if base_rows[k]["group"] == "benign"]
    thresholds = sorted({scores[k] for k in keys}) + [float("inf")]
    points = []
    for t in thresholds:
        refused = {k: (patch_rows if scores[k] >= t else base_rows)[k]["refused"] for k in keys}
        points.append((sum(refused[k] for k in benign_keys) / max(len(benign_keys), 1),
                       sum(refused[k] for k in harmful_keys) / max(len(harmful_keys), 1), f"threshold {t:.3g}"))
    return points
