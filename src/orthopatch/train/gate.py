"""Fitting a selective patch's gate (:mod:`orthopatch.patches.gate`): a linear probe on the frozen base's hidden
states of harmful against benign prompts, chosen and thresholded on validation splits only.

The probe is a class-balanced, L2-regularised logistic regression solved with torch's L-BFGS on standardised features
(a few thousand rows of a few thousand features: no new dependency, deterministic on the CPU). The features of every
candidate layer come from one forward pass per batch that stops after the deepest candidate.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from orthopatch.data.assemble import benign_prompts, training_records, wrapped_copies
from orthopatch.data.registry import records_hash
from orthopatch.data.schema import Record
from orthopatch.data.splits import named_split
from orthopatch.models.generation import chat_prompt_ids, left_pad
from orthopatch.models.probes import auroc, fit_logistic
from orthopatch.patches.gate import Gate, decoder_layers, layer_features, pool
from orthopatch.train.config import GateSettings


@dataclass
class GateData:
    """Prompts to fit on (train splits) and to choose with (validation splits), and where they came from."""

    train_harmful: list[str]
    train_benign: list[str]
    validation_harmful: list[str]
    validation_benign: dict[str, list[str]]  # per set, so that the report can say where the gate errs
    provenance: dict[str, Any]


def _capped(records: list[Record], cap: int | None) -> list[Record]:
    return records[:cap] if cap is not None else records


def gate_data(settings: GateSettings, seed: int, split_seed: int) -> GateData:
    """The gate's prompts: each set's train split (and wrapped copies) to fit, validation split to choose."""
    harmful = [r for name in settings.harmful for r in _capped(
        training_records([name], seed=seed, split_seed=split_seed)[0], settings.max_per_set)]  # decontaminated
    benign = [r for name in settings.benign
              for r in _capped(benign_prompts([name], split_seed, "gate.benign")[0], settings.max_per_set)]

    def wrap(records: list[Record], split: str) -> list[Record]:
        return wrapped_copies(records, settings.wrap, seed, split, split_seed, settings.wrap_max_chars) \
            if settings.wrap else []

    validation = {name: _capped(named_split(name, "validation", split_seed)[1], settings.max_per_set)
                  for name in [*settings.harmful, *settings.benign, *settings.validation_benign]}
    val_harmful = [r for name in settings.harmful for r in validation[name]]
    val_benign = {name: [r.prompt for r in validation[name]]
                  for name in [*settings.benign, *settings.validation_benign]}
    wrapped_val = [r for name in settings.benign for r in validation[name]]
    if settings.wrap:  # validation templates, never the training ones
        val_benign["adversarial benign (wrapped)"] = [r.prompt for r in wrap(wrapped_val, "validation")]
        val_harmful += wrap(val_harmful, "validation")
    train_harmful = harmful + wrap(harmful, "train")
    train_benign = benign + (wrap(benign, "train") if settings.wrap_benign else [])
    provenance = {"harmful": settings.harmful, "benign": settings.benign,
                  "validation_benign": settings.validation_benign, "wrap": settings.wrap,
                  "wrap_benign": settings.wrap_benign,
                  "n_train": {"harmful": len(train_harmful), "benign": len(train_benign)},
                  "n_validation": {"harmful": len(val_harmful), **{k: len(v) for k, v in val_benign.items()}},
                  "train_sha256": records_hash(train_harmful + train_benign),
                  "validation_sha256": records_hash(val_harmful)}
    return GateData([r.prompt for r in train_harmful], [r.prompt for r in train_benign],
                    [r.prompt for r in val_harmful], val_benign, provenance)


@torch.no_grad()
def prompt_features(model, tokenizer, prompts: list[str], layers: list[int], poolings: list[str], batch_size: int,
                    progress: bool = False) -> dict[tuple[int, str], torch.Tensor]:
    """Pooled hidden states of chat-formatted prompts, for every (layer, pooling): (n, hidden) each."""
    ids = chat_prompt_ids(tokenizer, prompts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(model.parameters()).device
    out: dict[tuple[int, str], torch.Tensor] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="gate features", disable=not progress,
                      file=sys.stderr):
        chunk = order[start:start + batch_size]
        input_ids, attention = left_pad([ids[i] for i in chunk], tokenizer.pad_token_id, device)
        hidden = layer_features(model, input_ids, attention, layers)
        for layer in layers:
            for pooling in poolings:
                pooled = pool(hidden[layer], attention, pooling).cpu()
                target = out.setdefault((layer, pooling), torch.zeros(len(ids), pooled.shape[1]))
                target[chunk] = pooled
    return out


def fit_probe(X: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, float, torch.Tensor,
                                                                    torch.Tensor]:
    """Class-balanced L2 logistic regression on standardised ``X``; returns (weight, bias, mean, scale)."""
    mean, scale = X.mean(0), X.std(0).clamp(min=1e-6)
    weight, bias = fit_logistic((X - mean) / scale, y, l2, steps=300, balanced=True)
    return weight.float(), bias, mean.float(), scale.float()


def recall_threshold(positive: torch.Tensor, recall: float) -> float:
    """The highest threshold that flags at least ``recall`` of the positive scores."""
    ordered = positive.sort().values
    return float(ordered[int((1 - recall) * len(ordered) + 1e-9)])


def evaluate_probe(gate: Gate, features: dict[str, torch.Tensor], harmful: str) -> dict[str, Any]:
    """Validation rates of a fitted probe: recall on harmful, false positives per benign set, AUROC."""
    scores = {name: gate.logits(x) for name, x in features.items()}
    benign = torch.cat([v for k, v in scores.items() if k != harmful])
    flagged = {name: round(float((v >= gate.threshold).float().mean()), 4) for name, v in scores.items()}
    return {"recall": flagged[harmful], "false_positive_rate": round(float((benign >= gate.threshold).float().mean()),
                                                                     4),
            "flagged_per_set": flagged, "auroc": round(auroc(scores[harmful], benign), 4)}


def fit_gate(model, tokenizer, settings: GateSettings, data: GateData, progress: bool = False) -> Gate:
    """Fit every candidate probe on the train prompts; keep the one with the fewest benign validation prompts
    flagged at the threshold that keeps ``settings.recall`` of the harmful validation prompts (then the highest
    AUROC)."""
    start = time.perf_counter()
    n_layers = len(decoder_layers(model))
    layers = sorted({min(n_layers - 1, max(1, round(f * n_layers))) for f in settings.layers})
    read = lambda prompts: prompt_features(model, tokenizer, prompts, layers, settings.poolings,  # noqa: E731
                                           settings.batch_size, progress)
    train = read(data.train_harmful + data.train_benign)
    val_names = ["harmful", *data.validation_benign]
    val_prompts = [data.validation_harmful, *data.validation_benign.values()]
    val_all = read([p for group in val_prompts for p in group])
    bounds = torch.tensor([0, *[len(g) for g in val_prompts]]).cumsum(0).tolist()
    y = torch.cat([torch.ones(len(data.train_harmful)), torch.zeros(len(data.train_benign))])
    candidates = []
    for (layer, pooling), X in train.items():
        val = {name: val_all[layer, pooling][bounds[i]:bounds[i + 1]] for i, name in enumerate(val_names)}
        for l2 in settings.l2:
            weight, bias, mean, scale = fit_probe(X, y, l2)
            gate = Gate(layer, pooling, 0.0, weight, bias, mean, scale)
            gate.threshold = recall_threshold(gate.logits(val["harmful"]), settings.recall)
            report = evaluate_probe(gate, val, "harmful")
            gate.info = {"l2": l2, "validation": report}
            candidates.append(((report["false_positive_rate"], -report["auroc"], layer, pooling, l2), gate))
    best = min(candidates, key=lambda c: c[0])[1]
    best.info = {**best.info, "fitted_on": data.provenance, "selection": {
        "rule": f"fewest benign validation prompts flagged at the threshold keeping {settings.recall:g} of the "
                "harmful validation prompts; then the highest AUROC",
        "candidates": [{"layer": g.layer, "pooling": g.pooling, "l2": g.info["l2"],
                        "false_positive_rate": g.info["validation"]["false_positive_rate"],
                        "auroc": g.info["validation"]["auroc"]} for _, g in candidates]},
        "fit_seconds": round(time.perf_counter() - start, 1)}
    return best
